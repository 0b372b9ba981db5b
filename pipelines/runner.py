"""Run the whole asset graph in-process through Dagster, for every period in the landing zone.

Order: the unpartitioned assets (ledger scan, reference data, HES extracts); then, for each
period, ingest and validation; then, for each period, linkage (it uses each practice's
newest extract, whatever its month); then, for each period, the datasets, disclosure
control and publishing (so a window's 30-day follow-up sees the next month's data); last,
the submissions ledger.
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import dataclass, field

import dagster as dg

from pipelines.config import Settings


@dataclass
class RunSummary:
    periods: list[str] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    published: list[dict] = field(default_factory=list)
    held_back: list[dict] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed_steps and not self.failed_checks


def _instance() -> dg.DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral(tempdir=tempfile.mkdtemp(prefix="caredata-dagster-"))


def _env_for(settings: Settings) -> dict[str, str]:
    env = {
        "CAREDATA_LANDING": settings.landing,
        "CAREDATA_WAREHOUSE": settings.warehouse,
        "CAREDATA_PUBLISH": settings.publish,
    }
    if settings.s3_endpoint_url:
        env["CAREDATA_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.demo_mode:
        env["CAREDATA_DEMO_MODE"] = "1"
    return env


def run_pipeline(settings: Settings, *, periods: list[str] | None = None, progress=print,
                 log_level: str = "WARNING") -> RunSummary:
    """Materialise everything for every period found (or the ones given)."""
    from assets import ALL_ASSETS, LEDGER, PERIOD_INGEST, PERIOD_LINK, PERIOD_OUTPUTS, UNPARTITIONED
    from pipelines import stages
    from pipelines.partitions import sync_periods
    from pipelines.resources import CareDataConfig

    # Resource values come from the settings object (its roots are already resolved).
    os.environ.update(_env_for(settings))
    resources = {
        "caredata": CareDataConfig(
            landing=settings.landing, warehouse=settings.warehouse, publish=settings.publish,
            s3_endpoint_url=settings.s3_endpoint_url or "", demo_mode=settings.demo_mode,
        ),
        "io_manager": dg.FilesystemIOManager(base_dir=tempfile.mkdtemp(prefix="caredata-io-")),
    }
    instance = _instance()
    summary = RunSummary()

    def _run(selection, partition_key=None, label=""):
        result = dg.materialize(
            ALL_ASSETS, selection=selection, partition_key=partition_key,
            resources=resources, instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        )
        summary.run_ids.append(result.run_id)
        for ev in result.all_events:
            if ev.event_type_value == "STEP_FAILURE":
                err = ev.event_specific_data.error
                while err.cause is not None:  # the user error, not Dagster's wrapper
                    err = err.cause
                summary.failed_steps.append(f"{label}{ev.step_key}: {err.message.strip()}")
            if ev.event_type_value == "ASSET_CHECK_EVALUATION":
                data = ev.event_specific_data
                if not data.passed and data.severity == dg.AssetCheckSeverity.ERROR:
                    summary.failed_checks.append(
                        f"{label}{data.asset_key.to_user_string()}.{data.check_name}: {data.description or ''}")
        return result

    progress("caredata: scanning the landing zone")
    _run(dg.AssetSelection.assets(*UNPARTITIONED), label="")
    found = stages.periods(settings)
    # The periods are dynamic partitions: exactly the months with data, whatever they are.
    added, removed = sync_periods(instance, found)
    if removed:
        progress(f"caredata: no file of {', '.join(removed)} is in the landing zone any more: not run")
    summary.periods = [p for p in found if periods is None or p in periods]
    for p in summary.periods:
        progress(f"caredata: {p}: ingest and validation")
        _run(dg.AssetSelection.assets(*PERIOD_INGEST), partition_key=p, label=f"[{p}] ")
    # Linkage uses each practice's newest extract, so it follows the ingest of every period.
    for p in summary.periods:
        progress(f"caredata: {p}: linkage")
        _run(dg.AssetSelection.assets(*PERIOD_LINK), partition_key=p, label=f"[{p}] ")
    for p in summary.periods:
        progress(f"caredata: {p}: datasets, disclosure control, publishing")
        _run(dg.AssetSelection.assets(*PERIOD_OUTPUTS), partition_key=p, label=f"[{p}] ")
    progress("caredata: the submissions ledger")
    _run(dg.AssetSelection.assets(*LEDGER), label="[ledger] ")
    summary.published = stages.published_summary(settings)
    summary.held_back = stages.held_back_summary(settings)
    return summary


def print_summary(summary: RunSummary, settings: Settings, out=None) -> None:
    w = (out or sys.stdout).write
    w(f"\nPeriods: {', '.join(summary.periods) or 'none found'}\n")
    w(f"Published to {settings.publish}:\n")
    for row in summary.published:
        w(f"  {row['zone']:<10} {row['dataset']:<28} {row['partitions']:>3} partitions {row['rows']:>9} rows\n")
    if not summary.published:
        w("  nothing\n")
    w("Held back:\n")
    for row in summary.held_back:
        w(f"  {row['what']}: {row['why']}\n")
    if not summary.held_back:
        w("  nothing\n")
    if settings.demo_mode and not settings.pseudo_key:
        w("DEMO MODE: the restricted zone is pseudonymised with the public demo key; not for real data.\n")
    if summary.failed_steps or summary.failed_checks:
        w("The run failed:\n")
        for f in summary.failed_steps + summary.failed_checks:
            w(f"  {f}\n")
