"""Schedules and sensors: the nightly run, the landing-zone sensor, the run-failure alert."""


import os

import dagster as dg

from assets import LEDGER, PERIOD_INGEST, PERIOD_LINK, PERIOD_OUTPUTS, UNPARTITIONED
from pipelines import stages
from pipelines.config import ConfigError, Settings
from pipelines.partitions import PERIODS, partition_requests, period_partitions

scan_job = dg.define_asset_job(
    "scan_job", selection=dg.AssetSelection.assets(*UNPARTITIONED, *LEDGER),
    description="Record new landing files in the ledger; reference data; HES extracts; publish the submissions ledger.",
    # One scan at a time (deploy/dagster.yaml): two would take the same new files in twice.
    tags={"caredata/serial": "scan"},
)
ledger_job = dg.define_asset_job(
    "ledger_job", selection=dg.AssetSelection.assets(*LEDGER),
    description="Publish the submissions ledger (every file seen, its outcome and reason), then the "
                "submitters' feedback packs. The landing sensor requests it once the periods' runs have "
                "changed the ledger.",
    tags={"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"},
)
period_job = dg.define_asset_job(
    "period_job", selection=dg.AssetSelection.assets(*PERIOD_INGEST, *PERIOD_LINK, *PERIOD_OUTPUTS),
    partitions_def=period_partitions,
    description="Everything for one period: ingest, validate, current views, linkage, outputs, disclosure control, publish.",
    tags={"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"},
)

# The stages of `caredata run` (pipelines/runner.py), one named job each, so that its runs
# show in the UI under these names (Jobs page, Overview timeline) with their period; the
# runner runs them in this order: landing_job; ingest_job for every period; link_job for
# every period (linkage uses each practice's newest extract); publish_job for every period
# (a window's follow-up sees the next month's data); ledger_job.
landing_job = dg.define_asset_job(
    "landing_job", selection=dg.AssetSelection.assets(*UNPARTITIONED),
    description="caredata run, first: record new landing files in the ledger; reference data; HES extracts.",
)
ingest_job = dg.define_asset_job(
    "ingest_job", selection=dg.AssetSelection.assets(*PERIOD_INGEST),
    description="caredata run, per period: ingest and validate the period's submissions; current views.",
)
link_job = dg.define_asset_job(
    "link_job", selection=dg.AssetSelection.assets(*PERIOD_LINK),
    description="caredata run, per period, after every period's ingest: link the SUS episodes to GP registrations.",
)
publish_job = dg.define_asset_job(
    "publish_job", selection=dg.AssetSelection.assets(*PERIOD_OUTPUTS),
    description="caredata run, per period, after every period's linkage: datasets, disclosure control, publishing.",
)
RUNNER_JOBS = [landing_job, ingest_job, link_job, publish_job, ledger_job]

# Scheduled and sensor runs go to the front of the run queue (deploy/dagster.yaml: a
# backfill, priority 0 and at most 2 runs, cannot hold them back).
PRIORITY_TAGS = {"dagster/priority": "10"}

NIGHTLY_CRON = os.environ.get("CAREDATA_NIGHTLY_CRON", "0 2 * * *")
NIGHTLY_TZ = os.environ.get("CAREDATA_TIMEZONE", "Europe/London")

nightly_scan = dg.ScheduleDefinition(
    name="nightly_scan", job=scan_job, cron_schedule=NIGHTLY_CRON, execution_timezone=NIGHTLY_TZ,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    tags=PRIORITY_TAGS,
    description="02:00 Europe/London: take in what landed during the day (the sensor then runs each period).",
)


# How often the landing sensor looks (seconds); the daemon evaluates it no more often.
SENSOR_INTERVAL = int(os.environ.get("CAREDATA_SENSOR_INTERVAL_SECONDS", "300"))

_IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]


def _instance(context: dg.SensorEvaluationContext) -> dg.DagsterInstance | None:
    """The daemon's instance; None when a test evaluates the sensor without one."""
    try:
        return context.instance
    except dg.DagsterInvariantViolationError:
        return None


@dg.sensor(jobs=[period_job, ledger_job], minimum_interval_seconds=SENSOR_INTERVAL,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Watches the landing zone: keeps the period partitions to the months with data, "
                       "launches one run per period with new or changed submissions (or HES rows), and, once "
                       "no period run is queued or running, publishes the submissions ledger if it changed.")
def landing_sensor(context: dg.SensorEvaluationContext):
    settings = Settings.load()
    pending = stages.pending_periods(settings)
    periods = set(stages.periods(settings)) | set(pending)
    instance = _instance(context)
    # The periods are dynamic partitions: added before the runs that need them, removed
    # when no file of theirs is in the landing zone any more.
    partitions = partition_requests(instance.get_dynamic_partitions(PERIODS) if instance else [], periods)
    # The run key makes a request once per period and set of files: the same files seen
    # again (the sensor runs every 5 minutes) start nothing; a resubmission changes the
    # fingerprint and reruns that period only.
    requests = [
        dg.RunRequest(job_name=period_job.name, partition_key=period, run_key=f"{period}:{fingerprint}",
                      tags={**PRIORITY_TAGS, "caredata/trigger": "landing_sensor"})
        for period, fingerprint in sorted(pending.items())
    ]
    if not requests:
        # The ledger after the periods: their runs write the outcomes it publishes.
        fingerprint = stages.ledger_to_publish(settings)
        busy = instance is not None and instance.get_runs_count(
            dg.RunsFilter(job_name=period_job.name, statuses=_IN_FLIGHT)) > 0
        if fingerprint and not busy:
            requests.append(dg.RunRequest(job_name=ledger_job.name, run_key=f"ledger:{fingerprint}",
                                          tags={**PRIORITY_TAGS, "caredata/trigger": "landing_sensor"}))
    if not requests:
        return dg.SensorResult(skip_reason="no new submissions in the landing zone",
                               dynamic_partitions_requests=partitions)
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partitions)


@dg.run_failure_sensor(default_status=dg.DefaultSensorStatus.RUNNING,
                       description="Posts a message to the configured webhook when a run fails.")
def run_failure_alert(context: dg.RunFailureSensorContext):
    from pipelines.notify import notify

    try:
        settings = Settings.load()
        url = settings.t("data_quality", "webhook_url")
        config_error = None
    except ConfigError as exc:
        # A bad configuration is what fails the runs this alert is for: still alert, to the
        # webhook named in the environment, and say what is wrong.
        url, config_error = os.environ.get("CAREDATA_DATA_QUALITY__WEBHOOK_URL"), str(exc)
    if not url:
        return dg.SkipReason("no webhook configured (data_quality.webhook_url)")
    run = context.dagster_run
    tags = run.tags or {}
    will_retry = tags.get("dagster/will_retry") == "true"
    attempt = int(tags.get("dagster/retry_number", "0"))
    what = f"{run.job_name}" + (f" for {tags['dagster/partition']}" if tags.get("dagster/partition") else "")
    text = (f"care.data run {run.run_id} ({what}) failed: {context.failure_event.message}"
            + (f" (the configuration is wrong: {config_error})" if config_error else "")
            + (f" (attempt {attempt + 1}; it will be retried)" if will_retry else ""))
    delivered = notify(url, {
        "event": "run_failed", "text": text, "run_id": run.run_id, "job": run.job_name,
        "period": tags.get("dagster/partition"), "will_retry": will_retry, "attempt": attempt + 1,
        "backfill": tags.get("dagster/backfill"),
    })
    if not delivered:
        context.log.warning("run-failure alert not delivered to the webhook")


JOBS = [scan_job, period_job, ledger_job, landing_job, ingest_job, link_job, publish_job]
SCHEDULES = [nightly_scan]
SENSORS = [landing_sensor, run_failure_alert]
