"""The landing zone: file names, and reading a file into strings (../shared/spec/inputs.md).

Nothing here writes anything. :func:`parse_name` turns a path relative to the landing root
into a :class:`ParsedName` (the identity of a submission) or a :class:`Rejection` (plain
words). :func:`read_csv` turns a file's bytes into a pandas DataFrame whose columns are
all pandas ``string`` dtype (empty = ``<NA>``, codes keep their leading zeros), with the
original column names and an int column ``_line`` (header = line 1, first data row = 2).
A file that cannot be read, or whose header lacks a required column, raises
:class:`FileRejected` with a reason naming the file and, where known, the line. Reasons
never quote the file's content (it may hold NHS numbers).

GP files: type 1 objection rows (``OBJECTION`` ``9Nu0``) are dropped here, as the file
is read, and only counted (``info.type1_objections``); no caller ever sees them.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import itertools
import zlib
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pipelines.schemas.inputs import (
    EPRACCUR,
    EPRACCUR_COLUMNS,
    EPRACCUR_WIDTH,
    FEEDS,
    FFT,
    GP,
    HES_APC,
    REFERENCE,
    SUS_APC,
    TYPE1,
    TYPE2,
    Feed,
)
from pipelines.storage import Store

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
FOLDERS = ("reference", "gp", "sus_apc", "fft", "hes_apc")

# What a good name looks like, in the words the operator reads.
EXPECTED_NAME = {
    "gp": "GP_<practice>_<YYYYMMDD>.csv",
    "sus_apc": "APC_<provider>_<YYYYMM>_<YYYYMMDDHHMMSS>_<BULK|NET>.csv",
    "fft": "FFT_<provider>_<YYYYMM>_<YYYYMMDDHHMMSS>.csv",
    "hes_apc": "<any name>.csv",
    "reference": "epraccur.csv, providers.csv or sites.csv",
}


class FileRejected(Exception):
    """A file rejected whole. ``reason`` is plain words, safe to log (no file content)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ParsedName:
    file_name: str  # path relative to the landing root
    source: str  # reference | gp | sus_apc | hes_apc | fft
    feed: str  # gp | sus_apc | hes_apc | fft | epraccur | providers | sites
    submission_id: str  # file name without folder and extension
    submitter_code: str | None = None
    reporting_period: str | None = None  # YYYY-MM (GP: month of the extract date)
    submitted_at: datetime | None = None  # UTC (GP: extract date midnight)
    protocol: str | None = None  # BULK | NET (SUS only)
    extract_date: date | None = None  # GP only
    compressed: bool = False

    @property
    def feed_def(self) -> Feed:
        return FEEDS.get(self.feed) or REFERENCE[self.feed]


@dataclass(frozen=True)
class Rejection:
    file_name: str
    reason: str
    source: str | None = None
    submission_id: str | None = None


@dataclass
class ReadInfo:
    file_name: str
    feed: str
    compressed: bool = False
    bom: bool = False
    delimiter: str = ","
    columns: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    rows: int = 0  # rows returned (GP: type 1 rows excluded)
    type1_objections: int = 0  # GP only: rows dropped on read (unrecognised values included)
    objection_unrecognised: int = 0  # GP only: of those, values that are no known code


# ----------------------------------------------------------------------------- names
def _stem(name: str) -> tuple[str, bool]:
    if name.endswith(".csv.gz"):
        return name[: -len(".csv.gz")], True
    if name.endswith(".csv"):
        return name[: -len(".csv")], False
    return name, False


def _period(yyyymm: str) -> str | None:
    try:
        d = datetime.strptime(yyyymm, "%Y%m")
    except ValueError:
        return None
    return f"{d.year:04d}-{d.month:02d}"


def _timestamp(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def parse_name(rel_path: str) -> ParsedName | Rejection:
    """The identity of a submission from its path, or why the name is not acceptable."""
    rel_path = rel_path.strip("/")
    parts = rel_path.split("/")
    folder, name = (parts[0], parts[-1]) if len(parts) > 1 else ("", parts[0])
    stem, compressed = _stem(name)

    def reject(why: str, source: str | None = None) -> Rejection:
        return Rejection(rel_path, f"{rel_path}: {why}", source, stem)

    if folder not in FOLDERS:
        return reject(
            "not in a landing folder the pipeline reads (reference/, gp/, sus_apc/, fft/, hes_apc/)"
        )
    if len(parts) != 2:
        return reject(f"files must sit directly in {folder}/, not in a subfolder", folder)
    if not (name.endswith(".csv") or name.endswith(".csv.gz")):
        return reject(
            f"file name does not follow {EXPECTED_NAME[folder]} (only .csv or .csv.gz files are read)",
            folder,
        )

    if folder == "reference":
        for key, feed in REFERENCE.items():
            if feed.name_pattern.match(name):
                return ParsedName(rel_path, "reference", key, stem, compressed=compressed)
        return reject(f"file name does not follow {EXPECTED_NAME['reference']}", "reference")

    feed = FEEDS[folder]
    m = feed.name_pattern.match(name)
    if not m:
        return reject(f"file name does not follow {EXPECTED_NAME[folder]}", folder)
    g = m.groupdict()
    if folder == "hes_apc":
        return ParsedName(rel_path, "hes_apc", "hes_apc", stem, compressed=compressed)
    if folder == "gp":
        try:
            extract = datetime.strptime(g["date"], "%Y%m%d").date()
        except ValueError:
            return reject(f"the extract date {g['date']} in the file name is not a real date", folder)
        return ParsedName(
            rel_path, "gp", "gp", stem,
            submitter_code=g["submitter"],
            reporting_period=f"{extract.year:04d}-{extract.month:02d}",
            submitted_at=datetime(extract.year, extract.month, extract.day, tzinfo=timezone.utc),
            extract_date=extract,
            compressed=compressed,
        )
    period = _period(g["period"])
    if period is None:
        return reject(f"the reporting period {g['period']} in the file name is not a real month", folder)
    submitted = _timestamp(g["submitted"])
    if submitted is None:
        return reject(
            f"the submission time {g['submitted']} in the file name is not a real date and time", folder
        )
    return ParsedName(
        rel_path, folder, folder, stem,
        submitter_code=g["submitter"],
        reporting_period=period,
        submitted_at=submitted,
        protocol=g.get("protocol"),
        compressed=compressed,
    )


# ----------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """What a landing file may hold (``limits:`` in ``defaults.yaml``); each broken limit
    rejects the file with a reason naming the file, the line where known, and the limit."""

    max_columns: int
    max_field_bytes: int
    max_gzip_ratio: float
    max_inflated_bytes: int

    @classmethod
    def from_settings(cls, settings=None) -> "Limits":
        """From ``settings`` (a :class:`pipelines.config.Settings`); None: the packaged defaults."""
        if settings is None:
            from pipelines.config import Settings

            settings = Settings()
        t = settings.t
        return cls(max_columns=int(t("limits", "max_columns")),
                   max_field_bytes=int(t("limits", "max_field_bytes")),
                   max_gzip_ratio=float(t("limits", "max_gzip_ratio")),
                   max_inflated_bytes=int(t("limits", "max_inflated_bytes")))


def _bytes_words(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{int(n)} bytes"


# ----------------------------------------------------------------------------- bytes
def sha256_stream(store: Store, rel_path: str) -> tuple[str, int]:
    """SHA-256 and size of a regular file under the store root, streamed in chunks
    (raises :class:`pipelines.storage.UnsafePath` for anything else, before opening it)."""
    h = hashlib.sha256()
    size = 0
    for chunk in store.iter_chunks(rel_path, regular_only=True):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


ONE_READ_BYTES = 64 << 20
"""A landing file up to this size is read once (:func:`read_whole`): hashed and parsed from
the same bytes; a larger one is hashed as a stream, then read as a stream."""


def read_whole(store: Store, rel_path: str, cap: int = ONE_READ_BYTES) -> tuple[bytes, str] | None:
    """The bytes and SHA-256 of a regular file under the store root of at most ``cap``
    bytes, read once; None when it holds more (then to be hashed and read as a stream:
    :func:`sha256_stream`, :func:`read_csv`). Raises :class:`pipelines.storage.UnsafePath`
    as :func:`sha256_stream` does. What is parsed (:func:`parse_bytes`) is then exactly
    what was hashed."""
    with store.open(rel_path, regular_only=True) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        return None
    return data, hashlib.sha256(data).hexdigest()


def _feed(feed: Feed | str) -> tuple[str, Feed]:
    if isinstance(feed, Feed):
        for key, f in {**FEEDS, **REFERENCE}.items():
            if f is feed:
                return key, f
        return feed.source, feed
    if feed in FEEDS:
        return feed, FEEDS[feed]
    if feed in REFERENCE:
        return feed, REFERENCE[feed]
    raise KeyError(f"no feed {feed!r}")


CHUNK = 8 << 20  # bytes of text per step of a stream


class _Chained(io.RawIOBase):
    """``head`` (bytes already read) then the rest of ``fh``."""

    def __init__(self, head: bytes, fh):
        self.head, self.fh = head, fh

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out = self.head if n < 0 else self.head[:n]
            self.head = self.head[len(out):]
            return out
        return self.fh.read() if n < 0 else self.fh.read(n)

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def _text_chunks(fh, rel_path: str, limits: Limits, size: int | None, info: ReadInfo) -> Iterator[bytes]:
    """The file's text in chunks of at most :data:`CHUNK` bytes: gunzipped as it is read
    (gzip by its magic bytes), the UTF-8 byte-order mark removed. Stops with
    :class:`FileRejected` as soon as the text passes ``max_inflated_bytes`` or a gzip file
    inflates past ``max_gzip_ratio`` times ``size`` (its size as stored): nothing is ever
    inflated whole."""
    head = b""
    while len(head) < 2:
        more = fh.read(2 - len(head))
        if not more:
            break
        head += more
    gz = head == GZIP_MAGIC
    if rel_path.endswith(".gz") and not gz:
        raise FileRejected(f"{rel_path}: named .gz but is not gzip-compressed")
    src = _Chained(head, fh)
    stream = gzip.GzipFile(fileobj=src, mode="rb") if gz else src
    info.compressed = gz
    cap = limits.max_inflated_bytes
    ratio_cap = limits.max_gzip_ratio * size if gz and size else None
    total = 0
    first = True
    while True:
        try:
            chunk = stream.read(CHUNK)
            if first:
                while len(chunk) < 3:  # room to see a whole byte-order mark
                    more = stream.read(CHUNK)
                    if not more:
                        break
                    chunk += more
        except (gzip.BadGzipFile, EOFError, zlib.error):
            raise FileRejected(f"{rel_path}: the gzip data is damaged or truncated") from None
        if not chunk:
            return
        if first:
            first = False
            if chunk.startswith(UTF8_BOM):
                chunk = chunk[len(UTF8_BOM):]
                info.bom = True
        total += len(chunk)
        if ratio_cap is not None and total > ratio_cap:
            raise FileRejected(
                f"{rel_path}: the gzip data inflates to more than {limits.max_gzip_ratio:g} times the "
                f"file's size ({_bytes_words(size)} stored); the limit is limits.max_gzip_ratio "
                f"({limits.max_gzip_ratio:g})")
        if total > cap:
            what = "the gzip data inflates past" if gz else "the text is larger than"
            raise FileRejected(f"{rel_path}: {what} the limit of {_bytes_words(cap)} (limits.max_inflated_bytes)")
        yield chunk


class _ChunkReader(io.RawIOBase):
    """A file object over an iterator of byte chunks (for pyarrow to read a stream)."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.buf = chunks, b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self.buf:
            nxt = next(self.chunks, None)
            if nxt is None:
                return 0
            self.buf = nxt
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


_DQ, _LF, _CR = 34, 10, 13


class _Scan:
    """One pass over a CSV text, chunk by chunk, vectorised (numpy), holding nothing of
    the text but the header: RFC 4180 structure (a quote opens a value only at its start,
    closes it only before a delimiter, a line end or the end of the file, ``""`` inside is
    a quote; a line break or delimiter inside quotes is part of the value), every
    record's width, each field's size, NUL bytes, UTF-8. Gives the header's fields and the
    physical line (split on ``\n``) where each non-blank data record starts. The first
    problem in the text (by position, so the same however the text is cut into chunks)
    rejects the file (:class:`FileRejected`) as soon as it is seen."""

    def __init__(self, rel_path: str, delimiter: str, limits: Limits, header: bool):
        self.rel, self.delim, self.limits, self.has_header = rel_path, ord(delimiter), limits, header
        self.off = 0  # global offset of the next byte
        self.quotes = 0  # quotes before off
        self.lines = 0  # line feeds before off
        self.delims = 0  # delimiters outside quotes before off
        self.prev = -1  # the byte before off (-1: start of the file)
        self.rec_start, self.rec_line, self.rec_delims = 0, 1, 0  # the record being read
        self.field_start, self.field_line = 0, 1  # the field being read
        self.last_open_line = 0  # line of the latest opening quote
        self.width: int | None = None  # fields per record (the header's, or the first record's)
        self.header_raw: bytes | None = None
        self.header_buf = bytearray()
        self.starts: list[np.ndarray] = []
        self.multiline = False
        self.blank_first = False
        self.nonblank = 0
        self.utf8 = codecs.getincrementaldecoder("utf-8")("strict")

    def _fail(self, line: int | None, why: str):
        where = f"line {line}: " if line else ""
        raise FileRejected(f"{self.rel}: {where}{why}")

    def _too_many_words(self, width: int | None, fields: int | None) -> str:
        if width is None:
            return (f"more than {self.limits.max_columns:,} columns, the limit "
                    f"(limits.max_columns)")
        found = f"more than {width}" if fields is None else f"{fields}"
        return f"expected {width} fields, found {found}"

    def feed(self, buf: bytes, nxt: int) -> None:
        """Scan ``buf`` (the bytes at ``off``...); ``nxt``: the byte after it (-1 at the end)."""
        a = np.frombuffer(buf, dtype=np.uint8)
        n = len(a)
        if n == 0:
            return
        nl = np.flatnonzero(a == _LF)
        problems: list[tuple[int, int | None, str]] = []  # (local position, line, why)

        def line_of(pos):  # 1-based physical line of local positions
            return self.lines + np.searchsorted(nl, pos) + 1

        def problem(pos, why, line=None):
            problems.append((int(pos), int(line_of(pos)) if line is None else line, why))

        nul = np.flatnonzero(a == 0)
        if len(nul):
            problem(nul[0], "binary content (a NUL byte), not CSV text")
        if self.utf8.getstate()[0] or bool((a >= 0x80).any()) or nxt < 0:
            pending = len(self.utf8.getstate()[0])
            try:
                self.utf8.decode(buf, final=nxt < 0)
            except UnicodeDecodeError as exc:
                problem(max(exc.start - pending, 0), "not UTF-8 text")
                self.utf8.reset()

        q = np.flatnonzero(a == _DQ)

        def outside(pos):  # positions with an even number of quotes before them
            return ((self.quotes + np.searchsorted(q, pos)) & 1) == 0

        if len(q):
            g = self.quotes + np.arange(len(q))
            before = np.where(q > 0, a[np.maximum(q - 1, 0)].astype(np.int64), self.prev)
            after = np.where(q < n - 1, a[np.minimum(q + 1, n - 1)].astype(np.int64), nxt)
            opening = (g & 1) == 0
            bad = (opening & ~np.isin(before, [self.delim, _LF, _DQ, -1])) | (
                ~opening & ~np.isin(after, [self.delim, _LF, _CR, _DQ, -1]))
            if bad.any():
                problem(q[np.argmax(bad)], "broken quoting (a quote inside a value that does not start with "
                                           "one, or something other than a delimiter after a closing quote)")
            if opening.any():
                self.last_open_line = int(line_of(q[opening][-1]))
        cr = np.flatnonzero(a == _CR)
        if len(cr):
            cr_out = outside(cr)
            if not cr_out.all():
                self.multiline = True  # a carriage return inside a quoted value
            cr = cr[cr_out]
            after = np.where(cr < n - 1, a[np.minimum(cr + 1, n - 1)].astype(np.int64), nxt)
            bad = after != _LF
            if bad.any():
                problem(cr[np.argmax(bad)], "a carriage return that does not end a line")
        nl_out = outside(nl)
        if not nl_out.all():
            self.multiline = True
        term_idx = np.flatnonzero(nl_out)  # indexes into nl of record ends
        term = nl[term_idx]
        de = np.flatnonzero(a == self.delim)
        de = de[outside(de)]

        # Field sizes: between boundaries (delimiters and record ends outside quotes); a
        # field too long is a problem at the byte that makes it too long.
        limit = self.limits.max_field_bytes
        too_long = f"a value longer than the limit of {_bytes_words(limit)} (limits.max_field_bytes)"
        bounds = np.flatnonzero((a == self.delim) | (a == _LF))  # sorted, no sort needed
        bounds = bounds[outside(bounds)]
        f_starts = np.concatenate([[self.field_start - self.off], bounds + 1])
        f_ends = np.concatenate([bounds, [n]])
        over = np.flatnonzero(f_ends - f_starts > limit)
        if len(over):
            k = int(over[0])
            line = self.field_line if k == 0 else int(line_of(f_starts[k]))
            problem(max(int(f_starts[k]) + limit, 0), too_long, line)
        if len(bounds):
            self.field_start = self.off + int(bounds[-1]) + 1
            self.field_line = int(line_of(bounds[-1] + 1))

        # Records: their width, blank or not, where they start.
        rec_starts = np.concatenate([[self.rec_start - self.off], term + 1])  # the last one still open
        rec_lines = np.concatenate([[self.rec_line], self.lines + term_idx + 2])
        d_before = np.searchsorted(de, rec_starts)  # delimiters of this chunk before each start
        ends_at = np.concatenate([np.searchsorted(de, term), [len(de)]])
        rec_delims = ends_at - d_before
        rec_delims[0] += self.rec_delims
        done = len(term)
        prev_byte = np.where(term > 0, a[np.maximum(term - 1, 0)].astype(np.int64), self.prev)
        length = term - rec_starts[:done]
        blank = (length == 0) | ((length == 1) & (prev_byte == _CR))
        self._records(rec_delims, rec_lines, rec_starts, blank, d_before, de, term, buf, problem)

        if self.has_header and self.header_raw is None and not self.blank_first:
            # The header still open: kept (it is the one part of the text kept), within the limit.
            if self.off + n > limit:
                problem(max(limit - self.off, 0), f"the header is longer than the limit of "
                        f"{_bytes_words(limit)} (limits.max_field_bytes)", 1)
            else:
                self.header_buf += buf
        if problems:
            pos, line, why = min(problems, key=lambda p: p[0])
            self._fail(line, why)
        if done:
            self.rec_start = self.off + int(term[-1]) + 1
            self.rec_line = int(rec_lines[-1])
            self.rec_delims = int(rec_delims[-1])
        else:
            self.rec_delims = int(rec_delims[0])
        self.quotes += len(q)
        self.lines += len(nl)
        self.prev = int(a[-1])
        self.off += n

    def _records(self, rec_delims, rec_lines, rec_starts, blank, d_before, de, term, buf, problem) -> None:
        """The records of a chunk (the last one still open): header, width, ragged rows."""
        done = len(term)
        fields = rec_delims + 1
        n = len(buf)
        last_len = n - int(rec_starts[-1])  # bytes of the open record in this chunk
        open_content = last_len > 1 or (last_len == 1 and buf[-1] != _CR) or (
            done == 0 and self.off + n - self.rec_start > 1)

        def carried(k: int) -> int:
            return self.rec_delims if k == 0 else 0

        first = 0
        if self.width is None:
            done_nonblank = np.flatnonzero(~blank[:done])[:1].tolist()
            nonblank = done_nonblank + ([done] if open_content else [])
            if self.has_header:
                if done and blank[0] and not self.blank_first:
                    self.blank_first = True
                if self.blank_first:
                    if nonblank:  # something after a blank first line: the header is empty
                        k = nonblank[0]
                        problem(max(int(rec_starts[k]), 0), "the header is empty", 1)
                    return
                k = 0
            else:
                if not nonblank:
                    return
                k = nonblank[0]
            if fields[k] > self.limits.max_columns:
                cut = int(d_before[k]) + self.limits.max_columns - 1 - carried(k)
                problem(de[cut], self._too_many_words(None, None), int(rec_lines[k]))
                return
            if k == done:  # still open: the width is not known yet
                return
            self.width = int(fields[k])
            if self.has_header:
                self.header_raw = bytes(self.header_buf) + buf[max(int(rec_starts[0]), 0):int(term[0])]
                self.header_buf = bytearray()
                if len(self.header_raw) > self.limits.max_field_bytes:
                    problem(max(self.limits.max_field_bytes - self.off, 0), "the header is longer than the limit of "
                            f"{_bytes_words(self.limits.max_field_bytes)} (limits.max_field_bytes)", 1)
                first = 1
        width = self.width
        many = [k for k in np.flatnonzero(fields > width) if k >= first]
        if many:  # a problem at the delimiter that makes one field too many
            k = int(many[0])
            problem(de[int(d_before[k]) + width - 1 - carried(k)], self._too_many_words(width, None),
                    int(rec_lines[k]))
        few = [k for k in np.flatnonzero((fields[:done] < width) & ~blank) if k >= first]
        if few:
            k = int(few[0])
            problem(term[k], self._too_many_words(width, int(fields[k])), int(rec_lines[k]))
        ok = ~blank
        ok[:first] = False
        self.starts.append(np.asarray(rec_lines[:done][ok], dtype=np.int64))
        self.nonblank += int(ok.sum())

    def finish(self) -> None:
        if self.quotes & 1:
            self._fail(self.last_open_line, "broken quoting (a quoted value is never closed)")


def _scan(chunks: Iterator[bytes], scan: _Scan) -> None:
    pending = b""
    for chunk in chunks:
        buf = pending + chunk
        if not buf:
            continue
        scan.feed(buf[:-1], buf[-1])
        pending = buf[-1:]
    scan.feed(pending + b"\n", -1)  # a final line end: the last record ends at the end of the file
    scan.finish()


class _Opener:
    """Opens a landing file for each pass over it."""

    def __init__(self, open_fn, rel_path: str, size: int | None):
        self.open_fn, self.rel, self.size = open_fn, rel_path, size

    def chunks(self, limits: Limits, info: ReadInfo) -> Iterator[bytes]:
        with self.open_fn() as fh:
            yield from _text_chunks(fh, self.rel, limits, self.size, info)


IN_ONE_PIECE = 256 << 20
"""A text up to this size (already scanned and within the limits) is handed to the parser
in one piece (pyarrow parses a buffer faster than a Python stream); a larger one as a
stream."""


def _parse_input(chunks: Iterator[bytes], one_piece: int = IN_ONE_PIECE):
    held, total = [], 0
    for chunk in chunks:
        held.append(chunk)
        total += len(chunk)
        if total > one_piece:
            return _ChunkReader(itertools.chain(held, chunks))
    return pa.BufferReader(b"".join(held))


def _header_key(name: str) -> str:
    """How header names are matched: trimmed (spaces and zero-width characters) and
    upper-cased."""
    return name.strip(_TRIM).upper()


_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"
_TRIM = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + _INVISIBLE


def objection_kind(value) -> str | None:
    """How an ``OBJECTION`` value is read: None (empty: whitespace and zero-width
    characters only), ``type2`` (exactly ``9Nu4``, any case, ordinary spaces around it),
    ``type1`` (exactly ``9Nu0`` likewise) or ``unrecognised`` (anything else: a near miss
    such as ``9NuO``, ``9Nu0.``, ``9Nu0`` with a zero-width space, full-width characters,
    garbage), which is read as a type 1 objection, the safe reading, and counted apart
    so that the extract carries a warning."""
    if value is None or value is pd.NA:
        return None
    s = str(value)
    if not "".join(c for c in s if not (c.isspace() or c in _INVISIBLE)):
        return None
    code = s.strip().upper()
    if code.isascii() and code == TYPE2.upper():
        return "type2"
    if code.isascii() and code == TYPE1.upper():
        return "type1"
    return "unrecognised"


def _header(raw: bytes, delimiter: str, fd: Feed, rel_path: str, info: ReadInfo) -> list[str]:
    """The columns' names: declared columns in their declared spelling (matched trimmed,
    case-insensitively), others as written (trimmed)."""
    text = raw.decode("utf-8").rstrip("\r")
    if "\n" in text:
        raise FileRejected(f"{rel_path}: line 1: a line break inside a column name of the header")
    try:
        head = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True), [""])
    except csv.Error:
        raise FileRejected(f"{rel_path}: line 1: broken quoting in the header") from None
    declared = {_header_key(c): c for c in fd.column_names}
    names, keys = [], []
    for h in head:
        key = _header_key(h)
        if key == "":
            raise FileRejected(f"{rel_path}: line 1: the header has an empty column name")
        names.append(declared.get(key, h.strip(_TRIM)))
        keys.append(key)
    seen: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        seen.setdefault(k, []).append(i + 1)
    dupes = [(k, at) for k, at in seen.items() if len(at) > 1]
    if dupes:
        # Declared names are quoted; any other only by position (a header line that is
        # really a data row must not be quoted back).
        words = sorted(declared[k] if k in declared else "columns " + " and ".join(map(str, at)) for k, at in dupes)
        raise FileRejected(f"{rel_path}: line 1: the header names the same column more than once "
                           f"(names compared trimmed and ignoring case): {', '.join(words)}")
    missing = [c for c in fd.required if c not in names]
    if missing:
        raise FileRejected(f"{rel_path}: the header lacks required column(s) {', '.join(missing)}")
    for c in fd.header_columns:
        if c not in names:
            raise FileRejected(f"{rel_path}: the header lacks the column {c}, which must be present even "
                               f"where every value is empty: {fd.column(c).why_in_header}")
    if fd is HES_APC and "SUSRECID" not in names and "EPIKEY" not in names:
        raise FileRejected(f"{rel_path}: the header has neither SUSRECID nor EPIKEY")
    info.extra_columns = [n for n in names if n not in declared.values()]
    return names


def read_stream(open_fn, rel_path: str, feed: Feed | str, limits: Limits | None = None,
                size: int | None = None) -> tuple[pd.DataFrame, ReadInfo]:
    """Read one landing file, opened by ``open_fn()`` (a binary file object; called once
    per pass) and ``size`` bytes as stored, into strings. Two streaming passes: a scan
    (:class:`_Scan`: limits, structure, line numbers; nothing kept but the header), then,
    for a file within limits, pyarrow's parser over the text stream, which builds the
    frame in memory. Raises :class:`FileRejected` with the reason."""
    key, fd = _feed(feed)
    limits = limits or Limits.from_settings(None)
    info = ReadInfo(file_name=rel_path, feed=key)
    opener = _Opener(open_fn, rel_path, size)

    chunks = opener.chunks(limits, info)
    try:
        first = next(chunks, b"")
        line1 = first.split(b"\n", 1)[0].decode("utf-8", errors="replace")
        delims = fd.delimiters
        delimiter = max(delims, key=lambda d: (line1.count(d), -delims.index(d)))
        info.delimiter = delimiter
        scan = _Scan(rel_path, delimiter, limits, fd.header)
        _scan(itertools.chain([first], chunks), scan)
    finally:
        chunks.close()
    if scan.nonblank == 0 and (scan.header_raw is None or not scan.header_raw.strip(b"\r \t")):
        raise FileRejected(f"{rel_path}: the file is empty")

    if fd.header:
        names = _header(scan.header_raw or b"", delimiter, fd, rel_path, info)
        read_opts = pacsv.ReadOptions(column_names=names, skip_rows=1, use_threads=False, block_size=1 << 24)
    else:
        width = scan.width or 0
        if fd is EPRACCUR and width != EPRACCUR_WIDTH:
            line = int(scan.starts[0][0]) if scan.starts and len(scan.starts[0]) else 1
            raise FileRejected(
                f"{rel_path}: line {line}: expected {EPRACCUR_WIDTH} fields (epraccur has no header), found {width}")
        names = [EPRACCUR_COLUMNS.get(p, f"COLUMN_{p:02d}") for p in range(1, width + 1)]
        read_opts = pacsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 24)
    info.columns = names
    data_lines = np.concatenate(scan.starts) if scan.starts else np.zeros(0, dtype=np.int64)

    chunks = opener.chunks(limits, ReadInfo(rel_path, key))
    try:
        table = pacsv.read_csv(
            _parse_input(chunks),
            read_options=read_opts,
            parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=scan.multiline),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
                null_values=[""],
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        # pyarrow's own message quotes the row: never pass it on.
        raise FileRejected(f"{rel_path}: the file cannot be parsed as CSV ({type(exc).__name__})") from None
    finally:
        chunks.close()
    if table.num_rows != len(data_lines):
        raise FileRejected(f"{rel_path}: the file cannot be parsed as CSV "
                           f"({table.num_rows} records parsed, {len(data_lines)} found by the scan)")

    if fd is GP:
        # Type 1 rows dropped here, in Arrow, before any pandas frame holds them.
        table, data_lines = _objections(table, data_lines, info)
    frame = table.to_pandas(types_mapper=lambda t: pd.StringDtype() if t == pa.string() else None)
    del table
    for c in frame.columns:
        if frame[c].dtype != "string":
            frame[c] = frame[c].astype("string")
    frame["_line"] = data_lines
    frame = frame.reset_index(drop=True)
    info.rows = len(frame)
    return frame, info


_KIND_CODE = {None: 0, "type2": 1, "type1": 2, "unrecognised": 3}


def _objections(table: pa.Table, lines: np.ndarray, info: ReadInfo) -> tuple[pa.Table, np.ndarray]:
    """Type 1 objections are binding: their rows dropped here (from the parsed Arrow table
    and its line numbers, before a pandas frame exists), counted, never seen by a caller;
    a value read as type 1 because it is no known code is also counted apart
    (``info.objection_unrecognised``). The column keeps the canonical code: ``9Nu4`` or
    missing. Each distinct value is read once (:func:`objection_kind`), the rows by
    their value's index."""
    col = table.column("OBJECTION")
    if col.null_count == len(col):
        return table, lines
    distinct = pc.unique(col).drop_null()
    kinds = np.array([_KIND_CODE[objection_kind(v)] for v in distinct.to_pylist()] + [0], dtype=np.int8)
    which = pc.index_in(col, value_set=distinct).fill_null(len(distinct))
    kind = kinds[np.asarray(which.combine_chunks() if isinstance(which, pa.ChunkedArray) else which)]
    type1 = kind >= 2
    info.type1_objections = int(type1.sum())
    info.objection_unrecognised = int((kind == 3).sum())
    canonical = pa.array(np.where(kind == 1, TYPE2, None), pa.string())
    table = table.set_column(table.schema.get_field_index("OBJECTION"), "OBJECTION", canonical)
    if type1.any():
        keep = ~type1
        table = table.filter(pa.array(keep))
        lines = lines[keep]
    return table, lines


def parse_bytes(data: bytes, rel_path: str, feed: Feed | str, limits: Limits | None = None
                ) -> tuple[pd.DataFrame, ReadInfo]:
    """:func:`read_stream` on bytes already read."""
    return read_stream(lambda: io.BytesIO(data), rel_path, feed, limits, len(data))


def read_csv(store: Store, rel_path: str, feed: Feed | str, limits: Limits | None = None,
             size: int | None = None) -> tuple[pd.DataFrame, ReadInfo]:
    """Read one landing file into strings, streamed from ``store`` (a regular file under
    its root only). Raises :class:`FileRejected` with the reason; any other error (the
    store failing) is the caller's to handle."""
    if size is None:
        size = _stored_size(store, rel_path)
    return read_stream(lambda: store.open(rel_path, regular_only=True), rel_path, feed, limits, size)


def _stored_size(store: Store, rel_path: str) -> int | None:
    for f in store.list(rel_path.rsplit("/", 1)[0] if "/" in rel_path else ""):
        if f.path == rel_path:
            return f.size
    return None


# ----------------------------------------------------------------------------- values
DATE_RE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"


def to_date(values: pd.Series) -> pa.Array:
    """``YYYY-MM-DD`` strings to date32; anything else (or impossible dates) to null."""
    s = values.astype("string").str.strip()
    ok = s.str.fullmatch(DATE_RE).fillna(False)
    parsed = pd.to_datetime(s.where(ok), format="%Y-%m-%d", errors="coerce")
    return _dates_or_null(parsed)


def _dates_or_null(parsed: pd.Series) -> pa.Array:
    days = np.asarray(parsed.to_numpy(), dtype="datetime64[s]").astype("datetime64[D]")
    return pa.array(days, pa.date32(), mask=np.isnat(days))


def to_date_yyyymmdd(values: pd.Series) -> pa.Array:
    s = values.astype("string").str.strip()
    ok = s.str.fullmatch(r"[0-9]{8}").fillna(False)
    parsed = pd.to_datetime(s.where(ok), format="%Y%m%d", errors="coerce")
    return _dates_or_null(parsed)


def opcs_present(values: pd.Series) -> pd.Series:
    """OPCS-4 code present: not missing and not a HES placeholder ('-', '-   ', '&')."""
    s = values.astype("string").str.strip()
    return s.notna() & (s != "") & (s != "-") & (s != "&")


__all__ = [
    "FileRejected", "ParsedName", "Rejection", "ReadInfo", "parse_name", "read_csv",
    "parse_bytes", "read_stream", "Limits", "objection_kind", "sha256_stream", "to_date", "to_date_yyyymmdd", "opcs_present",
    "GP", "SUS_APC", "HES_APC", "FFT", "EPRACCUR",
]
