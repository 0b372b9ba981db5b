"""``caredata run`` in Dagster's terms: each stage a named job of the Definitions (not
``__ephemeral_asset_job__``), each period's run tagged with its period and listed under its
job and code location as the UI finds them, each asset-check result recorded for its period.

One small run (two periods: 1989-01 and next year's January, tests/test_end_to_end.py's
hand-made landing zone) into a throwaway DAGSTER_HOME, then its runs and check results read
back from that instance."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pytest

from pipelines.definitions import LOCATION, REPOSITORY, defs
from pipelines.runner import PERIOD_TAG, RunSummary, operator

RUNNER_JOBS = ("landing_job", "ingest_job", "link_job", "publish_job", "ledger_job")
PERIOD_JOBS = ("ingest_job", "link_job", "publish_job")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pipelines.config import Settings
    from pipelines.runner import run_pipeline

    from test_end_to_end import _any_month_landing, _env

    root = tmp_path_factory.mktemp("runner-jobs")
    next_year = date.today().year + 1
    landing = _any_month_landing(root / "landing", next_year)
    home = root / "dagster_home"
    with _env(DAGSTER_HOME=str(home)):
        settings = Settings.load(env={}, landing=str(landing), warehouse=str(root / "wh"),
                                 publish=str(root / "pub"), demo_mode=True)
        summary: RunSummary = run_pipeline(settings, progress=lambda m: None, log_level="CRITICAL")
        instance = dg.DagsterInstance.get()
        try:
            yield summary, instance, ["1989-01", f"{next_year}-01"]
        finally:
            instance.dispose()


def test_every_runner_stage_is_a_job_of_the_definitions():
    from pipelines.partitions import period_partitions

    for name in RUNNER_JOBS:
        job = defs.resolve_job_def(name)
        assert job.name == name
    for name in PERIOD_JOBS:
        assert defs.resolve_job_def(name).partitions_def == period_partitions, name
    # The stages together are everything the daemon's jobs run, each asset once.
    def assets(name):
        return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.selected_asset_keys}
    stages = [assets(n) for n in RUNNER_JOBS]
    assert sum(len(s) for s in stages) == len(set().union(*stages))
    assert set().union(*stages) == assets("scan_job") | assets("period_job")


def test_runs_are_named_jobs_tagged_with_their_period(runs):
    summary, instance, periods = runs
    assert summary.ok, summary
    assert summary.periods == periods
    got = [instance.get_run_by_id(r) for r in summary.run_ids]
    assert [r.job_name for r in got] == (["landing_job"] + ["ingest_job"] * 2 + ["link_job"] * 2
                                         + ["publish_job"] * 2 + ["ledger_job"])
    assert not any(r.job_name.startswith("__") for r in got)
    for run in got:
        assert run.tags["caredata/trigger"] == "caredata run"
        assert run.tags["user"] == operator()  # the UI's "Launched by", not "Manually launched"
        # the daemon does not retry a run of `caredata run` behind the operator's back
        assert run.tags["dagster/max_retries"] == "0"
        if run.job_name in PERIOD_JOBS:
            assert run.tags[PERIOD_TAG] == run.tags["dagster/partition"]
            assert run.tags[PERIOD_TAG] in periods
        else:
            assert PERIOD_TAG not in run.tags and "dagster/partition" not in run.tags
    # Findable by period: the three stages of 1989-01, and nothing of another period.
    by_period = instance.get_runs(dg.RunsFilter(tags={PERIOD_TAG: "1989-01"}))
    assert sorted(r.job_name for r in by_period) == sorted(PERIOD_JOBS)
    assert {r.tags["dagster/partition"] for r in by_period} == {"1989-01"}


def test_runs_are_listed_under_their_job_in_the_code_location(runs):
    """What the UI's Jobs page and Overview timeline filter on: the repository label tag and
    the run's job origin (repository and code location of workspace.yaml)."""
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    summary, instance, _ = runs
    label = f"{REPOSITORY}@{LOCATION}"
    for run_id in summary.run_ids:
        run = instance.get_run_by_id(run_id)
        origin = run.remote_job_origin
        assert origin is not None, run.job_name
        assert origin.job_name == run.job_name
        assert origin.repository_origin.repository_name == REPOSITORY
        assert origin.repository_origin.code_location_origin.location_name == LOCATION
        assert run.tags[REPOSITORY_LABEL_TAG] == label
    # The Jobs page's history of link_job: its two runs.
    history = instance.get_runs(dg.RunsFilter(job_name="link_job", tags={REPOSITORY_LABEL_TAG: label}))
    assert len(history) == 2


def test_asset_check_results_are_recorded_per_period(runs):
    summary, instance, periods = runs
    seen = {}
    for run_id in summary.run_ids:
        for rec in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = rec.dagster_event.event_specific_data
            run = instance.get_run_by_id(run_id)
            key = (data.asset_key.to_user_string(), data.check_name)
            # the ledger (all periods at once) and the HES extract (its rows bring their own months)
            if key in (("submissions", "disclosure_control"), ("hes_apc_bronze", "schema_drift")):
                assert data.partition is None
                continue
            assert data.partition == run.tags[PERIOD_TAG], key
            assert data.metadata["period"].value == data.partition, key
            seen.setdefault(key, set()).add(data.partition)
    for key in [("gp_bronze", "validity"), ("sus_apc_bronze", "rows_accounted_for"),
                ("release_candidate", "disclosure_control"), ("revisions", "disclosure_control")]:
        assert seen.get(key) == set(periods), (key, seen.get(key))
    # Each period keeps its own latest result: the later period's run does not hide the first's.
    from dagster._core.event_api import PartitionKeyFilter

    key = dg.AssetCheckKey(dg.AssetKey("gp_bronze"), "validity")
    for period in periods:
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [key], partition_filter=PartitionKeyFilter(key=period))[key]
        assert latest.partition == period
        assert latest.event.dagster_event.event_specific_data.metadata["period"].value == period
