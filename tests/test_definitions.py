"""The Dagster definitions load, hold every asset, check, job, schedule and sensor, and pass
`dagster definitions validate` as the UI would load them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg

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
    defs = _defs()
    assert defs.get_job_def("period_job").partitions_def is not None
    sched = defs.get_schedule_def("nightly_scan")
    assert sched.cron_schedule == "0 2 * * *" and sched.execution_timezone == "Europe/London"
    names = {s.name for s in defs.sensors}
    assert {"landing_sensor", "run_failure_alert"} <= names


def test_period_partitions_are_months():
    from pipelines.partitions import period_partitions

    keys = period_partitions.get_partition_keys()
    assert "2014-01" in keys and all(len(k) == 7 and k[4] == "-" for k in keys)


def test_dagster_definitions_validate_passes():
    exe = Path(sys.executable).with_name("dagster")
    res = subprocess.run([str(exe), "definitions", "validate", "-w", "workspace.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed validation" in (res.stdout + res.stderr)


def test_each_stage_dataset_list_matches_the_declarations():
    public = {d.name for d in schemas.datasets("public")}
    assert set(stages.PUBLIC_DATASETS) | {"submissions"} == public
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
