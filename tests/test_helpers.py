"""The search the information-governance tests rely on (tests/helpers.py) finds what the
JSON-of-every-row search it replaced found: a number in any column type, at any depth, in
metadata, inside a longer run of digits, spaced; and nothing that is not there."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

from helpers import found_in, parquet_values_text, written_texts

N = "9990587119"
SPACED = "999 058 7119"


def _write(tmp_path, name, table, metadata=None):
    if metadata:
        table = table.replace_schema_metadata(metadata)
    path = tmp_path / f"{name}.parquet"
    pq.write_table(table, path, compression="zstd")
    return path


def _other(n: int = 20) -> list[str]:
    rng = random.Random(1)
    return [f"{rng.randrange(10**9, 10**10)}" for _ in range(n)]


def test_found_in_is_the_substring_search():
    rng = random.Random(3)
    needles = {f"999{rng.randrange(10**7):07d}" for _ in range(50)} | {"999 000 0001", "Jane", "LS1 4AP"}
    for _ in range(200):
        pieces = [rng.choice([*needles, "x", " ", "12", "4AP", "9990", "\n", "1999 000 00012"]) for _ in range(8)]
        text = "".join(pieces)
        assert found_in(text, needles) == {n for n in needles if n in text}, text


def test_a_number_is_found_in_every_kind_of_column(tmp_path):
    columns = {
        "string": pa.table({"a": _other() + [N]}),
        "spaced": pa.table({"a": _other() + [SPACED]}),
        "inside_longer_digits": pa.table({"a": ["1" + N + "2"]}),
        "int64": pa.table({"a": pa.array([1, int(N)], pa.int64())}),
        "float": pa.table({"a": pa.array([0.5, float(N)], pa.float64())}),
        "decimal": pa.table({"a": pa.array([__import__("decimal").Decimal(N)], pa.decimal128(12, 0))}),
        "dictionary": pa.table({"a": pa.array(["x", N, "x"]).dictionary_encode()}),
        "list": pa.table({"a": pa.array([[], ["x", N]], pa.list_(pa.string()))}),
        "struct": pa.table({"a": pa.array([{"k": "x", "v": {"deep": [N]}}])}),
        "map": pa.table({"a": pa.array([[("k", N)]], pa.map_(pa.string(), pa.string()))}),
        "binary": pa.table({"a": pa.array([N.encode() + b"\xff"], pa.binary())}),
        "column_name": pa.table({f"c{N}": [1]}),
    }
    for name, table in columns.items():
        text = parquet_values_text(_write(tmp_path, name, table))
        assert found_in(text, {N, SPACED}), name
    meta = _write(tmp_path, "metadata", pa.table({"a": [1]}), {b"note": json.dumps({"n": N}).encode()})
    assert found_in(parquet_values_text(meta), {N})


def test_nothing_is_found_that_is_not_there(tmp_path):
    t = pa.table({"a": _other(), "b": pa.array(range(20), pa.int64()), "d": pa.array([N[:9]] * 20)})
    path = _write(tmp_path, "clean", t)
    assert found_in(parquet_values_text(path), {N, SPACED}) == set()
    # every file by its bytes, and a Parquet file by its values too
    found = _write(tmp_path, "found", pa.table({"a": pa.array([int(N)], pa.int64())}))
    names = dict(written_texts(tmp_path))
    assert set(names) == {str(path), f"{path} (values)", str(found), f"{found} (values)"}
    assert found_in(names[f"{found} (values)"], {N}) and not found_in(names[f"{path} (values)"], {N})
