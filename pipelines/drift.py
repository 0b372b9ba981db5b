"""Schema drift: the columns a submission's header adds, lacks or renames, against the
feed's declaration (:mod:`pipelines.schemas.inputs`) and against the same submitter's
previous submission.

Every submission taken in (or held) records its header, the column NAMES only, never a
value, in the warehouse table ``submission_columns`` (:func:`header_rows`, written at
take-in with the file's other parts). :func:`drift` reads them back:

* **added**: a name in the header that the reference (the declared columns, or the
  previous submission's header) does not have;
* **missing**: a name of the reference the header lacks;
* **renamed**: a missing name paired with an added one that header matching would map
  to it (the same name trimmed and ignoring case: a previous submission's undeclared
  ``Opertn_01`` and this one's ``OPERTN_01``) or that is close to it by edit distance
  (at most 2 edits, and at most a quarter of the shorter name: ``ETHNIC_CATEGRY`` for
  ``ETHNIC_CATEGORY``, ``OPERTN_01`` for ``OPERTN_4_01``); each name in one pair at most,
  the closest pairs first.

A HES extract has no submitter: HES extracts are compared each with the HES extract
taken in before it (HES changes its columns year to year: ``OPERTN_01`` is missing from
the 2019/20 extracts). :func:`drift_check` makes the per-feed asset check of it
(severity warn). No Dagster here.
"""

from __future__ import annotations

import re
from datetime import datetime

import pandas as pd
import pyarrow as pa

from pipelines import schemas

_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}", re.ASCII)


def _key(name: str) -> str:
    """How header matching compares names (pipelines.landing): trimmed, upper-cased."""
    from pipelines.landing import _header_key

    return _header_key(name)


def shown_name(name: str, position: int, declared: bool) -> str:
    """A header name as it may be stored and shown: a declared column as declared; any
    other only when shaped like a field name and holding no identifier (a header line
    that is really a data row must never be quoted back), else ``(unnamed column N)``."""
    if declared:
        return name
    if _FIELD_NAME.fullmatch(name):
        from pipelines.disclosure import identifiers_in

        if not identifiers_in(name):
            return name
    return f"(unnamed column {position})"


def declared_columns(source: str) -> list[str]:
    """The columns the feed declares (what a header is compared with)."""
    from pipelines.schemas.inputs import FEEDS

    return list(FEEDS[source].column_names)


def header_rows(period: str, submission_id: str, source: str, submitter_code: str | None, file_name: str | None,
                submitted_at: datetime | None, names: list[str]) -> pa.Table:
    """The ``submission_columns`` rows of one submission's header (``names`` as read:
    :attr:`pipelines.landing.ReadInfo.columns`)."""
    declared = set(declared_columns(source))
    shown = [shown_name(str(n), p, str(n) in declared) for p, n in enumerate(names, start=1)]
    n = len(names)
    ts = pd.Timestamp(submitted_at) if submitted_at is not None else None
    if ts is not None and ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    table = pa.table({
        "period": pa.array([period] * n, pa.string()),
        "submission_id": pa.array([submission_id] * n, pa.string()),
        "source": pa.array([source] * n, pa.string()),
        "submitter_code": pa.array([submitter_code] * n, pa.string()),
        "file_name": pa.array([file_name] * n, pa.string()),
        "submitted_at": pa.array([ts] * n, pa.timestamp("us", tz="UTC")),
        "position": pa.array(list(range(1, n + 1)), pa.int64()),
        "column_name": pa.array(shown, pa.string()),
        "declared": pa.array([str(x) in declared for x in names], pa.bool_()),
    })
    return schemas.get("submission_columns").conform(table)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _close(a: str, b: str) -> int | None:
    """The edit distance of two names (header keys) when close enough to be a rename."""
    if a == b:
        return 0
    if abs(len(a) - len(b)) > 2:
        return None
    d = edit_distance(a, b)
    return d if d <= 2 and d <= min(len(a), len(b)) // 4 else None


def compare(reference: list[str], header: list[str]) -> dict[str, list]:
    """Columns ``added`` to and ``missing`` from ``header`` against ``reference``, and the
    pairs ``renamed`` (reference name, header name), as in the module docstring. Names are
    compared as header matching compares them; lists keep their header order."""
    ref_keys = {_key(n): n for n in reference}
    head_keys = {_key(n): n for n in header}
    missing = [n for k, n in ref_keys.items() if k not in head_keys]
    added = [n for k, n in head_keys.items() if k not in ref_keys]
    # exact spellings that differ only as header matching ignores are the same column
    candidates = []
    for m in missing:
        for a in added:
            d = _close(_key(m), _key(a))
            if d is not None:
                candidates.append((d, m, a))
    renamed, used_m, used_a = [], set(), set()
    for d, m, a in sorted(candidates):
        if m in used_m or a in used_a:
            continue
        renamed.append((m, a))
        used_m.add(m)
        used_a.add(a)
    return {"added": [a for a in added if a not in used_a],
            "missing": [m for m in missing if m not in used_m],
            "renamed": renamed}


def _headers(columns: pa.Table) -> pd.DataFrame:
    """One row per submission: source, submitter, period, file name, submitted_at and
    its header (names in order)."""
    if columns is None or columns.num_rows == 0:
        return pd.DataFrame(columns=["submission_id", "source", "submitter_code", "period", "file_name",
                                     "submitted_at", "names"])
    df = columns.to_pandas().sort_values(["submission_id", "position"], kind="stable")
    out = (df.groupby("submission_id", sort=False)
           .agg(source=("source", "first"), submitter_code=("submitter_code", "first"),
                period=("period", "max"), file_name=("file_name", "first"),
                submitted_at=("submitted_at", "first"), names=("column_name", list))
           .reset_index())
    return out


def drift(columns: pa.Table, source: str, periods: list[str] | None = None, *, latest_only: bool = False) -> list[dict]:
    """Per submission of ``source`` (those recorded under ``periods``; all when None) that
    drifts: one row against the declared columns when it adds, lacks or renames any, and
    one against the submitter's previous submission (by submission time, any period) when
    the two headers differ. Each row: ``submitter_code``, ``period``, ``file_name``,
    ``against`` (``declared`` or ``previous``), ``previous_file_name``, ``added``,
    ``missing``, ``renamed`` (``"OLD -> NEW"``). Names only, never a value.
    ``latest_only``: only each submitter's latest submission (a HES extract: the latest
    extract, compared with the one before it)."""
    heads = _headers(columns)
    heads = heads[heads["source"] == source]
    if heads.empty:
        return []
    declared = declared_columns(source)
    heads = heads.assign(_who=heads["submitter_code"].fillna(""),
                         _at=pd.to_datetime(heads["submitted_at"], utc=True))
    heads = heads.sort_values(["_who", "_at", "submission_id"], kind="stable", na_position="first")
    out = []
    for _, group in heads.groupby("_who", sort=True):
        prev = None
        last = len(group) - 1
        for k, r in enumerate(group.itertuples(index=False)):
            mine = (periods is None or r.period in periods) and (not latest_only or k == last)
            if mine:
                refs = [("declared", declared, None)]
                if prev is not None:
                    refs.append(("previous", prev.names, prev.file_name))
                for against, reference, prev_name in refs:
                    c = compare(list(reference), list(r.names))
                    if c["added"] or c["missing"] or c["renamed"]:
                        out.append({
                            "submitter_code": r.submitter_code if isinstance(r.submitter_code, str) else None,
                            "period": r.period,
                            "file_name": r.file_name if isinstance(r.file_name, str) else None,
                            "against": against, "previous_file_name": prev_name,
                            "added": c["added"], "missing": c["missing"],
                            "renamed": [f"{m} -> {a}" for m, a in c["renamed"]],
                        })
            prev = r
    return out


def _cell(names: list[str], most: int = 12) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def drift_markdown(rows: list[dict]) -> str:
    """The check's table: submitter, period, submission, against, added, missing, renamed."""
    lines = ["| submitter | period | submission | against | added | missing | renamed |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        against = r["against"] if r["against"] == "declared" else f"previous ({r['previous_file_name']})"
        lines.append(f"| {r['submitter_code'] or '(HES extract)'} | {r['period']} | {r['file_name'] or ''} | "
                     f"{against} | {_cell(r['added'])} | {_cell(r['missing'])} | {_cell(r['renamed'])} |")
    return "\n".join(lines)


def drift_check(columns: pa.Table, source: str, periods: list[str] | None = None, *,
                latest_only: bool = False) -> dict:
    """The ``schema_drift`` asset check of a feed (severity warn), as the stage checks are
    given to the assets: ``name``, ``passed``, ``severity``, ``description``, ``metadata``.
    It fails when a submission's header differs from its submitter's previous one, or
    renames a declared column; columns merely added to or missing from the declaration
    (optional ones: a required one missing rejects the file) are listed but pass."""
    rows = drift(columns, source, periods, latest_only=latest_only)
    flagged = [r for r in rows if r["against"] == "previous" or r["renamed"]]
    submitters = sorted({r["submitter_code"] or "(HES extract)" for r in flagged})
    if flagged:
        description = (f"{len(flagged)} submission(s) of {len(submitters)} submitter(s) changed columns: "
                       + "; ".join(f"{r['submitter_code'] or '(HES extract)'} {r['period']}: "
                                   + ", ".join(p for p in (
                                       f"added {_cell(r['added'], 5)}" if r["added"] else "",
                                       f"missing {_cell(r['missing'], 5)}" if r["missing"] else "",
                                       f"renamed {_cell(r['renamed'], 5)}" if r["renamed"] else "") if p)
                                   + f" (against {r['against']})" for r in flagged[:10]))
    else:
        description = "no submission changed its columns"
    return {
        "name": "schema_drift", "passed": not flagged, "severity": "warn", "description": description,
        "metadata": {
            "submissions_with_drift": len(flagged),
            "submitters": submitters,
            "drift": {"markdown": drift_markdown(rows)},
            "rows": [{k: r[k] for k in ("submitter_code", "period", "file_name", "against", "added", "missing",
                                        "renamed")} for r in rows],
        },
    }


def check_feed(warehouse, source: str, period: str | None = None) -> dict:
    """The ``schema_drift`` check of ``source`` from the warehouse: the submissions of
    ``period`` (gp, sus_apc, fft), or (hes_apc, no period) the latest HES extract."""
    columns = warehouse.read("submission_columns")
    if source == "hes_apc" or period is None:
        return drift_check(columns, source, latest_only=True)
    return drift_check(columns, source, [period])
