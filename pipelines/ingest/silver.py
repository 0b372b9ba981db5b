"""Typed silver rows per feed (``gp_patients``, ``sus_episodes``, ``fft_responses``) from
the kept rows of validated files, built in one pass over the concatenation of many files
(one piece per file), and the ``gp_type2`` rows of a GP extract."""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from expectations.rules import date_col
from pipelines import nhs_number, schemas
from pipelines.landing import (
    ParsedName,
    opcs_present,
)
from pipelines.schemas.inputs import TYPE2
from pipelines.text import SPACE

log = logging.getLogger(__name__)


SILVER = {"gp": "gp_patients", "sus_apc": "sus_episodes", "hes_apc": "sus_episodes", "fft": "fft_responses"}


def _strip(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        return pd.Series(pd.NA, index=frame.index, dtype="string")
    s = frame[name].astype("string").str.strip()
    return s.mask(s == "")


def _dates(frame: pd.DataFrame, name: str) -> pa.Array:
    from expectations.custom import parse_iso_dates

    return _date_array(parse_iso_dates(_strip(frame, name)))


def _parse_dates(text: pd.Series, placeholder_dates: bool = True) -> pd.Series:
    """ISO dates (datetime64, NaT where missing or not a real date); with
    ``placeholder_dates``, HES's placeholder dates (1800-01-01, ...) are missing too."""
    from expectations.custom import parse_iso_dates
    from expectations.sus_apc import blank_placeholder_dates

    return parse_iso_dates(blank_placeholder_dates(text) if placeholder_dates else text)


def _date_array(parsed: pd.Series) -> pa.Array:
    """datetime64 values (NaT = missing) to date32, without a Python object per value."""
    days = np.asarray(parsed.to_numpy(), dtype="datetime64[s]").astype("datetime64[D]")
    return pa.array(days, pa.date32(), mask=np.isnat(days))


class _Columns:
    """The columns typed rows are built from: the raw rows' columns stripped (blank as
    missing) and their dates parsed here, or, given validation's work frame of the same
    rows (:func:`pipelines.validation._work_frame`: the declared columns cleaned the
    same way, dates parsed), taken from it, so that work is done once (by the validator)."""

    def __init__(self, frame: pd.DataFrame, work: pd.DataFrame | None = None, placeholder_dates: bool = False):
        # placeholder_dates (SUS, HES): HES's placeholder dates read as missing, as the
        # suite's ``prepare`` reads them (expectations.sus_apc.PLACEHOLDER_DATES).
        self.frame, self.work, self.placeholder_dates = frame, work, placeholder_dates

    def has(self, name: str) -> bool:
        return name in self.frame.columns

    def _worked(self, name: str) -> pd.Series | None:
        return None if self.work is None or name not in self.work.columns else self.work[name]

    def text(self, name: str) -> pd.Series:
        got = self._worked(name)
        return _strip(self.frame, name) if got is None else got

    def parsed(self, name: str) -> pd.Series:
        """The column's ISO dates (datetime64, NaT where not a real date)."""
        got = self._worked(date_col(name))
        if got is not None:
            return got
        return _parse_dates(self.text(name), self.placeholder_dates)

    def dates(self, name: str) -> pa.Array:
        return _date_array(self.parsed(name))


def _nhs(raw: pd.Series) -> tuple[pa.Array, pa.Array]:
    """An NHS number column (stripped): canonical where valid, else null; and validity."""
    canonical, valid = nhs_number.canonical_valid_arrow(_str_array(raw))
    return pc.if_else(valid, canonical, pa.scalar(None, pa.string())), valid


def _postcode(raw: pd.Series) -> pa.Array:
    s = raw.str.replace(f"{SPACE}+", "", regex=True).str.upper()
    return _str_array(s.mask(s == ""))


def _str_array(s: pd.Series) -> pa.Array:
    """A string Series (missing = <NA>) as an Arrow string array, without Python objects."""
    arr = pa.array(s.astype("string").reset_index(drop=True), from_pandas=True)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    return arr.cast(pa.string()) if arr.type != pa.string() else arr


def _warnings(outcome, kept: np.ndarray) -> pa.Array:
    """Each kept row's broken (warn) rule ids; most rows have none, so the list array is
    built from offsets and only the non-empty rows are touched in Python."""
    rule_ids, broken = outcome.rule_ids, getattr(outcome, "broken", None)
    idx = np.flatnonzero(kept)
    lengths = (broken[idx] if broken is not None
               else np.fromiter((len(rule_ids[i]) for i in idx), dtype=np.int32, count=len(idx)))
    offsets = np.zeros(len(idx) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = [r for i in idx[lengths > 0] for r in rule_ids[i]]
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.string()))


def _common(n: int, period: str, submission_id: str, frame: pd.DataFrame) -> dict:
    return {
        "period": pa.array([period] * n, pa.string()),
        "submission_id": pa.array([submission_id] * n, pa.string()),
        "line": pa.array(frame["_line"].to_numpy(dtype=np.int64), pa.int64()),
    }


def _gp_silver(frame: pd.DataFrame, parsed: ParsedName, period: str, warn: pa.Array) -> pa.Table:
    return _gp_silver_many([frame], [parsed], period, [warn]).parts()[0]


class _Sliced(NamedTuple):
    """One table holding consecutive pieces: ``parts()`` slices them out without a copy.
    Pickled whole (a pickled slice of an Arrow table carries the whole table's buffers)."""

    table: pa.Table
    offsets: np.ndarray

    def parts(self) -> list[pa.Table]:
        o = self.offsets
        return [self.table.slice(int(a), int(z - a)) for a, z in zip(o[:-1], o[1:])]


def _one_frame(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Many files' rows as one frame (index 0..n-1), with each file's row count and, per
    row, the file it came from."""
    sizes = np.array([len(f) for f in frames], dtype=np.int64)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    return frame, sizes, np.repeat(np.arange(len(frames)), sizes)


def _per_row(values: list, which: np.ndarray, type_: pa.DataType) -> pa.Array:
    """One value per file, repeated over the file's rows."""
    return pa.array(values, type_).take(pa.array(which))


def _all_warnings(warns: list[pa.Array]) -> pa.Array:
    """The files' warning lists, one after another."""
    return (pa.concat_arrays([w.cast(pa.list_(pa.string())) for w in warns]) if warns
            else pa.array([], pa.list_(pa.string())))


def _sliced(table: pa.Table, sizes: np.ndarray) -> _Sliced:
    return _Sliced(table, np.concatenate([[0], np.cumsum(sizes)]))


def _gp_silver_many(frames: list[pd.DataFrame], parsed: list[ParsedName], period: str,
                    warns: list[pa.Array], work: pd.DataFrame | None = None) -> _Sliced:
    """The silver rows of many GP extracts (kept rows of each), built in one pass over
    their concatenation (a national month is 6,500 extracts: per-file column work would
    cost more than the rows), one piece per file. ``work``: validation's work frame of
    the same rows, if there is one (:class:`_Columns`)."""
    frame, sizes, which = _one_frame(frames)
    c = _Columns(frame, work)
    n = len(frame)
    nhs, valid = _nhs(c.text("NHS_NUMBER"))
    obj = c.text("OBJECTION").str.upper()
    cols = {
        "period": pa.array([period] * n, pa.string()),
        "submission_id": _per_row([p.submission_id for p in parsed], which, pa.string()),
        "line": pa.array(frame["_line"].to_numpy(dtype=np.int64), pa.int64()),
        "practice_code": _per_row([p.submitter_code for p in parsed], which, pa.string()),
        "extract_date": _per_row([p.extract_date for p in parsed], which, pa.date32()),
        "nhs_number": nhs, "nhs_number_valid": valid,
        "date_of_birth": c.dates("DATE_OF_BIRTH"),
        "sex": _str_array(c.text("SEX")),
        "postcode": _postcode(c.text("POSTCODE")),
        "lsoa": _str_array(_blank_malformed(c.text("LSOA"), "LSOA_FORMAT").str.upper()),
        "ethnic_category": _str_array(c.text("ETHNIC_CATEGORY")),
        "registration_date": c.dates("REGISTRATION_DATE"),
        "deregistration_date": c.dates("DEREGISTRATION_DATE"),
        "date_of_death": c.dates("DATE_OF_DEATH"),
        "type2_objection": pa.array((obj == TYPE2.upper()).fillna(False).to_numpy(dtype=bool), pa.bool_()),
        "dq_warnings": _all_warnings(warns),
    }
    return _sliced(schemas.get("gp_patients").conform(pa.table(cols)), sizes)


def _code_lists(c: _Columns, prefix: str, count: int, dates_prefix: str | None = None):
    """Present codes in column order (HES placeholders '-', '&' dropped), and the dates
    aligned with them. Built in Arrow: the present cells' values taken row by row from
    the columns one after another, with no Python string per code."""
    from expectations.rules import ICD10_RE, OPCS4_RE

    code_re = OPCS4_RE if prefix.startswith("OPERTN") else ICD10_RE
    n = len(c.frame)
    columns: list[pa.Array] = []
    present = np.zeros((n, count), dtype=bool)
    dts = np.full((n, count), np.datetime64("NaT"), dtype="datetime64[D]") if dates_prefix else None
    for k in range(count):
        name = f"{prefix}{k + 1:02d}"
        if not c.has(name):
            columns.append(pa.nulls(n, pa.string()))
            continue  # absent column: nothing present (dates stay None)
        s = c.text(name)
        # present and well formed: a malformed code is counted by its warn rule
        # (<name>_FORMAT) and left out, as it would reach the restricted zone
        ok = (opcs_present(s) & s.str.contains(code_re, regex=True).fillna(False)).to_numpy(dtype=bool)
        columns.append(_str_array(s))
        present[:, k] = ok
        if dates_prefix:
            dcol = f"{dates_prefix}{k + 1:02d}"
            if c.has(dcol) and ok.any():
                d = c.parsed(dcol)
                dts[:, k] = np.asarray(d.to_numpy(), dtype="datetime64[s]").astype("datetime64[D]")
    # Row-major flattening of the present cells, with offsets: no Python list per row.
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(present.sum(axis=1), out=offsets[1:])
    off = pa.array(offsets, pa.int32())
    row, col = np.nonzero(present)  # row by row, columns in order within a row
    values = (pa.concat_arrays(columns).take(pa.array(col.astype(np.int64) * n + row)) if count
              else pa.array([], pa.string()))
    lists = pa.ListArray.from_arrays(off, values)
    if dates_prefix:
        flat = dts[present]
        date_lists = pa.ListArray.from_arrays(off, pa.array(flat, pa.date32(), mask=np.isnat(flat)))
    else:
        date_lists = None
    return lists, date_lists


def _sus_silver(frame: pd.DataFrame, source: str, protocol: str | None, periods, submission_id: str,
                warn: pa.Array) -> pa.Table:
    return _sus_silver_many([frame], source, [protocol], [periods], [submission_id], [warn]).parts()[0]


def _sus_silver_many(frames: list[pd.DataFrame], source: str, protocols: list, periods: list,
                     submission_ids: list[str], warns: list[pa.Array],
                     work: pd.DataFrame | None = None) -> _Sliced:
    """The silver rows of many SUS files (or a HES extract), built in one pass over their
    concatenation, one piece per file. ``periods``: per file, its period, or (HES) one
    per row. ``work``: as for :func:`_gp_silver_many`."""
    frame, sizes, which = _one_frame(frames)
    c = _Columns(frame, work, placeholder_dates=True)
    n = len(frame)
    nhs, valid = _nhs(c.text("NEWNHSNO"))
    susrecid = c.text("SUSRECID")
    if source == "hes_apc":
        susrecid = susrecid.fillna(c.text("EPIKEY"))
    net = np.array([p == "NET" for p in protocols], dtype=bool)[which]
    update = pd.Series("9", index=frame.index, dtype="string")
    if net.any():
        update[net] = c.text("CDS_UPDATE_TYPE")[net]
    # Birth year and month: DOB, else MYDOB (MMYYYY).
    dob = c.parsed("DOB")
    mydob = c.text("MYDOB")
    ok = mydob.str.fullmatch(r"(0[1-9]|1[0-2])[0-9]{4}").fillna(False).astype(bool)
    year = pd.Series(dob.dt.year, index=frame.index).astype("Int64")
    month = pd.Series(dob.dt.month, index=frame.index).astype("Int64")
    year = year.fillna(pd.to_numeric(mydob.str[2:].where(ok), errors="coerce").astype("Int64"))
    month = month.fillna(pd.to_numeric(mydob.str[:2].where(ok), errors="coerce").astype("Int64"))
    diagnoses, _ = _code_lists(c, "DIAG_4_", 20)
    procedures, proc_dates = _code_lists(c, "OPERTN_4_", 24, "OPDATE_")
    period_arr = pa.array(np.concatenate([np.full(z, p, dtype=object) if isinstance(p, str) else
                                          np.asarray(list(p), dtype=object) for p, z in zip(periods, sizes)])
                          if n else [], pa.string())
    cols = {
        "period": period_arr,
        "submission_id": _per_row(submission_ids, which, pa.string()),
        "line": pa.array(frame["_line"].to_numpy(dtype=np.int64), pa.int64()),
        "source": pa.array([source] * n, pa.string()),
        "provider_code": _str_array(c.text("PROCODE3").str.upper()),
        "susrecid": _str_array(susrecid),
        "cds_update_type": _str_array(update),
        "spell_id": _str_array(c.text("SUSSPELLID")),
        "epiorder": _str_array(_blank_malformed(c.text("EPIORDER"), "EPIORDER_FORMAT").str.zfill(2)),
        "epistat": _str_array(c.text("EPISTAT")),
        "epistart": c.dates("EPISTART"),
        "epiend": c.dates("EPIEND"),
        "admidate": c.dates("ADMIDATE"),
        "disdate": c.dates("DISDATE"),
        "admimeth": _str_array(c.text("ADMIMETH")),
        "dismeth": _str_array(c.text("DISMETH")),
        "admisorc": _str_array(c.text("ADMISORC")),
        "disdest": _str_array(c.text("DISDEST")),
        "classpat": _str_array(_blank_malformed(c.text("CLASSPAT"), "CLASSPAT_CODE")),
        "sex": _str_array(c.text("SEX")),
        "nhs_number": nhs, "nhs_number_valid": valid,
        "nhsnoind": _str_array(c.text("NHSNOIND")),
        "dob": _date_array(dob),
        "birth_year": pa.array(year.astype(object).where(year.notna(), None).tolist(), pa.int64()),
        "birth_month": pa.array(month.astype(object).where(month.notna(), None).tolist(), pa.int64()),
        "postcode": _postcode(c.text("HOMEADD")),
        "gpprac": _str_array(c.text("GPPRAC")),
        "consultant_code": _str_array(_blank_malformed(c.text("CONSULT"), "CONSULT_FORMAT")),
        "mainspef": _str_array(_blank_malformed(c.text("MAINSPEF"), "MAINSPEF_FORMAT")),
        "tretspef": _str_array(_blank_malformed(c.text("TRETSPEF"), "TRETSPEF_FORMAT")),
        "diagnoses": diagnoses,
        "procedures": procedures,
        "procedure_dates": proc_dates,
        "pseudo_hesid": _str_array(c.text("PSEUDO_HESID")),
        "dq_warnings": _all_warnings(warns),
    }
    return _sliced(schemas.get("sus_episodes").conform(pa.table(cols)), sizes)


def _blank_malformed(values: pd.Series, rule_id: str) -> pd.Series:
    """``values`` with those breaking the warn rule ``rule_id`` blanked (expectations.rules
    BLANK_ON_FAIL: the rule counts them; the row is kept, the value read as not known)."""
    from expectations.rules import BLANK_ON_FAIL

    ok = values.str.contains(BLANK_ON_FAIL[rule_id], regex=True)
    return values.where(ok.fillna(True).astype(bool))


def _fft_silver(frame: pd.DataFrame, parsed: ParsedName, period: str, warn: pa.Array) -> pa.Table:
    n = len(frame)
    nhs, valid = _nhs(_strip(frame, "NHS_NUMBER"))
    cols = _common(n, period, parsed.submission_id, frame) | {
        "provider_code": _str_array(_strip(frame, "PROVIDER_CODE").str.upper()),
        "response_id": _str_array(_strip(frame, "RESPONSE_ID")),
        "site_code": _str_array(_strip(frame, "SITE_CODE").str.upper()),
        "ward_code": _str_array(_strip(frame, "WARD_CODE").str.upper()),  # WARD_CODE_FORMAT: A-Z 0-9 after upper-casing
        "setting": _str_array(_strip(frame, "SETTING")),
        "response_date": _dates(frame, "RESPONSE_DATE"),
        "response": _str_array(_strip(frame, "RESPONSE")),
        "nhs_number": nhs, "nhs_number_valid": valid,
        "tretspef": _str_array(_strip(frame, "TRETSPEF")),
        "mode": _str_array(_strip(frame, "MODE").str.upper()),
        "dq_warnings": warn,
    }
    return schemas.get("fft_responses").conform(pa.table(cols))


def _chunk_silvers(source: str, period: str, jobs: list[tuple], outcomes: list,
                   work: pd.DataFrame | None = None) -> "list | _Sliced":
    """GP and SUS: the files' kept rows typed (:func:`_gp_silver_many`,
    :func:`_sus_silver_many`: one pass over the chunk; ``work``: validation's work frame
    of the chunk's rows, if there is one); FFT: None each (built file by file as they are
    taken in)."""
    if source not in ("gp", "sus_apc"):
        return [None] * len(jobs)
    kept = [~np.asarray(o.rejected, dtype=bool) for o in outcomes]
    if work is None:
        frames = [fr.iloc[np.flatnonzero(k)] for (_, fr, _), k in zip(jobs, kept)]
    else:  # every row typed from the work frame, the rejected dropped after
        frames = [fr for _, fr, _ in jobs]
    warns = [_warnings(o, k if work is None else np.ones(len(k), dtype=bool)) for o, k in zip(outcomes, kept)]
    if source == "gp":
        built = _gp_silver_many(frames, [p_ for p_, _, _ in jobs], period, warns, work)
    else:
        built = _sus_silver_many(frames, source, [p_.protocol for p_, _, _ in jobs], [period] * len(jobs),
                                 [p_.submission_id for p_, _, _ in jobs], warns, work)
    if work is None:
        return built
    return _sliced(built.table.filter(pa.array(np.concatenate(kept))), np.array([k.sum() for k in kept]))


def _gp_type2_rows(pieces: list[tuple[ParsedName, pd.Series]], period: str) -> pa.Table:
    """The ``gp_type2`` rows of GP extracts (``pieces``: per extract, its parsed name and
    the NHS_NUMBER values of its 9Nu4 rows, as read): the canonical NHS number of each
    such row that has a valid one, whether the row was kept or quarantined. Written for
    every extract taken in, held ones included, so that linkage honours the objection
    whichever extract is current (docs/methods-linkage.md, type2_objection). One pass over
    all the extracts' rows."""
    sizes = np.array([len(s) for _, s in pieces], dtype=np.int64)
    which = np.repeat(np.arange(len(pieces)), sizes)
    raw = (pd.concat([s for _, s in pieces], ignore_index=True) if len(pieces) > 1
           else pieces[0][1].reset_index(drop=True) if pieces else pd.Series([], dtype="string"))
    text = raw.astype("string").str.strip()
    nhs, valid = _nhs(text.mask(text == ""))
    parsed = [p for p, _ in pieces]
    table = pa.table({
        "period": pa.array([period] * len(raw), pa.string()),
        "submission_id": _per_row([p.submission_id for p in parsed], which, pa.string()),
        "practice_code": _per_row([p.submitter_code for p in parsed], which, pa.string()),
        "extract_date": _per_row([p.extract_date for p in parsed], which, pa.date32()),
        "nhs_number": nhs,
    })
    return table.filter(valid)
