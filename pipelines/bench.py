"""``make bench``: generate a landing zone at a chosen scale, run the whole pipeline stage by
stage, and print wall time, rows per second and peak memory (RSS of the process tree) per
stage, beside (a) the floor: pyarrow alone parsing the same CSV input, and (b) a plain
pandas implementation of the same figures (linkage coverage per provider and practice,
FFT provider scores) as an analyst would write it, at a scale it can manage.

    python -m pipelines.bench --scale 0.1 --months 1 --out bench-out [--engine spark]

``--engine spark`` runs the steps that are relational plans on Spark (``local[2]``, or the
``spark:`` settings of CAREDATA_SPARK__*); the session is started before the clock starts
and its start-up time is reported on its own line. The report says which engine ran and
how many queries it ran. Figures go to stdout and to ``<out>/bench.json``. The generator
writes its ground truth to ``<out>/truth``, and the report ends with linkage precision and
recall by match rank on it (:mod:`pipelines.linkage_accuracy`).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path


# --------------------------------------------------------------------------- memory
def _rss_tree_bytes(pid: int) -> int:
    """RSS of a process and all its descendants, from /proc."""
    total = 0
    stack = [pid]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            with open(f"/proc/{p}/task/{p}/children") as fh:
                stack.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


class PeakSampler:
    """Samples the process tree's RSS every ``interval`` seconds; ``peak`` since reset."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        pid = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_tree_bytes(pid))
            time.sleep(self.interval)

    def start(self):
        self._thread.start()
        return self

    def reset(self):
        gc.collect()
        self.peak = _rss_tree_bytes(os.getpid())

    def stop(self):
        self._stop.set()
        self._thread.join()


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


# --------------------------------------------------------------------------- floors
def _csv_files(landing: Path) -> list[Path]:
    return sorted(p for p in landing.rglob("*") if p.is_file() and (p.name.endswith(".csv") or p.name.endswith(".csv.gz")))


def pyarrow_floor(landing: Path) -> tuple[float, int]:
    """Seconds for pyarrow alone to parse every CSV of the landing zone (all columns as
    strings, as the pipeline reads them), and the rows parsed."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rows = 0
    t0 = time.perf_counter()
    for path in _csv_files(landing):
        header = path.name != "epraccur.csv"
        try:
            with (pa.input_stream(str(path), compression="gzip") if path.name.endswith(".gz")
                  else pa.input_stream(str(path))) as fh:
                first = fh.read(65536).split(b"\n", 1)[0].lstrip(b"\xef\xbb\xbf").rstrip(b"\r")
            delim = "|" if first.count(b"|") > first.count(b",") else ","
            names = ([n.strip().strip('"') for n in first.decode("utf-8").split(delim)] if header
                     else [f"f{i}" for i in range(first.count(b",") + 1)])
            t = pacsv.read_csv(
                str(path),
                read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if header else 0,
                                               block_size=64 << 20, encoding="utf8"),
                parse_options=pacsv.ParseOptions(delimiter=delim),
                convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names}))
            rows += t.num_rows
        except Exception:  # noqa: BLE001 - the planted malformed files
            continue
    return time.perf_counter() - t0, rows


def pandas_baseline(landing: Path, periods: list[str]) -> tuple[float, dict]:
    """A plain pandas implementation, as an analyst would write it without this project:
    read every GP extract and SUS file with pandas, linkage coverage per provider and
    practice (valid NHS number, exact NHS number join, registration covering the start),
    and FFT provider scores."""
    import pandas as pd

    from pipelines.nhs_number import valid_series

    t0 = time.perf_counter()
    gp_files = sorted((landing / "gp").glob("GP_*.csv*"))
    gp = []
    for f in gp_files:
        try:
            d = pd.read_csv(f, dtype=str, keep_default_na=False)
        except Exception:  # noqa: BLE001
            continue
        if "NHS_NUMBER" not in d:
            continue
        d["PRACTICE"] = f.name.split("_")[1]
        d["EXTRACT_DATE"] = f.name.split("_")[2][:8]
        gp.append(d)
    gp = pd.concat(gp, ignore_index=True)
    gp = gp[gp["OBJECTION"] != "9Nu0"]
    gp["NHS"] = gp["NHS_NUMBER"].str.replace(" ", "", regex=False)
    newest = gp.groupby("PRACTICE")["EXTRACT_DATE"].transform("max")
    gp = gp[gp["EXTRACT_DATE"] == newest]
    sus = []
    for f in sorted((landing / "sus_apc").glob("APC_*")):
        try:
            sep = "|" if f.open("rb").readline().count(b"|") > 3 else ","
            d = pd.read_csv(f, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8-sig")
        except Exception:  # noqa: BLE001
            continue
        if "PROCODE3" not in d:
            continue
        sus.append(d)
    sus = pd.concat(sus, ignore_index=True).drop_duplicates("SUSRECID", keep="last")
    sus["NHS"] = sus["NEWNHSNO"].str.replace(" ", "", regex=False)
    sus["VALID"] = valid_series(sus["NHS"])
    m = sus.merge(gp[["NHS", "PRACTICE", "REGISTRATION_DATE", "DEREGISTRATION_DATE"]], on="NHS", how="left")
    m["COVERS"] = (m["REGISTRATION_DATE"] <= m["EPISTART"]) & (
        (m["DEREGISTRATION_DATE"] == "") | (m["DEREGISTRATION_DATE"] >= m["EPISTART"]))
    m["LINKED"] = m["VALID"] & m["PRACTICE"].notna()
    prov = m.groupby("PROCODE3").agg(episodes=("SUSRECID", "nunique"), valid=("VALID", "sum"), linked=("LINKED", "sum"))
    prac = m[m["PRACTICE"] == m["GPPRAC"]].groupby("GPPRAC").agg(linked=("COVERS", "sum"))
    fft = []
    for f in sorted((landing / "fft").glob("FFT_*")):
        try:
            d = pd.read_csv(f, dtype=str, keep_default_na=False, encoding="utf-8-sig")
        except Exception:  # noqa: BLE001
            continue
        fft.append(d)
    fft = pd.concat(fft, ignore_index=True)
    counts = fft.pivot_table(index=["PROVIDER_CODE", "SETTING"], columns="RESPONSE", values="RESPONSE_ID",
                             aggfunc="count", fill_value=0)
    elapsed = time.perf_counter() - t0
    return elapsed, {"providers": len(prov), "practices": len(prac), "fft_rows": len(counts)}


# --------------------------------------------------------------------------- the run
STAGES = ["generate", "ingest", "validate", "link", "outcomes", "fft", "publish"]


def _table_rows(warehouse: Path, name: str, period: str) -> int:
    import pyarrow.dataset as ds

    found = [p for p in warehouse.rglob(f"period={period}") if name in p.parts]
    return sum(ds.dataset(str(p), format="parquet").count_rows() for p in found if p.is_dir())


def _generate_with_hes(landing, *, seed, scale, months, start, hes_years, hes_episodes_per_month, truth_dir=None):
    """generate() (its truth in ``truth_dir``), then a HES extract of ``hes_years`` years ending with the first generated
    month (pipelines.synth.hes.write_hes_history), its patients drawn from the GP extracts."""
    from pipelines.synth import generate
    from pipelines.synth.hes import write_hes_history

    summary = generate(landing, seed=seed, scale=scale, months=months, start=start, progress=False,
                       truth_dir=truth_dir)
    hes = write_hes_history(landing, years=hes_years, episodes_per_month=hes_episodes_per_month, end=start,
                            seed=seed)
    summary["rows_hes_history"] = hes["rows"]
    return summary


def run(scale: float, months: int, out: Path, *, seed: int = 0, baseline_max_scale: float = 0.25,
        hes_years: int = 0, hes_episodes_per_month: int = 1000, engine: str = "duckdb") -> dict:
    """The benchmark. With ``hes_years`` (``make bench-hes``) the landing zone also holds a
    HES extract of that many years (about ``hes_episodes_per_month`` episodes a month,
    ending with the first generated month): every stage then runs over every month of
    that history, which is what the cost of history is."""
    from pipelines import stages
    from pipelines.config import Settings
    from pipelines.synth import generate

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    landing = out / "landing"
    truth = out / "truth"  # the generator's ground truth: linkage precision and recall by rank
    spark_env = {k: v for k, v in os.environ.items() if k.startswith("CAREDATA_SPARK__")}
    settings = Settings.load(env=spark_env, landing=str(landing), warehouse=str(out / "warehouse"),
                             publish=str(out / "publish"), demo_mode=True, engine=engine)
    the_engine = stages.engine(settings)
    queries_before = getattr(the_engine, "queries", None)
    session_seconds = None
    if the_engine.name == "spark":  # start the session before the clock (~13 s here)
        t0 = time.perf_counter()
        the_engine.spark  # noqa: B018
        session_seconds = time.perf_counter() - t0
    sampler = PeakSampler().start()
    results: dict[str, dict] = {}

    @contextmanager
    def stage(name: str, period: str | None = None):
        sampler.reset()
        t0 = time.perf_counter()
        box = {"rows": None}
        yield box
        dt = time.perf_counter() - t0
        results.setdefault(name, {"seconds": 0.0, "rows": 0, "peak_rss_bytes": 0})
        r = results[name]
        r["seconds"] += dt
        r["rows"] += int(box["rows"] or 0)
        r["peak_rss_bytes"] = max(r["peak_rss_bytes"], sampler.peak)
        if period is not None:  # memory flat as months are added: each month's peak
            by = r.setdefault("peak_rss_by_period", {})
            by[period] = max(by.get(period, 0), sampler.peak)

    start = f"2014-{1:02d}"
    with stage("generate") as box:
        # In a process of its own: the generator holds every month it writes (8.5 GiB for
        # three national months), and memory it leaves behind would count in the stages'.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            if hes_years:
                summary = pool.submit(_generate_with_hes, landing, seed=seed, scale=scale, months=months,
                                      start=start, hes_years=hes_years,
                                      hes_episodes_per_month=hes_episodes_per_month, truth_dir=truth).result()
            else:
                summary = pool.submit(generate, landing, seed=seed, scale=scale, months=months, start=start,
                                      progress=False, truth_dir=truth).result()
        box["rows"] = int(summary.get("rows_total", 0) or sum(
            v for k, v in summary.items() if k.startswith("rows_") and isinstance(v, int)))
    input_bytes = sum(p.stat().st_size for p in _csv_files(landing))

    t_all = time.perf_counter()
    with stage("ingest") as box:
        stages.scan(settings)
        stages.load_reference(settings)
        hrep = stages.ingest_hes(settings)
        box["rows"] = int(hrep.get("rows_read", 0) or 0)
        hsec = float(hrep.get("validation_seconds", 0.0) or 0.0)
    if hsec:  # HES validation runs inside its ingest too
        results["ingest"]["seconds"] -= hsec
        v = results.setdefault("validate", {"seconds": 0.0, "rows": 0, "peak_rss_bytes": 0})
        v["seconds"] += hsec
        v["rows"] += box["rows"]
        v["peak_rss_bytes"] = max(v["peak_rss_bytes"], results["ingest"]["peak_rss_bytes"])
    periods = stages.periods(settings)
    for p in periods:
        for source in ("gp", "sus_apc", "fft"):
            with stage("ingest", p) as box:
                rep = stages.ingest_feed(settings, source, p)["metadata"]
                box["rows"] = rep.get("rows_read", 0)
                vsec = float(rep.get("validation_seconds", 0.0) or 0.0)
            # validation runs inside ingest; its share is reported separately
            results["ingest"]["seconds"] -= vsec
            v = results.setdefault("validate", {"seconds": 0.0, "rows": 0, "peak_rss_bytes": 0})
            v["seconds"] += vsec
            # with more than one chunk a worker process validates beside ingest: its own time
            v["worker_seconds"] = v.get("worker_seconds", 0.0) + float(rep.get("validation_worker_seconds", 0.0) or 0.0)
            v["rows"] += rep.get("rows_read", 0)
            v["peak_rss_bytes"] = max(v["peak_rss_bytes"], results["ingest"]["peak_rss_bytes"])
            v["peak_rss_by_period"] = {**v.get("peak_rss_by_period", {}), **results["ingest"]["peak_rss_by_period"]}
        with stage("ingest", p):
            stages.current_sus(settings, p)
            stages.current_fft(settings, p)
        with stage("link", p) as box:
            box["rows"] = stages.link(settings, p)["episodes"]
    for p in periods:
        with stage("link", p):
            stages.linkage_outputs(settings, p)
        with stage("fft", p) as box:
            box["rows"] = stages.fft_outputs(settings, p)["fft_scores"]["responses"]
        with stage("outcomes", p) as box:
            stages.outcome_outputs(settings, p)
            box["rows"] = _table_rows(out / "warehouse", "spells", p)
        with stage("publish", p) as box:
            stages.quality_outputs(settings, p)
            rep = stages.release(settings, p)
            pub = stages.publish(settings, p, run_id="bench")
            stages.publish_revisions(settings, p, run_id="bench")
            box["rows"] = sum(v for v in pub.values() if isinstance(v, int))
    # What caredata run's ledger_job does once after the periods: the public ledger and
    # the submitters' feedback packs (one per submitter and month: thousands nationally).
    t_ledger = time.perf_counter()
    with stage("publish"):
        stages.publish_submissions(settings, run_id="bench")
        packs = stages.feedback_packs(settings, run_id="bench")
    results["publish"]["ledger_and_feedback"] = {"seconds": time.perf_counter() - t_ledger,
                                                 "packs": packs["packs"], "packs_written": packs["packs_written"]}
    end_to_end = time.perf_counter() - t_all
    sampler.stop()

    floor_s, floor_rows = pyarrow_floor(landing)
    results["generate"]["rows"] = floor_rows
    baseline = None
    if scale <= baseline_max_scale and not hes_years:
        sampler = PeakSampler().start()
        sampler.reset()
        base_s, base_info = pandas_baseline(landing, periods)
        base_peak = sampler.peak
        sampler.stop()
        ours = sum(results[s]["seconds"] for s in ("ingest", "validate", "link", "fft") if s in results)
        baseline = {"seconds": base_s, "info": base_info, "ours_seconds": ours, "peak_rss_bytes": base_peak,
                    "speedup": base_s / ours if ours else None}
    from pipelines import linkage_accuracy
    from pipelines.storage import Store
    from pipelines.warehouse import Warehouse

    accuracy = linkage_accuracy.from_run(truth, Warehouse(Store(out / "warehouse")))
    queries = getattr(the_engine, "queries", None)
    report = {
        "scale": scale, "months": months, "periods": periods,
        "engine": {"name": the_engine.name,
                   "master": (settings.spark.get("connect_url") or settings.spark.get("master"))
                   if the_engine.name == "spark" else "in process",
                   "queries": queries - queries_before if queries is not None and queries_before is not None else None,
                   "session_start_seconds": session_seconds},
        "hes_years": hes_years, "hes_episodes_per_month": hes_episodes_per_month if hes_years else 0,
        "hes_rows": int(summary.get("rows_hes_history", 0) or 0),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "input_bytes": input_bytes,
        "stages": results,
        "end_to_end_seconds": end_to_end,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for k, r in results.items() if k != "generate"),
        "pyarrow_floor": {"seconds": floor_s, "rows": floor_rows,
                          "ratio": end_to_end / floor_s if floor_s else None},
        "pandas_baseline": baseline,
        # on the generator's truth (the HES history has none, so its episodes are left out)
        "linkage_accuracy": accuracy.to_dict(orient="records"),
    }
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def print_report(r: dict) -> None:
    print(f"\ncaredata bench: scale {r['scale']}, {r['months']} month(s), periods {', '.join(r['periods'])}")
    if r.get("hes_years"):
        print(f"HES history: {r['hes_years']} year(s), about {r['hes_episodes_per_month']:,} episodes a month, "
              f"{r['hes_rows']:,} rows in one extract; {len(r['periods'])} periods")
    print(f"machine: {r['machine']['cpus']} cpus, {r['machine']['memory_gib']} GiB, Python {r['machine']['python']}")
    e = r.get("engine") or {"name": "duckdb", "master": "in process"}
    line = f"engine: {e['name']} ({e['master']})"
    if e.get("queries") is not None:
        line += f", {e['queries']} queries on it"
    if e.get("session_start_seconds") is not None:
        line += f"; session start {e['session_start_seconds']:.1f} s (before the clock, not in the figures)"
    print(line)
    print(f"input: {_fmt_bytes(r['input_bytes'])} of CSV\n")
    print(f"{'stage':<10}{'wall s':>10}{'rows':>14}{'rows/s':>14}{'peak RSS':>12}")
    for name in STAGES:
        s = r["stages"].get(name)
        if not s:
            continue
        rps = s["rows"] / s["seconds"] if s["seconds"] > 0 and s["rows"] else 0
        print(f"{name:<10}{s['seconds']:>10.1f}{s['rows']:>14,}{rps:>14,.0f}{_fmt_bytes(s['peak_rss_bytes']):>12}")
    worker = r["stages"].get("validate", {}).get("worker_seconds", 0.0)
    if worker:
        print(f"(validate: the ingesting process waited {r['stages']['validate']['seconds']:.1f} s for validation; "
              f"the worker process validated (and typed the SUS rows) for {worker:.1f} s beside ingest)")
    led = r["stages"].get("publish", {}).get("ledger_and_feedback")
    if led:
        print(f"(publish includes the public ledger and {led['packs_written']:,} feedback packs: {led['seconds']:.1f} s)")
    if len(r["periods"]) > 1:
        print("\npeak RSS by month (memory flat as months are added):")
        for name in STAGES:
            by = r["stages"].get(name, {}).get("peak_rss_by_period")
            if by:
                print(f"  {name:<10}" + "  ".join(f"{p} {_fmt_bytes(by[p])}" for p in r["periods"] if p in by))
    print(f"\nend to end (without generate): {r['end_to_end_seconds']:.1f} s, peak RSS {_fmt_bytes(r['peak_rss_bytes'])}")
    f = r["pyarrow_floor"]
    print(f"pyarrow parse floor: {f['seconds']:.1f} s for {f['rows']:,} rows; pipeline / floor = {f['ratio']:.1f}x")
    b = r.get("pandas_baseline")
    if b:
        print(f"plain pandas (coverage + FFT scores): {b['seconds']:.1f} s, peak RSS {_fmt_bytes(b['peak_rss_bytes'])}; "
              f"this pipeline's ingest+validate+link+fft {b['ours_seconds']:.1f} s; pandas / pipeline = {b['speedup']:.2f}x")
    else:
        print("plain pandas baseline: skipped at this scale (run with SCALE<=0.25 to compare)")
    if r.get("linkage_accuracy"):
        import pandas as pd

        from pipelines.linkage_accuracy import format_table

        print("\nlinkage precision and recall by rank, on the generator's truth:")
        print(format_table(pd.DataFrame(r["linkage_accuracy"])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.bench")
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--months", type=int, default=1)
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hes-years", type=int, default=0,
                    help="add a HES extract of this many years (make bench-hes)")
    ap.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                    help="the engine of the relational steps (spark: local[2] unless CAREDATA_SPARK__MASTER)")
    ap.add_argument("--hes-episodes", type=int, default=1000,
                    help="HES episodes a month in that extract (the scale knob of make bench-hes)")
    args = ap.parse_args(argv)
    tag = f"scale-{args.scale}-m{args.months}" + (f"-hes{args.hes_years}y{args.hes_episodes}" if args.hes_years else "")
    tag += "-spark" if args.engine == "spark" else ""
    report = run(args.scale, args.months, Path(args.out).resolve() / tag, seed=args.seed,
                 hes_years=args.hes_years, hes_episodes_per_month=args.hes_episodes, engine=args.engine)
    print_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
