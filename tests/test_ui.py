"""The Dagster UI an operator uses, opened in headless Chromium on a small demo.

A small landing zone (pipelines.synth when it is there, else a hand-made one) plus one GP
extract that is held, run through ``pipelines.runner.run_pipeline`` with DAGSTER_HOME set
(deploy/dagster.yaml on the throwaway PostgreSQL of tests/pg.py when PostgreSQL is
installed, the default SQLite storage otherwise); then ``dagster-webserver -w
workspace.yaml`` on that home, and Selenium driving Debian's chromium + chromium-driver
(``apt-get install chromium chromium-driver``; .ci/run does it). Screenshots go to
test-artifacts/ (git-ignored). Skips, saying why, only where chromium, its driver or
Selenium are missing.

What an operator should see: no newsletter dialog; the runs of `caredata run` under their
named jobs (Overview timeline, Runs page, a job's page) with their period; each asset-check
result with its period; the asset graph, a failed check's rule counts, partitions,
schedules, sensors and freshness.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1600,1000"]
HELD_FILE = "gp/GP_A81002_{period}27.csv"


def _browser() -> tuple[str, str]:
    chrome = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                               shutil.which("google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    if not chrome or not driver:
        pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver; .ci/run does it)")
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    return chrome, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _landing(root: Path) -> tuple[Path, str]:
    """A small landing zone and the last period in it; a held GP extract added to that period."""
    landing = root / "landing"
    try:
        from pipelines.synth import generate
    except ImportError:
        generate = None
    if generate is not None:
        generate(landing, seed=0, scale=0.001, months=1, start="2014-01", truth_dir=root / "truth", progress=False)
        period = "2014-01"
    else:
        from test_ops import tiny_landing

        tiny_landing(landing)
        period = "2014-02"
    from test_ops import _land, held_gp_extract

    held = landing / HELD_FILE.format(period=period.replace("-", ""))
    _land(held, held_gp_extract())
    return landing, period


@pytest.fixture(scope="module")
def demo(request, tmp_path_factory):
    """Run the demo into a DAGSTER_HOME; yields (env for the webserver, last period)."""
    _browser()  # no point building the demo when there is nothing to look at it with
    root = tmp_path_factory.mktemp("ui-demo")
    home = root / "dagster_home"
    home.mkdir()
    env = {"DAGSTER_HOME": str(home)}
    try:
        pg = request.getfixturevalue("postgres")
    except pytest.skip.Exception:
        pg = None
    if pg is not None:
        from pg import DEPLOY_YAML

        shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
        env.update(pg.env(pg.create_database("dagster_ui")))
    # else: no dagster.yaml; `caredata run` writes the demo's (telemetry and the newsletter
    # dialog off: pipelines.runner.ensure_instance_yaml), as on a fresh clone.

    landing, period = _landing(root)
    roots = {"CAREDATA_LANDING": str(landing), "CAREDATA_WAREHOUSE": str(root / "warehouse"),
             "CAREDATA_PUBLISH": str(root / "publish"), "CAREDATA_DEMO_MODE": "1"}
    env.update(roots)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from pipelines.config import Settings
        from pipelines.runner import run_pipeline

        settings = Settings.load()
        summary = run_pipeline(settings, progress=lambda m: None)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert period in summary.periods, summary
    yield env, period, summary


@pytest.fixture(scope="module")
def webserver(demo):
    env, _, _ = demo
    port = _free_port()
    exe = Path(sys.executable).parent / "dagster-webserver"
    log = open(Path(env["DAGSTER_HOME"]) / "webserver.log", "w")
    proc = subprocess.Popen(
        [str(exe), "-w", "workspace.yaml", "-p", str(port), "-h", "127.0.0.1"],
        cwd=ROOT, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("dagster-webserver did not start: "
                                   + (Path(env["DAGSTER_HOME"]) / "webserver.log").read_text()[-3000:])
            time.sleep(1)
        yield url
    finally:
        # The webserver and its code server are in their own session: end that group only.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


@pytest.fixture(scope="module")
def browser(webserver):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chrome, driver = _browser()
    opts = Options()
    opts.binary_location = chrome
    for flag in CHROME_FLAGS:
        opts.add_argument(flag)
    d = webdriver.Chrome(options=opts, service=Service(driver))
    d.set_page_load_timeout(120)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "ui-failure.png").unlink(missing_ok=True)
    try:
        yield d
    finally:
        d.quit()


def _open(d, url: str, *texts: str, timeout: float = 90) -> str:
    """Open a page, wait until every text is shown. (No first-visit dialog to dismiss: the
    instance has Dagster's newsletter dialog off, test_no_newsletter_dialog_on_a_first_visit.)"""
    d.get(url)
    return _wait(d, *texts, timeout=timeout)


def _wait(d, *texts: str, timeout: float = 60) -> str:
    """Wait (without navigating) until every text is shown; the page's text."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        try:
            body = d.find_element(By.TAG_NAME, "body").text
        except StaleElementReferenceException:
            continue
        if all(t in body for t in texts):
            return body
        time.sleep(1)
    missing = [t for t in texts if t not in body]
    d.save_screenshot(str(ARTIFACTS / "ui-failure.png"))
    raise AssertionError(f"{d.current_url}: never showed {missing}; page text: {body[:2000]}")


def _shot(d, name: str) -> None:
    time.sleep(1)  # let the graph settle
    d.save_screenshot(str(ARTIFACTS / f"ui-{name}.png"))


NEWSLETTER = "Join the Dagster community"  # the title of Dagster's first-visit dialog
RUNNER_JOBS = ("landing_job", "ingest_job", "link_job", "publish_job", "ledger_job")
PERIOD_JOBS = ("ingest_job", "link_job", "publish_job")


def test_no_newsletter_dialog_on_a_first_visit(browser, webserver, demo):
    """Dagster opens its newsletter dialog a second after a first page on localhost, unless
    the instance has ``nux: enabled: false`` or someone dismissed it (in this browser's
    localStorage, or on the server: $DAGSTER_HOME/.nux/nux.yaml). Nobody did here."""
    env, _, _ = demo
    assert not (Path(env["DAGSTER_HOME"]) / ".nux" / "nux.yaml").exists()
    browser.get(f"{webserver}/overview/activity/timeline")
    browser.execute_script("window.localStorage.clear()")
    _open(browser, f"{webserver}/overview/activity/timeline", "Timeline", "pipelines.definitions")
    time.sleep(4)
    from selenium.webdriver.common.by import By

    body = browser.find_element(By.TAG_NAME, "body").text
    _shot(browser, "first-visit")
    assert NEWSLETTER not in body and "newsletter" not in body.lower(), body[:1500]
    assert not (Path(env["DAGSTER_HOME"]) / ".nux" / "nux.yaml").exists()


def test_overview_timeline_lists_the_runs_of_caredata_run(browser, webserver):
    """Each stage of `caredata run` is a row of the Overview timeline (not "No runs")."""
    body = _open(browser, f"{webserver}/overview/activity/timeline", "pipelines.definitions", *RUNNER_JOBS)
    assert "No runs" not in body and "__ephemeral_asset_job__" not in body
    _shot(browser, "timeline")


def test_runs_page_shows_named_jobs_findable_by_period(browser, webserver, demo):
    from urllib.parse import quote

    _, period, _ = demo
    from pipelines.runner import operator

    body = _open(browser, f"{webserver}/runs", *RUNNER_JOBS, f"caredata/period: {period}", operator())
    assert "__ephemeral_asset_job__" not in body and "Manually launched" not in body
    _shot(browser, "runs")
    # The runs of one period: the Runs page filtered on its tag (as "Add to filter" on a tag does).
    body = _open(browser, f"{webserver}/runs?q%5B0%5D={quote(f'tag:caredata/period={period}')}",
                 f"caredata/period={period}", *PERIOD_JOBS)
    assert "landing_job" not in body and "ledger_job" not in body, body[:2000]
    assert body.count(f"caredata/period: {period}") == len(PERIOD_JOBS)  # one run of each per period
    _shot(browser, "runs-of-a-period")
    # A job's own page has its history.
    _open(browser, f"{webserver}/locations/pipelines.definitions/jobs/ingest_job/runs",
          "ingest_job", "Latest run:", f"partition: {period}", f"caredata/period: {period}")
    _shot(browser, "job-history")


def test_asset_check_result_shows_its_period(browser, webserver, demo):
    from selenium.webdriver.common.by import By

    _, period, _ = demo
    body = _open(browser, f"{webserver}/assets/gp_bronze?view=checks&checkDetail=validity",
                 "Latest execution", "Evaluation result", f"Partition\n{period}", f"period {period}")
    assert "Partition\n—" not in body
    _shot(browser, "check-period")
    browser.find_element(By.XPATH, "//*[normalize-space()='Execution history']").click()
    _wait(browser, "Evaluation result", "Partition", period, "row failure(s) quarantined")
    _shot(browser, "check-history")


def test_asset_graph_renders(browser, webserver):
    _open(browser, f"{webserver}/asset-groups", "Global asset lineage", "ingest", "linkage", "publish")
    _shot(browser, "global-lineage")
    # (the graph draws the nodes in view: these three are, at the default zoom)
    body = _open(browser, f"{webserver}/locations/pipelines.definitions/asset-groups/ingest",
                 "reference_data", "hes_apc_bronze", "gp_bronze", "Asset checks", "Materialized")
    assert "Passed" in body  # gp_bronze's checks, summarised on its node
    _shot(browser, "ingest-graph")
    _open(browser, f"{webserver}/locations/pipelines.definitions/asset-groups/publish",
          "release_candidate", "published")
    _shot(browser, "publish-graph")


def test_failed_asset_check_shows_its_rule_counts(browser, webserver, demo):
    from selenium.webdriver.common.by import By

    _, period, _ = demo
    held = HELD_FILE.format(period=period.replace("-", ""))
    _open(browser, f"{webserver}/assets/gp_bronze?view=checks",
          "no_held_submissions", "validity", "rows_accounted_for")

    def check(name: str) -> None:
        browser.find_element(By.XPATH, f"//*[normalize-space()='{name}']").click()
        _wait(browser, "Latest execution", "Evaluation result")

    # The held submission: which file, why, and the rules it broke most.
    check("no_held_submissions")
    _wait(browser, "Failed", held, "held:", "SEX_CODE (8)")
    _shot(browser, "held-check")

    # The validity check: its counts, and its failing rules' table as the operator opens it.
    check("validity")
    _wait(browser, "Failed", "row failure(s) quarantined", "rows_quarantined_by_rules", "failing_rules")
    row = browser.find_element(By.XPATH, "//tr[.//*[normalize-space()='failing_rules']]")
    row.find_element(By.XPATH, ".//*[starts-with(text(), '[Show')]").click()  # [Show Markdown]
    _wait(browser, "SEX_CODE", "rows failed", "rows checked", "reject")
    _shot(browser, "failed-check")


def test_partition_status_page_renders(browser, webserver, demo):
    _, period, _ = demo
    body = _open(browser, f"{webserver}/assets/gp_bronze?view=partitions&partition={period}",
                 "Partitions Selected", "Materialized (", "Missing (", period, "rows_quarantined", "files_held")
    assert "Failed (0)" in body
    _shot(browser, "partitions")


def test_schedules_sensors_and_freshness_are_visible(browser, webserver):
    _open(browser, f"{webserver}/automation", "nightly_scan", "landing_sensor", "run_failure_alert")
    _shot(browser, "automation")
    _open(browser, f"{webserver}/assets/published", "Freshness policy", "Latest materialization")
    _shot(browser, "published")
