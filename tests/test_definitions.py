"""The Dagster definitions load, hold every asset, check, job, schedule and sensor, and pass
`dagster definitions validate` as the UI would load them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipelines import schemas, stages

ROOT = Path(__file__).resolve().parents[1]


def _defs():
    from pipelines.definitions import defs

    return defs


def test_every_published_dataset_is_an_asset():
    keys = {k.to_user_string() for k in _defs().resolve_asset_graph().get_all_asset_keys()}
    for ds in schemas.datasets("public"):
        assert ds.name in keys, ds.name
    for name in ("landing_scan", "reference_data", "gp_bronze", "sus_apc_bronze", "fft_bronze", "hes_apc_bronze",
                 "sus_apc_current", "fft_current", "linked_episodes_work", "release_candidate", "published"):
        assert name in keys, name


def test_blocking_checks_guard_publication_and_rows():
    graph = _defs().resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name): graph.get_check_spec(k) for k in graph.asset_check_keys}
    # disclosure control blocks the offending dataset and period in the release stage, not
    # the asset: every other dataset is still published (outputs.md)
    assert not checks[("release_candidate", "disclosure_control")].blocking
    assert not checks[("submissions", "disclosure_control")].blocking
    for feed in ("gp", "sus_apc", "fft"):
        assert checks[(f"{feed}_bronze", "rows_accounted_for")].blocking
        assert not checks[(f"{feed}_bronze", "no_held_submissions")].blocking


def test_jobs_schedules_sensors():
    from pipelines.partitions import period_partitions

    defs = _defs()
    assert defs.resolve_job_def("period_job").partitions_def == period_partitions
    sched = defs.get_schedule_def("nightly_scan")
    assert sched.cron_schedule == "0 2 * * *" and sched.execution_timezone == "Europe/London"
    names = {s.name for s in defs.sensors}
    assert {"landing_sensor", "run_failure_alert"} <= names


def _job_assets(job_name: str) -> set[str]:
    job = _defs().resolve_job_def(job_name)
    return {k.to_user_string() for k in job.asset_layer.selected_asset_keys}


def test_the_daemon_publishes_the_submissions_ledger():
    """The public ledger is in what the daemon runs: the nightly schedule's scan_job, and the
    ledger_job the landing sensor requests after the periods' runs."""
    defs = _defs()
    assert "submissions" in _job_assets("scan_job")
    assert _job_assets("ledger_job") == {"submissions", "feedback_packs"}
    assert "submissions" not in _job_assets("period_job")  # one writer at a time, not one per period
    sensor = defs.get_sensor_def("landing_sensor")
    assert {t.job_name for t in sensor.targets} == {"period_job", "ledger_job"}
    # Every public dataset is materialised by some job the daemon starts.
    daemon_jobs = {defs.get_schedule_def("nightly_scan").job_name} | {t.job_name for t in sensor.targets}
    covered = set().union(*(_job_assets(j) for j in daemon_jobs))
    for ds in schemas.datasets("public"):
        assert ds.name in covered, ds.name


def test_period_partitions_are_dynamic_months_of_any_year():
    from pipelines.partitions import is_period, partition_requests, period_partitions, plan

    assert isinstance(period_partitions, dg.DynamicPartitionsDefinition)
    graph = _defs().resolve_asset_graph()
    partitioned = [k for k in graph.get_all_asset_keys() if graph.get(k).partitions_def is not None]
    assert len(partitioned) > 10
    assert all(graph.get(k).partitions_def == period_partitions for k in partitioned)
    for key in ("1801-01", "1989-01", "2001-04", "2099-12"):
        assert is_period(key), key
    for key in ("2014-13", "2014-00", "2014-1", "201401", "\uff12\uff10\uff11\uff14-01", "2014-01 ", ""):
        assert not is_period(key), key
    assert plan(["2014-01", "2001-04"], ["2001-04", "2099-12", "1801-01"]) == (["1801-01", "2099-12"], ["2014-01"])
    # In calendar order: later months already there are added again after an earlier one.
    assert plan(["2014-01", "2014-02"], ["2001-04", "2014-01", "2014-02"], in_order=True) == (
        ["2001-04", "2014-01", "2014-02"], ["2014-01", "2014-02"])
    assert plan(["2014-01", "2014-02"], ["2014-01", "2014-03"], in_order=True) == (["2014-03"], ["2014-02"])
    with pytest.raises(ValueError, match="not a period"):
        plan([], ["2014-13"])
    reqs = partition_requests(["2014-01"], ["2001-04"])
    assert [(type(r).__name__, list(r.partition_keys)) for r in reqs] == [
        ("DeleteDynamicPartitionsRequest", ["2014-01"]), ("AddDynamicPartitionsRequest", ["2001-04"])]
    assert partition_requests(["2001-04"], ["2001-04"]) == []


def test_no_time_window_mapping_between_periods():
    """A time-window mapping cannot map dynamic partitions: the outcomes window depends on
    its own period's linkage and reads the window itself (stages.outcome_outputs)."""
    graph = _defs().resolve_asset_graph()
    window = dg.AssetKey("consultant_outcomes")
    assert dg.AssetKey("linked_episodes_work") in graph.get(window).parent_keys
    for key in graph.get_all_asset_keys():
        for parent in graph.get(key).parent_keys:
            mapping = graph.get_partition_mapping(key, parent)
            assert not isinstance(mapping, dg.TimeWindowPartitionMapping), (key, parent)


def test_sync_periods_keeps_the_instance_to_the_months_with_data():
    from pipelines.partitions import PERIODS, sync_periods

    with dg.DagsterInstance.ephemeral() as instance:
        assert sync_periods(instance, ["2001-04", "1801-01", "2002-03"]) == (["1801-01", "2001-04", "2002-03"], [])
        assert sorted(instance.get_dynamic_partitions(PERIODS)) == ["1801-01", "2001-04", "2002-03"]
        # The 1801 file removed, one of next year's arrived.
        assert sync_periods(instance, ["2001-04", "2002-03", "2099-01"]) == (["2099-01"], ["1801-01"])
        assert sorted(instance.get_dynamic_partitions(PERIODS)) == ["2001-04", "2002-03", "2099-01"]
        assert sync_periods(instance, ["2001-04", "2002-03", "2099-01"]) == ([], [])
        # Historical data arrive after: the list stays in calendar order (the UI's ranges,
        # `dagster job backfill --from --to`).
        assert sync_periods(instance, ["1989-01", "2001-04", "2002-03", "2099-01"]) == (["1989-01"], [])
        assert list(instance.get_dynamic_partitions(PERIODS)) == ["1989-01", "2001-04", "2002-03", "2099-01"]
        assert list(instance.get_dynamic_partitions(PERIODS)) == period_partitions_keys(instance)


def period_partitions_keys(instance) -> list[str]:
    from pipelines.partitions import period_partitions

    return list(period_partitions.get_partition_keys(dynamic_partitions_store=instance))


def test_dagster_definitions_validate_passes():
    exe = Path(sys.executable).with_name("dagster")
    res = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed validation" in (res.stdout + res.stderr)


def test_each_stage_dataset_list_matches_the_declarations():
    public = {d.name for d in schemas.datasets("public")}
    assert set(stages.PUBLIC_DATASETS) | {"submissions", "revisions"} == public
    assert set(stages.RESTRICTED_DATASETS) == {d.name for d in schemas.datasets("restricted")}
    _ = dg


def test_every_check_a_bronze_stage_reports_is_declared_on_its_asset():
    """Dagster refuses a check result it was not told of (the whole step fails): every check
    ``stages.ingest_checks`` can return for a feed is declared on that feed's asset."""
    graph = _defs().resolve_asset_graph()
    declared = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    md = {"submissions": [], "rejected_files": [], "objection_warnings": [{"file_name": "x", "warning": "w"}]}
    for feed in ("gp", "sus_apc", "fft"):
        names = {c["name"] for c in stages.ingest_checks({"metadata": dict(md), "source": feed, "failing_rules": None})}
        assert names and {(f"{feed}_bronze", n) for n in names} <= declared, feed
    assert ("gp_bronze", "no_unrecognised_objections") in declared
