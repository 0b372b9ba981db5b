"""Operations: the production Dagster instance (deploy/dagster.yaml) on a real PostgreSQL,
the run queue's limits, run retries, the nightly schedule, the landing sensor, the
run-failure alert, a backfill of a range of periods and the rerun of one resubmitted period.

PostgreSQL comes from tests/pg.py (a throwaway server; the tests skip, saying why, only when
the binaries are not installed). Tests that run the pipeline itself need the domain modules
(pipelines.ingest, pipelines.synth, ...) and skip, saying which is missing, without them.
"""


import hashlib
import http.server
import json
import shutil
import threading
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

ROOT = Path(__file__).resolve().parent.parent
LONDON = ZoneInfo("Europe/London")


def _need(module: str, attr: str | None = None):
    """Skip (saying what is missing) until another stage's module has landed."""
    mod = pytest.importorskip(module, reason=f"{module} is not written yet")
    if attr and not hasattr(mod, attr):
        pytest.skip(f"{module}.{attr} is not written yet")
    return mod


def _instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.get()


# --------------------------------------------------------------------------- the instance
def test_deploy_yaml_builds_a_postgres_instance_with_queue_limits_and_retries(dagster_home):
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    instance = _instance()
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    # Credentials came from the environment, never from the file.
    text = (dagster_home / "dagster.yaml").read_text()
    assert "caredata-test-password" not in text and "{env: DAGSTER_PG_PASSWORD}" in text

    config = instance.get_concurrency_config()
    limits = {lim["key"]: lim for lim in config.run_queue_config.tag_concurrency_limits}
    assert limits["dagster/backfill"]["limit"] == 2
    assert config.run_queue_config.max_concurrent_runs > limits["dagster/backfill"]["limit"]
    assert config.pool_config.default_pool_limit == 1
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert instance.run_monitoring_enabled
    # The schedule/sensor daemon and the freshness daemon are on.
    assert instance.get_settings("freshness").get("enabled") is True


def test_runs_events_and_materialisations_land_in_postgres(postgres, pg_database, dagster_home):
    @dg.asset(partitions_def=dg.MonthlyPartitionsDefinition(start_date="2014-01", fmt="%Y-%m"))
    def probe(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 3})

    instance = _instance()
    result = dg.materialize([probe], partition_key="2014-02", instance=instance)
    assert result.success

    # Through the instance...
    run = instance.get_run_by_id(result.run_id)
    assert run.status == DagsterRunStatus.SUCCESS
    mats = instance.fetch_materializations(dg.AssetKey("probe"), limit=10).records
    assert [m.partition_key for m in mats] == ["2014-02"]
    assert mats[0].asset_materialization.metadata["rows"].value == 3

    # ...and straight from the database, with the operator's client.
    [[status]] = postgres.psql(pg_database, f"SELECT status FROM runs WHERE run_id = '{result.run_id}'")
    assert status == "SUCCESS"
    rows = postgres.psql(pg_database, "SELECT dagster_event_type, partition FROM event_logs "
                                      f"WHERE run_id = '{result.run_id}' AND dagster_event_type IS NOT NULL")
    types = {r[0] for r in rows}
    # (run events keep their historical names, PIPELINE_*, in the table)
    assert {"STEP_SUCCESS", "ASSET_MATERIALIZATION"} <= types
    assert types & {"RUN_SUCCESS", "PIPELINE_SUCCESS"}
    assert ["ASSET_MATERIALIZATION", "2014-02"] in rows
    # Schedule storage lives there too (its tables were created).
    tables = {r[0] for r in postgres.psql(pg_database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"runs", "event_logs", "asset_keys", "jobs", "job_ticks"} <= tables


def _queued(instance, job: str, tags: dict[str, str], status=DagsterRunStatus.QUEUED) -> DagsterRun:
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.utils import make_new_run_id

    origin = RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=RegisteredCodeLocationOrigin(location_name="pipelines.definitions"),
            repository_name="__repository__"),
        job_name=job)
    run = DagsterRun(job_name=job, run_id=make_new_run_id(), status=status, tags=tags, remote_job_origin=origin)
    return instance.add_run(run)


def test_a_backfill_cannot_starve_the_nightly_run(dagster_home):
    """The run queue (the daemon's dequeue decision, with deploy/dagster.yaml's limits)."""
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    instance = _instance()
    # A national backfill queued first: 12 periods...
    backfill = [_queued(instance, "period_job", {"dagster/backfill": "nationalbf", "dagster/partition": f"2013-{m:02d}"})
                for m in range(1, 13)]
    # ...then the nightly scan and a sensor run for a new submission.
    nightly = _queued(instance, "scan_job", {"dagster/priority": "10", "dagster/schedule_name": "nightly_scan"})
    sensor = _queued(instance, "period_job", {"dagster/priority": "10", "dagster/partition": "2014-03",
                                              "dagster/sensor_name": "landing_sensor"})
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    picked = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
    ids = [r.run_id for r in picked]
    # Priority first, then at most 2 backfill runs, within max_concurrent_runs (4).
    assert ids[:2] == [nightly.run_id, sensor.run_id]
    assert len([r for r in picked if r.tags.get("dagster/backfill")]) == 2
    assert len(picked) <= instance.get_concurrency_config().run_queue_config.max_concurrent_runs

    # With two backfill runs already going, the queue starts no third one, and still the nightly.
    # Two backfill runs start (a RUN_START event, as the launcher's worker writes it).
    for run in backfill[:2]:
        instance.handle_new_event(_run_start_event(run))
    assert instance.get_run_by_id(backfill[0].run_id).status == DagsterRunStatus.STARTED
    picked = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
    assert [r.run_id for r in picked] == [nightly.run_id, sensor.run_id]

    # Two runs of the same period never run together.
    same = _queued(instance, "period_job", {"dagster/partition": "2014-03"})
    picked = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
    assert same.run_id not in [r.run_id for r in picked]


def _run_start_event(run: DagsterRun):
    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.events.log import EventLogEntry

    event = DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=run.job_name)
    return EventLogEntry(error_info=None, level=20, user_message="", run_id=run.run_id,
                         timestamp=datetime.now(timezone.utc).timestamp(), dagster_event=event)
