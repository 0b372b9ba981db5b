"""Disclosure control (a blocking check) and publishing to the public and restricted zones."""


from datetime import timedelta

import dagster as dg

from assets.datasets import consultant_outcomes_window, fft_results, linkage_coverage, quality_reports
from assets.ingest import _md
from pipelines import stages
from pipelines.partitions import period_partitions
from pipelines.resources import CareDataConfig


@dg.asset(
    group_name="publish", partitions_def=period_partitions,
    deps=[linkage_coverage, fft_results, consultant_outcomes_window, quality_reports],
    check_specs=[
        dg.AssetCheckSpec("disclosure_control", asset="release_candidate", blocking=True,
                          description="No count 1-7 below national level, no rate from fewer than 8, no identifier in any value of the public zone; no NHS number, postcode or date of birth in the restricted zone."),
    ],
    description="The period's datasets with disclosure control applied, ready to publish (not yet visible to readers).",
)
def release_candidate(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.release(caredata.settings(), context.partition_key)
    yield dg.MaterializeResult(metadata=_md(report["metadata"]))
    yield dg.AssetCheckResult(
        check_name="disclosure_control", passed=not report["violations"],
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(report["violations"][:20]) or "no violation",
        metadata={"violations": len(report["violations"])},
    )


# Freshness (shown in the UI, evaluated by the daemon): a month is published every month.
PUBLICATION_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(days=45), warn_window=timedelta(days=35))


@dg.asset(group_name="publish", partitions_def=period_partitions, deps=[release_candidate],
          freshness_policy=PUBLICATION_FRESHNESS,
          description="Atomic, versioned publication of the period to the publish root (public and restricted zones, manifests, data dictionary, funnel plots).")
def published(context: dg.AssetExecutionContext, caredata: CareDataConfig) -> dg.MaterializeResult:
    report = stages.publish(caredata.settings(), context.partition_key, run_id=context.run_id)
    return dg.MaterializeResult(metadata=_md(report))


@dg.asset(group_name="publish", deps=["landing_scan", "gp_bronze", "sus_apc_bronze", "fft_bronze", "hes_apc_bronze"],
          check_specs=[dg.AssetCheckSpec("disclosure_control", asset="submissions", blocking=True,
                                         description="The ledger holds no identifier in any value.")],
          description=stages.describe("submissions"))
def submissions(context: dg.AssetExecutionContext, caredata: CareDataConfig):
    report = stages.publish_submissions(caredata.settings(), run_id=context.run_id)
    yield dg.MaterializeResult(metadata=_md({k: v for k, v in report.items() if k != "violations"}))
    yield dg.AssetCheckResult(check_name="disclosure_control", passed=not report["violations"],
                              severity=dg.AssetCheckSeverity.ERROR,
                              description="; ".join(report["violations"]) or "no violation")
