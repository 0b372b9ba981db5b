"""One interface over a local folder or an S3 prefix.

``Store("path/to/dir")`` or ``Store("s3://bucket/prefix", endpoint_url=...)``. Paths given
to its methods are relative to the root and use ``/``. S3 goes through boto3 for listing,
reading and writing, and through ``pyarrow.fs.S3FileSystem`` for Arrow datasets, so DuckDB
reads it as Arrow and needs no extension.

Writes are atomic for a reader: locally a temporary file is renamed into place; on S3 a
PUT is atomic per object. Local files and folders follow the process's umask. Conditional
writes (create only if absent, replace or delete only if unchanged) serve the locks.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class FileInfo:
    path: str  # relative to the store root, '/'-separated
    size: int
    modified: datetime
    kind: str = "file"
    """``file`` (a regular file, the only kind ever read); with ``Store.list(special=True)``
    also ``link`` (a symbolic link, to a file or a folder: never followed), ``special`` (a
    FIFO, socket or device) or ``unsafe`` (an S3 key with ``..``, ``.`` or empty path
    segments)."""


class UnsafePath(OSError):
    """A path that is not a regular file under the store root (a link, a special file,
    a path escaping the root). Its message names the path only."""


def _unsafe_segments(rel: str) -> bool:
    return any(seg in ("", ".", "..") for seg in rel.split("/"))


class Store:
    def __init__(self, root: str | os.PathLike, endpoint_url: str | None = None):
        root = str(root)
        self.url = root
        self.endpoint_url = endpoint_url or os.environ.get("CAREDATA_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if root.startswith("s3://"):
            parsed = urlparse(root)
            self.is_s3 = True
            self.bucket = parsed.netloc
            self.prefix = parsed.path.strip("/")
            self._client = None
        else:
            self.is_s3 = False
            self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # ------------------------------------------------------------------ S3 plumbing
    @property
    def client(self):
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=os.environ.get("AWS_DEFAULT_REGION", "eu-west-2"),
            )
        return self._client

    def _key(self, path: str) -> str:
        path = path.strip("/")
        return f"{self.prefix}/{path}" if self.prefix else path

    def _rel(self, key: str) -> str:
        return key[len(self.prefix) + 1:] if self.prefix else key

    # ------------------------------------------------------------------ API
    def uri(self, path: str = "") -> str:
        if self.is_s3:
            return f"s3://{self.bucket}/{self._key(path)}"
        return str(self.root / path) if path else str(self.root)

    def list(self, prefix: str = "", *, special: bool = False) -> list[FileInfo]:
        """Every regular file under ``prefix`` (recursive), sorted by path. Symbolic links
        are never followed (a linked folder is not descended into) and are left out, as are
        special files and unsafe S3 keys, unless ``special``: then they are listed too, with
        their ``kind``, so that the landing zone can record them as rejected."""
        out: list[FileInfo] = []
        if self.is_s3:
            paginator = self.client.get_paginator("list_objects_v2")
            key_prefix = self._key(prefix)
            if prefix and not key_prefix.endswith("/"):
                key_prefix += "/"
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key_prefix):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue
                    rel = self._rel(obj["Key"])
                    kind = "unsafe" if _unsafe_segments(rel) else "file"
                    if kind == "file" or special:
                        out.append(FileInfo(rel, obj["Size"], obj["LastModified"], kind))
        else:
            base = self.root / prefix if prefix else self.root

            def entry(p: str, st: os.stat_result, kind: str) -> None:
                if kind == "file" or special:
                    rel = Path(p).relative_to(self.root).as_posix()
                    out.append(FileInfo(rel, st.st_size, datetime.fromtimestamp(st.st_mtime, tz=timezone.utc), kind))

            try:
                st = os.lstat(base)
            except FileNotFoundError:
                return []
            if stat.S_ISLNK(st.st_mode):
                entry(str(base), st, "link")  # the folder itself is a link: never descended into
                return sorted(out, key=lambda f: f.path)
            if not stat.S_ISDIR(st.st_mode):
                return []
            for folder, dirs, files in os.walk(base, followlinks=False):
                for d in list(dirs):
                    full = os.path.join(folder, d)
                    st = os.lstat(full)
                    if stat.S_ISLNK(st.st_mode):
                        dirs.remove(d)  # os.walk does not descend into it; recorded here
                        entry(full, st, "link")
                for f in files:
                    if f.startswith(".tmp-"):
                        continue
                    full = os.path.join(folder, f)
                    try:
                        st = os.lstat(full)
                    except FileNotFoundError:  # removed while listing
                        continue
                    kind = ("file" if stat.S_ISREG(st.st_mode) else
                            "link" if stat.S_ISLNK(st.st_mode) else "special")
                    entry(full, st, kind)
        return sorted(out, key=lambda f: f.path)

    def exists(self, path: str) -> bool:
        if self.is_s3:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(path))
                return True
            except self.client.exceptions.ClientError:
                return False
        return (self.root / path).is_file()

    def read_bytes(self, path: str, *, regular_only: bool = False) -> bytes:
        """The file's bytes. ``regular_only``: see :meth:`open`."""
        if regular_only:
            with self.open(path, regular_only=True) as fh:
                return fh.read()
        if self.is_s3:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"].read()
        return (self.root / path).read_bytes()

    def open(self, path: str, *, regular_only: bool = False):
        """A binary file object for reading (streams on S3). ``regular_only``: raise
        :class:`UnsafePath`, before opening anything, unless ``path`` is a regular file under
        the root reached through no symbolic link (locally: every folder on the way checked,
        the file opened with ``O_NOFOLLOW`` and checked again once open; S3: a key without
        ``..``, ``.`` or empty segments)."""
        if self.is_s3:
            if regular_only and _unsafe_segments(path):
                raise UnsafePath(f"{path}: not a safe key under the landing prefix")
            return self.client.get_object(Bucket=self.bucket, Key=self._key(path))["Body"]
        if not regular_only:
            return open(self.root / path, "rb")
        if _unsafe_segments(path) or path.startswith("/"):
            raise UnsafePath(f"{path}: not a path under the root")
        full = self.root / path
        here = self.root
        for seg in path.split("/")[:-1]:  # every folder on the way: a real folder, no link
            here = here / seg
            if not stat.S_ISDIR(os.lstat(here).st_mode):
                raise UnsafePath(f"{path}: a folder on its path is a symbolic link or not a folder")
        if os.path.realpath(full) != str(full):
            raise UnsafePath(f"{path}: resolves outside the root or through a symbolic link")
        fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(f"{path}: not a regular file")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def iter_chunks(self, path: str, size: int = 8 << 20, *, regular_only: bool = False) -> Iterator[bytes]:
        with self.open(path, regular_only=regular_only) as fh:
            while True:
                chunk = fh.read(size)
                if not chunk:
                    return
                yield chunk

    # ------------------------------------------------------------------ writing
    # Local files and folders get the process's umask (0644/0755 under umask 022): a
    # service account of the readers' group can read what is published. Temporary files
    # are named ``.tmp-*`` (never ``*.parquet``) in the target's folder and renamed into place.

    @staticmethod
    def _tmp_create(folder: Path) -> tuple[int, Path]:
        """An exclusive new temporary file in ``folder``, mode 0666 less the umask (unlike
        ``tempfile.mkstemp``, which makes 0600)."""
        import uuid

        while True:
            tmp = folder / f".tmp-{uuid.uuid4().hex}"
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
            except FileExistsError:  # pragma: no cover - 128 random bits
                continue

    def _write_tmp(self, target: Path, data: bytes | None = None, src: Path | None = None,
                   tmp_dir: str | None = None) -> Path:
        folder = self.root / tmp_dir if tmp_dir else target.parent
        for attempt in range(5):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = self._tmp_create(folder)
                break
            except FileNotFoundError:  # another writer pruned the empty folder just now
                if attempt == 4:
                    raise
        try:
            with os.fdopen(fd, "wb") as fh:
                if src is not None:
                    import shutil

                    with open(src, "rb") as inp:
                        shutil.copyfileobj(inp, fh, 8 << 20)
                else:
                    fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def write_bytes(self, path: str, data: bytes, *, tmp_dir: str | None = None) -> None:
        """Write ``path`` atomically. Locally the temporary file is made in ``tmp_dir`` (a
        folder of the store, so on the same file system) rather than beside the target."""
        if self.is_s3:
            self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)
            return
        target = self.root / path
        tmp = self._write_tmp(target, data, tmp_dir=tmp_dir)
        try:
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def copy(self, src: str, dst: str, *, tmp_dir: str | None = None) -> None:
        """Copy ``src`` to ``dst`` within the store, atomic for a reader of ``dst`` (local:
        temporary file, in ``tmp_dir`` if given, renamed into place; S3: server-side copy,
        one object version)."""
        if self.is_s3:
            self.client.copy(
                {"Bucket": self.bucket, "Key": self._key(src)}, self.bucket, self._key(dst)
            )
            return
        target = self.root / dst
        tmp = self._write_tmp(target, src=self.root / src, tmp_dir=tmp_dir)
        try:
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def delete(self, path: str) -> None:
        if self.is_s3:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(path))
        else:
            p = self.root / path
            if p.exists():
                p.unlink()

    def delete_prefix(self, prefix: str, *, prune_parents: bool = False) -> None:
        """Delete every file under ``prefix``, then (locally) every folder left empty there
        and ``prefix`` itself (with ``prune_parents``, its empty parents too)."""
        for f in self.list(prefix):
            self.delete(f.path)
        self.remove_empty_dirs(prefix, parents=prune_parents)

    def remove_empty_dirs(self, prefix: str = "", *, parents: bool = False) -> None:
        """Locally, remove the empty folders under ``prefix`` (bottom up, ``prefix``
        included), and with ``parents`` its parents while they are empty; never the root.
        S3 has no folders: a no-op."""
        if self.is_s3:
            return
        base = (self.root / prefix) if prefix.strip("/") else self.root
        if base.is_dir():
            for dirpath, _dirs, _files in sorted(os.walk(base), key=lambda w: -len(w[0])):
                if Path(dirpath) != self.root:
                    with contextlib.suppress(OSError):  # not empty, or gone: fine
                        os.rmdir(dirpath)
        p = base.parent if not base.exists() else base
        while parents and p != self.root and self.root in p.parents:
            try:
                os.rmdir(p)
            except OSError:
                break
            p = p.parent

    # ------------------------------------------------------------------ conditional writes
    # For locks (pipelines/lock.py): S3 conditional writes (If-None-Match / If-Match, HTTP 412
    # when the condition fails); locally an exclusive link.

    @staticmethod
    def _precondition_failed(exc) -> bool:
        err = getattr(exc, "response", {}).get("Error", {})
        status = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
        return err.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey",
                                   "404", "412", "409") or status in (404, 409, 412)

    def write_bytes_exclusive(self, path: str, data: bytes) -> str | None:
        """Create ``path`` with ``data`` only if nothing is there. Returns None when it
        exists already; otherwise the new object's ETag (S3) or "" (folder). The file is
        never seen half-written."""
        if self.is_s3:
            from botocore.exceptions import ClientError

            try:
                r = self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data,
                                           IfNoneMatch="*")
            except ClientError as exc:
                if self._precondition_failed(exc):
                    return None
                raise
            return r["ETag"]
        target = self.root / path
        tmp = self._write_tmp(target, data)
        try:
            os.link(tmp, target)  # atomic, fails if target exists
        except FileExistsError:
            return None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return ""

    def write_bytes_if_match(self, path: str, data: bytes, etag: str) -> str | None:
        """S3: replace ``path`` only if its ETag is still ``etag``; the new ETag, or None
        when it changed or is gone."""
        if not self.is_s3:
            raise NotImplementedError("conditional overwrite is for S3 (folders: use a lock)")
        from botocore.exceptions import ClientError

        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data, IfMatch=etag)
        except ClientError as exc:
            if self._precondition_failed(exc):
                return None
            raise
        return r["ETag"]

    def delete_if_match(self, path: str, etag: str | None) -> bool:
        """S3: delete ``path`` only if its ETag is ``etag``; whether it was deleted. A store
        without conditional deletes (NotImplemented) gets a check of the ETag then a delete."""
        if not self.is_s3:
            raise NotImplementedError("conditional delete is for S3 (folders: use a lock)")
        from botocore.exceptions import ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(path), IfMatch=etag)
            return True
        except ClientError as exc:
            if self._precondition_failed(exc):
                return False
            if exc.response.get("Error", {}).get("Code") not in ("NotImplemented", "InvalidArgument"):
                raise
        got = self.read_with_etag(path)
        if got is None or got[1] != etag:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self._key(path))
        return True

    def read_with_etag(self, path: str) -> tuple[bytes, str, float] | None:
        """S3: (bytes, ETag, last-modified epoch seconds) of ``path``, or None if absent."""
        from botocore.exceptions import ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(path))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return r["Body"].read(), r["ETag"], r["LastModified"].timestamp()

    # ------------------------------------------------------------------ Arrow
    def arrow_fs(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the base path of the root within it."""
        if self.is_s3:
            kw = {"region": os.environ.get("AWS_DEFAULT_REGION", "eu-west-2")}
            if self.endpoint_url:
                parsed = urlparse(self.endpoint_url)
                kw["endpoint_override"] = parsed.netloc or parsed.path
                kw["scheme"] = parsed.scheme or "https"
            base = f"{self.bucket}/{self.prefix}".rstrip("/")
            return pafs.S3FileSystem(**kw), base
        return pafs.LocalFileSystem(), str(self.root)

    def write_parquet(self, path: str, table: pa.Table, **kw) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression=kw.pop("compression", "zstd"), **kw)
        self.write_bytes(path, buf.getvalue())

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(path)), columns=columns)

    def read_parquet_many(self, paths: list[str], schema: pa.Schema | None = None) -> pa.Table:
        """Read several Parquet files as one table (streams through pyarrow.dataset)."""
        import pyarrow.dataset as ds

        if not paths:
            if schema is None:
                raise ValueError("no files and no schema")
            return schema.empty_table()
        fs, base = self.arrow_fs()
        full = [f"{base}/{p}" for p in paths]
        return ds.dataset(full, filesystem=fs, format="parquet", schema=schema).to_table()

    def parquet_dataset(self, paths: list[str], schema: pa.Schema, partition_base: str | None = None,
                        partition_columns: tuple[str, ...] = ()):
        """A lazy ``pyarrow.dataset.Dataset`` over Parquet files of the store (local or S3
        through :meth:`arrow_fs`, so DuckDB scans it as Arrow and needs no extension):
        nothing is read until it is scanned, and a scan reads only the columns and rows it
        asks for. Rows come out with ``schema``: a column missing from a file is null, the
        others are cast to the schema's types. ``partition_columns`` (columns of
        ``schema``) are filled from the hive ``name=value`` folders below the store folder
        ``partition_base``."""
        import pyarrow.dataset as ds

        fs, base = self.arrow_fs()
        full = [f"{base}/{p}" for p in paths]
        kw = {}
        if partition_columns:
            if partition_base is None:
                raise ValueError("partition_columns need a partition_base")
            kw["partitioning"] = ds.partitioning(
                pa.schema([schema.field(c) for c in partition_columns]), flavor="hive")
            kw["partition_base_dir"] = f"{base}/{partition_base.strip('/')}"
        return ds.dataset(full, filesystem=fs, format="parquet", schema=schema, **kw)
