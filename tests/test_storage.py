import pyarrow as pa

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
