"""The benchmark harness (`make bench`, pipelines/bench.py) at a tiny scale: the figures it
prints and writes are the ones the stages produced. Its speed is not tested here: the
national figures are in docs/performance.md."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from pipelines import bench

pytestmark = pytest.mark.e2e


def test_bench_reports_every_stage_and_each_months_peak(tmp_path, capsys):
    out = tmp_path / "b"
    r = bench.run(0.002, 2, out, seed=3)
    assert r["periods"][:2] == ["2014-01", "2014-02"]  # and any month a late file names
    assert json.loads((out / "bench.json").read_text())["stages"] == json.loads(json.dumps(r["stages"]))
    for name in bench.STAGES:
        s = r["stages"][name]
        assert s["seconds"] > 0 and s["rows"] > 0 and s["peak_rss_bytes"] > 0, name
        if name == "generate":
            continue
        by = s["peak_rss_by_period"]
        assert sorted(by) == r["periods"], name
        assert 0 < max(by.values()) <= s["peak_rss_bytes"], name
    assert r["peak_rss_bytes"] == max(s["peak_rss_bytes"] for k, s in r["stages"].items() if k != "generate")
    # link counts the episodes it linked: what the warehouse holds
    linked = ds.dataset(str(out / "warehouse" / "work" / "linked_episodes"), format="parquet").count_rows()
    assert r["stages"]["link"]["rows"] == linked
    assert r["pyarrow_floor"]["rows"] == r["stages"]["generate"]["rows"]
    b = r["pandas_baseline"]
    assert b["speedup"] == b["seconds"] / b["ours_seconds"]
    # publish counts what caredata run's ledger_job does too: the ledger and every feedback pack
    led = r["stages"]["publish"]["ledger_and_feedback"]
    written = {p.parent for p in (out / "publish" / "feedback").rglob("_manifest.json")}
    assert led["packs_written"] == led["packs"] == len(written) > 0
    assert (out / "publish" / "public" / "submissions" / "_manifest.json").exists()
    bench.print_report(r)
    printed = capsys.readouterr().out
    assert f"{led['packs_written']:,} feedback packs" in printed
    assert "peak RSS by month" in printed and all(f"{p} " in printed for p in r["periods"])
    # linkage precision and recall by rank on the generator's truth (pipelines/linkage_accuracy.py)
    acc = {row["rank"]: row for row in r["linkage_accuracy"]}
    assert list(acc) == ["1", "2", "3", "4", "5", "1-5"]
    assert acc["1-5"]["links"] == sum(acc[k]["links"] for k in "12345") > 0
    assert acc["1"]["precision"] == 1.0 and acc["1-5"]["recall"] > 0.9
    assert "linkage precision and recall by rank" in printed and "cum. recall" in printed


def test_bench_hes_history_runs_every_stage_over_every_month_of_the_extract(tmp_path, capsys):
    """`make bench-hes` at a tiny scale: a HES extract of a year beside one generated month
    (the history crosses a year end); every month of the history is a period every stage
    ran for, and ingest counts its rows."""
    out = tmp_path / "h"
    r = bench.run(0.001, 1, out, seed=1, hes_years=1, hes_episodes_per_month=120)
    assert r["hes_years"] == 1 and r["hes_rows"] > 1000
    assert r["periods"][0] == "2013-02" and "2014-01" in r["periods"] and len(r["periods"]) >= 12
    assert r["pandas_baseline"] is None
    assert r["stages"]["ingest"]["rows"] >= r["hes_rows"]
    for name in ("ingest", "link", "outcomes", "publish"):
        s = r["stages"][name]
        assert s["seconds"] > 0 and s["rows"] > 0 and s["peak_rss_bytes"] > 0, name
        assert sorted(s["peak_rss_by_period"]) == r["periods"], name
    # the HES episodes are linked, month by month
    linked = ds.dataset(str(out / "warehouse" / "work" / "linked_episodes"), format="parquet").count_rows()
    assert r["stages"]["link"]["rows"] == linked and linked > r["hes_rows"] * 0.9
    bench.print_report(r)
    assert "HES history: 1 year(s)" in capsys.readouterr().out
