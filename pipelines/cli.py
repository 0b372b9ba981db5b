"""The ``caredata`` command.

    caredata synth OUT_DIR [--seed N] [--scale X] [--months N] [--start YYYY-MM]
    caredata run --landing PATH_OR_S3 --warehouse PATH_OR_S3 --publish PATH_OR_S3 [--config FILE]
                 [--engine duckdb|spark] [--demo-mode] [--debug] [--log-file FILE]
    caredata demo [--out DIR] [--engine duckdb|spark]
    caredata release FILE_NAME --warehouse PATH_OR_S3 [--by NAME] [--reason TEXT]
    caredata status [--warehouse PATH_OR_S3] [--landing PATH_OR_S3] [--s3-endpoint-url URL]

The configuration is checked whole before any work (a problem is one line, exit 2), then
the three roots (pipelines.runner.check_roots). Exit status (EXIT_CODES below):
0 ok, 1 the run failed (a step raised, or a blocking check refused a publication), 2
configuration or usage error before any work, 3 try again later: a storage (S3, network,
disk) error, or another run holds the warehouse's lock (nothing was done). Never non-zero
because a submission was bad: bad submissions are recorded in the ledger and reported as
held back. Errors are one line each on the console; full tracebacks go to a log file (named
in the summary), or to the console too with --debug.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Exit codes a scheduler can trust (README "Run it on your own data", `caredata run --help`).
EXIT_OK = 0        # every period ran; bad submissions were held back or rejected, not a failure
EXIT_FAILED = 1    # the run failed: a step raised, or a blocking check refused a publication
EXIT_USAGE = 2     # configuration or usage error, found before any work: nothing was read or written
EXIT_STORAGE = 3   # try again later: a root could not be reached, read or written (S3, network,
                   # file system), or another run holds the warehouse's lock and nothing was done
EXIT_CODES = f"""exit status:
  {EXIT_OK}  the run succeeded (bad submissions are held back or rejected, not a failure)
  {EXIT_FAILED}  the run failed: a step raised, or a blocking check refused a publication
  {EXIT_USAGE}  configuration or usage error, before any work (bad --config or CAREDATA_*
     setting, a key under 32 bytes or an unreadable key file, a landing root that does not
     exist or an S3 landing prefix with no object, a warehouse or publish root that cannot
     be created)
  {EXIT_STORAGE}  try again later: S3, the network or the file system could not be reached,
     read or written (before or during the run; the run summary is still printed), or
     another run holds the warehouse's lock (nothing was done; the holder is named)"""


def _synth(args) -> int:
    from pipelines.synth import generate

    summary = generate(
        args.out_dir, seed=args.seed, scale=args.scale, months=args.months, start=args.start,
        truth_dir=args.truth_dir, progress=not args.quiet,
    )
    print(f"landing zone written to {args.out_dir}")
    for k, v in summary.items():
        if isinstance(v, (int, float, str)):
            print(f"  {k}: {v}")
    return 0


def _load_settings(args):
    """The whole configuration, checked; None (after one line on stderr) when it is wrong."""
    from pipelines.config import ConfigError, Settings

    try:
        return Settings.load(
            args.config, landing=args.landing, warehouse=args.warehouse, publish=args.publish,
            s3_endpoint_url=args.s3_endpoint_url, demo_mode=True if args.demo_mode else None,
            engine=getattr(args, "engine", None),
        )
    except ConfigError as exc:
        print(f"caredata: configuration error: {exc}", file=sys.stderr)
        return None


def _run(args) -> int:
    from pipelines.runner import print_summary, run_pipeline

    settings = _load_settings(args)
    if settings is None:
        return EXIT_USAGE
    if settings.effective_pseudo_key is None:
        print("caredata: no pseudonymisation key (CAREDATA_PSEUDO_KEY or CAREDATA_PSEUDO_KEY_FILE): "
              "the restricted zone will not be written; public datasets are.", file=sys.stderr)
    debug = getattr(args, "debug", False)
    summary = run_pipeline(
        settings, progress=lambda m: print(m, file=sys.stderr),
        # Dagster's console logger prints a traceback per failed step: only with --debug.
        log_level="WARNING" if debug else "CRITICAL",
        log_file=getattr(args, "log_file", None), debug=debug,
    )
    for line in summary.errors:
        print(f"caredata: error: {line}", file=sys.stderr)
    print_summary(summary, settings)
    return summary.exit_code


def _demo(args) -> int:
    out = Path(args.out).resolve()
    landing = out / "landing"
    ns = argparse.Namespace(
        config=None, landing=str(landing), warehouse=str(out / "warehouse"), publish=str(out / "publish"),
        s3_endpoint_url=None, demo_mode=True, debug=args.debug, log_file=args.log_file, engine=args.engine,
    )
    if _load_settings(ns) is None:  # checked before generating anything
        return EXIT_USAGE
    if not landing.exists():
        from pipelines.synth import generate

        print(f"caredata demo: generating a small landing zone in {landing}", file=sys.stderr)
        generate(landing, seed=args.seed, scale=args.scale, months=args.months, start=args.start,
                 truth_dir=out / "ground_truth", progress=True)
    os.environ.setdefault("DAGSTER_HOME", str(out / ".dagster_home"))
    rc = _run(ns)
    print(f"\nDatasets: {out / 'publish'}  (public/ and restricted/; data dictionary: "
          f"{out / 'publish' / 'public' / 'data_dictionary.html'})")
    print(f"Ledger of every file: {out / 'publish' / 'public' / 'submissions'}")
    print("Open the Dagster UI on this demo: make dev")
    return rc


def _add_engine_option(p) -> None:
    p.add_argument("--engine", choices=("duckdb", "spark"), default=None,
                   help="the engine of the heavy steps for this run (default: the configuration's "
                        "engine, CAREDATA_ENGINE, else duckdb); spark uses the spark: settings "
                        "(master, connect_url; docs/scaling.md)")


def _add_error_options(p) -> None:
    p.add_argument("--debug", action="store_true",
                   help="print full tracebacks on the console too (Dagster's step logs)")
    p.add_argument("--log-file", default=None, metavar="FILE",
                   help="where full tracebacks of failures go (default: a new caredata-run-<time>.log "
                        "in the temporary folder, written only when something failed)")


def _release(args) -> int:
    """Release a held file: a ``released`` event in the warehouse ledger (who, when, why);
    the next run takes the file as current (a GP extract: if it is the practice's newest)."""
    import getpass

    from pipelines.ingest import release_held
    from pipelines.storage import Store
    from pipelines.warehouse import Warehouse

    root = args.warehouse or os.environ.get("CAREDATA_WAREHOUSE")
    if not root:
        print("caredata release: give --warehouse (or set CAREDATA_WAREHOUSE)", file=sys.stderr)
        return EXIT_USAGE
    endpoint = args.s3_endpoint_url or os.environ.get("CAREDATA_S3_ENDPOINT_URL") or None
    by = args.by or os.environ.get("USER") or getpass.getuser()
    try:
        what = release_held(Warehouse(Store(root, endpoint)), args.file_name, by, args.note)
    except ValueError as exc:
        print(f"caredata release: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.file_name}: {what}")
    print("The next run (caredata run) takes it in as current if it is the newest.")
    return 0


def _status(args) -> int:
    """What the warehouse ledger holds, per source and submitter: files current,
    superseded, held, rejected and pending; the held and rejected files with their reasons
    (named and worded as the public ledger does); with --landing, the periods with files
    not yet taken in. Exit 2 (one line) when the warehouse has no ledger."""
    from pipelines import status
    from pipelines.ingest import pending_periods
    from pipelines.storage import Store
    from pipelines.warehouse import Warehouse

    root = args.warehouse or os.environ.get("CAREDATA_WAREHOUSE")
    if not root:
        print("caredata status: give --warehouse (or set CAREDATA_WAREHOUSE)", file=sys.stderr)
        return EXIT_USAGE
    endpoint = args.s3_endpoint_url or os.environ.get("CAREDATA_S3_ENDPOINT_URL") or None
    from pipelines.runner import is_storage_error, one_line

    try:
        wh = Warehouse(Store(root, endpoint))
        state = status.ledger_status(wh)
        pending = (sorted(pending_periods(Store(args.landing, endpoint), wh))
                   if args.landing else None)
    except status.NoLedger:
        print(f"caredata status: {root} has no ledger (no run has scanned a landing zone into it)",
              file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        print(f"caredata status: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_STORAGE
    print(status.format_status(state, pending), end="")
    return EXIT_OK


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("caredata")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="caredata", description="The care.data pipeline.")
    parser.add_argument("--version", action="version", version=f"caredata {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a generated landing zone (and its ground truth)")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=0.002, help="1.0 = one national month (6,500 practices)")
    p.add_argument("--months", type=int, default=3)
    p.add_argument("--start", default="2014-01", help="first period, YYYY-MM")
    p.add_argument("--truth-dir", default=None, help="default: <OUT_DIR>_truth beside it")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_synth)

    p = sub.add_parser("run", help="run the whole pipeline for every period in the landing zone",
                       description="Run the whole pipeline for every period in the landing zone. The "
                                   "configuration (--config / CAREDATA_CONFIG, CAREDATA_* variables, the key) "
                                   "is checked whole before any work, then the three roots.",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--landing", required=True, help="folder or s3://bucket/prefix")
    p.add_argument("--warehouse", required=True, help="folder or s3://bucket/prefix")
    p.add_argument("--publish", required=True, help="folder or s3://bucket/prefix")
    p.add_argument("--config", default=None, help="YAML file overriding thresholds (defaults.yaml)")
    p.add_argument("--s3-endpoint-url", default=None, help="a non-AWS S3 endpoint")
    p.add_argument("--demo-mode", action="store_true", help="pseudonymise with the public demo key")
    _add_engine_option(p)
    _add_error_options(p)
    p.set_defaults(func=_run)

    p = sub.add_parser("demo", help="synth a small landing zone, run, print where the datasets are",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=0.002)
    p.add_argument("--months", type=int, default=3)
    p.add_argument("--start", default="2014-01")
    _add_engine_option(p)
    _add_error_options(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("release", help="release a held file (e.g. a held GP extract) so the next run uses it")
    p.add_argument("file_name", help="path relative to the landing root, e.g. gp/GP_A81001_20261204.csv")
    p.add_argument("--warehouse", default=None, help="folder or s3://bucket/prefix (default: CAREDATA_WAREHOUSE)")
    p.add_argument("--s3-endpoint-url", default=None, help="a non-AWS S3 endpoint")
    p.add_argument("--by", default=None, help="who releases it (default: the login name)")
    p.add_argument("--reason", "--note", dest="note", default=None,
                   help="why, in plain words (recorded in the ledger)")
    p.set_defaults(func=_release)

    p = sub.add_parser("status", help="files current, superseded, held, rejected and pending, per source and "
                                      "submitter, from the warehouse ledger")
    p.add_argument("--warehouse", default=None, help="folder or s3://bucket/prefix (default: CAREDATA_WAREHOUSE)")
    p.add_argument("--landing", default=None,
                   help="folder or s3://bucket/prefix: also list the periods with files not yet taken in")
    p.add_argument("--s3-endpoint-url", default=None, help="a non-AWS S3 endpoint")
    p.set_defaults(func=_status)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
