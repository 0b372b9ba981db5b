"""A late NET resubmission in a generated landing zone revises a published month, and the
public `revisions` dataset says what changed and which submission caused it (issue 24,
item 5). The stages run as the pipeline runs them, without Dagster, three times: the
first release, the release after the NET file, and a rerun with nothing new."""

from __future__ import annotations

import csv
import io
import json

import pytest

from pipelines import ingest, stages
from pipelines.config import Settings
from pipelines.publish import read_published
from pipelines.storage import Store
from pipelines.synth import generate
from pipelines.warehouse import Warehouse

from helpers import land, read_landing

pytestmark = pytest.mark.e2e

RUN1 = "0b8e5b2a-6d1f-4c3e-9a7b-2f4d6e8a0c1e"
RUN2 = "5e7c9a1b-3d5f-4b7d-8e9f-1a3c5e7b9d2f"
RUN3 = "9a1c3e5b-7d9f-4a2c-8b4d-6e8f0a2c4e6b"


def _run(settings: Settings, run_id: str) -> dict:
    stages.scan(settings)
    stages.load_reference(settings)
    stages.ingest_hes(settings)
    reports = {}
    for p in stages.periods(settings):
        for source in ("gp", "sus_apc", "fft"):
            stages.ingest_feed(settings, source, p)
        stages.current_sus(settings, p)
        stages.current_fft(settings, p)
        stages.link(settings, p)
    for p in stages.periods(settings):
        stages.linkage_outputs(settings, p)
        stages.fft_outputs(settings, p)
        stages.outcome_outputs(settings, p)
        stages.quality_outputs(settings, p)
        stages.release(settings, p)
        reports[p] = stages.publish(settings, p, run_id=run_id)
        reports[p]["revisions"] = stages.publish_revisions(settings, p, run_id=run_id)
    return reports


def test_a_late_net_resubmission_makes_revisions_naming_it(tmp_path):
    landing = tmp_path / "landing"
    generate(landing, seed=3, scale=0.001, months=1, start="2014-01", truth_dir=tmp_path / "truth",
             progress=False)
    settings = Settings(landing=str(landing), warehouse=str(tmp_path / "wh"), publish=str(tmp_path / "pub"))
    pub = Store(tmp_path / "pub")
    manifest = tmp_path / "pub" / "public" / "revisions" / "_manifest.json"

    first = _run(settings, RUN1)
    assert list(first) == ["2014-01"]
    # a first publication is no revision: the month's partition is published empty
    assert "revisions_pending" not in first["2014-01"] and first["2014-01"]["revisions"]["revisions"] == 0
    assert read_published(pub, "public", "revisions").num_rows == 0
    assert set(json.loads(manifest.read_text())["partitions"]) == {"2014-01"}

    # The provider's current BULK for January, and a NET file a month later deleting its
    # first three episodes (CDS_UPDATE_TYPE 1): the provider's January changes.
    wh = Warehouse(Store(tmp_path / "wh"))
    ledger = ingest.read_ledger(wh).to_pylist()
    bulk = next(r for r in sorted(ledger, key=lambda r: r["file_name"])
                if r["source"] == "sus_apc" and r["status"] == "current" and r["protocol"] == "BULK"
                and r["reporting_period"] == "2014-01")
    provider = bulk["submitter_code"]
    text = read_landing(landing / bulk["file_name"])
    header = text.splitlines()[0]
    delimiter = "|" if header.count("|") > header.count(",") else ","  # the generator plants both
    rows = list(csv.DictReader(io.StringIO(text), delimiter=delimiter))
    out = io.StringIO()
    fields = [c for c in rows[0] if c != "CDS_UPDATE_TYPE"] + ["CDS_UPDATE_TYPE"]
    w = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows[:3]:
        w.writerow({**r, "CDS_UPDATE_TYPE": "1"})
    net = f"sus_apc/APC_{provider}_201401_20140420120000_NET.csv"
    land(landing, net, out.getvalue())

    second = _run(settings, RUN2)["2014-01"]
    assert second["revisions_pending"] == second["revisions"]["revisions"] > 0
    revisions = read_published(pub, "public", "revisions").to_pylist()
    by_dataset = {r["dataset"]: r for r in revisions}
    assert len(by_dataset) == len(revisions)  # one row per dataset, period and release
    for r in revisions:
        assert r["period"] == "2014-01"
        assert (r["release_run_id"], r["previous_run_id"]) == (RUN2, RUN1)
        assert r["rows_added"] + r["rows_removed"] + r["rows_changed"] > 0
    # the provider's row of linkage_coverage_provider changed (fewer episodes); no provider
    # appeared or disappeared
    lcp = by_dataset["linkage_coverage_provider"]
    assert (lcp["rows_added"], lcp["rows_removed"], lcp["rows_changed"]) == (0, 0, 1)
    assert lcp["submissions"] == [net]
    # the submitter's data-quality summary row counts the new file's rows
    assert by_dataset["data_quality_summary"]["rows_changed"] >= 1
    assert by_dataset["data_quality_summary"]["submissions"] == [net]
    # FFT files did not change, and FFT scores read no SUS file: no revision of them
    assert "fft_scores" not in by_dataset
    ledger_after = {r["file_name"]: r["status"] for r in ingest.read_ledger(wh).to_pylist()}
    assert ledger_after[net] == "current"

    before = manifest.read_bytes()
    third = _run(settings, RUN3)["2014-01"]
    assert "revisions_pending" not in third and third["revisions"]["revisions"] == 0  # nothing new
    assert not third["revisions"]["written"] and manifest.read_bytes() == before
    assert json.loads(before)["run_id"] == RUN2
