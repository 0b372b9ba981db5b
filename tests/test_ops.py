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
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus

pytestmark = pytest.mark.ops

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


def _sensor_context(defs, instance: dg.DagsterInstance):
    """A sensor's context as the daemon builds it: the instance by reference (the period
    partitions are dynamic, read from the instance)."""
    return dg.build_sensor_context(definitions=defs, instance=instance, instance_ref=instance.get_ref())


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
    # One scan at a time: the tag scan_job carries is limited to one run.
    from schedules import scan_job

    assert scan_job.tags.get("caredata/serial") == "scan"
    assert limits["caredata/serial"] == {"key": "caredata/serial", "value": "scan", "limit": 1}
    assert config.run_queue_config.max_concurrent_runs > limits["dagster/backfill"]["limit"]
    assert config.pool_config.default_pool_limit == 1
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert instance.run_monitoring_enabled
    # No newsletter dialog in the UI (docs/runbook.md, deploy step 3).
    assert instance.nux_enabled is False
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

    from schedules import PRIORITY_TAGS, nightly_scan

    instance = _instance()
    # A national backfill queued first: 12 periods...
    backfill = [_queued(instance, "period_job", {"dagster/backfill": "nationalbf", "dagster/partition": f"2013-{m:02d}"})
                for m in range(1, 13)]
    # ...then the nightly scan and a sensor run for a new submission.
    nightly = _queued(instance, "scan_job", {**nightly_scan.tags, "dagster/schedule_name": "nightly_scan"})
    sensor = _queued(instance, "period_job", {**PRIORITY_TAGS, "dagster/partition": "2014-03",
                                              "dagster/sensor_name": "landing_sensor"})
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    picked = daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), None)
    ids = [r.run_id for r in picked]
    # Priority first, then at most 2 backfill runs, within max_concurrent_runs (4).
    assert ids[:2] == [nightly.run_id, sensor.run_id]
    assert len([r for r in picked if r.tags.get("dagster/backfill")]) == 2
    assert len(picked) <= instance.get_concurrency_config().run_queue_config.max_concurrent_runs

    # Two backfill runs start (a RUN_START event, as the launcher's worker writes it): the
    # queue then starts no third one, and still the nightly and the sensor's run.
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


# --------------------------------------------------------------------------- schedule
def test_nightly_schedule_is_0200_london_time_all_year():
    from dagster._utils.schedules import cron_string_iterator

    from schedules import nightly_scan, scan_job

    assert nightly_scan.cron_schedule == "0 2 * * *"
    assert nightly_scan.execution_timezone == "Europe/London"
    assert nightly_scan.job_name == scan_job.name
    assert nightly_scan.default_status == dg.DefaultScheduleStatus.RUNNING

    # 02:00 in London is 02:00 UTC in winter and 01:00 UTC in summer (BST); the night the
    # clocks go forward (29 March 2026) it still runs once, at 02:00 BST.
    start = datetime(2026, 3, 27, 12, tzinfo=timezone.utc).timestamp()
    ticks = cron_string_iterator(start, nightly_scan.cron_schedule, nightly_scan.execution_timezone)
    got = [next(ticks) for _ in range(3)]
    assert [t.astimezone(LONDON).strftime("%Y-%m-%d %H:%M") for t in got] == [
        "2026-03-28 02:00", "2026-03-29 02:00", "2026-03-30 02:00"]
    assert [t.astimezone(timezone.utc).hour for t in got] == [2, 1, 1]

    # Evaluated at a tick, it asks for one scan run, at the front of the queue.
    ctx = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 15, 2, 0, tzinfo=LONDON))
    data = nightly_scan.evaluate_tick(ctx)
    assert len(data.run_requests) == 1
    assert nightly_scan.tags["dagster/priority"] == "10"


# --------------------------------------------------------------------------- landing sensor
def test_landing_sensor_requests_one_run_per_pending_period_and_skips_when_nothing_is_new(monkeypatch, tmp_path):
    from pipelines import stages
    from pipelines.definitions import defs
    from pipelines.partitions import PERIODS
    from schedules import landing_sensor, period_job

    for key in ("LANDING", "WAREHOUSE", "PUBLISH"):
        monkeypatch.setenv(f"CAREDATA_{key}", str(tmp_path / key.lower()))
    pending = {"2014-02": "f2", "2001-04": "f1"}
    monkeypatch.setattr(stages, "pending_periods", lambda settings: dict(pending))

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(PERIODS, ["1801-01"])  # its file was removed
        data = landing_sensor.evaluate_tick(_sensor_context(defs, instance))
        assert [r.partition_key for r in data.run_requests] == ["2001-04", "2014-02"]
        assert [r.run_key for r in data.run_requests] == ["2001-04:f1", "2014-02:f2"]
        assert all(r.job_name == period_job.name for r in data.run_requests)
        assert all(r.tags["dagster/priority"] == "10" for r in data.run_requests)
        # The partitions follow the data: any month added, a month without files removed.
        reqs = {type(r).__name__: sorted(r.partition_keys) for r in data.dynamic_partitions_requests}
        assert reqs == {"AddDynamicPartitionsRequest": ["2001-04", "2014-02"],
                        "DeleteDynamicPartitionsRequest": ["1801-01"]}

        pending.clear()
        data = landing_sensor.evaluate_tick(_sensor_context(defs, instance))
        assert data.run_requests == []
        assert data.skip_message == "no new submissions in the landing zone"


def test_landing_sensor_publishes_the_ledger_after_the_periods(monkeypatch, tmp_path):
    """Nothing pending and the ledger changed after its publication: a ledger_job run, but
    only once no period run is queued or running."""
    from pipelines import stages
    from pipelines.definitions import defs
    from schedules import landing_sensor, ledger_job

    for key in ("LANDING", "WAREHOUSE", "PUBLISH"):
        monkeypatch.setenv(f"CAREDATA_{key}", str(tmp_path / key.lower()))
    monkeypatch.setattr(stages, "pending_periods", lambda settings: {})
    monkeypatch.setattr(stages, "periods", lambda settings: [])
    stale = {"fp": "abc123"}
    monkeypatch.setattr(stages, "ledger_to_publish", lambda settings: stale["fp"])

    with dg.instance_for_test() as instance:
        def tick():
            return landing_sensor.evaluate_tick(_sensor_context(defs, instance))

        running = _queued(instance, "period_job", {"dagster/partition": "2014-01"}, status=DagsterRunStatus.STARTED)
        assert tick().run_requests == []  # a period is still being run: its outcomes come first
        instance.report_run_canceled(running)
        data = tick()
        assert [(r.job_name, r.run_key) for r in data.run_requests] == [(ledger_job.name, "ledger:abc123")]
        assert data.run_requests[0].tags["dagster/priority"] == "10"
        stale["fp"] = None  # published since
        assert tick().run_requests == []


def test_ledger_to_publish_follows_the_ledger_and_its_publication(tmp_path, monkeypatch):
    _need("pipelines.ingest", "pending_periods")
    from pipelines import stages
    from pipelines.config import Settings

    landing = tiny_landing(tmp_path / "landing")
    _roots(tmp_path, monkeypatch, landing)
    settings = Settings.load()
    assert stages.ledger_to_publish(settings) is None  # no ledger yet
    stages.scan(settings)
    assert stages.ledger_to_publish(settings) is None  # files seen, none taken in: not in the dataset
    stages.load_reference(settings)
    first = stages.ledger_to_publish(settings)
    assert first
    assert stages.publish_submissions(settings)["rows"] == 3
    assert stages.ledger_to_publish(settings) is None
    time.sleep(1.1)  # (mtimes of a coarse file system)
    stages.ingest_feed(settings, "gp", "2014-01")
    second = stages.ledger_to_publish(settings)
    assert second and second != first
    stages.publish_submissions(settings)
    assert stages.ledger_to_publish(settings) is None


# --------------------------------------------------------------------------- run-failure alert
class _Receiver:
    """A webhook receiver on loopback: keeps every JSON body POSTed to it."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_run_failure_alert_posts_to_the_webhook(dagster_home, monkeypatch):
    _need("pipelines.notify", "notify")
    from schedules import run_failure_alert

    @dg.asset
    def flaky() -> None:
        raise RuntimeError("S3 read timed out")

    instance = _instance()
    result = dg.materialize([flaky], instance=instance, raise_on_error=False,
                            tags={"dagster/partition": "2014-02"})
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    failure = [e for e in instance.all_logs(result.run_id)
               if e.dagster_event and e.dagster_event.event_type_value in ("RUN_FAILURE", "PIPELINE_FAILURE")]
    assert failure

    def evaluate():
        ctx = dg.build_run_status_sensor_context(
            sensor_name="run_failure_alert", dagster_event=failure[-1].dagster_event,
            dagster_instance=instance, dagster_run=run).for_run_failure()
        return run_failure_alert(ctx)

    # No webhook configured: nothing is sent, and the tick says why.
    assert isinstance(evaluate(), dg.SkipReason)

    with _Receiver() as hook:
        monkeypatch.setenv("CAREDATA_DATA_QUALITY__WEBHOOK_URL", hook.url)
        evaluate()
    assert len(hook.received) == 1
    body = hook.received[0]
    assert body["event"] == "run_failed" and body["run_id"] == result.run_id
    assert body["period"] == "2014-02"
    assert result.run_id in body["text"] and "failed" in body["text"]

    # A bad configuration (what fails such runs) must not silence the alert: it goes to the
    # webhook named in the environment, and says what is wrong.
    with _Receiver() as hook:
        monkeypatch.setenv("CAREDATA_DATA_QUALITY__WEBHOOK_URL", hook.url)
        monkeypatch.setenv("CAREDATA_DISCLOSURE__SMALL_COUNT_MAX", "0")
        evaluate()
    assert len(hook.received) == 1
    assert "the configuration is wrong" in hook.received[0]["text"]
    assert "small_count_max" in hook.received[0]["text"]


# --------------------------------------------------------------------------- on the pipeline
def _epraccur_row(code: str) -> str:
    cols = [""] * 27
    cols[0], cols[1], cols[9], cols[10], cols[12], cols[14], cols[25] = (
        code, "THE SURGERY", "TS1 1AA", "19740401", "A", "00K", "4")
    return ",".join(cols)


def _gp_extract(n: int, seed: int) -> str:
    from pipelines.nhs_number import with_check_digit

    rows, i = [], 0
    while len(rows) < n:
        nine = f"{400000000 + seed * 1000 + i:09d}"
        i += 1
        nhs = with_check_digit(nine)
        if nhs:
            rows.append(f"{nhs},1950-0{1 + len(rows) % 9}-15,{1 + len(rows) % 2},TS1 1AA,,A,2001-01-01,,,")
    return ("NHS_NUMBER,DATE_OF_BIRTH,SEX,POSTCODE,LSOA,ETHNIC_CATEGORY,REGISTRATION_DATE,"
            "DEREGISTRATION_DATE,DATE_OF_DEATH,OBJECTION\n" + "\n".join(rows) + "\n")


def held_gp_extract(n: int = 8) -> str:
    """A GP extract whose every row is rejected (a SEX that is no code): held. (An
    unreadable objection code would not do: such a row is read as type 1 and dropped.)"""
    return ("NHS_NUMBER,DATE_OF_BIRTH,SEX,POSTCODE,LSOA,ETHNIC_CATEGORY,REGISTRATION_DATE,"
            "DEREGISTRATION_DATE,DATE_OF_DEATH,OBJECTION\n"
            + "".join(f"12345678{i:02d},1950-01-01,7,TS1 1AA,,A,2001-01-01,,,\n" for i in range(n)))


def tiny_landing(root: Path) -> Path:
    """Reference files and two GP extracts (periods 2014-01 and 2014-02)."""
    files = {
        "reference/epraccur.csv": _epraccur_row("A81001") + "\n" + _epraccur_row("A81002") + "\n",
        "reference/providers.csv": "PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRGT,CAMBRIDGE UNIVERSITY HOSPITALS,00K\n",
        "reference/sites.csv": "SITE_CODE,PROVIDER_CODE,NAME\nRGT01,RGT,ADDENBROOKE'S\n",
        "gp/GP_A81001_20140131.csv": _gp_extract(5, 1),
        "gp/GP_A81002_20140228.csv": _gp_extract(5, 2),
    }
    for name, text in files.items():
        _land(root / name, text)
    return root


def _land(path: Path, text: str) -> None:
    """Write a landing file as a supplier would: some time before the pipeline looks. (The
    ledger keeps first-seen times to the second: a file modified in the very second it was
    first seen counts as modified since, and stays pending.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    past = time.time() - 3600
    os.utime(path, (past, past))


def _roots(tmp_path: Path, monkeypatch, landing: Path | None = None) -> dict[str, str]:
    roots = {"landing": str(landing or tmp_path / "landing"), "warehouse": str(tmp_path / "warehouse"),
             "publish": str(tmp_path / "publish")}
    for k, v in roots.items():
        monkeypatch.setenv(f"CAREDATA_{k.upper()}", v)
    monkeypatch.setenv("CAREDATA_DEMO_MODE", "1")
    return roots


def _resources(roots: dict[str, str], tmp_path: Path) -> dict:
    from pipelines.resources import CareDataConfig

    return {"caredata": CareDataConfig(landing=roots["landing"], warehouse=roots["warehouse"],
                                       publish=roots["publish"], demo_mode=True),
            "io_manager": dg.FilesystemIOManager(base_dir=str(tmp_path / "io"))}


def test_scan_and_reference_data_materialise_into_postgres(postgres, pg_database, dagster_home, tmp_path, monkeypatch):
    _need("pipelines.ingest", "scan_landing")
    from assets import ALL_ASSETS, landing_scan, reference_data

    roots = _roots(tmp_path, monkeypatch, tiny_landing(tmp_path / "landing"))
    instance = _instance()
    result = dg.materialize(ALL_ASSETS, selection=dg.AssetSelection.assets(landing_scan, reference_data),
                            resources=_resources(roots, tmp_path), instance=instance)
    assert result.success
    scan = instance.fetch_materializations(dg.AssetKey("landing_scan"), limit=5).records
    assert len(scan) == 1 and scan[0].run_id == result.run_id
    assert scan[0].asset_materialization.metadata["new_files"].value == 5
    assert instance.fetch_materializations(dg.AssetKey("reference_data"), limit=5).records

    rows = postgres.psql(pg_database, "SELECT k.asset_key, count(*) FROM event_logs e JOIN asset_keys k "
                                      "ON e.asset_key = k.asset_key WHERE e.dagster_event_type = 'ASSET_MATERIALIZATION' "
                                      f"AND e.run_id = '{result.run_id}' GROUP BY k.asset_key ORDER BY 1")
    assert [(json.loads(k)[0], int(n)) for k, n in rows] == [("landing_scan", 1), ("reference_data", 1)]


def test_landing_sensor_on_a_real_landing_zone(tmp_path, monkeypatch):
    """New files -> one run request per period; once taken in, nothing; a resubmission ->
    a request for its period only, with a new run key."""
    _need("pipelines.ingest", "pending_periods")
    from pipelines import stages
    from pipelines.config import Settings
    from pipelines.definitions import defs
    from schedules import landing_sensor

    landing = tiny_landing(tmp_path / "landing")
    _roots(tmp_path, monkeypatch, landing)
    settings = Settings.load()
    (tmp_path / "dagster_home").mkdir()
    instance = dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")).__enter__()

    def tick():
        return landing_sensor.evaluate_tick(_sensor_context(defs, instance))

    first = tick()
    assert [r.partition_key for r in first.run_requests] == ["2014-01", "2014-02"]

    stages.load_reference(settings)
    for period in ("2014-01", "2014-02"):
        stages.ingest_feed(settings, "gp", period)
    ledger = tick()  # the periods' outcomes are in the ledger, not yet published
    assert [r.job_name for r in ledger.run_requests] == ["ledger_job"]
    stages.publish_submissions(settings)
    nothing = tick()
    assert nothing.run_requests == [] and "no new submissions" in nothing.skip_message

    _land(landing / "gp" / "GP_A81002_20140227.csv", _gp_extract(6, 3))  # one more file for 2014-02
    again = tick()
    assert [r.partition_key for r in again.run_requests] == ["2014-02"]
    old_key = next(r.run_key for r in first.run_requests if r.partition_key == "2014-02")
    assert again.run_requests[0].run_key != old_key


# --------------------------------------------------------------------------- backfill, resubmission
def _cli(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / args[0]
    out = subprocess.run([str(exe), *args[1:]], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _latest_period_runs(instance) -> dict:
    """The newest period_job run of each period (a retry is a newer run of the same period)."""
    latest = {}
    for run in instance.get_runs():  # newest first
        if run.job_name == "period_job":
            latest.setdefault(run.tags.get("dagster/partition"), run)
    return latest


def _settled(instance) -> bool:
    """Every period's newest run has finished, and none of them is about to be retried."""
    runs = _latest_period_runs(instance).values()
    return bool(runs) and all(
        r.is_finished and not (r.status == DagsterRunStatus.FAILURE and r.tags.get("dagster/will_retry") == "true")
        for r in runs)


def _failures(instance) -> str:
    """Every failed step's error, for an assertion message."""
    out = []
    for run in instance.get_runs():
        for e in instance.all_logs(run.run_id):
            ev = e.dagster_event
            if ev and ev.event_type_value in ("STEP_FAILURE", "RUN_FAILURE", "PIPELINE_FAILURE"):
                err = getattr(ev.event_specific_data, "error", None)
                out.append(f"{run.tags.get('dagster/partition')} {ev.step_key}: {e.message} "
                           f"{err.to_string()[-1500:] if err else ''}")
    return "\n".join(out)


def _digests(root: Path, must_contain: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and must_contain in str(p.relative_to(root))}


def _resubmit_one_bulk(landing: Path, warehouse: str, period: str) -> tuple[str, str]:
    """A corrected BULK resubmission of one provider's taken-in submission for ``period``
    (its last episode dropped), submitted later. Returns (original name, new name)."""
    import gzip

    from pipelines import ingest
    from pipelines.storage import Store
    from pipelines.warehouse import Warehouse

    ledger = ingest.read_ledger(Warehouse(Store(warehouse))).to_pylist()
    taken = sorted(r["file_name"] for r in ledger
                   if r["source"] == "sus_apc" and r["status"] == "current" and r["reporting_period"] == period
                   and r["file_name"].endswith("_BULK.csv"))
    assert taken, "the generated landing zone has no current BULK submission to correct"
    original = taken[0]
    provider = Path(original).name.split("_")[1]
    raw = (landing / original).read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8-sig")
    lines = text.splitlines(keepends=True)
    assert len(lines) > 2
    new = f"sus_apc/APC_{provider}_{period.replace('-', '')}_{int(period[:4]) + 1}0101120000_BULK.csv"
    _land(landing / new, "".join(lines[:-1]))
    return original, new


def test_backfill_through_the_daemon_then_one_resubmitted_period_reruns_alone(
        postgres, pg_database, dagster_home, tmp_path, monkeypatch):
    """The production path: `dagster job backfill` queues a run per period (tagged as a
    backfill), `dagster-daemon run` takes them off the queue within the limits and runs
    them; everything is recorded in PostgreSQL. Then one provider resubmits a corrected
    period: the sensor asks for that period only, its rerun changes that period and leaves
    every other period's warehouse files as they were, byte for byte."""
    synth = _need("pipelines.synth", "generate")
    _need("pipelines.ingest", "pending_periods")
    from pipelines.definitions import defs
    from schedules import landing_sensor

    landing = tmp_path / "landing"
    synth.generate(landing, seed=0, scale=0.001, months=2, start="2014-01", truth_dir=tmp_path / "truth",
                   progress=False)
    roots = _roots(tmp_path, monkeypatch, landing)
    env = {k: os.environ[k] for k in os.environ if k.startswith(("DAGSTER_", "CAREDATA_"))}

    # As in production, the nightly scan has run first (ledger, reference data, HES).
    from schedules import scan_job

    scan = defs.resolve_job_def(scan_job.name).execute_in_process(
        instance=_instance(), resources={"caredata": _resources(roots, tmp_path)["caredata"]})
    assert scan.success
    # Only the backfill's runs: the landing sensor would otherwise queue the same periods.
    _cli(["dagster", "sensor", "stop", "landing_sensor", "-w", "workspace.yaml"], env)
    out = _cli(["dagster", "job", "backfill", "-w", "workspace.yaml", "-j", "period_job",
                "--from", "2014-01", "--to", "2014-02", "--noprompt"], env)
    assert "Launched backfill job" in out.stdout
    instance = _instance()
    runs = [r for r in instance.get_runs() if r.job_name == "period_job"]
    assert sorted(r.tags["dagster/partition"] for r in runs) == ["2014-01", "2014-02"]
    assert all(r.status == DagsterRunStatus.QUEUED and r.tags.get("dagster/backfill") for r in runs)
    backfill_id = runs[0].tags["dagster/backfill"]

    daemon_log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                              cwd=ROOT, env={**os.environ, **env}, stdout=daemon_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not _settled(instance):
            time.sleep(3)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon_log.close()
    statuses = {p: r.status for p, r in _latest_period_runs(instance).items()}
    assert statuses == {"2014-01": DagsterRunStatus.SUCCESS, "2014-02": DagsterRunStatus.SUCCESS}, \
        _failures(instance) or (tmp_path / "daemon.log").read_text()[-4000:]

    # In PostgreSQL: the backfill, and each period published by a run of that backfill.
    assert any(b.backfill_id == backfill_id for b in instance.get_backfills())
    published = postgres.psql(pg_database, "SELECT e.partition, t.value FROM event_logs e "
                                           "JOIN run_tags t ON t.run_id = e.run_id AND t.key = 'dagster/backfill' "
                                           "WHERE e.dagster_event_type = 'ASSET_MATERIALIZATION' "
                                           "AND e.asset_key = '[\"published\"]' ORDER BY 1")
    assert published == [["2014-01", backfill_id], ["2014-02", backfill_id]]
    checks = postgres.psql(pg_database, "SELECT t.value, c.execution_status FROM asset_check_executions c "
                                        "JOIN run_tags t ON t.run_id = c.run_id AND t.key = 'dagster/partition' "
                                        "WHERE c.check_name = 'disclosure_control' ORDER BY 1, 2")
    print(checks)
    assert ["2014-01", "SUCCEEDED"] in checks and ["2014-02", "SUCCEEDED"] in checks
    print(_failures(instance))  # a failed attempt that a retry then mended, if any

    # A provider resubmits 2014-01, corrected.
    warehouse = Path(roots["warehouse"])
    before_other = _digests(warehouse, "2014-02")
    before_this = _digests(warehouse, "2014-01")
    before_published = _digests(Path(roots["publish"]), "period=2014-02")
    assert before_other and before_this and before_published
    _resubmit_one_bulk(landing, roots["warehouse"], "2014-01")
    tick = landing_sensor.evaluate_tick(_sensor_context(defs, instance))
    assert [r.partition_key for r in tick.run_requests] == ["2014-01"]

    result = defs.resolve_job_def("period_job").execute_in_process(
        partition_key="2014-01", instance=instance, tags=tick.run_requests[0].tags,
        resources={"caredata": _resources(roots, tmp_path)["caredata"]})
    assert result.success
    assert _digests(warehouse, "2014-02") == before_other
    assert _digests(Path(roots["publish"]), "period=2014-02") == before_published
    assert _digests(warehouse, "2014-01") != before_this
    # No period is pending any more; what is left is the ledger's publication.
    after = landing_sensor.evaluate_tick(_sensor_context(defs, instance))
    assert [r.job_name for r in after.run_requests] == ["ledger_job"]


def test_the_daemon_alone_publishes_every_public_dataset_and_the_ledger(
        postgres, pg_database, dagster_home, tmp_path, monkeypatch):
    """The runbook's production set-up and nothing else: the nightly scan (as its schedule
    runs it), then `dagster-daemon run` with the landing sensor on. The sensor adds the
    periods as partitions and asks for a run of each; once they are done it asks for the
    ledger's publication. At the end every public dataset is in the publish root, the
    `submissions` ledger included (every landing file, taken in or rejected, none pending),
    and the partitions are the months with data."""
    synth = _need("pipelines.synth", "generate")
    _need("pipelines.ingest", "pending_periods")
    from pipelines import schemas, stages
    from pipelines.config import Settings
    from pipelines.definitions import defs
    from pipelines.partitions import PERIODS
    from schedules import scan_job

    landing = tmp_path / "landing"
    synth.generate(landing, seed=1, scale=0.001, months=1, start="2014-01", truth_dir=tmp_path / "truth",
                   progress=False)
    _land(landing / "gp" / "GP_A81001_2014.csv", "not an extract\n")  # rejected by its name
    roots = _roots(tmp_path, monkeypatch, landing)
    monkeypatch.setenv("CAREDATA_SENSOR_INTERVAL_SECONDS", "5")
    env = {k: os.environ[k] for k in os.environ if k.startswith(("DAGSTER_", "CAREDATA_"))}
    instance = _instance()
    settings = Settings.load()

    scan = defs.resolve_job_def(scan_job.name).execute_in_process(
        instance=instance, tags={"dagster/schedule_name": "nightly_scan"},
        resources={"caredata": _resources(roots, tmp_path)["caredata"]})
    assert scan.success
    # The scan made the periods partitions (a backfill could run them from here).
    assert sorted(instance.get_dynamic_partitions(PERIODS)) == ["2014-01"]

    def ledger_runs():
        return [r for r in instance.get_runs() if r.job_name == "ledger_job"]

    def done() -> bool:
        return (_settled(instance) and any(r.status == DagsterRunStatus.SUCCESS for r in ledger_runs())
                and all(r.is_finished for r in ledger_runs()) and stages.ledger_to_publish(settings) is None)

    daemon_log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                              cwd=ROOT, env={**os.environ, **env}, stdout=daemon_log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 1500
        while time.monotonic() < deadline and not done():
            time.sleep(3)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        daemon_log.close()
    assert done(), (f"runs: {[(r.job_name, r.tags.get('dagster/partition'), r.status.value) for r in instance.get_runs()]}; "
                    f"ledger to publish: {stages.ledger_to_publish(settings)}\n{_failures(instance)}\n"
                    + (tmp_path / "daemon.log").read_text()[-3000:])
    statuses = {p: r.status for p, r in _latest_period_runs(instance).items()}
    assert statuses == {"2014-01": DagsterRunStatus.SUCCESS}
    assert all(r.tags.get("caredata/trigger") == "landing_sensor" for r in instance.get_runs()
               if r.job_name in ("period_job", "ledger_job"))
    # The ledger's publication came after the periods' runs had finished.
    period_ends = [instance.get_run_record_by_id(r.run_id).end_time for r in instance.get_runs()
                   if r.job_name == "period_job"]
    ledger_ok = [instance.get_run_record_by_id(r.run_id) for r in ledger_runs() if r.status == DagsterRunStatus.SUCCESS]
    assert max(rec.start_time for rec in ledger_ok) >= max(period_ends)

    publish = Path(roots["publish"])
    for ds in schemas.datasets("public"):
        manifest = publish / "public" / ds.name / "_manifest.json"
        assert manifest.exists(), ds.name
        if ds.name != "submissions":
            assert "2014-01" in json.loads(manifest.read_text())["partitions"], ds.name
    import pyarrow.parquet as pq

    ledger = pq.read_table(publish / "public" / "submissions").to_pandas()
    # Named as the public ledger names them: a name that breaks its folder's convention, and
    # a HES extract's free name, by the first 12 hex of the file's SHA-256.
    from pipelines.ingest import public_file_name

    def published_name(p: Path) -> str:
        return public_file_name(p.relative_to(landing).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())

    on_disk = {published_name(p) for p in landing.rglob("*") if p.is_file()}
    assert set(ledger["file_name"]) == on_disk
    assert "pending" not in set(ledger["status"])
    misnamed = published_name(landing / "gp" / "GP_A81001_2014.csv")
    assert misnamed.startswith("gp/unrecognised-")
    assert ledger.set_index("file_name").at[misnamed, "status"] == "rejected"
    assert sorted(instance.get_dynamic_partitions(PERIODS)) == ["2014-01"]
