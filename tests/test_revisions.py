"""The public `revisions` dataset (issue 24, item 5): what a release changed in a period
already published, rows compared by the dataset's declared key."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from pipelines import disclosure, schemas, stages
from pipelines.nhs_number import with_check_digit
from pipelines.publish import (
    Revision,
    compare_rows,
    public_run_id,
    publish_dataset,
    publish_revisions,
    read_manifest,
    read_published,
)
from pipelines.storage import Store

DQ = schemas.get("data_quality_summary")
THRESHOLDS = {"disclosure": {"small_count_max": 7, "min_denominator": 8}}
UUID1 = "3f2b8c1e-9a4d-4e6f-8b0a-1c2d3e4f5a6b"
UUID2 = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def dq_row(period: str, provider: str, score: float, *, held: bool = False) -> dict:
    return {"period": period, "source": "sus_apc", "submitter_code": provider, "rows_received": 100,
            "rows_quarantined": 2, "rows_kept": 98, "dq_score": score, "pct_valid_nhs_number": 99.5,
            "below_sanction_threshold": False, "held": held, "held_reason": None}


def dq(*rows: dict) -> pa.Table:
    from pipelines.warehouse import added_columns  # the DQMI columns, empty

    return DQ.conform(added_columns(DQ, pa.Table.from_pylist(list(rows))))


def put(store, table, run_id, period="2024-01", inputs=()):
    return publish_dataset(store, DQ, table, run_id=run_id, code_version="t",
                           input_submissions={period: list(inputs)}, thresholds=THRESHOLDS)


def nhs_number() -> str:
    """A valid test NHS number (999 range) made by the generator's rule."""
    return next(n for k in range(1, 100) if (n := with_check_digit(f"999{k:06d}")))


# --------------------------------------------------------------------------- keys


def test_every_public_dataset_declares_its_key_among_its_columns():
    for ds in schemas.datasets("public"):
        assert ds.key, f"{ds.name} declares no key"
        assert set(ds.key) <= set(ds.column_names) and ds.partition_by not in ds.key, ds.name
    with pytest.raises(ValueError, match="key"):
        schemas.Dataset(name="x", zone="public", grain="g", description="d",
                        columns=schemas.cols(schemas.PERIOD), key=("nope",))


# --------------------------------------------------------------------------- comparison


def test_compare_rows_counts_added_removed_changed_by_key():
    old = dq(dq_row("2024-01", "RGT", 97.0), dq_row("2024-01", "RXX", 90.0), dq_row("2024-01", "RYY", 80.0))
    new = dq(dq_row("2024-01", "RGT", 97.0),          # same: not counted
             dq_row("2024-01", "RXX", 91.0),          # same key, dq_score differs: 1 changed
             dq_row("2024-01", "RZZ", 80.0))          # RZZ new: 1 added; RYY gone: 1 removed
    assert compare_rows(DQ.key, old, new) == (1, 1, 1)
    # the order of rows does not matter
    assert compare_rows(DQ.key, old.take([2, 0, 1]), new.take([1, 2, 0])) == (1, 1, 1)


def test_floats_are_compared_exactly_as_stored_and_empty_differs_from_a_value():
    base = dq_row("2024-01", "RGT", 95.0)
    tiny = {**base, "dq_score": 95.00000000000001}       # one ulp away: changed
    empty = {**base, "pct_valid_nhs_number": None}        # a value blanked: changed
    nan = {**base, "dq_score": float("nan")}
    negzero, zero = {**base, "dq_score": -0.0}, {**base, "dq_score": 0.0}
    assert compare_rows(DQ.key, dq(base), dq(tiny)) == (0, 0, 1)
    assert compare_rows(DQ.key, dq(base), dq(empty)) == (0, 0, 1)
    assert compare_rows(DQ.key, dq(nan), dq(nan)) == (0, 0, 0)  # NaN stored twice is the same bits
    assert compare_rows(DQ.key, dq(zero), dq(negzero)) == (0, 0, 1)  # -0.0 is stored differently
    assert compare_rows(DQ.key, dq(base), dq(base)) == (0, 0, 0)


def test_a_key_held_by_several_rows_is_compared_as_a_multiset():
    a, b, c = (dq_row("2024-01", "RGT", s) for s in (1.0, 2.0, 3.0))
    # old {1, 2} new {2, 3, 3}: 2 matches; 1 -> 3 pairs as changed; the extra 3 is added
    assert compare_rows(DQ.key, dq(a, b), dq(b, c, c)) == (1, 0, 1)


# --------------------------------------------------------------------------- publishing


def test_a_later_release_records_its_revision_and_nothing_else_does(tmp_path):
    store = Store(tmp_path)
    jan1 = dq(dq_row("2024-01", "RGT", 97.0), dq_row("2024-01", "RXX", 90.0), dq_row("2024-01", "RYY", 80.0))
    first = put(store, jan1, UUID1, inputs=["sus_apc/APC_RGT_202401_20240205120000_BULK.csv"])
    assert first.written == ["2024-01"] and first.revisions == []  # a first publication is no revision

    again = put(store, jan1, UUID2)  # the same rows: nothing written, no revision
    assert again.written == [] and again.revisions == []

    jan2 = dq(dq_row("2024-01", "RGT", 97.0), dq_row("2024-01", "RXX", 91.5), dq_row("2024-01", "RZZ", 70.0))
    second = put(store, jan2, UUID2, inputs=["sus_apc/APC_RGT_202401_20240205120000_BULK.csv",
                                             "sus_apc/APC_RXX_202401_20240301090000_NET.csv"])
    [rev] = second.revisions
    # RXX changed (90.0 -> 91.5), RZZ added, RYY removed, RGT unchanged
    assert (rev.dataset, rev.period, rev.rows_added, rev.rows_removed, rev.rows_changed) == \
        ("data_quality_summary", "2024-01", 1, 1, 1)
    assert rev.release_run_id == UUID2 and rev.previous_run_id == UUID1
    assert rev.previous_inputs == ["sus_apc/APC_RGT_202401_20240205120000_BULK.csv"]
    entry = read_manifest(store, "public", DQ.name)["partitions"]["2024-01"]
    assert rev.released_at == entry["written_at"]

    assert publish_revisions(store, [], run_id="cli", code_version="t") is None  # nothing to append
    rev.submissions = ["sus_apc/APC_RXX_202401_20240301090000_NET.csv"]
    res = publish_revisions(store, second.revisions, run_id=UUID2, code_version="t", thresholds=THRESHOLDS)
    assert res.written == ["2024-01"]
    # appending the same revision again (a run killed before it forgot it) adds nothing
    assert publish_revisions(store, second.revisions, run_id=UUID2, code_version="t", thresholds=THRESHOLDS) is None
    [row] = read_published(store, "public", "revisions").to_pylist()
    assert row["period"] == "2024-01" and row["dataset"] == "data_quality_summary"
    assert (row["release_run_id"], row["previous_run_id"]) == (UUID2, UUID1)
    assert (row["rows_added"], row["rows_removed"], row["rows_changed"]) == (1, 1, 1)
    assert row["submissions"] == ["sus_apc/APC_RXX_202401_20240301090000_NET.csv"]
    assert row["released_at"].tzinfo is not None

    # a third release of January appends its row; February, published for the first time
    # in the same release, gets none
    jan3 = dq(dq_row("2024-01", "RGT", 97.0), dq_row("2024-01", "RXX", 91.5))  # RZZ withdrawn: 1 removed
    third = put(store, jan3, "cli")
    feb = publish_dataset(store, DQ, dq(dq_row("2024-02", "RGT", 99.0)), run_id="cli", code_version="t",
                          thresholds=THRESHOLDS)
    assert feb.written == ["2024-02"] and feb.revisions == []
    [rev3] = third.revisions
    assert (rev3.rows_added, rev3.rows_removed, rev3.rows_changed, rev3.previous_run_id) == (0, 1, 0, UUID2)
    publish_revisions(store, third.revisions, run_id="cli", code_version="t", thresholds=THRESHOLDS)
    rows = read_published(store, "public", "revisions").to_pylist()
    assert sorted((r["release_run_id"], r["rows_removed"]) for r in rows) == [(UUID2, 1), ("cli", 1)]
    assert {r["period"] for r in rows} == {"2024-01"}
    assert [r["submissions"] for r in rows if r["release_run_id"] == "cli"] == [[]]


def test_a_partition_rewritten_with_the_same_rows_is_no_revision(tmp_path):
    """A partition staged again for another reason than its rows (here a new key label, as
    when the restricted zone's key changes) compares equal: no revision."""
    store = Store(tmp_path)
    t = dq(dq_row("2024-01", "RGT", 97.0))
    put(store, t, "run-a")
    res = publish_dataset(store, DQ, t, run_id="run-b", code_version="t", thresholds=THRESHOLDS,
                          key_label="another-label")
    assert res.written == ["2024-01"] and res.revisions == []


def test_the_revisions_table_passes_the_public_checks_and_odd_run_ids_are_replaced():
    ds = schemas.get("revisions")
    assert public_run_id(UUID1) == UUID1 and public_run_id("cli") == "cli"
    digits = nhs_number()
    odd = ["2024-04-1", "Run 7", f"a{digits}"]  # a date; free text; an NHS number
    for run_id in odd:
        shown = public_run_id(run_id)
        assert shown.startswith("run-") and len(shown) == 16 and run_id not in shown
    # a UUID whose digits could read as an NHS number is opaque to the scan
    uuid_digits = f"{digits[:8]}-{digits[8:]}ab-4abc-8abc-abcdefabcdef"
    assert disclosure.identifiers_in(uuid_digits) == {"nhs_number"}  # read as text it would block
    assert public_run_id(uuid_digits) == uuid_digits
    rev = Revision("fft_scores", "2024-01", uuid_digits, "2024-02-05T10:00:00Z", "bench", None, [], 0, 0, 2)
    table = pa.Table.from_pylist([{
        "period": "2024-01", "dataset": rev.dataset, "release_run_id": public_run_id(rev.release_run_id),
        "previous_run_id": public_run_id("2024-04-1"), "rows_added": 0, "rows_removed": 0, "rows_changed": 2,
        "submissions": ["fft/FFT_RGT_202401_20240301090000.csv", "sus_apc/unrecognised-0123456789ab"],
        "released_at": dt.datetime(2024, 2, 5, tzinfo=dt.timezone.utc), "previous_released_at": None,
    }], schema=ds.arrow_schema(include_partition=True))
    assert disclosure.check_public(ds, table) == []
    bad = table.set_column(table.schema.get_field_index("submissions"), table.schema.field("submissions"),
                           pa.array([["sus_apc/APC Smith " + digits + ".csv"]], pa.list_(pa.string())))
    assert {v.rule for v in disclosure.check_public(ds, bad)} >= {"format"}


# --------------------------------------------------------------------------- submissions


def _ledger(rows: list[dict]) -> pa.Table:
    ds = schemas.get("ledger")
    full = [{c: r.get(c) for c in ds.column_names} for r in rows]
    return pa.Table.from_pylist(full, schema=ds.arrow_schema())


def test_revision_submissions_are_the_new_files_of_the_datasets_sources_as_publicly_named():
    t0 = dt.datetime(2024, 2, 10, tzinfo=dt.timezone.utc)
    later = t0 + dt.timedelta(days=20)
    bulk = "sus_apc/APC_RGT_202401_20240205120000_BULK.csv"
    net = "sus_apc/APC_RGT_202401_20240301090000_NET.csv"
    odd = "sus_apc/APC_RGT_202401 resubmitted by J Smith.csv"
    ledger = _ledger([
        {"file_name": bulk, "source": "sus_apc", "reporting_period": "2024-01", "status": "current",
         "sha256": "a" * 64, "first_seen_at": t0},
        {"file_name": net, "source": "sus_apc", "reporting_period": "2024-01", "status": "current",
         "sha256": "b" * 64, "first_seen_at": later},                       # new: listed
        {"file_name": odd, "source": "sus_apc", "reporting_period": "2024-01", "status": "held",
         "sha256": "c" * 64, "first_seen_at": later},                       # new, by its digest
        {"file_name": "sus_apc/APC_RGT_202401_20240302090000_NET.csv", "source": "sus_apc",
         "reporting_period": "2024-01", "status": "rejected", "sha256": "d" * 64, "first_seen_at": later},
        {"file_name": "sus_apc/APC_RGT_202402_20240302090000_BULK.csv", "source": "sus_apc",
         "reporting_period": "2024-02", "status": "current", "sha256": "e" * 64, "first_seen_at": later},
        {"file_name": "fft/FFT_RGT_202401_20240301090000.csv", "source": "fft",
         "reporting_period": "2024-01", "status": "current", "sha256": "f" * 64, "first_seen_at": later},
    ])
    rev = Revision("linkage_coverage_provider", "2024-01", "r2", "2024-03-02T00:00:00Z", "r1",
                   "2024-02-11T00:00:00Z", [bulk], 0, 0, 1)
    # the BULK was an input before; the rejected NET took nothing in; February's file and
    # the FFT file do not feed January's linkage coverage
    assert stages.revision_submissions(ledger, rev) == [net, "sus_apc/unrecognised-cccccccccccc"]
    # the outcome datasets read other months too: February's file counts there (seen since)
    out = Revision("consultant_outcomes", "2024-01", "r2", "2024-03-02T00:00:00Z", "r1",
                   "2024-02-11T00:00:00Z", [bulk], 0, 0, 1)
    assert "sus_apc/APC_RGT_202402_20240302090000_BULK.csv" in stages.revision_submissions(ledger, out)
    fft = Revision("fft_scores", "2024-01", "r2", "2024-03-02T00:00:00Z", "r1", "2024-02-11T00:00:00Z", [], 0, 0, 1)
    assert stages.revision_submissions(ledger, fft) == ["fft/FFT_RGT_202401_20240301090000.csv"]


def test_revisions_left_pending_by_a_killed_run_are_published_by_the_next_one(tmp_path):
    """A run killed after publishing a revised dataset, before appending to `revisions`,
    left its revision pending in the warehouse: the next publication of the period
    appends it (once) and forgets it."""
    from dataclasses import asdict

    from pipelines.config import Settings
    from pipelines.warehouse import Warehouse

    settings = Settings(landing=str(tmp_path / "landing"), warehouse=str(tmp_path / "wh"),
                        publish=str(tmp_path / "pub"))
    (tmp_path / "landing").mkdir()
    wh = Warehouse(Store(tmp_path / "wh"))
    rev = Revision("fft_scores", "2024-01", UUID2, "2024-03-02T10:00:00Z", UUID1, "2024-02-11T10:00:00Z",
                   [], 0, 0, 3, ["fft/FFT_RGT_202401_20240301090000.csv"])
    path = "release/revisions_pending/period=2024-01.json"
    wh.store.write_bytes(path, json.dumps([asdict(rev)]).encode())
    report = stages.publish_revisions(settings, "2024-01", run_id="cli")
    assert report["revisions"] == 1 and report["written"] and not wh.store.exists(path)
    [row] = read_published(Store(tmp_path / "pub"), "public", "revisions").to_pylist()
    assert (row["dataset"], row["release_run_id"], row["rows_changed"], row["submissions"]) == \
        ("fft_scores", UUID2, 3, ["fft/FFT_RGT_202401_20240301090000.csv"])
    again = stages.publish_revisions(settings, "2024-01", run_id="cli")  # nothing pending
    assert again["revisions"] == 0 and not again["written"]


def test_the_dictionary_gives_each_public_dataset_its_key_and_says_when_no_row_is_written():
    from pipelines.dictionary import render_html, render_markdown

    md, page = render_markdown(), render_html()
    assert "- **Key (rows compared by, in `revisions`):** `practice_code`" in md
    assert "<code>setting</code>, <code>level</code>, <code>org_code</code>" in page
    assert "a re-publication that changes nothing writes no row" in md
