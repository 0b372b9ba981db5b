"""Helpers shared by the test modules (import as ``from helpers import ...``: pytest puts
tests/ on sys.path, as it does for conftest.py and pg.py)."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.nhs_number import with_check_digit

ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- searching what was written
_TEN_DIGITS = re.compile(r"(?=(\d{10}))")
_SPACED = re.compile(r"(?=(\d{3} \d{3} \d{4}))")


def found_in(text: str, needles: Iterable[str]) -> set[str]:
    """The needles that occur in ``text``: exactly ``{n for n in needles if n in text}``, but
    in one pass over the text for needles shaped like NHS numbers (ten digits, or 3-3-4 with
    spaces): every ten-digit window of every digit run (overlapping, so a number inside a
    longer run of digits is found too) is looked up in the set. Other needles are searched
    for one by one."""
    needles = set(needles)
    plain = {n for n in needles if len(n) == 10 and n.isdigit()}
    spaced = {n for n in needles - plain if re.fullmatch(r"\d{3} \d{3} \d{4}", n)}
    found = set()
    if plain:
        found |= plain.intersection(_TEN_DIGITS.findall(text))
    if spaced:
        found |= spaced.intersection(_SPACED.findall(text))
    found |= {n for n in needles - plain - spaced if n in text}
    return found


def _leaf_values(arr: pa.Array) -> Iterator[pa.Array]:
    """Every leaf value array under ``arr`` (struct fields, list items, map keys and items,
    dictionaries decoded)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        yield from _leaf_values(arr.dictionary_decode())
    elif pa.types.is_struct(t):
        for i in range(t.num_fields):
            yield from _leaf_values(arr.field(i))
    elif pa.types.is_map(t):
        yield from _leaf_values(arr.keys)
        yield from _leaf_values(arr.items)
    elif pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        yield from _leaf_values(arr.flatten())
    elif not pa.types.is_null(t):
        yield arr


def _as_text(arr: pa.Array) -> str:
    """The values of one leaf array as text, one a line (nulls as empty lines)."""
    t = arr.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "\n".join(v.decode("utf-8", "replace") for v in arr.to_pylist() if v is not None)
    try:
        s = pc.cast(arr, pa.large_string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return "\n".join(str(v) for v in arr.to_pylist() if v is not None)
    if len(s) == 0:
        return ""
    one = pa.LargeListArray.from_arrays(pa.array([0, len(s)], pa.int64()), s.fill_null(""))
    return pc.binary_join(one, pa.scalar("\n", pa.large_string()))[0].as_py()


def parquet_values_text(path: Path) -> str:
    """Every value of every column of a Parquet file (integers, dates and floats as text too,
    nested values at every depth), its column names and its key-value metadata, as one text:
    zstd pages hide strings from a search of the file's bytes, this does not."""
    t = pq.read_table(path)
    parts = [str(t.schema), str(t.schema.metadata)]
    for col in t.columns:
        for leaf in _leaf_values(col.combine_chunks()):
            parts.append(_as_text(leaf))
    return "\n".join(parts)


def written_texts(root: Path) -> Iterator[tuple[str, str]]:
    """(name, text) for every file under ``root``: its bytes (as UTF-8, undecodable bytes
    replaced), and for Parquet files also their values as ``"<path> (values)"``."""
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        yield str(p), p.read_bytes().decode("utf-8", errors="replace")
        if p.suffix == ".parquet":
            yield f"{p} (values)", parquet_values_text(p)


# --------------------------------------------------------------------------- landing files
def read_landing(path: Path) -> str | None:
    """A landing file's text (gunzipped), or None for the generator's planted broken files
    (damaged gzip, not UTF-8), which the pipeline rejects whole, storing nothing of them."""
    raw = path.read_bytes()
    try:
        return (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8-sig")
    except (OSError, EOFError, UnicodeDecodeError):
        return None


def write_landing(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def land(root: Path, rel: str, content: str | bytes, age: float = 60) -> Path:
    """A landing file as a supplier writes it, ``age`` seconds before the pipeline looks
    (files still being written, modified in the last seconds, are left for the next run)."""
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    old = p.stat().st_mtime - age
    os.utime(p, (old, old))
    return p


# --------------------------------------------------------------------------- patients
def nhs_numbers(start: int, count: int) -> list[str]:
    """``count`` valid NHS numbers in the 999 test range (never a real one), from 999``start``."""
    out, k = [], start
    while len(out) < count:
        n = with_check_digit(f"999{k:06d}")
        if n:
            out.append(n)
        k += 1
    return out


def spaced(n: str) -> str:
    """An NHS number as it is printed: 3-3-4 with spaces."""
    return f"{n[:3]} {n[3:6]} {n[6:]}"


# --------------------------------------------------------------------------- `caredata run` in a process
def run_cli_process(root: Path, landing: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """`caredata run --demo-mode` in a process of its own (this checkout's code), its Dagster
    home, warehouse and publish root under ``root`` (dagster_home, wh, pub)."""
    env = {**os.environ, "DAGSTER_HOME": str(root / "dagster_home"), "PYTHONPATH": str(ROOT)}
    (root / "dagster_home").mkdir()
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--landing", str(landing), "--warehouse",
         str(root / "wh"), "--publish", str(root / "pub"), "--demo-mode"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


class LyingEngine:
    """An engine that passes every row of the rules whose SQL names ``lie_about`` (as a
    wrong SQL translation would), over ``inner`` (default: the process's DuckDB engine): a
    collaborator passed in, nothing patched. ``name``: the engine it claims to be; its
    ``spark`` is the inner engine's, so that GX on Spark runs beside it."""

    def __init__(self, lie_about: str, inner=None, name: str = "lying"):
        from pipelines.engine import default_engine

        self.inner, self.lie_about, self.name = inner or default_engine(), lie_about, name

    @property
    def spark(self):
        return self.inner.spark

    def query(self, sql, inputs=None):
        import sqlglot

        out = self.inner.query(sql, inputs)
        lies = {e.alias for e in sqlglot.parse_one(sql, read="duckdb").expressions
                if e.alias.startswith("f") and self.lie_about in e.sql(dialect="duckdb")}
        assert lies, "nothing to lie about"
        for name in lies:
            out = out.set_column(out.column_names.index(name), name, pa.array([False] * len(out)))
        return out
