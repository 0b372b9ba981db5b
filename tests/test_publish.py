"""Publishing: layout, types, readers, idempotence, atomicity (kill test), S3 (moto)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import publish as pub
from pipelines import schemas
from pipelines.disclosure import DisclosureError, apply_small_numbers
from pipelines.publish import (
    PublicationError,
    publish_dataset,
    publish_file,
    read_manifest,
    read_published,
    verify_publication,
)
from pipelines.storage import Store

DS = schemas.get("linkage_coverage_practice")
BASE = "public/linkage_coverage_practice"
PERIODS = ["2014-01", "2014-02", "2014-03"]
THRESHOLDS = {"disclosure": {"small_count_max": 7, "min_denominator": 8}}


def practice_rows(periods=PERIODS, commissioner="00L", n=4):
    rows = []
    for p in periods:
        for k in range(n):
            has_extract = k != 1
            rows.append({
                "period": p, "practice_code": f"A8100{k}", "commissioner_code": commissioner,
                "extract_received": has_extract,
                "extract_date": dt.date(int(p[:4]), int(p[5:]), 10 + k) if has_extract else None,
                "registered_patients": 1000 + k if has_extract else None,
                "type1_objections": [0, None, 3, 12][k], "type2_objections": [9, None, 0, 2][k],
                "episodes_expected": [40, 5, 0, 20][k], "episodes_linked": [38, 5, 0, 19][k],
                "pct_linked": [95.0, 100.0, None, 95.0][k], "linked_to_hospital_data": k == 0,
            })
    # shuffled order on purpose: the published order must not depend on it
    rows = rows[::-1]
    return apply_small_numbers(DS, pa.Table.from_pylist(rows))


def publish(store, table, run_id="run-1", **kw):
    kw.setdefault("input_submissions", {p: [f"gp/GP_A81000_{p.replace('-', '')}10.csv"] for p in PERIODS})
    return publish_dataset(store, DS, table, run_id=run_id, code_version="test-1",
                           thresholds=THRESHOLDS, **kw)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def norm(v):
    if v is None:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if type(v).__name__ == "Timestamp":
        return v.date()
    if type(v).__name__ in ("NaTType", "NAType"):
        return None
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def canon(records: list[dict], columns: list[str]) -> list[tuple]:
    rows = [tuple(norm(r[c]) for c in columns) for r in records]
    return sorted(rows, key=lambda r: (r[columns.index("period")], r[columns.index("practice_code")]))


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "publish")


# --------------------------------------------------------------------------- layout and types


def test_layout_schema_and_manifest(store):
    res = publish(store, practice_rows())
    assert res.written == PERIODS and res.unchanged == []
    root = Path(store.root)
    assert sorted(file_hashes(root)) == [f"{BASE}/_manifest.json"] + [
        f"{BASE}/period={p}/part-00000.parquet" for p in PERIODS]
    f = pq.ParquetFile(root / BASE / "period=2014-01" / "part-00000.parquet")
    schema = f.schema_arrow
    assert "period" not in schema.names  # in the path only
    expected = DS.arrow_schema()
    assert schema.names == expected.names
    assert [fld.type for fld in schema] == [fld.type for fld in expected]
    assert schema.field("pct_linked").metadata[b"description"] == expected.field("pct_linked").metadata[b"description"]
    assert schema.field("pct_linked").metadata[b"unit"] == b"percent"
    assert f.metadata.row_group(0).column(0).compression == "ZSTD"
    assert f.metadata.num_rows == 4

    m = read_manifest(store, "public", DS.name)
    assert (m["dataset"], m["zone"], m["schema_version"]) == (DS.name, "public", DS.schema_version)
    assert m["description"] == DS.description
    assert sorted(m["partitions"]) == PERIODS
    part = m["partitions"]["2014-02"]
    data = (root / BASE / "period=2014-02" / "part-00000.parquet").read_bytes()
    assert part["files"] == [{"path": "period=2014-02/part-00000.parquet", "rows": 4,
                              "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]
    assert part["run_id"] == "run-1" and part["code_version"] == "test-1"
    assert part["input_submissions"] == ["gp/GP_A81000_20140210.csv"]
    assert part["thresholds"] == THRESHOLDS
    dt.datetime.strptime(part["written_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert verify_publication(store, "public", DS.name) == []


def test_readers_agree_and_period_appears_once(store):
    table = practice_rows()
    publish(store, table)
    folder = Path(store.root) / BASE
    columns = [f.name for f in DS.arrow_schema(include_partition=True)]
    expected = canon(table.to_pylist(), columns)

    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as pads

    readers = {
        "manifest": read_published(store, "public", DS.name).to_pylist(),
        "pyarrow": pq.read_table(folder).to_pylist(),
        "pyarrow.dataset": pads.dataset(folder, format="parquet", partitioning="hive").to_table().to_pylist(),
        "pandas": pd.read_parquet(folder).to_dict("records"),
        "duckdb": duckdb.sql(
            f"SELECT * FROM read_parquet('{folder}/period=*/*.parquet', hive_partitioning = true)"
        ).fetch_arrow_table().to_pylist(),
        "polars": pl.read_parquet(f"{folder}/period=*/*.parquet", hive_partitioning=True).to_dicts(),
    }
    for name, records in readers.items():
        names = list(records[0])
        assert names.count("period") == 1, name
        assert sorted(names) == sorted(columns), name
        assert {str(r["period"]) for r in records} == set(PERIODS), name
        assert canon(records, columns) == expected, name

    got = read_published(store, "public", DS.name)
    assert got.schema.equals(DS.arrow_schema(include_partition=True), check_metadata=False)
    assert read_published(store, "public", DS.name, periods=["2014-03"]).num_rows == 4


def test_restricted_dataset_with_lists_reads_back(store):
    ds = schemas.get("linked_episodes")
    row = {c.name: None for c in ds.columns}
    rows = [
        {**row, "period": "2014-01", "person_id": "a" * 32, "provider_code": "RXH", "susrecid": "c" * 32,
         "diagnoses": ["I21", "E11"], "procedures": ["K401"], "admidate": dt.date(2014, 1, 2), "match_rank": 1},
        {**row, "period": "2014-01", "person_id": "b" * 32, "provider_code": "RXH", "susrecid": "d" * 32,
         "diagnoses": [], "procedures": None},
    ]
    res = publish_dataset(store, ds, pa.Table.from_pylist(rows), run_id="r", code_version="c",
                          input_submissions={}, thresholds={}, key_label="configured:abcd1234")
    assert res.written == ["2014-01"]
    m = read_manifest(store, "restricted", "linked_episodes")
    assert m["partitions"]["2014-01"]["key_label"] == "configured:abcd1234"
    got = read_published(store, "restricted", "linked_episodes")
    assert got.schema.field("diagnoses").type == pa.list_(pa.string())
    assert sorted(got.column("diagnoses").to_pylist(), key=len) == [[], ["I21", "E11"]]
    import duckdb

    folder = Path(store.root) / "restricted" / "linked_episodes"
    n = duckdb.sql(f"SELECT count(*) FROM read_parquet('{folder}/period=*/*.parquet', hive_partitioning=true) "
                   "WHERE len(diagnoses) = 2").fetchall()[0][0]
    assert n == 1


# --------------------------------------------------------------------------- refusals


def test_disclosure_violation_refuses_and_writes_nothing(store):
    raw = practice_rows().to_pylist()
    raw[0]["episodes_expected"] = 3  # a small count left visible
    raw[0]["episodes_expected_suppressed"] = False
    with pytest.raises(DisclosureError) as err:
        publish(store, pa.Table.from_pylist(raw))
    assert "episodes_expected" in str(err.value)
    assert store.list("") == []


def test_staged_table_without_disclosure_control_refused(store):
    staged = practice_rows().drop_columns(DS.suppression_flags())
    with pytest.raises(DisclosureError) as err:
        publish(store, staged)
    assert "disclosure control was not applied" in str(err.value)
    assert store.list("") == []


def test_identifier_in_value_refused(store):
    raw = practice_rows().to_pylist()
    raw[0]["commissioner_code"] = "999 000 0018"
    with pytest.raises(DisclosureError) as err:
        publish(store, pa.Table.from_pylist(raw))
    assert "nhs_number" in str(err.value) and "999 000 0018" not in str(err.value)
    assert store.list("") == []


def test_bad_period_refused(store):
    for bad in ("2014-13", "2014-1", "../x", "2014-01/../../y"):
        t = practice_rows(periods=["2014-01"])
        t = t.set_column(t.schema.get_field_index("period"), "period", pa.array([bad] * t.num_rows))
        with pytest.raises(PublicationError):
            publish(store, t)
    assert store.list("") == []


def test_internal_table_never_published(store):
    with pytest.raises(PublicationError):
        publish_dataset(store, schemas.get("ref_practices"), pa.table({"period": ["2014-01"]}),
                        run_id="r", code_version="c", input_submissions={}, thresholds={})


# --------------------------------------------------------------------------- idempotence


def test_publishing_twice_changes_nothing(store):
    publish(store, practice_rows())
    root = Path(store.root)
    before = file_hashes(root)
    manifest_before = read_manifest(store, "public", DS.name)
    mtimes = {p: (root / p).stat().st_mtime_ns for p in before}
    time.sleep(1.1)  # a second later: any time in the bytes would show
    res = publish(store, practice_rows(), run_id="run-2")
    assert res.written == [] and res.unchanged == PERIODS
    assert file_hashes(root) == before
    assert read_manifest(store, "public", DS.name) == manifest_before
    assert {p: (root / p).stat().st_mtime_ns for p in before} == mtimes  # not even rewritten


def test_a_run_for_one_period_touches_only_that_partition(store):
    publish(store, practice_rows())
    root = Path(store.root)
    before = file_hashes(root)
    m1 = read_manifest(store, "public", DS.name)
    res = publish(store, practice_rows(periods=["2014-02"], commissioner="00M"), run_id="run-2")
    assert res.written == ["2014-02"]
    after = file_hashes(root)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {f"{BASE}/period=2014-02/part-00000.parquet", f"{BASE}/_manifest.json"}
    m2 = read_manifest(store, "public", DS.name)
    for p in ("2014-01", "2014-03"):
        assert m2["partitions"][p] == m1["partitions"][p]
    assert m2["partitions"]["2014-02"]["run_id"] == "run-2"
    got = read_published(store, "public", DS.name, periods=["2014-02"])
    assert set(got.column("commissioner_code").to_pylist()) == {"00M"}


def test_listed_periods_without_rows_get_an_empty_partition(store):
    t = practice_rows(periods=["2014-01"])
    res = publish(store, t, periods=["2014-01", "2014-02"])
    assert res.written == ["2014-01", "2014-02"]
    m = read_manifest(store, "public", DS.name)
    assert m["partitions"]["2014-02"]["rows"] == 0
    assert pq.read_table(Path(store.root) / BASE).num_rows == 4
    with pytest.raises(PublicationError):
        publish(store, t, periods=["2014-02"])  # rows of a period not listed


def test_reader_following_the_manifest_sees_one_publication_at_a_time(store):
    import threading

    columns = [f.name for f in DS.arrow_schema(include_partition=True)]
    v1, v2 = practice_rows(), practice_rows(commissioner="00M")
    publish(store, v1)
    versions = {"00L": canon(v1.to_pylist(), columns), "00M": canon(v2.to_pylist(), columns)}
    errors: list[BaseException] = []

    def writer():
        try:
            for k in range(8):
                publish(store, v2 if k % 2 == 0 else v1, run_id=f"w{k}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while thread.is_alive() or reads == 0:
        got = read_published(store, "public", DS.name).to_pylist()
        codes = {r["commissioner_code"] for r in got}
        assert len(codes) == 1, "a read mixed two publications"
        assert canon(got, columns) == versions[codes.pop()]
        reads += 1
    thread.join()
    assert not errors
    assert verify_publication(store, "public", DS.name) == []


# --------------------------------------------------------------------------- atomicity

KILL_SCRIPT = """
import sys
import pyarrow.parquet as pq
from pipelines import schemas
from pipelines.publish import publish_dataset
from pipelines.storage import Store
publish_dataset(Store(sys.argv[1]), schemas.get(sys.argv[2]), pq.read_table(sys.argv[3]),
                run_id=sys.argv[4], code_version="test-1", input_submissions={}, thresholds={})
"""

BEFORE_COMMIT = ["staging", "staged"]
AFTER_COMMIT = ["committed", "promoting", "promoted", "finalised"]


def _run_and_kill(tmp_path, root, table, point) -> None:
    inp = tmp_path / "input.parquet"
    pq.write_table(table, inp)
    marker = tmp_path / f"reached-{point}"
    env = {**os.environ, "CAREDATA_PUBLISH_PAUSE_AT": point, "CAREDATA_PUBLISH_PAUSE_FILE": str(marker)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(root), DS.name, str(inp), "run-2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"publisher exited early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("publisher never reached " + point)
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("point", BEFORE_COMMIT + AFTER_COMMIT)
def test_kill_mid_publish_leaves_a_whole_publication_and_next_run_completes(tmp_path, store, point):
    v1, v2 = practice_rows(), practice_rows(commissioner="00M")
    columns = [f.name for f in DS.arrow_schema(include_partition=True)]
    publish(store, v1)
    _run_and_kill(tmp_path, store.root, v2, point)

    # Whatever the moment, the manifest lists whole files matching their digests ...
    assert verify_publication(store, "public", DS.name) == []
    seen = read_published(store, "public", DS.name).to_pylist()
    # ... and they are all the previous publication, or (after the commit) all the new one.
    want = v1 if point in BEFORE_COMMIT else v2
    assert canon(seen, columns) == canon(want.to_pylist(), columns)
    run_ids = {e["run_id"] for e in read_manifest(store, "public", DS.name)["partitions"].values()}
    assert run_ids == ({"run-1"} if point in BEFORE_COMMIT else {"run-2"})

    # The next run completes the publication.
    res = publish(store, v2, run_id="run-3", input_submissions={})
    assert res.recovered == (point in AFTER_COMMIT and point != "finalised")
    assert verify_publication(store, "public", DS.name) == []
    assert canon(read_published(store, "public", DS.name).to_pylist(), columns) == canon(v2.to_pylist(), columns)
    assert not any("_staging" in f.path for f in store.list(""))
    assert not list(Path(store.root).rglob(".tmp-*"))
    # identical bytes to a publication that was never interrupted
    clean = Store(tmp_path / "clean")
    publish(clean, v2)
    data = {k: v for k, v in file_hashes(Path(store.root)).items() if k.endswith(".parquet")}
    assert data == {k: v for k, v in file_hashes(Path(clean.root)).items() if k.endswith(".parquet")}
    # and the folder, read without the manifest, is the new publication too
    assert canon(pq.read_table(Path(store.root) / BASE).to_pylist(), columns) == canon(v2.to_pylist(), columns)


class Crash(BaseException):
    pass


def _crash_at(monkeypatch, point):
    def checkpoint(name):
        if name == point:
            raise Crash(name)
    monkeypatch.setattr(pub, "_checkpoint", checkpoint)


def test_publish_file_is_atomic_idempotent_and_listed(store, monkeypatch):
    assert publish_file(store, "public", "funnel_plots/period=2014-01/vascular.png", b"\x89PNG one") is True
    assert publish_file(store, "public", "funnel_plots/period=2014-01/vascular.png", b"\x89PNG one") is False
    m = json.loads(store.read_bytes("public/_manifest.json"))
    rec = m["files"]["funnel_plots/period=2014-01/vascular.png"]
    assert rec["sha256"] == hashlib.sha256(b"\x89PNG one").hexdigest() and rec["bytes"] == 8
    _crash_at(monkeypatch, "promoting")
    with pytest.raises(Crash):
        publish_file(store, "public", "funnel_plots/period=2014-01/vascular.png", b"\x89PNG two")
    assert verify_publication(store, "public") == []
    monkeypatch.undo()
    # the crash came after the commit: the next call completes it, so nothing is left to write
    assert publish_file(store, "public", "funnel_plots/period=2014-01/vascular.png", b"\x89PNG two") is False
    assert not any("_staging" in f.path for f in store.list(""))
    assert store.read_bytes("public/funnel_plots/period=2014-01/vascular.png") == b"\x89PNG two"
    assert verify_publication(store, "public") == []
    with pytest.raises(PublicationError):
        publish_file(store, "public", "linkage_coverage_practice/plot.png", b"x")  # would break readers
    with pytest.raises(PublicationError):
        publish_file(store, "public", "../escape.png", b"x")


# --------------------------------------------------------------------------- S3


def test_s3_publish_read_back_idempotent_and_recovers(s3_bucket, monkeypatch):
    import boto3
    import pyarrow.dataset as pads

    bucket, s3_endpoint = s3_bucket  # the session's moto server (conftest.py), a bucket of its own
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-2")
    store = Store(f"s3://{bucket}/publish", endpoint_url=s3_endpoint)
    columns = [f.name for f in DS.arrow_schema(include_partition=True)]
    table = practice_rows()
    publish(store, table)

    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"publish/{BASE}/_manifest.json"] + [
        f"publish/{BASE}/period={p}/part-00000.parquet" for p in PERIODS]
    assert verify_publication(store, "public", DS.name) == []
    assert canon(read_published(store, "public", DS.name).to_pylist(), columns) == canon(table.to_pylist(), columns)
    fs, base = store.arrow_fs()
    via_arrow = pads.dataset(f"{base}/{BASE}", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert via_arrow.column_names.count("period") == 1
    assert canon(via_arrow.to_pylist(), columns) == canon(table.to_pylist(), columns)

    def etags():
        return {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}

    before = etags()
    manifest = store.read_bytes(f"{BASE}/_manifest.json")
    assert publish(store, table, run_id="run-2").written == []
    assert etags() == before and store.read_bytes(f"{BASE}/_manifest.json") == manifest

    # a crash after the commit, half-way through promotion: consistent, then completed
    v2 = practice_rows(commissioner="00M")
    _crash_at(monkeypatch, "promoting")
    with pytest.raises(Crash):
        publish(store, v2, run_id="run-2")
    assert verify_publication(store, "public", DS.name) == []
    assert canon(read_published(store, "public", DS.name).to_pylist(), columns) == canon(v2.to_pylist(), columns)
    monkeypatch.undo()
    res = publish(store, v2, run_id="run-3")
    assert res.recovered and res.written == []
    assert not any("_staging" in k for k in etags())
    assert verify_publication(store, "public", DS.name) == []
    via_arrow = pads.dataset(f"{base}/{BASE}", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert canon(via_arrow.to_pylist(), columns) == canon(v2.to_pylist(), columns)


def test_a_partition_whose_key_label_changed_is_rewritten_even_with_the_same_rows(store):
    """Manifests written before key labels were HMACs carry a plain hash of the key: the
    next publication replaces the label even though the rows are the same."""
    ds = schemas.get("linked_episodes")
    row = {c.name: None for c in ds.columns}
    table = pa.Table.from_pylist([{**row, "period": "2014-01", "person_id": "a" * 32, "provider_code": "RXH",
                                   "susrecid": "c" * 32, "diagnoses": [], "procedures": []}])
    kw = dict(run_id="r", code_version="c", input_submissions={}, thresholds={})
    assert publish_dataset(store, ds, table, key_label="configured:abcd1234", **kw).written == ["2014-01"]
    assert publish_dataset(store, ds, table, key_label="configured:abcd1234", **kw).unchanged == ["2014-01"]
    assert publish_dataset(store, ds, table, key_label="configured:0123456789abcdef", **kw).written == ["2014-01"]
    m = read_manifest(store, "restricted", "linked_episodes")
    assert m["partitions"]["2014-01"]["key_label"] == "configured:0123456789abcdef"


def test_suppressible_counts_read_as_nullable_ints_in_pandas(store):
    """outputs.md: counts that can be suppressed read as Int64 in pandas, not float."""
    import pandas as pd

    table = practice_rows()
    publish(store, table)
    df = pd.read_parquet(Path(store.root) / BASE)
    # type1_objections holds 3 (suppressed: empty) and an empty value (no extract) in every period
    assert str(df["type1_objections"].dtype) == "Int64"
    assert df["type1_objections"].isna().sum() == 6
    assert sorted(df["type1_objections"].dropna().tolist()) == [0, 0, 0, 12, 12, 12]
    for c in DS.columns:
        if c.type == pa.int64():
            assert str(df[c.name].dtype) == "Int64", c.name
    assert str(df["pct_linked"].dtype) == "float64"
    # one file read alone, too
    one = next((Path(store.root) / BASE).glob("period=2014-01/*.parquet"))
    assert str(pd.read_parquet(one)["episodes_expected"].dtype) == "Int64"
