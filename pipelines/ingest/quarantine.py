"""Quarantine rows (each rejected row whole, with every rule it broke) and the
data-quality rows (``dq_rules``, ``dq_fields``) of many files at once."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines import schemas

log = logging.getLogger(__name__)


def _quarantine(frame: pd.DataFrame, mask: np.ndarray, outcome, *, source: str, file_name: str,
                submission_id: str, submitter, periods) -> pa.Table:
    idx = np.flatnonzero(mask)
    data_cols = [c for c in frame.columns if c != "_line"]
    # Column by column, only the quarantined rows (most files have few or none).
    values = ([pa.array(frame[c], from_pandas=True).take(idx).to_pylist() for c in data_cols] if len(idx)
              else [[] for _ in data_cols])
    rows = zip(*values) if values else [()] * len(idx)
    raw = [json.dumps(dict(zip(data_cols, row)), ensure_ascii=False) for row in rows]
    n = len(idx)
    per = [periods] * n if isinstance(periods, str) else [periods[i] for i in idx]
    sub = [submitter] * n if submitter is None or isinstance(submitter, str) else [submitter[i] for i in idx]
    table = pa.table({
        "period": pa.array(per, pa.string()),
        "submission_id": pa.array([submission_id] * n, pa.string()),
        "line": pa.array(frame["_line"].to_numpy(dtype=np.int64)[idx], pa.int64()),
        "source": pa.array([source] * n, pa.string()),
        "file_name": pa.array([file_name] * n, pa.string()),
        "submitter_code": pa.array(sub, pa.string()),
        "rule_ids": pa.array([outcome.rule_ids[i] for i in idx], pa.list_(pa.string())),
        "messages": pa.array([outcome.messages[i] for i in idx], pa.list_(pa.string())),
        "raw": pa.array(raw, pa.string()),
    })
    return schemas.get("quarantine").conform(table)


def _dq_tables(files: list[tuple]) -> tuple[pa.Table, pa.Table]:
    """The ``dq_rules`` and ``dq_fields`` rows of many files, built at once (per-file
    Arrow building cost more than the few dozen rows of each). ``files``: per file
    ``(period, submission_id, source, submitter, rule_counts, field_scores)``;
    ``submitter`` is the file's submitter code, or (HES) one per rule row, the field rows
    then carrying their own ``submitter_code``."""
    rcs = [f[4] for f in files]
    fss = [f[5] for f in files]
    n_rc = np.array([len(x) for x in rcs], dtype=np.int64)
    n_fs = np.array([len(x) for x in fss], dtype=np.int64)
    rc = pd.concat(rcs, ignore_index=True) if len(rcs) > 1 else rcs[0].reset_index(drop=True)
    fs = pd.concat(fss, ignore_index=True) if len(fss) > 1 else fss[0].reset_index(drop=True)

    def each(k: int, sizes: np.ndarray) -> pa.Array:
        return pa.array(np.repeat(np.array([f[k] for f in files], dtype=object), sizes), pa.string())

    def submitters(sizes: np.ndarray, own) -> pa.Array:
        """Each file's submitter code on each of its rows, or (HES) the rows' own."""
        values = []
        for i, f in enumerate(files):
            values.extend([f[3]] * int(sizes[i]) if f[3] is None or isinstance(f[3], str) else list(own(i)))
        return pa.array(values, pa.string())

    rules = pa.table({
        "period": each(0, n_rc),
        "submission_id": each(1, n_rc),
        "source": each(2, n_rc),
        "submitter_code": submitters(n_rc, lambda i: files[i][3]),
        "rule_id": pa.array(rc["rule_id"].astype(str).tolist(), pa.string()),
        "field": pa.array(rc["field"].astype(object).tolist(), pa.string()),
        "severity": pa.array(rc["severity"].astype(object).tolist(), pa.string()),
        "rows_checked": pa.array(rc["rows_checked"].to_numpy(dtype=np.int64), pa.int64()),
        "rows_failed": pa.array(rc["rows_failed"].to_numpy(dtype=np.int64), pa.int64()),
        "example_lines": pa.array([[int(x) for x in v] for v in rc["example_lines"]], pa.list_(pa.int64())),
    })
    fields = pa.table({
        "period": each(0, n_fs),
        "submission_id": each(1, n_fs),
        "source": each(2, n_fs),
        "submitter_code": submitters(n_fs, lambda i: fss[i]["submitter_code"]),
        "field": pa.array(fs["field"].astype(str).tolist(), pa.string()),
        "rows": pa.array(fs["rows"].to_numpy(dtype=np.int64), pa.int64()),
        "rows_valid": pa.array(fs["rows_valid"].to_numpy(dtype=np.int64), pa.int64()),
        # DQMI counts; empty when the validator gave none (an older or a stub validator)
        **{c: (pa.array(pd.to_numeric(fs[c]).astype("Int64"), pa.int64(), from_pandas=True)
               if c in fs.columns else pa.nulls(len(fs), pa.int64()))
           for c in ("rows_present", "rows_default")},
    })
    return schemas.get("dq_rules").conform(rules), schemas.get("dq_fields").conform(fields)
