"""What an operator asks between runs (``caredata status``) and after one (the run summary):
what is current, superseded, held, rejected and pending, per source and submitter, from the
warehouse ledger; which files a run newly took in; which submitters are below the sanction
threshold. No Dagster here.

Files are named as the public ledger names them (:func:`pipelines.ingest.public_file_name`:
a name that breaks its folder's convention is supplier text, shown by its digest), and
reasons as the public ledger words them (:func:`pipelines.ingest.public_reason`)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipelines import ingest
from pipelines.warehouse import Warehouse

STATUSES = ("current", "superseded", "held", "rejected", "pending")
OUTCOMES = ("current", "superseded", "held", "rejected")  # a file with one of these was taken in or refused


class NoLedger(Exception):
    """The warehouse has no ledger: no run has scanned a landing zone into it."""


def has_ledger(warehouse: Warehouse) -> bool:
    try:
        return any(f.path.endswith(".parquet") for f in warehouse.store.list(ingest.LEDGER_PARTS))
    except FileNotFoundError:
        return False


def _public(rows: list[dict]) -> tuple[dict[str, str], dict[str, str]]:
    shown = {r["file_name"]: ingest.public_file_name(r["file_name"], r["sha256"]) for r in rows}
    renamed = {f: p for f, p in shown.items() if f != p and len(f) >= 6}
    return shown, renamed


def ledger_status(warehouse: Warehouse) -> dict:
    """``{"counts": [{source, submitter_code, current, superseded, held, rejected, pending}],
    "held": [{file, source, submitter_code, reason}], "rejected": [...]}`` from the
    warehouse ledger. A file whose name breaks its folder's convention has no submitter
    (``-``): its name is supplier text, and so is what would be parsed from it.
    Raises :class:`NoLedger` when the warehouse has none."""
    if not has_ledger(warehouse):
        raise NoLedger()
    rows = ingest.read_ledger(warehouse).to_pylist()
    shown, renamed = _public(rows)
    counts: dict[tuple[str, str], Counter] = {}
    held, rejected = [], []
    for r in rows:
        conventional = shown[r["file_name"]] == r["file_name"]
        key = (r.get("source") or "-", (r.get("submitter_code") if conventional else None) or "-")
        counts.setdefault(key, Counter())[r["status"]] += 1
        if r["status"] in ("held", "rejected"):
            (held if r["status"] == "held" else rejected).append({
                "file": shown[r["file_name"]], "source": key[0], "submitter_code": key[1],
                "reason": ingest.public_reason(r.get("reason"), r["file_name"], renamed) or "",
            })
    table = [{"source": s, "submitter_code": c, **{k: n.get(k, 0) for k in STATUSES}}
             for (s, c), n in sorted(counts.items())]
    return {"counts": table, "held": held, "rejected": rejected}


def format_status(status: dict, pending_periods: list[str] | None = None) -> str:
    """The plain-text table ``caredata status`` prints."""
    lines = []
    head = f"{'source':<10} {'submitter':<10}" + "".join(f" {k:>10}" for k in STATUSES)
    lines += [head, "-" * len(head)]
    total = Counter()
    for row in status["counts"]:
        lines.append(f"{row['source']:<10} {row['submitter_code']:<10}"
                     + "".join(f" {row[k]:>10}" for k in STATUSES))
        total.update({k: row[k] for k in STATUSES})
    lines.append(f"{'total':<21}" + "".join(f" {total.get(k, 0):>10}" for k in STATUSES))
    for what in ("held", "rejected"):
        files = status[what]
        lines.append("")
        lines.append(f"{what.capitalize()} files ({len(files)}):" if files else f"{what.capitalize()} files: none")
        lines += [f"  {f['file']}: {f['reason']}" for f in files]
    if pending_periods is not None:
        lines.append("")
        lines.append("Periods with files in the landing zone not yet taken in: "
                     + (", ".join(pending_periods) or "none"))
    return "\n".join(lines) + "\n"


def outcome_keys(warehouse: Warehouse) -> set[tuple[str, str]]:
    """(file name, SHA-256) of every file with an outcome in the ledger (taken in, held or
    rejected): compared before and after a run, the files the run newly took in."""
    if not has_ledger(warehouse):
        return set()
    led = ingest.read_ledger(warehouse)
    rows = led.select(["file_name", "sha256", "status"]).to_pylist()
    return {(r["file_name"], r["sha256"]) for r in rows if r["status"] in OUTCOMES}


def below_threshold(warehouse: Warehouse, periods: list[str]) -> list[dict]:
    """``{source, submitter_code, period}`` of every submitter's month of ``periods`` flagged
    ``below_sanction_threshold`` in the warehouse's ``data_quality_summary``."""
    if not periods:
        return []
    table: pa.Table = warehouse.read("data_quality_summary", periods)
    if table.num_rows == 0:
        return []
    rows = table.select(["period", "source", "submitter_code", "below_sanction_threshold"]).to_pylist()
    out = {(r["source"], r["submitter_code"], r["period"]) for r in rows if r["below_sanction_threshold"]}
    return [{"source": s, "submitter_code": c, "period": p} for s, c, p in sorted(out)]
