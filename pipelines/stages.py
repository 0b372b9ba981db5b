"""The pipeline's stages as plain functions: settings and a period in, tables written to the
warehouse, a small report (for Dagster metadata and the CLI) out.

Each asset in ``assets/`` calls exactly one of these; each can be run and tested without
Dagster. The domain logic lives in the modules they call (ingest, current, validation,
linkage, fft, outcomes, quality, disclosure, publish).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import subprocess
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import schemas
from pipelines.config import Settings
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

LINKAGE_DATASETS = ["linkage_coverage_practice", "linkage_coverage_provider", "linkage_coverage_summary", "programme_targets",
                    "linkage_quality"]
FFT_DATASETS = ["fft_scores", "fft_by_specialty", "fft_mode"]
OUTCOME_DATASETS = ["consultant_outcomes", "specialty_outcomes", "specialty_calibration"]
QUALITY_DATASETS = ["data_quality", "data_quality_summary"]
PUBLIC_DATASETS = LINKAGE_DATASETS + FFT_DATASETS + OUTCOME_DATASETS + QUALITY_DATASETS
RESTRICTED_DATASETS = ["linked_episodes", "linked_spells"]


def describe(name: str) -> str:
    return schemas.get(name).description


# --------------------------------------------------------------------------- plumbing
def stores(settings: Settings) -> tuple[Store, Warehouse, Store]:
    ep = settings.s3_endpoint_url
    return Store(settings.landing, ep), Warehouse(Store(settings.warehouse, ep)), Store(settings.publish, ep)


def engine(settings: Settings):
    """The engine that runs the heavy plans for ``settings`` (``engine: duckdb | spark``):
    one per process, reused (:func:`pipelines.engine.from_settings`). Stages pass it down
    to the plans they call."""
    from pipelines.engine import from_settings

    return from_settings(settings)


@lru_cache(maxsize=1)
def code_version() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent, timeout=5)
        if rev.returncode == 0 and rev.stdout.strip():
            return rev.stdout.strip()
    except Exception:  # noqa: BLE001 - no git: fall back to the package version
        pass
    from importlib.metadata import version

    return version("caredata")


def _shift(period: str, months: int) -> str:
    y, m = int(period[:4]), int(period[5:7])
    n = y * 12 + (m - 1) + months
    return f"{n // 12:04d}-{n % 12 + 1:02d}"


def _period_start(period: str) -> dt.date:
    return dt.date(int(period[:4]), int(period[5:7]), 1)


# --------------------------------------------------------------------------- ingest
def scan(settings: Settings) -> dict:
    from pipelines import ingest

    landing, wh, _ = stores(settings)
    return ingest.scan_landing(landing, wh, settings)


def load_reference(settings: Settings) -> dict:
    from pipelines import ingest

    landing, wh, _ = stores(settings)
    return ingest.load_reference(landing, wh, settings, engine=engine(settings))


def ingest_hes(settings: Settings) -> dict:
    from pipelines import ingest

    landing, wh, _ = stores(settings)
    return _report_dict(ingest.ingest_hes(landing, wh, settings, data_docs_dir=_docs_dir(settings, "hes_apc"),
                                          engine=engine(settings)))


def _docs_dir(settings: Settings, source: str, period: str | None = None) -> str | None:
    if settings.warehouse.startswith("s3://"):
        return None  # Data Docs are a local site; on S3 deployments they are built by the docs job
    base = Path(settings.warehouse).resolve() / "data_docs" / source
    return str(base / period) if period else str(base)


def _report_dict(report) -> dict:
    if isinstance(report, dict):
        return report
    if hasattr(report, "as_metadata"):
        return report.as_metadata()
    from dataclasses import asdict, is_dataclass

    return asdict(report) if is_dataclass(report) else {"report": str(report)}


def ingest_feed(settings: Settings, source: str, period: str) -> dict:
    from pipelines import ingest

    landing, wh, out = stores(settings)
    docs = _docs_dir(settings, source, period)
    report = _report_dict(ingest.ingest(source, period, landing, wh, settings, data_docs_dir=docs,
                                       engine=engine(settings)))
    if docs and (Path(docs) / "index.html").exists():
        report["data_docs"] = (Path(docs) / "index.html").as_uri()
    # The period's rule results of the submissions taken in now (field, example lines).
    ids = {s["submission_id"] for s in report.get("submissions", []) or [] if s.get("submission_id")}
    rules = wh.read("dq_rules", [period]).to_pandas()
    rules = rules[rules["submission_id"].isin(ids) & (rules["rows_failed"] > 0)]
    return {"metadata": report, "source": source, "period": period, "failing_rules": rules,
            "feedback_root": out.uri("feedback")}


# One check per data-quality dimension (as in Dagster's data-quality patterns), by rule id.
DIMENSIONS = {
    "completeness": ("_MISSING",),
    "uniqueness": ("_DUPLICATE",),
    "consistency": ("_BEFORE_", "_AFTER_", "_SUBMITTER", "_PROVIDER", "_PERIOD", "_UNKNOWN"),
}


def _dimension(rule_id: str) -> str:
    for dim, marks in DIMENSIONS.items():
        if any(m in rule_id for m in marks):
            return dim
    return "validity"


def _rules_table(df, limit: int = 50) -> str:
    """A Markdown table of failing rules per submission: counts and a few line numbers,
    never values."""
    if df is None or len(df) == 0:
        return "no failing rule"
    df = df.sort_values(["severity", "rows_failed", "submission_id"], ascending=[True, False, True])
    lines = ["| submission | rule | field | severity | rows failed | rows checked | example lines |",
             "|---|---|---|---|---|---|---|"]
    for r in df.head(limit).itertuples():
        ex = ", ".join(str(int(x)) for x in list(r.example_lines)[:5])
        lines.append(f"| {r.submission_id} | {r.rule_id} | {r.field} | {r.severity} | {r.rows_failed} | "
                     f"{r.rows_checked} | {ex} |")
    if len(df) > limit:
        lines.append(f"\n… and {len(df) - limit} more (dataset data_quality has them all)")
    return "\n".join(lines)


def _pack_links(report: dict, part) -> dict:
    """Where the feedback packs of the submitters in ``part`` (failing rules) are written
    (stage :func:`feedback_packs`, after publishing): one folder per submitter."""
    root = report.get("feedback_root")
    if not root or part is None or not len(part):
        return {}
    source, period = report.get("source"), report.get("period")
    subs = sorted({s for s in part["submitter_code"].dropna()})
    return {"feedback_packs": [f"{root}/{source}/{s}/{period}/" for s in subs]}


def _reason(r: dict) -> str:
    why = r.get("reason") or r.get("held_reason") or ""
    name = r.get("file_name") or ""
    return why[len(name) + 2:] if name and why.startswith(f"{name}: ") else why


def ingest_checks(report: dict) -> list[dict]:
    """The bronze asset checks: rows accounted for (blocking), one check per quality
    dimension with its failing rules, held submissions and rejected files."""
    md = report["metadata"]
    subs = md.get("submissions", []) or []
    unbalanced = [s for s in subs if s.get("rows_received") is not None
                  and s["rows_received"] != (s.get("rows_kept") or 0) + (s.get("rows_quarantined") or 0)]
    held = [s for s in subs if s.get("held")]
    rejected = md.get("rejected_files", []) or []
    objections = md.get("objection_warnings", []) or []
    failing = report.get("failing_rules")
    checks = [
        {"name": "rows_accounted_for", "passed": not unbalanced, "severity": "error",
         "description": "every row kept or quarantined" if not unbalanced else
         f"{len(unbalanced)} submission(s) where rows received != kept + quarantined",
         "metadata": {"submissions": len(subs), "unbalanced": [s.get("file_name") for s in unbalanced]}},
    ]
    for dim in ("completeness", "validity", "uniqueness", "consistency"):
        part = failing[failing["rule_id"].map(_dimension) == dim] if failing is not None and len(failing) else None
        rejects = int(part.loc[part["severity"] == "reject", "rows_failed"].sum()) if part is not None else 0
        warns = int(part.loc[part["severity"] == "warn", "rows_failed"].sum()) if part is not None else 0
        checks.append({
            "name": dim, "passed": rejects == 0 and warns == 0, "severity": "warn",
            "description": f"{rejects} row failure(s) quarantined, {warns} kept with a warning"
            if rejects or warns else f"no {dim} rule failed",
            "metadata": {"rows_quarantined_by_rules": rejects, "rows_warned": warns,
                         "failing_rules": {"markdown": _rules_table(part)},
                         **_pack_links(report, part)},
        })
    from pipelines.ingest import GP_HELD_RULE, GP_HOLD_UNTIL

    gp_held = [s.get("file_name") for s in held if GP_HOLD_UNTIL in (s.get("held_reason") or "")]
    checks += [
        {"name": "no_held_submissions", "passed": not held, "severity": "warn",
         "description": "no submission held" if not held else
         "; ".join(f"{s.get('file_name')}: {_reason(s)}" for s in held)
         + (f". GP held rule: {GP_HELD_RULE}; an operator releases a file with "
            f"`caredata release FILE_NAME`" if gp_held else ""),
         "metadata": {"held": [s.get("file_name") for s in held], "gp_held_rule": gp_held}},
        {"name": "no_rejected_files", "passed": not rejected, "severity": "warn",
         "description": "no file rejected" if not rejected else
         "; ".join(f"{r.get('file_name')}: {_reason(r)}" for r in rejected),
         "metadata": {"rejected": rejected}},
    ]
    if (report.get("source") or md.get("source")) == "gp":
        # GP extracts with OBJECTION values that are no known code (read as type 1).
        checks.append({"name": "no_unrecognised_objections", "passed": not objections, "severity": "warn",
                       "description": "every OBJECTION value recognised" if not objections else
                       "; ".join(w.get("warning", "") for w in objections),
                       "metadata": {"objection_warnings": objections}})
    return checks


def current_sus(settings: Settings, period: str) -> dict:
    from pipelines import current

    _, wh, _ = stores(settings)
    table = current.current_sus(wh, period, engine=engine(settings))
    wh.write_raw("current_sus_episodes", table, period)
    return {"episodes": table.num_rows,
            "providers": len(set(table.column("provider_code").to_pylist())) if table.num_rows else 0}


def current_fft(settings: Settings, period: str) -> dict:
    from pipelines import current

    _, wh, _ = stores(settings)
    table = current.current_fft(wh, period)
    wh.write_raw("current_fft_responses", table, period)
    return {"responses": table.num_rows}


def periods(settings: Settings) -> list[str]:
    """Every reporting period the pipeline runs, sorted: the months with data in the
    landing zone now (files taken in, or HES rows of extracts taken in) and those with
    landing files still to take in (the runner calls this after the scan, before any
    ingest). Any month: 2001, 1801 or next year alike. A period whose files were all
    removed from the landing zone is not one any more."""
    from pipelines import ingest

    landing, wh, _ = stores(settings)
    return sorted(set(ingest.periods_with_data(wh, landing)) | set(ingest.pending_periods(landing, wh)))


def pending_periods(settings: Settings) -> dict[str, str]:
    """For the sensor: periods with landing files not yet in the ledger, or with HES rows
    not yet run through the period -> a fingerprint."""
    from pipelines import ingest

    landing, wh, _ = stores(settings)
    return ingest.pending_periods(landing, wh)


def ledger_to_publish(settings: Settings) -> str | None:
    """For the sensor: a fingerprint of the ledger's outcomes when one was recorded after
    the published ``submissions`` dataset was last written (or it was never published),
    else None. Only outcome events count: a file seen by a scan and not yet taken in is
    not in the dataset. Cheap: lists the ledger's event parts and the published manifest."""
    from pipelines import ingest

    _, wh, out = stores(settings)
    parts = sorted((f for f in wh.store.list(ingest.LEDGER_PARTS)
                    if f.path.endswith(".parquet") and not f.path.endswith("-seen.parquet")),
                   key=lambda f: f.path)
    if not parts:
        return None
    manifest = [f for f in out.list("public/submissions") if f.path == "public/submissions/_manifest.json"]
    if manifest and max(f.modified for f in parts) <= manifest[0].modified:
        return None
    return hashlib.sha256("\n".join(f"{f.path}:{f.size}" for f in parts).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- linkage
def link(settings: Settings, period: str) -> dict:
    from pipelines import current, linkage
    from pipelines.feedback import LINKAGE_PART  # the feedback packs watch this part

    _, wh, _ = stores(settings)
    episodes = wh.read_raw("current_sus_episodes", [period])
    if episodes is None:
        episodes = schemas.get("sus_episodes").arrow_schema(include_partition=True).empty_table()
    # The GP rows stay on disk (or S3): linkage scans them and keeps only what can link.
    newest = current.gp_current_lazy(wh, period).patients_newest_overall
    # Type 2 objectors seen in any GP extract taken in or held, rows kept or quarantined.
    linked = linkage.link_episodes(episodes, newest, type2_numbers=current.gp_type2_numbers(wh),
                                   engine=engine(settings))
    linked = schemas.get("linked_episodes_working").check(linked)  # declared constraints, checked
    wh.write_raw("linked_episodes", linked, period)
    # Episodes with a cohort procedure whose age at admission stays unknown even with the
    # linked GP record's date of birth: counted in data_quality (rule PROCEDURE_AGE_UNKNOWN).
    from pipelines import outcomes
    cohorts = outcomes.load_cohorts(settings.t("outcomes", "cohorts_file"))
    wh.write("dq_rules", outcomes.procedures_without_age(linked, period, cohorts, engine=engine(settings)), period,
             part=LINKAGE_PART)
    ranks = pc.value_counts(linked.column("match_rank")).to_pylist() if linked.num_rows else []
    return {"episodes": linked.num_rows,
            "linked": int(pc.sum(pc.is_valid(linked.column("match_rank"))).as_py() or 0) if linked.num_rows else 0,
            "by_rank": {str(r["values"]): r["counts"] for r in ranks}}


def linkage_outputs(settings: Settings, period: str) -> dict:
    from pipelines import current, linkage

    _, wh, _ = stores(settings)
    linked = wh.read_raw("linked_episodes", [period])
    if linked is None:
        linked = linkage.link_episodes(
            schemas.get("sus_episodes").arrow_schema(include_partition=True).empty_table(),
            schemas.get("gp_patients").arrow_schema(include_partition=True).empty_table(), engine=engine(settings))
    _, in_period, extracts = current.gp_current_lazy(wh, period)  # rows scanned, not held
    out = linkage.coverage(period, linked, wh.read("ref_practices"), wh.read("ref_providers"),
                           extracts, in_period, settings, engine=engine(settings))
    report = {}
    for name in LINKAGE_DATASETS:
        wh.write(name, out[name], period)
        report[name] = {"rows": out[name].num_rows}
    return report


# --------------------------------------------------------------------------- FFT
def fft_outputs(settings: Settings, period: str) -> dict:
    from pipelines import fft

    _, wh, _ = stores(settings)
    responses = wh.read_raw("current_fft_responses", [period])
    if responses is None:
        responses = schemas.get("fft_responses").arrow_schema(include_partition=True).empty_table()
    suppress_max = settings.t("fft", "suppress_max_responses")
    rule_set, cascade = settings.t("fft", "rule_set"), settings.t("fft", "nhse_cascade")
    scores = fft.fft_scores(responses, wh.read("ref_sites"), wh.read("ref_providers"), suppress_max=suppress_max,
                            rule_set=rule_set, cascade=cascade)
    modes = fft.fft_mode(responses, wh.read("ref_providers"), suppress_max=suppress_max, sites=wh.read("ref_sites"),
                         rule_set=rule_set, cascade=cascade)
    # Spells discharged up to link_max_days before a response in this period may end in the
    # previous month.
    episodes = wh.read_raw("current_sus_episodes", [_shift(period, -1), period],
                           columns=fft.SPELL_EPISODE_COLUMNS)
    if episodes is None:
        episodes = schemas.get("sus_episodes").arrow_schema(include_partition=True).empty_table()
    spells = fft.spells_for_fft_linkage(episodes, engine=engine(settings))
    linked = fft.link_responses_to_spells(responses, spells, max_days=settings.t("fft", "link_max_days"),
                                          engine=engine(settings))
    by_spec = fft.fft_by_specialty(linked, suppress_max=suppress_max)
    wh.write("fft_scores", scores, period)
    wh.write("fft_by_specialty", by_spec, period)
    wh.write("fft_mode", modes, period)
    return {"fft_scores": {"rows": scores.num_rows, "responses": responses.num_rows},
            "fft_by_specialty": {"rows": by_spec.num_rows, "linked_responses": linked.num_rows},
            "fft_mode": {"rows": modes.num_rows}}


# --------------------------------------------------------------------------- outcomes
def outcome_outputs(settings: Settings, period: str) -> dict:
    from pipelines import outcomes

    _, wh, _ = stores(settings)
    months = int(settings.t("outcomes", "window_months"))
    follow = 2  # 30-day follow-up may look past the window's end as far as the data go
    window = [_shift(period, -k) for k in range(months - 1, -follow - 1, -1)]
    cohorts = outcomes.load_cohorts(settings.t("outcomes", "cohorts_file"))
    listing = wh.raw_parts("linked_episodes")  # once: window_spells reads each month 4 times
    spells = outcomes.window_spells(
        lambda p, columns: wh.read_raw("linked_episodes", [p], columns=columns, parts=listing),
        window, period, cohorts,
        gp_deaths=lambda episodes: _gp_deaths(wh, episodes, window[0], window[-1], engine(settings)),
        min_age=settings.t("outcomes", "min_age"), death_days=settings.t("outcomes", "death_days"),
        readmission_days=settings.t("outcomes", "readmission_days"), engine=engine(settings))
    report: dict = {}
    if spells is None:
        for name in OUTCOME_DATASETS:
            wh.write(name, schemas.get(name).arrow_schema(include_partition=True, staged=True).empty_table(), period)
            report[name] = {"rows": 0}
        return report
    out = outcomes.window_outcomes(spells, period, settings)
    for name in OUTCOME_DATASETS:
        wh.write(name, out[name], period)
        report[name] = {"rows": out[name].num_rows}
    wh.write_raw("spells", schemas.get("spells").check(spells, include_partition=False), period)
    # Funnel plots, one per specialty and window.
    co = out["consultant_outcomes"].to_pandas()
    plots = 0
    method = str(settings.t("outcomes", "overdispersion"))
    so = out["specialty_outcomes"].to_pandas().set_index("specialty")
    for spec in sorted(co["specialty"].unique()) if len(co) else []:
        od = ((method, so.at[spec, "overdispersion_phi"], so.at[spec, "overdispersion_tau2"])
              if method != "none" and spec in so.index else None)  # adjusted limits drawn beside
        png = outcomes.funnel_plot(co[co["specialty"] == spec], spec, period, overdispersion=od)
        wh.store.write_bytes(f"work/funnel_plots/period={period}/{spec}.png", png)
        # the same plot as SVG, each point's hover text with its power (funnel.hover_text)
        svg = outcomes.funnel_plot_svg(co[co["specialty"] == spec], spec, period, overdispersion=od)
        wh.store.write_bytes(f"work/funnel_plots/period={period}/{spec}.svg", svg)
        plots += 1
    report["consultant_outcomes"]["funnel_plots"] = plots
    return report


def _gp_deaths(wh, episodes: pa.Table, first: str, last: str, engine=None) -> pa.Table:
    """GP-recorded deaths, from older extracts too, of the people of ``episodes`` (valid
    NHS numbers on them, and linked patients): every death from the start of period
    ``first`` that an extract dated up to a year after period ``last`` shows."""
    from pipelines import current, linkage

    since = _period_start(first)
    until = _period_start(_shift(last, 13)) - dt.timedelta(days=1)   # end of the 12th month after
    people = []
    if "nhs_number" in episodes.column_names and "nhs_number_valid" in episodes.column_names:
        valid = pc.fill_null(episodes.column("nhs_number_valid"), False)
        people.append(pc.filter(episodes.column("nhs_number"), valid))
    if "linked_nhs_number" in episodes.column_names:
        people.append(episodes.column("linked_nhs_number"))
    people = pa.chunked_array([c for col in people for c in col.cast(pa.string()).chunks], pa.string())
    return linkage.gp_deaths(current.gp_deaths_lazy(wh, since, until), people, engine=engine)


# --------------------------------------------------------------------------- quality
def quality_outputs(settings: Settings, period: str) -> dict:
    from pipelines import ingest, quality

    _, wh, _ = stores(settings)
    ledger = ingest.read_ledger(wh)
    # The quarantine's keys give a HES extract's rows quarantined per provider.
    quarantine = wh.dataset("quarantine", [period], columns=["period", "submission_id", "submitter_code"]).to_table()
    out = quality.data_quality_tables(wh.read("dq_rules", [period]), wh.read("dq_fields", [period]), ledger, settings,
                                      quarantine=quarantine,
                                      # every submission's header (a HES extract's is under one month): DQMI coverage
                                      submission_columns=wh.read("submission_columns"))
    report = {}
    for name in QUALITY_DATASETS:
        table = out[name]
        if "period" in table.column_names:
            table = table.filter(pc.equal(table.column("period"), period))
        wh.write(name, table, period)
        report[name] = {"rows": table.num_rows}
    _notify_quality(settings, out["data_quality_summary"], period)
    return report


def _notify_quality(settings: Settings, summary: pa.Table, period: str) -> None:
    url = settings.t("data_quality", "webhook_url")
    if not url or summary.num_rows == 0:
        return
    from pipelines.notify import notify

    for row in summary.to_pylist():
        if row.get("held") or row.get("below_sanction_threshold"):
            what = "held" if row.get("held") else "below the sanction threshold"
            notify(url, {
                "event": "submission_held" if row.get("held") else "below_sanction_threshold",
                "text": f"care.data {period}: {row['source']} submitter {row['submitter_code']} is {what}"
                        + (f" ({row.get('held_reason')})" if row.get("held_reason") else "")
                        + f"; DQ score {row.get('dq_score')}",
                "period": period, "source": row["source"], "submitter_code": row["submitter_code"],
                "dq_score": row.get("dq_score"), "held": bool(row.get("held")),
                "held_reason": row.get("held_reason"),
            })


# --------------------------------------------------------------------------- release
# Disclosure control blocks a dataset (for a period), never the run: release writes the
# release candidate of every dataset that passes and records the blocked ones in
# release/blocked/period=YYYY-MM.json (dataset, zone, period, rules, columns, row counts and
# the submissions the offending values came from; never a value); publish publishes the
# candidates present and reports the blocked ones. A blocked dataset's earlier publication
# stays as it was.

KEY_LABEL_META = b"caredata_key_label"

# Where a dataset's values come from: the period's current tables and their code columns,
# to name the submission(s) an offending value came from; else the sources' submissions.
_ORIGINS = {
    "fft_scores": [("current_fft_responses", ("ward_code", "site_code", "provider_code"))],
    "fft_mode": [("current_fft_responses", ("provider_code", "mode"))],
    "fft_by_specialty": [("current_fft_responses", ("provider_code", "tretspef")),
                         ("current_sus_episodes", ("tretspef", "provider_code"))],
    "consultant_outcomes": [("current_sus_episodes", ("consultant_code", "provider_code"))],
    "linkage_coverage_provider": [("current_sus_episodes", ("provider_code",))],
    "linkage_quality": [("current_sus_episodes", ("provider_code",))],
    "linked_episodes": [("current_sus_episodes", ("consultant_code", "mainspef", "tretspef", "susrecid",
                                                  "spell_id", "classpat", "epiorder", "provider_code"))],
    "linked_spells": [("current_sus_episodes", ("consultant_code", "spell_id", "provider_code"))],
}
_SOURCES = {
    "fft_scores": ("fft", "reference"), "fft_mode": ("fft", "reference"), "fft_by_specialty": ("fft", "sus_apc", "hes_apc"),
    "data_quality": ("gp", "sus_apc", "hes_apc", "fft"), "data_quality_summary": ("gp", "sus_apc", "hes_apc", "fft"),
}
_DEFAULT_SOURCES = ("reference", "gp", "sus_apc", "hes_apc")


def _release_path(zone: str, name: str, period: str) -> str:
    return f"release/{zone}/{name}/period={period}/part-00000.parquet"


def _revisions_pending_path(period: str) -> str:
    return f"release/revisions_pending/period={period}.json"


def _blocked_path(period: str) -> str:
    return f"release/blocked/period={period}.json"


def blocked_datasets(settings: Settings, period: str) -> list[dict]:
    """What the last release of ``period`` blocked (empty when nothing, or never released)."""
    _, wh, _ = stores(settings)
    path = _blocked_path(period)
    return json.loads(wh.store.read_bytes(path)) if wh.store.exists(path) else []


def _origins(wh, name: str, period: str, table: pa.Table, violations) -> list[str]:
    """The landing files the offending values of ``table`` came from (file names, for
    operators): rows of the period's current tables holding a code of an offending value;
    where none is found, every current or held submission of the dataset's sources for the
    period (the value is in one of them)."""
    from pipelines import ingest

    tokens: set[str] = set()
    for v in violations:
        if v.column and v.column in table.column_names and v.rows:
            col = table.column(v.column).take(pa.array(list(v.rows)))
            for value in col.to_pylist():
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, str):
                        tokens.add(item)
                        tokens.update(t for t in item.split("/") if t)
    ids: set[str] = set()
    for raw, columns in _ORIGINS.get(name, []):
        if not tokens:
            break
        t = wh.read_raw(raw, [period])
        if t is None or "submission_id" not in t.column_names:
            continue
        hit = None
        for c in columns:
            if c in t.column_names:
                m = pc.fill_null(pc.is_in(t.column(c).cast(pa.string()), pa.array(sorted(tokens), pa.string())), False)
                hit = m if hit is None else pc.or_(hit, m)
        if hit is not None:
            ids.update(x for x in pc.unique(t.column("submission_id").filter(hit)).to_pylist() if x)
    ledger = ingest.read_ledger(wh).to_pylist()
    # Named as the public ledger names them (a HES extract's free-text name, or any name
    # that breaks its folder's convention, by its digest): this message reaches the console,
    # the Dagster check and the webhook.
    shown = lambda r: ingest.public_file_name(r["file_name"], r["sha256"])  # noqa: E731
    if ids:
        names = sorted({shown(r) for r in ledger if r.get("submission_id") in ids})
        if names:
            return names
    sources = _SOURCES.get(name, _DEFAULT_SOURCES)
    return sorted({shown(r) for r in ledger if r.get("status") in ("current", "held")
                   and r.get("source") in sources
                   and (r.get("reporting_period") == period or r.get("source") in ("reference", "hes_apc"))})


def _block(wh, zone: str, name: str, period: str, table: pa.Table, violations) -> dict:
    """Record why a dataset's period is not released, and remove any stale candidate."""
    path = _release_path(zone, name, period)
    if wh.store.exists(path):
        wh.store.delete(path)
    files = _origins(wh, name, period, table, violations)
    shown = files[:10] + ([f"and {len(files) - 10} more"] if len(files) > 10 else [])
    columns = sorted({v.column for v in violations if v.column})
    return {
        "zone": zone, "dataset": name, "period": period,
        "rules": sorted({v.rule for v in violations}), "columns": columns,
        "rows": int(sum(v.count for v in violations)),
        "submissions": files,
        "message": (f"{zone}/{name} period {period} not published: "
                    + "; ".join(f"[{v.rule}] {v.message}" for v in violations)
                    + f" (from {', '.join(shown) if shown else 'no identified submission'})"),
    }


def release(settings: Settings, period: str) -> dict:
    """Disclosure control: staged -> release candidates, every rule checked. A dataset
    that breaks a rule is blocked for this period (no candidate, reason recorded); the
    others are released. Without a key nothing restricted is released, and candidates an
    earlier keyed run left for this period are removed."""
    from pipelines import disclosure, linkage, outcomes

    _, wh, _ = stores(settings)
    blocked: list[dict] = []
    md: dict = {}
    released: dict = {}
    for name in PUBLIC_DATASETS:
        ds = schemas.get(name)
        staged = wh.read(name, [period])
        public = disclosure.apply_small_numbers(
            ds, staged, small_max=settings.t("disclosure", "small_count_max"),
            min_denominator=settings.t("disclosure", "min_denominator"))
        if name == "linkage_quality":  # its categories add up: secondary suppression
            from pipelines import linkage
            public = linkage.suppress_complements(public)
        public = disclosure.round_counts(ds, public, settings.t("disclosure", "rounding"))  # after suppression
        found = disclosure.check_public(ds, public, settings)
        if found:
            blocked.append(_block(wh, "public", name, period, public, found))
            md[name] = "blocked by disclosure control"
            continue
        wh.store.write_parquet(_release_path("public", name, period), public)
        md[name] = public.num_rows
        released[name] = public
    differencing = _differencing(settings, wh, period, released, blocked, md)
    key = settings.effective_pseudo_key
    if key is None:
        for name in RESTRICTED_DATASETS:
            stale = _release_path("restricted", name, period)
            if wh.store.exists(stale):
                wh.store.delete(stale)
        md["restricted"] = "not written: no pseudonymisation key configured"
    else:
        from pipelines import current

        label = settings.key_label.encode()
        tables = {}
        # The type 2 objectors as the GP extracts stand now (one that arrived after a
        # period was linked still keeps that period's records out).
        type2 = current.gp_type2_numbers(wh)
        linked = wh.read_raw("linked_episodes", [period])
        if linked is not None:
            tables["linked_episodes"] = linkage.linked_episodes_restricted(linkage.mark_type2(linked, type2), key,
                                                                              engine=engine(settings))
        spells = wh.read_raw("spells", [period])
        if spells is not None:
            if len(type2) and spells.num_rows:
                objector = pc.fill_null(pc.is_in(spells.column("person_key"), value_set=type2), False)
                flag = pc.or_(pc.fill_null(spells.column("type2_objection"), False), objector)
                spells = spells.set_column(spells.schema.get_field_index("type2_objection"),
                                           pa.field("type2_objection", pa.bool_()), flag)
            # A spell belongs to the period of its discharge (the window's spells are all
            # stored under the window's end; publish those discharged in this period).
            t = outcomes.linked_spells_restricted(spells, key)
            tables["linked_spells"] = t.filter(pc.equal(t.column("period"), period)) if "period" in t.column_names else t
        for name in RESTRICTED_DATASETS:
            if name not in tables:
                stale = _release_path("restricted", name, period)
                if wh.store.exists(stale):
                    wh.store.delete(stale)
                continue
            t = tables[name]
            found = disclosure.check_restricted(schemas.get(name), t)
            if found:
                blocked.append(_block(wh, "restricted", name, period, t, found))
                md[name] = "blocked by disclosure control"
                continue
            t = t.replace_schema_metadata({**(t.schema.metadata or {}), KEY_LABEL_META: label})
            wh.store.write_parquet(_release_path("restricted", name, period), t)
            md[name] = t.num_rows
    wh.store.write_bytes(_blocked_path(period), json.dumps(blocked, indent=1, sort_keys=True).encode())
    return {"metadata": md, "violations": [b["message"] for b in blocked], "blocked": blocked,
            "differencing": differencing}


def _differencing(settings: Settings, wh, period: str, released: dict, blocked: list, md: dict) -> dict:
    """The differencing audit of the period's public candidates (docs/methods-disclosure.md):
    suppressed cells the published margins give back. Severity ``error`` blocks every
    dataset a recovery reads (its candidate removed, the reason recorded); ``warn`` reports."""
    from pipelines import differencing, disclosure

    severity = settings.t("disclosure", "differencing_severity")
    tables = {name: t if "period" in t.column_names else t.append_column("period", pa.array([period] * t.num_rows))
              for name, t in released.items()}
    unexamined: list = []
    found = differencing.audit(
        tables, rounding=settings.t("disclosure", "rounding"), unexamined=unexamined,
        incomplete=differencing.fft_incomplete_parents(wh.read_raw("current_fft_responses", [period])))
    if found and severity == "error":
        for name in sorted({d for f in found for d in f.datasets} & set(released)):
            mine = [f for f in found if name in f.datasets]
            columns = sorted({c for f in mine for c in f.columns})
            v = [disclosure.Violation(name, "differencing", ", ".join(columns), len(mine),
                                      f"{name}: {len(mine)} suppressed cell(s) recoverable from published margins: "
                                      + "; ".join(str(f) for f in mine[:10])
                                      + (f"; and {len(mine) - 10} more" if len(mine) > 10 else ""))]
            blocked.append(_block(wh, "public", name, period, released[name], v))
            md[name] = "blocked by the differencing audit"
    return {"severity": severity, "recoverable": [f.as_dict() for f in found], "unexamined": sum(unexamined)}


def publish(settings: Settings, period: str, *, run_id: str = "cli") -> dict:
    """Publish the period's release candidates. Datasets blocked by disclosure control have
    none (their earlier publication stays); without a key nothing in the restricted zone is
    written, replaced or re-labelled, and a restricted candidate made under another key (or
    none) is never published."""
    from pipelines import disclosure, ingest
    from pipelines import publish as pub
    from pipelines.dictionary import write_dictionary

    _, wh, out = stores(settings)
    ledger = ingest.read_ledger(wh)
    # Manifests name their inputs as the public ledger does (ingest.public_file_name): a
    # name outside its folder's convention (a HES extract's, a reference file's) is free
    # text a supplier chose, and is shown as its folder and a digest instead.
    inputs = sorted({
        ingest.public_file_name(r["file_name"], r.get("sha256") or "") for r in ledger.to_pylist()
        if r.get("status") in ("current", "held") and (r.get("reporting_period") == period or r.get("source") == "reference")
    })
    blocked = {(b["zone"], b["dataset"]): b for b in blocked_datasets(settings, period)}
    key = settings.effective_pseudo_key
    report: dict = {}
    # What this publication revised in months already published is kept in the warehouse
    # (pending) from the moment each dataset is published until publish_revisions (the
    # `revisions` asset, right after this one) appends it to the public dataset, so that a
    # run killed in between loses none; it is never appended twice.
    pending_path = _revisions_pending_path(period)
    pending: list[dict] = json.loads(wh.store.read_bytes(pending_path)) if wh.store.exists(pending_path) else []
    # A run without a key never writes, replaces or re-labels the restricted zone (outputs.md
    # "Keys"): release candidates an earlier keyed run left in the warehouse stay unpublished.
    for zone in ("public", "restricted"):
        if zone == "restricted" and key is None:
            report["restricted"] = "not published: no pseudonymisation key configured"
            continue
        for name in PUBLIC_DATASETS if zone == "public" else RESTRICTED_DATASETS:
            if (zone, name) in blocked:
                report[f"{zone}/{name}"] = "blocked by disclosure control"
                continue
            path = _release_path(zone, name, period)
            if not wh.store.exists(path):
                continue
            table = wh.store.read_parquet(path)
            if zone == "restricted":
                made_with = (table.schema.metadata or {}).get(KEY_LABEL_META)
                if made_with != settings.key_label.encode():
                    report[f"{zone}/{name}"] = ("not published: its release candidate was made under "
                                                "another key; release the period again")
                    continue
            if "period" not in table.column_names:
                table = table.append_column("period", pa.array([period] * table.num_rows, pa.string()))
            try:
                result = pub.publish_dataset(
                    out, schemas.get(name), table, run_id=run_id, code_version=code_version(),
                    input_submissions={period: inputs}, thresholds=settings.thresholds,
                    key_label=settings.key_label if zone == "restricted" else None,
                )
            except disclosure.DisclosureError as exc:
                report[f"{zone}/{name}"] = f"blocked by disclosure control: {len(exc.violations)} rule(s) broken"
                continue
            report[f"{zone}/{name}"] = table.num_rows
            if zone == "public" and result.revisions:
                for r in result.revisions:
                    r.submissions = revision_submissions(ledger, r)
                    pending.append(dataclasses.asdict(r))
                wh.store.write_bytes(pending_path, json.dumps(pending, indent=1, sort_keys=True).encode())
    if pending:
        report["revisions_pending"] = len(pending)
    for f in wh.store.list(f"work/funnel_plots/period={period}"):
        spec = f.path.rsplit("/", 1)[1]
        pub.publish_file(out, "public", f"funnel_plots/period={period}/{spec}", wh.store.read_bytes(f.path))
    write_dictionary(out)
    return report


def revision_submissions(ledger: pa.Table, rev) -> list[str]:
    """The files that caused ``rev`` (a :class:`pipelines.publish.Revision`), named as the
    public ledger names them (:func:`pipelines.ingest.public_file_name`): the current or
    held files of the dataset's sources that its previous publication of the period did
    not list among its inputs (the period's own files and reference files: exact), and,
    for the outcome datasets (whose window reads other months) and HES extracts (no
    reporting period), files first seen since the previous publication was written."""
    from pipelines import ingest

    sources = set(_SOURCES.get(rev.dataset, _DEFAULT_SOURCES))
    before = set(rev.previous_inputs)
    since = None
    if rev.previous_released_at:
        since = dt.datetime.strptime(rev.previous_released_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    out = set()
    for r in ledger.to_pylist():
        if r.get("status") not in ("current", "held") or r.get("source") not in sources \
                or r["file_name"] in before:
            continue
        in_scope = r.get("reporting_period") == rev.period or r.get("source") == "reference"
        if not in_scope:
            seen = r.get("first_seen_at")
            late = since is not None and seen is not None and seen >= since
            if not (late and (rev.dataset in OUTCOME_DATASETS or r.get("source") == "hes_apc")):
                continue
        out.add(ingest.public_file_name(r["file_name"], r["sha256"]))
    return sorted(out)


def publish_revisions(settings: Settings, period: str, *, run_id: str = "cli") -> dict:
    """Append the period's pending revisions (:func:`publish` records them) to the public
    ``revisions`` dataset, then forget them. The period's partition is published even with
    no revision (0 rows: computed, nothing revised); a run with nothing new writes nothing.
    A revision blocked by disclosure control stays pending and is tried again next time."""
    from pipelines import disclosure
    from pipelines import publish as pub

    _, wh, out = stores(settings)
    path = _revisions_pending_path(period)
    pending = json.loads(wh.store.read_bytes(path)) if wh.store.exists(path) else []
    revisions = [pub.Revision(**r) for r in pending]
    try:
        result = pub.publish_revisions(out, revisions, run_id=run_id, code_version=code_version(),
                                       thresholds=settings.thresholds, periods=[period])
    except disclosure.DisclosureError as exc:
        return {"revisions": 0, "pending": len(pending),
                "violations": [f"public/revisions period {period} not published: "
                               + "; ".join(f"[{v.rule}] {v.message}" for v in exc.violations)]}
    if pending:
        wh.store.delete(path)
    return {"revisions": len(revisions), "written": bool(result), "violations": [],
            "datasets_revised": sorted({r.dataset for r in revisions})}


def publish_submissions(settings: Settings, *, run_id: str = "cli") -> dict:
    """The public ledger of every file seen. Its partition is the month the pipeline first
    saw a file (not a reporting period), so it is published on its own, month by month:
    a month that breaks a disclosure rule is blocked (named in ``violations``), the other
    months are published."""
    from pipelines import disclosure, ingest
    from pipelines import publish as pub

    _, wh, out = stores(settings)
    ds = schemas.get("submissions")
    table = ingest.submissions_dataset(wh)
    violations: list[str] = []
    blocked: list[str] = []
    published = 0
    months = sorted(pc.unique(table.column("period")).to_pylist()) if table.num_rows else []
    for month in months:
        part = table.filter(pc.equal(table.column("period"), month))
        found = disclosure.check_public(ds, part, settings)
        if found:
            sids = sorted({part.column("sha256")[r].as_py()[:12] for v in found for r in v.rows})
            blocked.append(month)
            violations.append(f"public/submissions period {month} not published: "
                              + "; ".join(f"[{v.rule}] {v.message}" for v in found)
                              + (f" (files with SHA-256 starting {', '.join(sids)})" if sids else ""))
            continue
        pub.publish_dataset(out, ds, part, run_id=run_id, code_version=code_version(),
                            thresholds=settings.thresholds)
        published += part.num_rows
    statuses = pc.value_counts(table.column("status")).to_pylist() if table.num_rows else []
    return {"rows": table.num_rows, "rows_published": published, "violations": violations,
            "blocked_periods": blocked, "published": not blocked,
            "by_status": {r["values"]: r["counts"] for r in statuses}}


def feedback_packs(settings: Settings, *, run_id: str = "cli") -> dict:
    """The submitters' feedback packs (:func:`pipelines.feedback.write_packs`): under
    ``<publish root>/feedback/<source>/<submitter_code>/<period>/``, for the submitters,
    never in the public zone. Run after the periods are validated and published."""
    from pipelines import feedback

    _, wh, out = stores(settings)
    return feedback.write_packs(wh, out, run_id=run_id, code_version=code_version()).as_metadata()


# --------------------------------------------------------------------------- summaries
def published_summary(settings: Settings) -> list[dict]:
    _, _, out = stores(settings)
    rows = []
    for zone in ("public", "restricted"):
        for name in PUBLIC_DATASETS + ["submissions", "revisions"] if zone == "public" else RESTRICTED_DATASETS:
            path = f"{zone}/{name}/_manifest.json"
            if not out.exists(path):
                continue
            manifest = json.loads(out.read_bytes(path))
            parts = manifest.get("partitions", {})
            n = sum(sum(f.get("rows", 0) for f in p.get("files", [])) for p in parts.values())
            rows.append({"zone": zone, "dataset": name, "partitions": len(parts), "rows": n})
    return rows


def held_back_summary(settings: Settings) -> list[dict]:
    from pipelines import ingest

    _, wh, _ = stores(settings)
    rows = ingest.read_ledger(wh).to_pylist()
    # Printed as the public ledger names files: a name that breaks its folder's convention
    # is supplier text (it may name a patient), shown by its digest; the full name is in
    # the warehouse ledger and the Dagster metadata.
    shown = {r["file_name"]: ingest.public_file_name(r["file_name"], r["sha256"]) for r in rows}
    renamed = {f: p for f, p in shown.items() if f != p and len(f) >= 6}
    out = []
    for r in rows:
        if r.get("status") in ("rejected", "held"):
            why = ingest.public_reason(r.get("reason"), r["file_name"], renamed) or ""
            out.append({"what": f"{r['status']} {shown[r['file_name']]}", "why": why})
    for f in wh.store.list("release/blocked"):
        for b in json.loads(wh.store.read_bytes(f.path)):
            out.append({"what": f"blocked {b['zone']}/{b['dataset']} {b['period']}",
                        "why": f"disclosure control ({', '.join(b['rules'])} in {', '.join(b['columns'])}); "
                               f"from {', '.join(b['submissions'][:5]) or 'no identified submission'}"})
    if settings.effective_pseudo_key is None:
        out.append({"what": "restricted zone", "why": "no pseudonymisation key configured"})
    return out

