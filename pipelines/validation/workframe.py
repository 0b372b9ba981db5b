"""The work frame: what the rules read.

The feed's declared columns as strings, surrounding spaces trimmed, blank as missing
(absent columns all missing), each declared date column parsed (``<name>__as_date``),
then the suite's ``prepare`` (record key ``__key``, repeated keys ``__key_repeated``,
birth ``__birth_month_start``, HES placeholder flags). :func:`to_arrow` hands the columns
a validation reads to the engine as an Arrow table, with each row's position and file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from expectations.custom import parse_iso_dates
from expectations.rules import Env, date_col
from pipelines.validation.plan import ITEM, POS, SUITES


def feed_columns(source: str) -> list[str]:
    mod = SUITES[source]
    names = list(mod.FEED.column_names)
    if source == "hes_apc":
        names += [c for c in mod.HES_FEED.column_names if c not in names]
    return names


def work_frame(source: str, frame: pd.DataFrame, env: Env | None) -> pd.DataFrame:
    """The declared columns as strings, surrounding spaces trimmed (absent columns all
    missing; blank means missing), plus the derived columns the rules read (``env``
    None: without the suite's ``prepare``)."""
    mod = SUITES[source]
    n = len(frame)
    cols: dict[str, pd.Series] = {}
    index = pd.RangeIndex(n)
    for name in feed_columns(source):
        if name in frame.columns:
            s = frame[name].astype("string").reset_index(drop=True).str.strip()
            blank = s == ""
            cols[name] = s.mask(blank) if bool(blank.any()) else s
        else:
            cols[name] = pd.Series(pd.NA, index=index, dtype="string")
    work = pd.DataFrame(cols, index=index)
    for c in mod.FEED.columns:
        if c.kind == "date":
            work[date_col(c.name)] = parse_iso_dates(work[c.name])
    return work if env is None else mod.prepare(work, env)


def work_frame_many(source: str, frames: list[pd.DataFrame], envs: list[Env], offsets: np.ndarray) -> pd.DataFrame:
    """:func:`work_frame` of each frame, concatenated: the column work is done once over
    all the rows; a suite whose ``prepare`` looks across rows (repeated keys are per
    file) has it applied file by file (``PREPARE_PER_FILE``, default true)."""
    if len(frames) == 1:
        return work_frame(source, frames[0], envs[0])
    mod = SUITES[source]
    per_file = getattr(mod, "PREPARE_PER_FILE", True)
    declared = set(feed_columns(source))
    rows = pd.concat([f[[c for c in f.columns if c in declared]] for f in frames], ignore_index=True)
    if not per_file:
        return work_frame(source, rows, envs[0])
    work = work_frame(source, rows, None)
    pieces = [mod.prepare(work.iloc[int(a):int(z)].reset_index(drop=True), env)
              for a, z, env in zip(offsets[:-1], offsets[1:], envs)]
    return pd.concat(pieces, ignore_index=True)


ARROW_BATCH_ROWS = 122_880  # DuckDB's row group size


def _arrow_column(s: pd.Series) -> pa.Array:
    if isinstance(s.dtype, pd.CategoricalDtype):
        s = s.astype("string")
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        return pa.array(s.to_numpy("datetime64[s]"), type=pa.timestamp("s"), from_pandas=True)
    return pa.array(s, type=pa.string(), from_pandas=True)


def to_arrow(work: pd.DataFrame, columns: list[str], item_of: np.ndarray) -> pa.Table:
    """The ``columns`` of the work frame (strings; dates as timestamps, missing as null)
    with each row's position (``__pos``) and file (``__item``): the engine's input."""
    arrays = {POS: pa.array(np.arange(len(work), dtype=np.int64)),
              ITEM: pa.array(np.asarray(item_of, dtype=np.int32))}
    for c in columns:
        arrays[c] = _arrow_column(work[c])
    # in batches: an engine scans an Arrow table's batches in parallel (one batch, one thread)
    table = pa.table(arrays)
    return pa.Table.from_batches(table.to_batches(max_chunksize=ARROW_BATCH_ROWS), schema=table.schema)
