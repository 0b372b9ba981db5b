"""Schedules and sensors: the nightly run, the landing-zone sensor, the run-failure alert."""


import os

import dagster as dg

from assets import PERIOD_INGEST, PERIOD_OUTPUTS, UNPARTITIONED
from pipelines import stages
from pipelines.config import Settings
from pipelines.partitions import period_partitions

scan_job = dg.define_asset_job(
    "scan_job", selection=dg.AssetSelection.assets(*UNPARTITIONED),
    description="Record new landing files in the ledger; reference data; HES extracts.",
)
period_job = dg.define_asset_job(
    "period_job", selection=dg.AssetSelection.assets(*PERIOD_INGEST, *PERIOD_OUTPUTS),
    partitions_def=period_partitions,
    description="Everything for one period: ingest, validate, current views, linkage, outputs, disclosure control, publish.",
    tags={"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"},
)

NIGHTLY_CRON = os.environ.get("CAREDATA_NIGHTLY_CRON", "0 2 * * *")
NIGHTLY_TZ = os.environ.get("CAREDATA_TIMEZONE", "Europe/London")

nightly_scan = dg.ScheduleDefinition(
    name="nightly_scan", job=scan_job, cron_schedule=NIGHTLY_CRON, execution_timezone=NIGHTLY_TZ,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="02:00 Europe/London: take in what landed during the day (the sensor then runs each period).",
)


@dg.sensor(job=period_job, minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches the landing zone; launches one run per period with new or changed submissions.")
def landing_sensor(context: dg.SensorEvaluationContext):
    settings = Settings.load()
    pending = stages.pending_periods(settings)
    if not pending:
        return dg.SkipReason("no new submissions in the landing zone")
    for period, fingerprint in sorted(pending.items()):
        yield dg.RunRequest(partition_key=period, run_key=f"{period}:{fingerprint}")


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Posts a message to the configured webhook when a run fails.")
def run_failure_alert(context: dg.RunFailureSensorContext):
    from pipelines.notify import notify

    settings = Settings.load()
    url = settings.t("data_quality", "webhook_url")
    if url:
        notify(url, {
            "event": "run_failed",
            "text": f"care.data run {context.dagster_run.run_id} ({context.dagster_run.job_name}) failed: "
                    f"{context.failure_event.message}",
            "run_id": context.dagster_run.run_id,
        })


JOBS = [scan_job, period_job]
SCHEDULES = [nightly_scan]
SENSORS = [landing_sensor, run_failure_alert]
