"""The `caredata` command: configuration checked before any work, and exit codes a scheduler
can trust (0 ok, 1 the run failed, 2 configuration or usage error, 3 storage error)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import sys

import pytest

from pipelines import cli
from pipelines.config import Settings
from pipelines.resources import CareDataConfig
from pipelines.runner import EXIT_FAILED, EXIT_OK, EXIT_STORAGE, EXIT_USAGE, print_summary, run_pipeline

KEY_ENV = ("CAREDATA_PSEUDO_KEY", "CAREDATA_PSEUDO_KEY_FILE", "CAREDATA_DEMO_MODE", "CAREDATA_CONFIG")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """Each test sets the configuration it means; nothing leaks in from the shell."""
    import os

    for name in list(os.environ):
        if name in KEY_ENV or (name.startswith("CAREDATA_") and "__" in name):
            monkeypatch.delenv(name)
    for name in ("CAREDATA_LANDING", "CAREDATA_WAREHOUSE", "CAREDATA_PUBLISH", "CAREDATA_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(args))
    return rc, out.getvalue(), err.getvalue()


def _roots(tmp_path, landing=None):
    return ["--landing", str(landing or tmp_path / "landing"), "--warehouse", str(tmp_path / "wh"),
            "--publish", str(tmp_path / "pub")]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens on it once closed


@pytest.fixture(scope="module")
def small_landing(tmp_path_factory):
    from pipelines.synth import generate

    landing = tmp_path_factory.mktemp("synth") / "landing"
    generate(landing, seed=1, scale=0.0003, months=1, start="2014-01", progress=False)
    return landing


# ------------------------------------------------------------------------ the run itself
def test_bad_submissions_are_held_back_not_a_failure(tmp_path):
    landing = tmp_path / "landing"
    (landing / "sus_apc").mkdir(parents=True)
    (landing / "sus_apc" / "apc_rxx_2014.csv").write_text("PROCODE3,SUSRECID\nRXX,1\n")
    rc, out, _ = _run("run", *_roots(tmp_path))
    assert rc == EXIT_OK, out
    # Named as the public ledger names it: a name that breaks its folder's convention is
    # supplier text, shown by its digest (the warehouse ledger and Dagster keep it whole).
    assert re.search(r"rejected sus_apc/unrecognised-[0-9a-f]{12}: file name does not follow", out), out
    assert "apc_rxx_2014" not in out
    assert "restricted zone: no pseudonymisation key configured" in out


def test_a_storage_failure_during_the_run_is_one_line_the_summary_and_exit_3(tmp_path, capfd):
    landing = tmp_path / "landing"
    (landing / "reference").mkdir(parents=True)
    (landing / "reference" / "providers.csv").write_text("PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRXX,A,00K\n")
    (tmp_path / "wh").mkdir()
    (tmp_path / "wh" / "ledger").write_text("a file where the ledger's folder should be")
    log = tmp_path / "logs" / "run.log"
    rc = cli.main(["run", *_roots(tmp_path), "--log-file", str(log)])
    out, err = capfd.readouterr()
    assert rc == EXIT_STORAGE
    assert "The run failed" in out and "NotADirectoryError" in out
    assert "Periods:" in out and "Held back:" in out  # the summary is printed
    assert f"Full tracebacks: {log}" in out and "Exit status 3" in out
    assert "Traceback" not in out + err and 'File "' not in out + err
    assert 'File "' in log.read_text() and "NotADirectoryError" in log.read_text()  # the stack is in the log


def test_debug_shows_the_tracebacks_on_the_console(tmp_path, capfd):
    landing = tmp_path / "landing"
    (landing / "reference").mkdir(parents=True)
    (landing / "reference" / "providers.csv").write_text("PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRXX,A,00K\n")
    (tmp_path / "wh").mkdir()
    (tmp_path / "wh" / "ledger").write_text("a file where the ledger's folder should be")
    rc = cli.main(["run", *_roots(tmp_path), "--debug", "--log-file", str(tmp_path / "run.log")])
    out, err = capfd.readouterr()
    assert rc == EXIT_STORAGE
    assert 'File "' in err and "NotADirectoryError" in err


@pytest.mark.e2e  # `caredata run` through Dagster on a generated landing zone
def test_a_failed_step_exits_1_and_the_config_file_reaches_every_step(tmp_path, small_landing):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("targets:\n  - {id: t, measure: m, metric: pct_no_such_metric, target_pct: 50.0}\n")
    rc, out, err = _run("run", *_roots(tmp_path, small_landing), "--config", str(cfg),
                        "--log-file", str(tmp_path / "run.log"))
    assert rc == EXIT_FAILED, out + err
    assert "target 't': unknown metric" in out and "Exit status 1" in out
    assert "Traceback" not in out + err
    # the thresholds the steps used (recorded in every manifest) are the --config file's
    manifest = json.loads((tmp_path / "pub" / "public" / "submissions" / "_manifest.json").read_text())
    assert [[t["id"] for t in p["thresholds"]["targets"]] for p in manifest["partitions"].values()] == [["t"]]


@pytest.mark.e2e  # `caredata run` through Dagster on a generated landing zone
def test_no_key_never_writes_replaces_or_relabels_the_restricted_zone(tmp_path, small_landing, monkeypatch):
    """A key of one space is no key: the public zone is published, the restricted zone of an
    earlier run is left exactly as it was (outputs.md "Keys")."""
    rc, out, err = _run("run", *_roots(tmp_path, small_landing), "--demo-mode")
    assert rc == EXIT_OK, out + err
    restricted = tmp_path / "pub" / "restricted"
    before = {p: p.read_bytes() for p in sorted(restricted.rglob("*")) if p.is_file()}
    manifest = json.loads((restricted / "linked_episodes" / "_manifest.json").read_text())
    assert all(p["key_label"].startswith("demo:") for p in manifest["partitions"].values())
    assert before
    # an analyst's copy lost, or a keyed run that stopped before publishing: the keyless
    # run must not write it from the release candidates the keyed run left behind
    import shutil

    shutil.rmtree(restricted / "linked_spells")
    before = {p: b for p, b in before.items() if "linked_spells" not in p.parts}

    monkeypatch.setenv("CAREDATA_PSEUDO_KEY", " ")
    rc, out, err = _run("run", *_roots(tmp_path, small_landing))
    assert rc == EXIT_OK, out + err
    assert "restricted zone: no pseudonymisation key configured" in out
    after = {p: p.read_bytes() for p in sorted(restricted.rglob("*")) if p.is_file()}
    assert after == before and not (restricted / "linked_spells").exists()
    assert "The run failed" not in out and "public     fft_scores" in out  # the public zone is not held up


# ------------------------------------------------------------------------ before any work
def test_configuration_errors_are_reported(tmp_path):
    rc, _, err = _run("run", "--landing", "x", "--warehouse", "y", "--publish", "z",
                      "--config", str(tmp_path / "missing.yaml"))
    assert rc == EXIT_USAGE and "configuration error" in err


@pytest.mark.parametrize("setup, expected", [
    (lambda tmp, mp: (tmp / "c.yaml").write_text("disclosure:\n  small_count_mx: 9\n"),
     "disclosure.small_count_mx"),
    (lambda tmp, mp: mp.setenv("CAREDATA_FFT__LINK_MAX_DAYS", "two"), "fft.link_max_days"),
    (lambda tmp, mp: mp.setenv("CAREDATA_DISCLOSURE__SMALL_COUNT_MAX", "0"), "floor is 7"),
    (lambda tmp, mp: mp.setenv("CAREDATA_FFT__SUPPRESS_MAX_RESPONSES", "1"), "floor is 4"),
    (lambda tmp, mp: mp.setenv("CAREDATA_DISCLOSURE__MIN_DENOMINATOR", "3"), "floor is 8"),
    (lambda tmp, mp: mp.setenv("CAREDATA_PSEUDO_KEY", "s3cr3t-but-short"), "shorter than 32 bytes"),
    (lambda tmp, mp: mp.setenv("CAREDATA_PSEUDO_KEY_FILE", str(tmp / "no.key")), "cannot be read"),
])
def test_bad_configuration_stops_the_run_before_any_work(tmp_path, monkeypatch, setup, expected):
    landing = tmp_path / "landing"
    (landing / "reference").mkdir(parents=True)
    setup(tmp_path, monkeypatch)
    cfg = ["--config", str(tmp_path / "c.yaml")] if (tmp_path / "c.yaml").exists() else []
    rc, out, err = _run("run", *_roots(tmp_path), *cfg)
    assert rc == EXIT_USAGE, out + err
    assert expected in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("caredata: configuration error:")
    assert "s3cr3t" not in out + err
    assert not (tmp_path / "wh").exists() and not (tmp_path / "pub").exists()  # nothing was done


def test_a_landing_root_that_does_not_exist_is_an_error(tmp_path):
    rc, out, err = _run("run", *_roots(tmp_path, tmp_path / "nope"))
    assert rc == EXIT_USAGE
    assert "none found" not in out
    assert f"caredata: error: landing root {tmp_path / 'nope'} does not exist" in err
    assert not (tmp_path / "wh").exists()


def test_a_warehouse_root_that_cannot_be_created_is_an_error(tmp_path):
    (tmp_path / "landing").mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    rc, out, err = _run("run", "--landing", str(tmp_path / "landing"), "--warehouse", str(blocker / "wh"),
                        "--publish", str(tmp_path / "pub"))
    assert rc == EXIT_USAGE
    assert f"warehouse root {blocker / 'wh'} cannot be created" in err
    assert "Traceback" not in out + err


def test_help_documents_the_exit_codes():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = out.getvalue()
    for code in ("0  the run succeeded", "1  the run failed", "2  configuration or usage error", "3  try again later"):
        assert code in text
    assert "--debug" in text and "--log-file" in text
    assert "another run holds the warehouse's lock" in " ".join(text.split())


def test_demo_checks_the_configuration_before_generating_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("CAREDATA_DISCLOSURE__SMALL_COUNT_MAX", "3")
    rc, out, err = _run("demo", "--out", str(tmp_path / "demo"))
    assert rc == EXIT_USAGE and "floor is 7" in err
    assert not (tmp_path / "demo").exists()


# ------------------------------------------------------------------------ S3
def test_an_empty_s3_landing_prefix_is_an_error(s3_bucket):
    bucket, endpoint = s3_bucket
    rc, out, err = _run("run", "--landing", f"s3://{bucket}/landing", "--warehouse", f"s3://{bucket}/wh",
                        "--publish", f"s3://{bucket}/pub", "--s3-endpoint-url", endpoint)
    assert rc == EXIT_USAGE
    assert f"landing root s3://{bucket}/landing holds no object" in err
    assert "none found" not in out


def test_an_s3_bucket_without_access_is_a_storage_error(s3_bucket):
    _, endpoint = s3_bucket
    rc, out, err = _run("run", "--landing", "s3://no-such-bucket-caredata/landing", "--warehouse",
                        "s3://no-such-bucket-caredata/wh", "--publish", "s3://no-such-bucket-caredata/pub",
                        "--s3-endpoint-url", endpoint)
    assert rc == EXIT_STORAGE
    assert "NoSuchBucket" in err and "Traceback" not in out + err
    assert len([line for line in err.splitlines() if line.startswith("caredata: error:")]) == 1


def test_an_unreachable_s3_endpoint_is_one_line_and_exit_3(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    rc = cli.main(["run", "--landing", "s3://b/landing", "--warehouse", "s3://b/wh", "--publish", "s3://b/pub",
                   "--s3-endpoint-url", f"http://127.0.0.1:{_closed_port()}"])
    out, err = capfd.readouterr()
    assert rc == EXIT_STORAGE
    assert "EndpointConnectionError" in err and "Exit status 3" in out
    assert "Traceback" not in out + err and len((out + err).splitlines()) < 12


def test_s3_failures_during_the_run_are_one_line_each_with_the_summary(tmp_path, capfd, monkeypatch):
    """The endpoint fails after the start checks (here: no start check): every failure is
    one line, the summary is printed, the tracebacks are in the named log, exit 3."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    settings = Settings.load(env={}, landing="s3://b/landing", warehouse="s3://b/wh", publish="s3://b/pub",
                             s3_endpoint_url=endpoint)
    log = tmp_path / "run.log"
    summary = run_pipeline(settings, progress=lambda m: print(m, file=sys.stderr), log_level="CRITICAL",
                           preflight=lambda s: None, log_file=str(log))
    print_summary(summary, settings)
    out, err = capfd.readouterr()
    assert summary.exit_code == EXIT_STORAGE
    assert summary.errors and all("\n" not in e for e in summary.errors + summary.failed_steps)
    assert any("EndpointConnectionError" in e for e in summary.errors + summary.failed_steps)
    assert "Periods:" in out and "The run failed:" in out and f"Full tracebacks: {log}" in out
    assert "Traceback" not in out + err and 'File "' not in out + err and len((out + err).splitlines()) < 30
    assert "EndpointConnectionError" in log.read_text() and 'File "' in log.read_text()


# ------------------------------------------------------------------------ the Dagster resource
def test_the_dagster_resource_fails_the_run_before_any_asset(monkeypatch):
    import dagster as dg

    ran = []

    @dg.asset
    def probe(caredata: CareDataConfig):
        ran.append(caredata.landing)  # an asset that does not itself ask for the settings

    monkeypatch.setenv("CAREDATA_DISCLOSURE__SMALL_COUNT_MAX", "2")
    result = dg.materialize([probe], resources={"caredata": CareDataConfig()}, raise_on_error=False)
    assert not result.success and ran == []
    failures = [e for e in result.all_events if e.is_failure]
    assert any("floor is 7" in (e.message or "") or "floor is 7" in str(e.event_specific_data)
               for e in failures), [e.message for e in failures]
    monkeypatch.setenv("CAREDATA_DISCLOSURE__SMALL_COUNT_MAX", "9")
    assert dg.materialize([probe], resources={"caredata": CareDataConfig()}).success and ran


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"caredata {version('caredata')}"


def test_a_dagster_home_without_configuration_gets_one_with_telemetry_off(tmp_path):
    import dagster as dg

    from pipelines.runner import ensure_instance_yaml

    fresh = tmp_path / "fresh"
    ensure_instance_yaml(str(fresh))
    instance = dg.DagsterInstance.from_config(str(fresh))
    assert instance.telemetry_enabled is False
    assert instance.nux_enabled is False  # the UI's newsletter dialog (tests/test_ui.py looks)
    # An operator's own instance configuration is never replaced.
    own = tmp_path / "own"
    own.mkdir()
    (own / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    ensure_instance_yaml(str(own))
    assert (own / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"


# ------------------------------------------------------------------ caredata status
def _ledger(wh_root, events):
    """A hand-made warehouse ledger: one part of raw events (file name, status, reason),
    as scans and ingests write them; ``read_ledger`` derives each file's status."""
    import datetime as dt
    import hashlib

    import pyarrow as pa

    from pipelines import ingest, schemas
    from pipelines.landing import ParsedName
    from pipelines.storage import Store
    from pipelines.warehouse import Warehouse

    ds = schemas.get("ledger")
    rows = []
    for i, (name, status, reason) in enumerate(events):
        parsed = ingest.parse_name(name)
        row = {c: None for c in ds.column_names}
        row.update(file_name=name, submission_id=parsed.submission_id, source=parsed.source,
                   sha256=hashlib.sha256(name.encode()).hexdigest(), size_bytes=10, status=status, reason=reason,
                   first_seen_at=dt.datetime(2026, 12, 1, 12, i, tzinfo=dt.timezone.utc))
        if isinstance(parsed, ParsedName):
            row.update(submitter_code=parsed.submitter_code, reporting_period=parsed.reporting_period,
                       submitted_at=parsed.submitted_at, protocol=parsed.protocol)
        rows.append(row)
    wh = Warehouse(Store(str(wh_root)))
    wh.store.write_parquet(f"{ingest.LEDGER_PARTS}/hand-made.parquet",
                           ds.conform(pa.Table.from_pylist(rows, schema=ds.arrow_schema())))
    return wh


MISNAMED = "sus_apc/apc_rxx_mr_jones_2014.csv"  # supplier text: may name a patient


def _status_ledger(tmp_path):
    return _ledger(tmp_path / "wh", [
        ("sus_apc/APC_RGT_201401_20140205120000_BULK.csv", "taken", None),
        ("sus_apc/APC_RGT_201401_20140210120000_BULK.csv", "taken", None),  # supersedes the one above
        ("sus_apc/APC_RGT_201401_20140212120000_NET.csv", "held", "41% of its rows quarantined (over 20%)"),
        ("fft/FFT_RXX_201401_20140203120000.csv", "seen", None),
        (MISNAMED, "rejected", f"{MISNAMED}: file name does not follow APC_<provider>_<YYYYMM>"),
    ])


def test_status_counts_per_source_and_submitter_and_names_held_files_with_their_reason(tmp_path):
    _status_ledger(tmp_path)
    rc, out, err = _run("status", "--warehouse", str(tmp_path / "wh"))
    assert rc == EXIT_OK, err
    rows = {tuple(line.split()[:2]): [int(n) for n in line.split()[2:]] for line in out.splitlines()
            if line.startswith(("sus_apc", "fft", "total"))}
    #                          current superseded held rejected pending
    assert rows[("sus_apc", "RGT")] == [1, 1, 1, 0, 0]
    assert rows[("fft", "RXX")] == [0, 0, 0, 0, 1]
    assert rows[("sus_apc", "-")] == [0, 0, 0, 1, 0]
    assert "Held files (1):\n  sus_apc/APC_RGT_201401_20140212120000_NET.csv: 41% of its rows quarantined" in out


def test_status_names_an_unconventional_file_by_its_digest_never_its_name(tmp_path, monkeypatch):
    _status_ledger(tmp_path)
    monkeypatch.setenv("CAREDATA_WAREHOUSE", str(tmp_path / "wh"))  # the default warehouse
    rc, out, _ = _run("status")
    assert rc == EXIT_OK
    assert re.search(r"Rejected files \(1\):\n  sus_apc/unrecognised-[0-9a-f]{12}: file name does not follow", out), out
    assert "jones" not in out


def test_status_of_a_warehouse_without_a_ledger_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "wh").mkdir()
    rc, out, err = _run("status", "--warehouse", str(tmp_path / "wh"))
    assert rc == EXIT_USAGE and out == ""
    assert err.strip().count("\n") == 0 and "has no ledger" in err
    rc, _, err = _run("status")
    assert rc == EXIT_USAGE and "CAREDATA_WAREHOUSE" in err


def test_status_lists_the_periods_pending_in_the_landing_zone(tmp_path):
    _status_ledger(tmp_path)
    landing = tmp_path / "landing"
    (landing / "fft").mkdir(parents=True)
    (landing / "fft" / "FFT_RXX_201402_20140303120000.csv").write_text("x\n")
    rc, out, _ = _run("status", "--warehouse", str(tmp_path / "wh"), "--landing", str(landing))
    assert rc == EXIT_OK
    assert "not yet taken in: 2014-02\n" in out


# ---------------------------------------------------------------- the run summary
def test_a_rerun_says_nothing_new_and_each_rejected_file_is_named_once(tmp_path):
    import subprocess

    def run():  # a process of its own: the console as an operator sees it (pytest captures logging)
        p = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", *_roots(tmp_path)],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == EXIT_OK, p.stdout + p.stderr
        return p.stdout, p.stdout + p.stderr

    landing = tmp_path / "landing"
    (landing / "sus_apc").mkdir(parents=True)
    (landing / "sus_apc" / "apc_rxx_2014.csv").write_text("PROCODE3,SUSRECID\nRXX,1\n")
    out, console = run()
    assert "Nothing new" not in out
    # on the console (progress and summary together), the rejected file is named once
    assert len(re.findall(r"sus_apc/unrecognised-[0-9a-f]{12}", console)) == 1, console
    out, console = run()
    assert "Nothing new: no file was taken in since the last run" in out
    assert len(re.findall(r"sus_apc/unrecognised-[0-9a-f]{12}", console)) == 1, console
    # a new file: something new again
    (landing / "sus_apc" / "apc_ryy_2014.csv").write_text("PROCODE3,SUSRECID\nRYY,1\n")
    out, console = run()
    assert "Nothing new" not in out and len(re.findall(r"unrecognised-[0-9a-f]{12}", console)) == 2, console


def test_the_summary_lists_the_submitters_below_the_sanction_threshold(tmp_path):
    import pyarrow as pa

    from pipelines import schemas, status
    from pipelines.runner import RunSummary
    from pipelines.storage import Store
    from pipelines.warehouse import Warehouse

    wh = Warehouse(Store(str(tmp_path / "wh")))
    ds = schemas.get("data_quality_summary")
    schema = ds.arrow_schema(include_partition=True)

    def month(period, flags):
        # the columns not at issue here: empty, or (declared non-nullable) a plain value of their type
        blank = {f.name: None if f.nullable else (False if pa.types.is_boolean(f.type) else
                                                  0 if pa.types.is_integer(f.type) else
                                                  0.0 if pa.types.is_floating(f.type) else "x")
                 for f in schema}
        rows = [{**blank, "period": period, "source": src, "submitter_code": code,
                 "below_sanction_threshold": below} for src, code, below in flags]
        wh.write("data_quality_summary", pa.Table.from_pylist(rows, schema=schema), period)

    month("2014-01", [("sus_apc", "RGT", True), ("sus_apc", "RXX", False), ("gp", "A81001", True)])
    month("2014-02", [("fft", "RYY", True)])  # not a period of this run
    below = status.below_threshold(wh, ["2014-01"])
    assert below == [{"source": "gp", "submitter_code": "A81001", "period": "2014-01"},
                     {"source": "sus_apc", "submitter_code": "RGT", "period": "2014-01"}]
    out = io.StringIO()
    print_summary(RunSummary(periods=["2014-01"], below_threshold=below, new_files=[]),
                  Settings(landing="l", warehouse="w", publish="p"), out=out)
    text = out.getvalue()
    assert "Below the sanction threshold:\n  gp A81001 2014-01\n  sus_apc RGT 2014-01\n" in text
    assert "RXX" not in text and "RYY" not in text
    assert "Nothing new" in text
