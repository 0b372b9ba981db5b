"""Run the whole asset graph in-process through Dagster, for every period in the landing zone.

Order: the unpartitioned assets (ledger scan, reference data, HES extracts); then, for each
period, ingest and validation; then, for each period, linkage (it uses each practice's
newest extract, whatever its month); then, for each period, the datasets, disclosure
control and publishing (so a window's 30-day follow-up sees the next month's data); last,
the submissions ledger and the submitters' feedback packs.

Before any of that, :func:`check_roots` makes sure the three roots can be used; after it,
every failure is one line in the summary (the full tracebacks go to a log file), and
:attr:`RunSummary.exit_code` is what ``caredata run`` exits with (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import logging
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from pipelines.cli import EXIT_CODES, EXIT_FAILED, EXIT_OK, EXIT_STORAGE, EXIT_USAGE  # noqa: F401
from pipelines.config import Settings

# Errors of storage and network: S3 (botocore), pyarrow.fs (OSError) and the file system.
_OS_ERRORS = {c.__name__ for c in vars(builtins).values() if isinstance(c, type) and issubclass(c, OSError)}
_BOTOCORE_ERRORS = {"ClientError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "NoCredentialsError", "PartialCredentialsError", "NoRegionError",
                    "CredentialRetrievalError", "HTTPClientError", "ProxyConnectionError", "SSLError",
                    "BotoCoreError", "NoSuchBucket", "NoSuchKey", "S3UploadFailedError"}
STORAGE_ERRORS = frozenset(_OS_ERRORS | _BOTOCORE_ERRORS)


def _storage_exceptions() -> tuple[type[BaseException], ...]:
    out: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        out += [BotoCoreError, ClientError]
    except ImportError:  # pragma: no cover - boto3 is a dependency
        pass
    return tuple(out)


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, _storage_exceptions())


def one_line(exc: BaseException) -> str:
    """``ClassName: message`` on one line (what the console shows instead of a traceback)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class StartupError(Exception):
    """A root cannot be used: found before any work; ``code`` is the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


@dataclass
class RunSummary:
    periods: list[str] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)
    failed_checks: list[str] = field(default_factory=list)
    # Non-blocking checks that failed with ERROR severity (a dataset held back by disclosure
    # control): printed, but the run did its job, so they do not make it fail.
    refused_checks: list[str] = field(default_factory=list)
    # The differencing audit's findings at WARN severity (published anyway; docs/methods-disclosure.md).
    warned_checks: list[str] = field(default_factory=list)
    published: list[dict] = field(default_factory=list)
    held_back: list[dict] = field(default_factory=list)
    # (file name, SHA-256) of the files this run took in, held or rejected (the ledger
    # before and after it compared); None when the run did not get that far.
    new_files: list[tuple[str, str]] | None = None
    # {source, submitter_code, period} below the sanction threshold in the run's periods.
    below_threshold: list[dict] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    # The feedback packs (pipelines/feedback.py): packs, packs_written, root; None when not run.
    feedback: dict | None = None
    # Failures outside a Dagster step (storage, the runner itself), one line each.
    errors: list[str] = field(default_factory=list)
    # The run stopped before any work (check_roots): its exit code.
    startup_code: int | None = None
    storage_failed: bool = False
    tracebacks: list[str] = field(default_factory=list, repr=False)
    log_file: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed_steps and not self.failed_checks and not self.errors

    @property
    def exit_code(self) -> int:
        if self.startup_code is not None:
            return self.startup_code
        if self.ok:
            return EXIT_OK
        return EXIT_STORAGE if self.storage_failed else EXIT_FAILED


def check_roots(settings: Settings) -> None:
    """Before any work: the landing root exists (a folder, or an S3 prefix holding at least
    one object), the warehouse and publish roots exist or can be created (folders) or their
    buckets can be listed (S3). Raises :class:`StartupError` (one line, with the exit code)."""
    from pipelines.storage import Store

    ep = settings.s3_endpoint_url
    for name, root in (("landing", settings.landing), ("warehouse", settings.warehouse),
                       ("publish", settings.publish)):
        store = Store(root, ep)
        if store.is_s3:
            _check_s3_root(name, store)
        elif name == "landing":
            if not store.root.exists():
                raise StartupError(f"landing root {store.root} does not exist", EXIT_USAGE)
            if not store.root.is_dir():
                raise StartupError(f"landing root {store.root} is not a folder", EXIT_USAGE)
        else:
            try:
                store.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"{name} root {store.root} cannot be created "
                                   f"({exc.strerror or type(exc).__name__})", EXIT_USAGE) from None
            if not os.access(store.root, os.W_OK | os.X_OK):
                raise StartupError(f"{name} root {store.root} is not writable", EXIT_USAGE)


def _check_s3_root(name: str, store) -> None:
    if not store.bucket:
        raise StartupError(f"{name} root {store.url}: no bucket in the S3 address", EXIT_USAGE)
    prefix = f"{store.prefix}/" if store.prefix else ""
    try:
        page = store.client.list_objects_v2(Bucket=store.bucket, Prefix=prefix, MaxKeys=1)
    except _storage_exceptions() as exc:
        raise StartupError(f"{name} root {store.url}: cannot list it ({one_line(exc)})", EXIT_STORAGE) from None
    if name == "landing" and not page.get("KeyCount", len(page.get("Contents", []))):
        raise StartupError(f"landing root {store.url} holds no object: nothing to take in "
                           "(is the bucket or prefix right?)", EXIT_USAGE)


INSTANCE_YAML = """\
# Written by caredata for a Dagster home that had no instance configuration: Dagster's
# defaults (SQLite storage under this folder) with its telemetry off and without the UI's
# first-visit "Join the Dagster community" (newsletter) dialog. A production home uses
# deploy/dagster.yaml instead (docs/runbook.md).
telemetry:
  enabled: false
nux:
  enabled: false
"""


def ensure_instance_yaml(home: str) -> None:
    """Give a Dagster home without a ``dagster.yaml`` one with telemetry off (no banner
    mid-run, no "No dagster instance configuration file" on every run) and the UI's
    newsletter dialog off; a home that has one is left as it is."""
    os.makedirs(home, exist_ok=True)
    path = os.path.join(home, "dagster.yaml")
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(INSTANCE_YAML)


def _instance() -> dg.DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        ensure_instance_yaml(os.environ["DAGSTER_HOME"])
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
    if settings.config_file:  # the resource must load the same thresholds as the caller
        env["CAREDATA_CONFIG"] = settings.config_file
    # ... and the same engine (caredata run --engine; the resource reads the environment)
    env["CAREDATA_ENGINE"] = settings.engine
    if settings.engine == "spark":
        import json

        spark = settings.spark or {}
        for name in ("master", "connect_url", "driver_memory"):
            if spark.get(name):
                env[f"CAREDATA_SPARK__{name.upper()}"] = str(spark[name])
        if spark.get("conf"):
            env["CAREDATA_SPARK__CONF"] = json.dumps(spark["conf"])  # JSON is YAML
    return env


class _NotInSummary(logging.Filter):
    """Drops the log records the run summary repeats (a file rejected or held: logged with
    ``extra={"in_summary": True}``), so that the console names each file once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "in_summary", False)


@contextlib.contextmanager
def _console_once():
    """While a run lasts, the warnings of ``pipelines`` go to the console as they would
    (one line each, no handler configured) but without those the summary repeats. A
    process that configured its own logging handlers keeps them as they are."""
    logger = logging.getLogger("pipelines")
    if logger.hasHandlers():
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.addFilter(_NotInSummary())
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def run_pipeline(settings: Settings, *, periods: list[str] | None = None, progress=print,
                 log_level: str = "WARNING", preflight=check_roots, log_file: str | None = None,
                 debug: bool = False) -> RunSummary:
    """Materialise everything for every period found (or the ones given).

    ``preflight`` (default :func:`check_roots`) runs first; a :class:`StartupError` stops
    the run before any work. A storage or other error raised outside a Dagster step ends
    the run as one line in ``summary.errors``. Every failure's full traceback is written to
    ``log_file`` (default: a new file in the temporary folder, only when something failed),
    and to the console too when ``debug``."""
    from pipelines.lock import LockConfigError, LockError, LockHeld, run_lock, settings_from_env

    summary = RunSummary()
    try:
        lock_settings = settings_from_env()
    except LockConfigError as exc:
        summary.errors.append(f"configuration error: {exc}")
        summary.startup_code = EXIT_USAGE
        return summary
    try:
        preflight(settings)
    except StartupError as exc:
        summary.errors.append(str(exc))
        summary.startup_code = exc.code
        return summary
    saved = {k: os.environ.get(k) for k in _env_for(settings)}  # restored after the run
    try:
        # The warehouse's run lock (pipelines/lock.py): two runs on one warehouse never overlap.
        with run_lock(settings.warehouse, settings.s3_endpoint_url, **lock_settings), _console_once():
            _materialise(settings, summary, periods=periods, progress=progress, log_level=log_level)
    except LockHeld as exc:  # another run holds the warehouse: nothing was done, try later
        summary.errors.append(str(exc))
        summary.startup_code = EXIT_STORAGE
    except LockError as exc:  # the warehouse cannot hold a lock, or ours was broken
        summary.errors.append(str(exc))
        summary.tracebacks.append(traceback.format_exc())
    except Exception as exc:  # noqa: BLE001 - the summary says it in one line; the log has it all
        summary.errors.append(one_line(exc))
        summary.tracebacks.append(traceback.format_exc())
        summary.storage_failed |= is_storage_error(exc)
        if debug:
            traceback.print_exc()
    finally:
        for k, v in saved.items():  # one run's roots and demo mode must not leak into the next
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if summary.tracebacks:
        summary.log_file = _write_log(summary, log_file)
    return summary


def _write_log(summary: RunSummary, log_file: str | None) -> str | None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(log_file) if log_file else Path(tempfile.gettempdir()) / f"caredata-run-{stamp}.log"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"caredata run {stamp}: {len(summary.tracebacks)} failure(s)\n\n")
            fh.write("\n\n".join(summary.tracebacks) + "\n")
    except OSError as exc:
        summary.errors.append(f"could not write the log file {path} ({exc.strerror or type(exc).__name__})")
        return None
    return str(path)


PERIOD_TAG = "caredata/period"


def run_tags(job_name: str, period: str | None) -> dict[str, str]:
    """The tags of a run of ``caredata run``: its period (``caredata/period``; Dagster adds
    ``dagster/partition``), its trigger, who started it (``user``: the UI's "Launched by"),
    and the repository and code location the UI lists the job under. No retry by the daemon
    (deploy/dagster.yaml's run_retries): the run's failure is in the summary and
    ``caredata run`` is rerun as a whole."""
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    from pipelines.definitions import LOCATION, REPOSITORY

    tags = {"caredata/trigger": "caredata run", "user": operator(), "dagster/max_retries": "0",
            REPOSITORY_LABEL_TAG: f"{REPOSITORY}@{LOCATION}", "dagster/code_location": LOCATION}
    if period is not None:
        tags[PERIOD_TAG] = period
    return tags


def operator() -> str:
    """The login of whoever runs ``caredata run`` (a member of staff or the service account,
    never a patient), or "caredata run" where the system has no name for it."""
    import getpass

    try:
        return getpass.getuser() or "caredata run"
    except (KeyError, OSError):
        return "caredata run"


def _give_origin(instance: dg.DagsterInstance, run) -> None:
    """Record the run as one of the job in the UI's code location (pipelines.definitions
    ``job_origin``): without it the UI leaves an in-process run out of the Overview timeline."""
    from pipelines.definitions import job_origin

    instance.run_storage.replace_job_origin(run, job_origin(run.job_name))


def _materialise(settings: Settings, summary: RunSummary, *, periods, progress, log_level) -> None:
    from pipelines import stages
    from pipelines.definitions import build_definitions
    from pipelines.partitions import sync_periods
    from pipelines.resources import CareDataConfig, EngineResource

    # Resource values come from the settings object (its roots are already resolved).
    os.environ.update(_env_for(settings))
    caredata = CareDataConfig(
        landing=settings.landing, warehouse=settings.warehouse, publish=settings.publish,
        s3_endpoint_url=settings.s3_endpoint_url or "", demo_mode=settings.demo_mode,
    )
    resources = {
        "caredata": caredata,
        "engine": EngineResource(caredata=caredata),
        "io_manager": dg.FilesystemIOManager(base_dir=tempfile.mkdtemp(prefix="caredata-io-")),
    }
    instance = _instance()
    # The jobs of schedules/ (landing_job, ingest_job, link_job, publish_job, ledger_job),
    # run in process with the resources above.
    defs = build_definitions(resources)

    def _run(job_name, partition_key=None, label=""):
        result = defs.resolve_job_def(job_name).execute_in_process(
            partition_key=partition_key, tags=run_tags(job_name, partition_key),
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        )
        summary.run_ids.append(result.run_id)
        _give_origin(instance, result.dagster_run)
        for ev in result.all_events:
            if ev.event_type_value == "STEP_FAILURE":
                err = ev.event_specific_data.error
                while err.cause is not None:  # the user error, not Dagster's wrapper
                    err = err.cause
                summary.storage_failed |= err.cls_name in STORAGE_ERRORS
                summary.failed_steps.append(f"{label}{ev.step_key}: {' '.join(err.message.split())}")
                summary.tracebacks.append(f"{label}{ev.step_key}:\n{ev.event_specific_data.error.to_string()}")
            if ev.event_type_value == "ASSET_MATERIALIZATION":
                mat = ev.event_specific_data.materialization
                if mat.asset_key.to_user_string() == "feedback_packs":
                    summary.feedback = {k: v.value for k, v in mat.metadata.items()}
            if ev.event_type_value == "ASSET_CHECK_EVALUATION":
                data = ev.event_specific_data
                if not data.passed and data.severity == dg.AssetCheckSeverity.ERROR:
                    line = f"{label}{data.asset_key.to_user_string()}.{data.check_name}: {data.description or ''}"
                    # A blocking check stops what follows it: the run failed. A non-blocking one
                    # (disclosure control blocks one dataset, and the rest is published) is the
                    # pipeline doing its job on bad input: reported, not a failure.
                    (summary.failed_checks if data.blocking else summary.refused_checks).append(line)
                elif not data.passed and data.check_name == "differencing":
                    summary.warned_checks.append(
                        f"{label}{data.asset_key.to_user_string()}.{data.check_name}: {data.description or ''}")
        return result

    from pipelines import status

    _, wh, _ = stages.stores(settings)
    before = status.outcome_keys(wh)
    engine = stages.engine(settings)
    if engine.name == "spark":  # reached before any step: a cluster that cannot be reached stops the run here
        where = settings.spark.get("connect_url") and "Spark Connect" or settings.spark.get("master")
        progress(f"caredata: starting the Spark session ({where})")
        engine.spark  # noqa: B018
    progress("caredata: scanning the landing zone")
    _run("landing_job", label="")
    found = stages.periods(settings)
    # The periods are dynamic partitions: exactly the months with data, whatever they are.
    added, removed = sync_periods(instance, found)
    if removed:
        progress(f"caredata: no file of {', '.join(removed)} is in the landing zone any more: not run")
    summary.periods = [p for p in found if periods is None or p in periods]
    for p in summary.periods:
        progress(f"caredata: {p}: ingest and validation")
        _run("ingest_job", partition_key=p, label=f"[{p}] ")
    # Linkage uses each practice's newest extract, so it follows the ingest of every period.
    for p in summary.periods:
        progress(f"caredata: {p}: linkage")
        _run("link_job", partition_key=p, label=f"[{p}] ")
    for p in summary.periods:
        progress(f"caredata: {p}: datasets, disclosure control, publishing")
        _run("publish_job", partition_key=p, label=f"[{p}] ")
    progress("caredata: the submissions ledger and the feedback packs")
    _run("ledger_job", label="[ledger] ")
    summary.published = stages.published_summary(settings)
    summary.held_back = stages.held_back_summary(settings)
    summary.new_files = sorted(status.outcome_keys(wh) - before)
    summary.below_threshold = status.below_threshold(wh, summary.periods)


def print_summary(summary: RunSummary, settings: Settings, out=None) -> None:
    w = (out or sys.stdout).write
    if summary.startup_code is not None:
        w("\nThe run did not start:\n")
        for e in summary.errors:
            w(f"  {e}\n")
        w(f"Exit status {summary.exit_code} (caredata run --help lists the codes).\n")
        return
    if summary.new_files == []:
        w("\nNothing new: no file was taken in since the last run.\n")
    w(f"\nPeriods: {', '.join(summary.periods) or 'none found'}\n")
    w(f"Engine: {settings.engine}\n")
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
    w("Below the sanction threshold:\n")
    for row in summary.below_threshold:
        w(f"  {row['source']} {row['submitter_code']} {row['period']}\n")
    if not summary.below_threshold:
        w("  nobody\n")
    if summary.feedback is not None:
        fb = summary.feedback
        w(f"Feedback packs for submitters: {fb.get('packs_written', 0)} written, {fb.get('packs', 0)} in all, "
          f"under {fb.get('root')}" + (f"; {len(fb['failed'])} not written: {', '.join(fb['failed'])}"
                                       if fb.get("failed") else "") + "\n")
    if summary.refused_checks:
        w("Checks that refused a publication (everything else was published):\n")
        for c in summary.refused_checks:
            w(f"  {c}\n")
    if summary.warned_checks:
        w("Suppressed cells recoverable from published margins (published anyway: "
          "disclosure.differencing_severity is warn):\n")
        for c in summary.warned_checks:
            w(f"  {c}\n")
    if settings.demo_mode and not settings.pseudo_key:
        w("DEMO MODE: the restricted zone is pseudonymised with the public demo key; not for real data.\n")
    if not summary.ok:
        w("The run failed:\n")
        for f in summary.failed_steps + summary.failed_checks + summary.errors:
            w(f"  {f}\n")
        if summary.log_file:
            w(f"Full tracebacks: {summary.log_file}\n")
        w(f"Exit status {summary.exit_code} (caredata run --help lists the codes).\n")
