"""Vectorised helpers of the synthetic generator: dates, strings, NHS numbers, CSV writing."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

NULL = np.int32(-(2**30))  # missing date sentinel (days since 1970-01-01)
BIG = np.int32(2**30)  # "never" (no deregistration, no death)
BOM = b"\xef\xbb\xbf"


def day(text: str) -> int:
    return int(np.datetime64(text, "D").astype(np.int64))


def month_start(year: int, month: int) -> int:
    return day(f"{year:04d}-{month:02d}-01")


def ymd(d: int) -> str:
    return str(np.datetime64(int(d), "D"))


def dates_str(days: np.ndarray) -> pa.Array:
    """date strings YYYY-MM-DD, null where NULL/BIG."""
    d = np.asarray(days, dtype=np.int32)
    mask = (d == NULL) | (d == BIG)
    return pa.array(np.where(mask, 0, d), type=pa.int32(), mask=mask).cast(pa.date32()).cast(pa.string())


def ints_str(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.int64), type=pa.int64(), mask=mask).cast(pa.string())


def take(codes, idx: np.ndarray) -> pa.Array:
    """codes[idx] as a string array, null where idx < 0."""
    arr = codes if isinstance(codes, pa.Array) else pa.array(list(codes), pa.string())
    idx = np.asarray(idx, dtype=np.int64)
    return arr.take(pa.array(np.where(idx < 0, 0, idx), mask=idx < 0))


def join(*parts, sep: str = "") -> pa.Array:
    return pc.binary_join_element_wise(*parts, sep)


def const(value: str | None, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, pa.string())
    return take([value], np.zeros(n, dtype=np.int64))


def patch(arr: pa.Array, rows, values) -> pa.Array:
    """Replace arr[rows] with values (strings or None)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return arr
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    values = [values[i] for i in order]
    mask = np.zeros(len(arr), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(arr.cast(pa.string()), pa.array(mask), pa.array(values, pa.string()))


def mod11_valid(nums: np.ndarray) -> np.ndarray:
    """Validity of 10-digit integers under methods.md's Modulus 11 rule (0 = missing -> False)."""
    n = np.asarray(nums, dtype=np.int64)
    ok = (n >= 1_000_000_000) & (n <= 9_999_999_999)
    total = np.zeros(n.shape, dtype=np.int64)
    for i in range(9):
        total += ((n // 10 ** (9 - i)) % 10) * (10 - i)
    r = 11 - total % 11
    r = np.where(r == 11, 0, r)
    ok &= (r != 10) & (r == n % 10)
    ok &= n % 1_111_111_111 != 0
    return ok


def check_digits(prefixes: np.ndarray) -> np.ndarray:
    p = np.asarray(prefixes, dtype=np.int64)
    total = np.zeros(p.shape, dtype=np.int64)
    for i in range(9):
        total += ((p // 10 ** (8 - i)) % 10) * (10 - i)
    r = 11 - total % 11
    return np.where(r == 11, 0, r)


class NhsAllocator:
    """Index -> valid NHS number. First the 999 test range (999 000 000x), then 900-998 prefixes
    (numbers starting with 9 are not issued to patients). Never a real NHS number."""

    RANGES = [(999_000_000, 1_000_000_000), (900_000_000, 999_000_000)]
    BLOCK = 1_000_000

    def __init__(self) -> None:
        self.starts = [s for a, b in self.RANGES for s in range(a, b, self.BLOCK)]
        self.cum = [0]
        self._cache: dict[int, np.ndarray] = {}

    def _block(self, k: int) -> np.ndarray:
        if k not in self._cache:
            p = self.starts[k] + np.arange(self.BLOCK, dtype=np.int64)
            r = check_digits(p)
            num = p * 10 + r
            ok = (r != 10) & (num % 1_111_111_111 != 0)
            if len(self._cache) > 3:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = num[ok]
        return self._cache[k]

    def _ensure(self, upto: int) -> None:
        while self.cum[-1] <= upto:
            k = len(self.cum) - 1
            if k >= len(self.starts):
                raise ValueError("population too large for the synthetic NHS number ranges")
            self.cum.append(self.cum[-1] + len(self._block(k)))

    def get(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        out = np.zeros(idx.shape, dtype=np.int64)
        if idx.size == 0:
            return out
        self._ensure(int(idx.max()))
        cum = np.asarray(self.cum)
        blk = np.searchsorted(cum, idx, side="right") - 1
        for k in np.unique(blk):
            m = blk == k
            out[m] = self._block(int(k))[idx[m] - cum[k]]
        return out


def invalidate(nums: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same numbers with a wrong check digit (bad Modulus 11)."""
    nums = np.asarray(nums, dtype=np.int64)
    r = nums % 10
    return nums - r + (r + 1 + rng.integers(0, 9, size=nums.shape)) % 10


def csv_bytes(names: list[str], arrays: list[pa.Array], delimiter: str = ",") -> bytes:
    header = delimiter.join(names) + "\n"
    if len(arrays) and len(arrays[0]):
        tbl = pa.table({f"c{i}": a for i, a in enumerate(arrays)})
        buf = pa.BufferOutputStream()
        pacsv.write_csv(tbl, buf, pacsv.WriteOptions(include_header=False, delimiter=delimiter,
                                                      quoting_style="none"))
        body = buf.getvalue().to_pybytes()
    else:
        body = b""
    return header.encode() + body


def write_file(path: Path, data: bytes, *, bom: bool = False, gz: bool = False, mtime: int | None = None) -> int:
    if bom:
        data = BOM + data
    if gz:
        data = gzip.compress(data, compresslevel=4, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return len(data)
