"""Disclosure control and publishing to the public and restricted zones.

The disclosure_control checks are not blocking: a dataset (and period) that breaks a rule
is blocked on its own by the release stage, and every other dataset and period is still
published. The check fails with ERROR severity naming each blocked dataset, column, period
and the submissions the values came from (never a value), so the run summary shows it."""


from datetime import timedelta

import dagster as dg

from assets.datasets import consultant_outcomes_window, fft_results, linkage_coverage, quality_reports
from assets.ingest import _md
from pipelines import stages
from pipelines.partitions import period_check, period_partitions
from pipelines.resources import CareDataConfig


@dg.asset(
    group_name="publish", partitions_def=period_partitions,
    deps=[linkage_coverage, fft_results, consultant_outcomes_window, quality_reports],
    check_specs=[
        period_check("disclosure_control", asset="release_candidate", blocking=False,
                     description="No count 1-7 below national level, no rate from fewer than 8, every public string a code of its declared format, no identifier in any value of the public zone; no NHS number, postcode or date of birth in the restricted zone. A dataset that fails is blocked for the period; the others are published."),
        period_check("differencing", asset="release_candidate", blocking=False,
                     description="No suppressed cell can be recovered from the published margins (parent minus published children, across FFT, coverage and outcomes hierarchies). Severity disclosure.differencing_severity: warn reports, error blocks the datasets involved (docs/methods-disclosure.md)."),
    ],
    description="The period's datasets with disclosure control applied, ready to publish (not yet visible to readers).",
)
def release_candidate(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.release(caredata.settings(), context.partition_key)
    yield dg.MaterializeResult(metadata=_md(report["metadata"]))
    blocked = report.get("blocked", [])
    yield dg.AssetCheckResult(
        check_name="disclosure_control", passed=not blocked,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(report["violations"][:20]) or "no violation",
        metadata={"period": context.partition_key, "blocked": len(blocked),
                  "blocked_datasets": [f"{b['zone']}/{b['dataset']}" for b in blocked],
                  "details": {b["zone"] + "/" + b["dataset"]: {k: b[k] for k in ("period", "rules", "columns", "rows", "submissions")}
                              for b in blocked}},
    )
    diff = report["differencing"]
    yield dg.AssetCheckResult(
        check_name="differencing", passed=not diff["recoverable"],
        severity=dg.AssetCheckSeverity.ERROR if diff["severity"] == "error" else dg.AssetCheckSeverity.WARN,
        description="; ".join(f"{r['dataset']} {r['level']} {r['key']}: {', '.join(r['columns'])} ({r['how']})"
                              for r in diff["recoverable"][:20]) or "no suppressed cell recoverable",
        metadata={"period": context.partition_key, "recoverable": len(diff["recoverable"]), "severity": diff["severity"],
                  "unexamined_unknowns": diff["unexamined"]},
    )


# Freshness (shown in the UI, evaluated by the daemon): a month is published every month.
PUBLICATION_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=45), warn_window=timedelta(days=35))


@dg.asset(group_name="publish", partitions_def=period_partitions, deps=[release_candidate],
          freshness_policy=PUBLICATION_FRESHNESS,
          description="Atomic, versioned publication of the period to the publish root (public and restricted zones, manifests, data dictionary, funnel plots).")
def published(context: dg.AssetExecutionContext, caredata: CareDataConfig) -> dg.MaterializeResult:
    report = stages.publish(caredata.settings(), context.partition_key, run_id=context.run_id)
    return dg.MaterializeResult(metadata=_md(report))


@dg.asset(group_name="publish", partitions_def=period_partitions, deps=[published],
          check_specs=[period_check("disclosure_control", asset="revisions", blocking=False,
                                    description="Every value of the revisions dataset is a code of its declared format and holds no identifier; revisions blocked stay pending for the next run.")],
          description=stages.describe("revisions"))
def revisions(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.publish_revisions(caredata.settings(), context.partition_key, run_id=context.run_id)
    yield dg.MaterializeResult(metadata=_md({k: v for k, v in report.items() if k != "violations"}))
    yield dg.AssetCheckResult(check_name="disclosure_control", passed=not report["violations"],
                              severity=dg.AssetCheckSeverity.ERROR,
                              description="; ".join(report["violations"]) or "no violation",
                              metadata={"period": context.partition_key})


@dg.asset(group_name="publish", deps=["landing_scan", "gp_bronze", "sus_apc_bronze", "fft_bronze", "hes_apc_bronze"],
          check_specs=[dg.AssetCheckSpec("disclosure_control", asset="submissions", blocking=False,
                                         description="Every value of the public ledger is a code of its declared format (misnamed files as <folder>/unrecognised-<hash>) and holds no identifier; a month that fails is not published, the others are.")],
          description=stages.describe("submissions"))
def submissions(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.publish_submissions(caredata.settings(), run_id=context.run_id)
    yield dg.MaterializeResult(metadata=_md({k: v for k, v in report.items() if k != "violations"}))
    yield dg.AssetCheckResult(check_name="disclosure_control", passed=not report["violations"],
                              severity=dg.AssetCheckSeverity.ERROR,
                              description="; ".join(report["violations"]) or "no violation",
                              metadata={"blocked_periods": report.get("blocked_periods", [])})


@dg.asset(group_name="publish", deps=[submissions],
          description="Feedback packs for the submitters: per source, submitter and period, every rule broken with "
                      "its field, line numbers, counts, effect and how to fix it (CSV and XLSX, never a value of a "
                      "row), under <publish root>/feedback/<source>/<submitter_code>/<period>/; not public.")
def feedback_packs(context: dg.AssetExecutionContext, caredata: CareDataConfig) -> dg.MaterializeResult:
    report = stages.feedback_packs(caredata.settings(), run_id=context.run_id)
    md = _md({k: v for k, v in report.items() if k != "root"})
    md["root"] = dg.MetadataValue.path(report["root"])
    return dg.MaterializeResult(metadata=md)
