"""The benchmark harness (`make bench`, pipelines/bench.py) at a tiny scale: the figures it
prints and writes are the ones the stages produced. Its speed is not tested here: the
national figures are in docs/performance.md."""

from __future__ import annotations

import json

import pyarrow.dataset as ds

from pipelines import bench


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
    bench.print_report(r)
    printed = capsys.readouterr().out
    assert "peak RSS by month" in printed and all(f"{p} " in printed for p in r["periods"])
