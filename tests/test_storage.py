import os
import stat

import pyarrow as pa
import pytest

from pipelines.storage import Store


def _exercise(store: Store):
    store.write_bytes("a/b/one.txt", b"hello")
    store.write_bytes("a/two.csv", b"x,y\n1,2\n")
    store.write_parquet("p/t.parquet", pa.table({"x": [1, 2, 3]}))
    assert [f.path for f in store.list("a")] == ["a/b/one.txt", "a/two.csv"]
    assert store.read_bytes("a/b/one.txt") == b"hello"
    assert b"".join(store.iter_chunks("a/two.csv", size=3)) == b"x,y\n1,2\n"
    assert store.exists("a/two.csv") and not store.exists("a/none")
    assert store.read_parquet("p/t.parquet").column("x").to_pylist() == [1, 2, 3]
    assert store.read_parquet_many(["p/t.parquet", "p/t.parquet"]).num_rows == 6
    store.delete("a/b/one.txt")
    assert [f.path for f in store.list("a")] == ["a/two.csv"]


def test_local_folder(tmp_path):
    _exercise(Store(tmp_path))
    assert not [p for p in tmp_path.rglob(".tmp-*")]  # no temporary files left behind


def test_s3_through_a_moto_server(s3_bucket):
    bucket, endpoint = s3_bucket
    _exercise(Store(f"s3://{bucket}/some/prefix", endpoint_url=endpoint))


# ------------------------------------------------------------------ the write side
@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_local_writes_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
    saved = os.umask(mask)
    try:
        store = Store(tmp_path / "root")
        store.write_bytes("a/b/one.bin", b"1")
        store.copy("a/b/one.bin", "c/d/two.bin")
        assert store.write_bytes_exclusive("e/three.json", b"{}") == ""
        store.write_parquet("p/t.parquet", pa.table({"x": [1]}))
    finally:
        os.umask(saved)
    root = tmp_path / "root"
    for rel in ("a/b/one.bin", "c/d/two.bin", "e/three.json", "p/t.parquet"):
        assert stat.S_IMODE((root / rel).stat().st_mode) == file_mode, rel
    for rel in ("a", "a/b", "c", "c/d", "e", "p"):
        assert stat.S_IMODE((root / rel).stat().st_mode) == dir_mode, rel
    assert not list(root.rglob(".tmp-*"))


def test_delete_prefix_removes_the_folders_it_empties(tmp_path):
    store = Store(tmp_path / "root")
    store.write_bytes("keep/x.txt", b"x")
    store.write_bytes("_staging/public/ds/txn/period=2014-01/p.staged", b"1")
    store.write_bytes("_staging/public/ds/txn/period=2014-02/p.staged", b"2")
    (tmp_path / "root" / "_staging" / "public" / "ds" / "empty" / "deeper").mkdir(parents=True)
    store.write_bytes("_staging/public/other/txn/q.staged", b"3")
    store.delete_prefix("_staging/public/ds", prune_parents=True)
    assert not (tmp_path / "root" / "_staging" / "public" / "ds").exists()
    assert (tmp_path / "root" / "_staging" / "public" / "other" / "txn" / "q.staged").exists()  # not emptied
    store.delete_prefix("_staging/public/other", prune_parents=True)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["keep"]  # parents pruned, root kept
    store.delete_prefix("keep")
    assert (tmp_path / "root").is_dir() and list((tmp_path / "root").iterdir()) == []
    store.delete_prefix("never/was", prune_parents=True)  # nothing there: fine


def test_exclusive_and_conditional_writes_on_s3(s3_bucket):
    bucket, endpoint = s3_bucket
    store = Store(f"s3://{bucket}/w", endpoint_url=endpoint)
    etag = store.write_bytes_exclusive("_run.lock", b"one")
    assert etag
    assert store.write_bytes_exclusive("_run.lock", b"two") is None
    assert store.read_bytes("_run.lock") == b"one"
    data, found, modified = store.read_with_etag("_run.lock")
    assert (data, found) == (b"one", etag) and modified > 0
    assert store.write_bytes_if_match("_run.lock", b"three", '"0000"') is None
    etag3 = store.write_bytes_if_match("_run.lock", b"three", etag)
    assert etag3 and etag3 != etag and store.read_bytes("_run.lock") == b"three"
    assert store.delete_if_match("_run.lock", etag) is False  # not the object we read
    assert store.exists("_run.lock")
    assert store.delete_if_match("_run.lock", etag3) is True
    assert not store.exists("_run.lock") and store.read_with_etag("_run.lock") is None
    assert store.delete_if_match("_run.lock", etag3) is False


def test_exclusive_write_on_a_folder(tmp_path):
    store = Store(tmp_path)
    assert store.write_bytes_exclusive("l/lock", b"one") == ""
    assert store.write_bytes_exclusive("l/lock", b"two") is None
    assert store.read_bytes("l/lock") == b"one"
    assert not list(tmp_path.rglob(".tmp-*"))
