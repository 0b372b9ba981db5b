"""Staging outside every dataset folder, a publish root a reader can glob, no empty
folders left behind, permissions that follow the umask (outputs.md: publishing and
readers that glob). The protocol itself (atomicity, kill test) is in test_publish.py."""

from __future__ import annotations

import glob
import json
import os
import re
import stat
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import publish as pub
from pipelines import schemas
from pipelines.publish import (
    PublicationError,
    publish_dataset,
    publish_file,
    read_manifest,
    read_published,
    verify_publication,
)
from pipelines.storage import Store

from test_publish import AFTER_COMMIT, BEFORE_COMMIT, DS, PERIODS, Crash, _run_and_kill, practice_rows, publish

PUBLISHED = re.compile(r"^(public|restricted)/([a-z0-9_]+)/period=(\d{4}-\d{2})/part-00000\.parquet$")
POINTS = BEFORE_COMMIT + AFTER_COMMIT


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "publish")


def globbed(root: Path) -> list[str]:
    """What a reader that ignores the manifest finds: `<root>/**/*.parquet`, three ways."""
    by_glob = sorted(Path(p).relative_to(root).as_posix()
                     for p in glob.glob(f"{root}/**/*.parquet", recursive=True, include_hidden=True))
    by_rglob = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    assert by_glob == by_rglob
    import duckdb

    if by_glob:
        by_duckdb = sorted(Path(r[0]).relative_to(root).as_posix() for r in duckdb.sql(
            f"SELECT file FROM glob('{root}/**/*.parquet')").fetchall())
        assert by_duckdb == by_glob
    return by_glob


def assert_globbable(root: Path) -> Counter:
    """Every `*.parquet` under the root is a published partition, each (zone, dataset,
    period) once; the dataset folders hold nothing else but manifests."""
    files = globbed(root)
    keys = []
    for f in files:
        m = PUBLISHED.match(f)
        assert m, f"a reader globbing **/*.parquet finds {f}"
        keys.append(m.groups())
    counts = Counter(keys)
    assert all(n == 1 for n in counts.values()), counts
    for zone in ("public", "restricted"):
        for folder in (root / zone).glob("*") if (root / zone).exists() else []:
            if not folder.is_dir() or folder.name == "funnel_plots":
                continue
            for p in folder.rglob("*"):
                rel = p.relative_to(folder).as_posix()
                assert rel == "_manifest.json" or re.fullmatch(r"period=\d{4}-\d{2}(/part-00000\.parquet)?", rel), \
                    f"{zone}/{folder.name} holds {rel}"
    return counts


def empty_folders(root: Path) -> list[str]:
    return sorted(Path(d).relative_to(root).as_posix() for d, dirs, files in os.walk(root)
                  if not dirs and not files and Path(d) != root)


def rows_by_glob(root: Path) -> int:
    return sum(pq.ParquetFile(root / f).metadata.num_rows for f in globbed(root))


# --------------------------------------------------------------------------- during a publish


def test_glob_during_every_step_of_a_publish_sees_each_partition_once(store, monkeypatch):
    root = Path(store.root)
    publish(store, practice_rows())
    seen = {}

    def checkpoint(point):
        counts = assert_globbable(root)
        assert set(counts) == {("public", DS.name, p) for p in PERIODS}  # the old files, whole
        assert rows_by_glob(root) == 12
        staged = sorted(p.relative_to(root).as_posix() for p in (root / "_staging").rglob("*") if p.is_file())
        seen[point] = staged

    monkeypatch.setattr(pub, "_checkpoint", checkpoint)
    res = publish(store, practice_rows(commissioner="00M"), run_id="run-2")
    assert res.written == PERIODS
    # staging happened, outside the dataset folder, in files no *.parquet glob matches
    assert set(seen) == set(POINTS)
    assert len(seen["staged"]) == 3 and len(seen["committed"]) == 3
    for f in seen["staged"]:
        assert re.fullmatch(rf"_staging/public/{DS.name}/[^/]+/period=\d{{4}}-\d{{2}}/part-00000\.parquet\.staged", f)
    assert seen["finalised"] == seen["staged"]  # kept until the manifest points back
    # after: nothing staged, no empty folder, the new publication
    assert not (root / "_staging").exists()
    assert empty_folders(root) == []
    assert_globbable(root)
    assert set(pq.read_table(root / "public" / DS.name).column("commissioner_code").to_pylist()) == {"00M"}


def test_the_manifest_points_at_the_staged_files_relative_to_the_dataset_folder(store, monkeypatch):
    root = Path(store.root)
    publish(store, practice_rows())
    paths = {}

    def checkpoint(point):
        if point == "committed":
            m = json.loads((root / "public" / DS.name / "_manifest.json").read_text())
            paths.update({p: e["files"][0]["path"] for p, e in m["partitions"].items()})
            raise Crash(point)

    monkeypatch.setattr(pub, "_checkpoint", checkpoint)
    with pytest.raises(Crash):
        publish(store, practice_rows(commissioner="00M"), run_id="run-2")
    for period, rel in paths.items():
        assert rel.startswith(f"../../_staging/public/{DS.name}/") and rel.endswith(".parquet.staged")
        # a reader following the manifest from the dataset folder finds the file
        assert (root / "public" / DS.name / rel).is_file()
    assert verify_publication(store, "public", DS.name) == []
    assert set(read_published(store, "public", DS.name).column("commissioner_code").to_pylist()) == {"00M"}
    assert_globbable(root)


# --------------------------------------------------------------------------- after a kill


@pytest.mark.parametrize("point", POINTS)
def test_glob_after_a_kill_and_after_recovery(tmp_path, store, point):
    root = Path(store.root)
    publish(store, practice_rows())
    _run_and_kill(tmp_path, root, practice_rows(commissioner="00M"), point)
    counts = assert_globbable(root)
    assert set(counts) == {("public", DS.name, p) for p in PERIODS}
    assert rows_by_glob(root) == 12
    assert verify_publication(store, "public", DS.name) == []

    publish(store, practice_rows(commissioner="00M"), run_id="run-3")  # recovers, then publishes
    assert_globbable(root)
    assert not (root / "_staging").exists()
    assert empty_folders(root) == []
    assert not list(root.rglob(".tmp-*"))
    assert set(pq.read_table(root / "public" / DS.name).column("commissioner_code").to_pylist()) == {"00M"}


class RecordingStore(Store):
    """Records the folder of every temporary file it makes."""

    def __init__(self, root):
        super().__init__(root)
        self.tmp_folders = []

    def _tmp_create(self, folder):
        self.tmp_folders.append(Path(folder).relative_to(self.root).as_posix())
        return Store._tmp_create(folder)


def test_temporary_files_are_never_made_in_a_dataset_folder(tmp_path):
    store = RecordingStore(tmp_path / "publish")
    publish(store, practice_rows())
    publish(store, practice_rows(commissioner="00M"), run_id="run-2")  # replaces every partition
    publish_file(store, "public", "data_dictionary.md", b"dictionary")
    # per publication: staged files, promotion copies, two manifests (commit, point back)
    assert len(store.tmp_folders) == 2 * (3 + 3 + 2) + (1 + 1 + 2), store.tmp_folders
    assert {f.split("/")[0] for f in store.tmp_folders} == {"_staging"}
    assert not any(f.startswith(("public", "restricted")) for f in store.tmp_folders)
    assert empty_folders(Path(store.root)) == [] and not (Path(store.root) / "_staging").exists()


def test_no_empty_folder_after_many_publications(store):
    root = Path(store.root)
    for k in range(4):
        publish(store, practice_rows(commissioner=["00L", "00M"][k % 2]), run_id=f"r{k}")
        publish(store, practice_rows(periods=["2014-02"], commissioner="00N"), run_id=f"s{k}")
        publish_file(store, "public", "funnel_plots/period=2014-01/vascular.png", f"png {k}".encode())
        publish_file(store, "public", "data_dictionary.md", f"dictionary {k}".encode())
        publish_dataset(store, schemas.get("linked_episodes"), _episode_rows(k), run_id=f"p{k}",
                        code_version="c", input_submissions={}, thresholds={}, key_label="configured:abcd1234")
        assert empty_folders(root) == [], k
        assert not (root / "_staging").exists()
        assert_globbable(root)
    assert sorted(p.name for p in root.iterdir()) == ["public", "restricted"]


def _episode_rows(k):
    import pyarrow as pa

    ds = schemas.get("linked_episodes")
    row = {c.name: None for c in ds.columns}
    row.update(period=f"2014-0{1 + k % 2}", person_id="a" * 32, provider_code="RXH",
               susrecid=f"{k}" * 32, diagnoses=["I21"], procedures=[])  # a pseudonym
    return pa.Table.from_pylist([row])


def test_staging_left_by_an_earlier_version_inside_the_dataset_folder_is_recovered(store):
    """Manifests written before staging moved list `_staging/<txn>/...` inside the folder."""
    root = Path(store.root)
    publish(store, practice_rows())
    v2 = practice_rows(periods=["2014-01"], commissioner="00M")
    data = pub.parquet_bytes(DS.conform(v2, include_partition=False, staged=False))
    old_staged = "_staging/20260101T000000Z-abc/period=2014-01/part-00000.parquet"
    store.write_bytes(f"public/{DS.name}/{old_staged}", data)
    (root / "public" / DS.name / "_staging" / "20251231T000000Z-old" / "period=2014-02").mkdir(parents=True)
    m = read_manifest(store, "public", DS.name)
    m["partitions"]["2014-01"]["files"][0].update(path=old_staged, bytes=len(data),
                                                  sha256=pub._sha256(data))
    store.write_bytes(f"public/{DS.name}/_manifest.json", pub._dump(m))
    res = publish(store, practice_rows(periods=["2014-03"]), run_id="run-3")
    assert res.recovered and res.unchanged == ["2014-03"]
    assert read_manifest(store, "public", DS.name)["partitions"]["2014-01"]["files"][0]["path"] == \
        "period=2014-01/part-00000.parquet"
    assert not (root / "public" / DS.name / "_staging").exists()
    assert empty_folders(root) == []
    assert verify_publication(store, "public", DS.name) == []
    assert set(read_published(store, "public", DS.name, periods=["2014-01"])
               .column("commissioner_code").to_pylist()) == {"00M"}


def test_a_manifest_path_outside_the_root_is_refused(store):
    publish(store, practice_rows())
    m = read_manifest(store, "public", DS.name)
    m["partitions"]["2014-01"]["files"][0]["path"] = "../../../outside.parquet"
    store.write_bytes(f"public/{DS.name}/_manifest.json", pub._dump(m))
    with pytest.raises(PublicationError, match="outside the publish root"):
        read_published(store, "public", DS.name)
    with pytest.raises(PublicationError, match="outside the publish root"):
        verify_publication(store, "public", DS.name)


# --------------------------------------------------------------------------- permissions


@pytest.fixture
def umask():
    saved = os.umask(0o022)
    os.umask(saved)

    def set_(mask):
        os.umask(mask)

    yield set_
    os.umask(saved)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                     (0o002, 0o664, 0o775)])
def test_published_files_follow_the_umask(store, umask, mask, file_mode, dir_mode, monkeypatch):
    umask(mask)
    root = Path(store.root)
    publish(store, practice_rows())
    publish(store, practice_rows(commissioner="00M"), run_id="run-2")  # promoted by copy
    publish_file(store, "public", "data_dictionary.md", b"dictionary")
    files = [p for p in root.rglob("*") if p.is_file()]
    dirs = [root] + [p for p in root.rglob("*") if p.is_dir()]
    assert len(files) == 6 and len(dirs) == 6  # root, public, the dataset, 3 periods
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == file_mode, p
    for p in dirs:
        assert stat.S_IMODE(p.stat().st_mode) == dir_mode, p


# --------------------------------------------------------------------------- S3


def test_s3_keys_a_glob_sees_during_and_after_a_publish(s3_bucket, monkeypatch):
    import boto3

    bucket, endpoint = s3_bucket
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-2")
    store = Store(f"s3://{bucket}/publish", endpoint_url=endpoint)

    def keys():
        return sorted(o["Key"][len("publish/"):] for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="publish/") for o in page.get("Contents", []))

    def parquet_keys():
        found = [k for k in keys() if k.endswith(".parquet")]
        for k in found:
            assert PUBLISHED.match(k), k
        assert len(found) == len(set(found))
        return found

    publish(store, practice_rows())
    during = {}

    def checkpoint(point):
        during[point] = (parquet_keys(), keys())
        if point == "promoting":
            raise Crash(point)

    monkeypatch.setattr(pub, "_checkpoint", checkpoint)
    with pytest.raises(Crash):
        publish(store, practice_rows(commissioner="00M"), run_id="run-2")
    monkeypatch.undo()
    for point, (pq_keys, all_keys) in during.items():
        assert len(pq_keys) == 3, point
        assert any(k.startswith(f"_staging/public/{DS.name}/") and k.endswith(".parquet.staged")
                   for k in all_keys), point
        assert f"_staging/public/{DS.name}.lock" in all_keys, point  # the publication lock
    assert len(parquet_keys()) == 3
    res = publish(store, practice_rows(commissioner="00M"), run_id="run-3")
    assert res.recovered
    assert keys() == [f"public/{DS.name}/_manifest.json"] + [
        f"public/{DS.name}/period={p}/part-00000.parquet" for p in PERIODS]
    assert verify_publication(store, "public", DS.name) == []


# --------------------------------------------------------------------------- a whole run


def test_a_run_leaves_no_staging_no_empty_folder_and_readable_files(tmp_path, umask):
    """`caredata run` on a tiny landing zone (the ledger, the dictionary, data quality are
    published): the publish root globs cleanly, has no empty folder, and is 0644/0755."""
    import contextlib
    import io

    from pipelines import cli

    landing = tmp_path / "landing"
    (landing / "reference").mkdir(parents=True)
    (landing / "reference" / "providers.csv").write_text("PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRXX,A,00K\n")
    (landing / "sus_apc").mkdir()
    (landing / "sus_apc" / "apc_rxx_2014.csv").write_text("PROCODE3,SUSRECID\nRXX,1\n")
    umask(0o022)
    saved = dict(os.environ)  # the runner exports the roots (and demo mode) to its assets
    try:
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
            rc = cli.main(["run", "--landing", str(landing), "--warehouse", str(tmp_path / "wh"),
                           "--publish", str(tmp_path / "pub"), "--demo-mode"])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert rc == 0, out.getvalue()
    root = tmp_path / "pub"
    assert globbed(root), "the run published no dataset"
    assert_globbable(root)
    assert empty_folders(root) == [] and not (root / "_staging").exists()
    for p in root.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    assert not (tmp_path / "wh" / "_run.lock").exists()  # the run lock was released


def test_s3_concurrent_publications_of_one_dataset_lose_no_partition(s3_bucket):
    """Runs of different periods (the Dagster queue allows them together) publish the same
    dataset at once: the S3 publication lock serialises them, so no partition is lost."""
    import threading

    bucket, endpoint = s3_bucket
    periods = ["2014-01", "2014-02", "2014-03", "2014-04"]
    barrier = threading.Barrier(len(periods))
    errors = []

    def worker(p):
        try:
            store = Store(f"s3://{bucket}/publish", endpoint_url=endpoint)
            barrier.wait()
            for k in range(2):
                publish(store, practice_rows(periods=[p], commissioner=["00L", "00M"][k]), run_id=f"{p}-{k}",
                        input_submissions={})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in periods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    store = Store(f"s3://{bucket}/publish", endpoint_url=endpoint)
    m = read_manifest(store, "public", DS.name)
    assert sorted(m["partitions"]) == periods
    assert {e["run_id"] for e in m["partitions"].values()} == {f"{p}-1" for p in periods}
    assert verify_publication(store, "public", DS.name) == []
    assert [f.path for f in store.list("")] == [f"public/{DS.name}/_manifest.json"] + [
        f"public/{DS.name}/period={p}/part-00000.parquet" for p in periods]
