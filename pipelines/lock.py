"""A lock so that two runs on one warehouse never overlap (a folder or an S3 prefix).

The lock is one small JSON object at ``<warehouse>/_run.lock`` naming its holder: host,
pid, when the run started, the command, a random token, and a heartbeat time that the
holder refreshes every ``heartbeat`` seconds while it runs.

* **Folder**: the lock file is created exclusively (written to a temporary file, then
  ``os.link``-ed to the lock's name, which fails if the name exists: the file is never seen
  half-written). Checking, breaking and creating happen under ``fcntl.flock`` on an empty
  file beside it (``_run.lock.guard``), so two processes never break the same stale lock
  and then both take it.
* **S3**: the lock object is created with a conditional write (``PutObject`` with
  ``If-None-Match: *``: the second writer gets 412 Precondition Failed). It is refreshed
  with ``If-Match: <its ETag>`` and deleted (released or broken) with ``If-Match`` too, so
  a process only ever replaces or removes the very object it read.

A lock is **stale**, and is broken with a message saying whose it was, when its holder ran
on this host (same host name and pid namespace) and that process is gone, or when its heartbeat is older than ``stale_after``
seconds (the holder was killed on another host, or hangs). A run that finds a live lock
waits up to ``wait`` seconds (0 by default: it stops at once) and then raises
:class:`LockHeld`, whose message names the holder.

No Dagster here. Under the Dagster daemon, runs are serialised by the run queue
(deploy/dagster.yaml), not by this lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from pipelines.storage import Store

__all__ = ["LOCK_NAME", "LockConfigError", "LockError", "LockHeld", "LockLost", "Holder", "RunLock", "run_lock"]

LOCK_NAME = "_run.lock"
DEFAULT_WAIT = 0.0  # seconds a second run waits for the lock before giving up
DEFAULT_STALE_AFTER = 3600.0  # seconds without a heartbeat after which a lock is stale
DEFAULT_HEARTBEAT = 60.0


class LockError(RuntimeError):
    pass


class LockConfigError(LockError):
    """A lock setting is wrong (CAREDATA_LOCK_* or the arguments)."""


class LockHeld(LockError):
    """Another run holds the lock (and it is not stale)."""

    def __init__(self, where: str, holder: "Holder | None", waited: float):
        self.where, self.holder, self.waited = where, holder, waited
        who = holder.describe() if holder else "a holder whose lock file cannot be read"
        wait = f" after waiting {waited:.0f} s" if waited >= 1 else ""
        super().__init__(
            f"another run holds the lock on {where}{wait}: {who}. "
            f"If that run is gone, its lock goes stale when its heartbeat is older than the "
            f"stale timeout (CAREDATA_LOCK_STALE_SECONDS), or remove {where} by hand "
            f"(docs/runbook.md, 'Two runs at once').")


class LockLost(LockError):
    """Our lock was broken or replaced by another process while we held it."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started_at: str  # ISO 8601 UTC
    command: str
    token: str
    heartbeat_at: float  # epoch seconds
    pid_ns: str = ""  # the pid namespace (containers on one host share a host name)

    def to_bytes(self) -> bytes:
        return (json.dumps(self.__dict__, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> "Holder | None":
        try:
            d = json.loads(data)
            return cls(host=str(d["host"]), pid=int(d["pid"]), started_at=str(d["started_at"]),
                       command=str(d["command"]), token=str(d["token"]),
                       heartbeat_at=float(d["heartbeat_at"]), pid_ns=str(d.get("pid_ns", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        beat = datetime.fromtimestamp(self.heartbeat_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"pid {self.pid} on host {self.host}, started {self.started_at}, "
                f"last heartbeat {beat}, command: {self.command}")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _command() -> str:
    # argv of this process (a command line holds paths and options, never patient data)
    return " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:500]


class RunLock:
    """``with RunLock(Store(warehouse)):`` ... ; see the module docstring."""

    def __init__(self, store: Store, *, name: str = LOCK_NAME, wait: float = DEFAULT_WAIT,
                 stale_after: float = DEFAULT_STALE_AFTER, heartbeat: float = DEFAULT_HEARTBEAT,
                 poll: float = 1.0, command: str | None = None, warn: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time, host: str | None = None,
                 pid: int | None = None, pid_alive: Callable[[int], bool] = _pid_alive):
        if stale_after <= heartbeat:
            raise LockConfigError("the stale timeout must be longer than the heartbeat interval")
        self.store, self.name = store, name
        self.wait, self.stale_after, self.heartbeat, self.poll = wait, stale_after, heartbeat, poll
        self.command = command if command is not None else _command()
        self.warn = warn or (lambda m: print(f"caredata: {m}", file=sys.stderr))
        self.clock, self.host = clock, host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.pid_ns = _pid_namespace()
        self.pid_alive = pid_alive
        self.holder: Holder | None = None
        self._etag: str | None = None  # S3: ETag of our lock object
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.lost: str | None = None

    @property
    def where(self) -> str:
        return self.store.uri(self.name)

    # ------------------------------------------------------------------ public
    def acquire(self) -> Holder:
        try:
            return self._acquire()
        except OSError as exc:  # the warehouse is not a folder, not writable, S3 unreachable
            raise LockError(f"cannot take the run lock on {self.where}: {type(exc).__name__}: "
                            f"{exc.strerror or exc}") from exc

    def _acquire(self) -> Holder:
        start = time.monotonic()
        while True:
            holder = Holder(self.host, self.pid,
                            datetime.fromtimestamp(self.clock(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            self.command, uuid.uuid4().hex, self.clock(), self.pid_ns)
            current = self._try_create(holder)
            if current is None:
                self.holder = holder
                self._start_heartbeat()
                return holder
            waited = time.monotonic() - start
            if waited >= self.wait:
                raise LockHeld(self.where, current if isinstance(current, Holder) else None, waited)
            time.sleep(max(0.01, min(self.poll, self.wait - waited)))

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if self.holder is None:
            return
        holder, self.holder = self.holder, None
        try:
            if self.store.is_s3:
                ok = self.store.delete_if_match(self.name, self._etag)
            else:
                with self._guard():
                    mine = self._read_local()
                    ok = mine is not None and mine[0] is not None and mine[0].token == holder.token
                    if ok:
                        os.unlink(self.store.root / self.name)
        except Exception as exc:  # never hide the run's own outcome behind this
            self.warn(f"warning: could not remove the lock {self.where} ({type(exc).__name__}); "
                      "the next run will find it stale")
            return
        if not ok and self.lost is None:
            self.lost = "the lock was broken or replaced by another process while this run held it"
        if self.lost:
            self.warn(f"warning: {self.where}: {self.lost}")

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ staleness
    def stale_reason(self, holder: Holder | None, modified: float) -> str | None:
        """Why ``holder``'s lock is stale, or None when it is live. ``modified``: the lock
        file's modification time, used when the file cannot be read."""
        now = self.clock()
        if holder is None:
            age = now - modified
            if age > self.stale_after:
                return f"its lock file cannot be read and is {age:.0f} s old"
            return None
        if holder.host == self.host and holder.pid_ns == self.pid_ns and not self.pid_alive(holder.pid):
            return f"process {holder.pid} is no longer running on this host"
        age = now - holder.heartbeat_at
        if age > self.stale_after:
            return f"its last heartbeat is {age:.0f} s old (stale after {self.stale_after:.0f} s)"
        return None

    def _broken(self, holder: Holder | None, reason: str) -> None:
        who = holder.describe() if holder else "unknown holder"
        self.warn(f"breaking a stale lock on {self.where} ({who}): {reason}")

    # ------------------------------------------------------------------ folder
    @contextlib.contextmanager
    def _guard(self):
        import fcntl

        guard = self.store.root / f"{self.name}.guard"
        if not guard.parent.exists():
            guard.parent.mkdir(parents=True, exist_ok=True)
        # a file opened for writing (flock on NFS is emulated with byte-range locks, which
        # need that); it stays beside the lock, empty
        fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _read_local(self) -> tuple[Holder | None, float] | None:
        path = self.store.root / self.name
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                return Holder.parse(fh.read()), st.st_mtime
        except FileNotFoundError:
            return None

    def _try_create(self, holder: Holder) -> Holder | bool | None:
        """None when we took the lock; else the live holder (False when unreadable)."""
        if self.store.is_s3:
            return self._try_create_s3(holder)
        path = self.store.root / self.name
        with self._guard():
            found = self._read_local()
            if found is not None:
                current, mtime = found
                reason = self.stale_reason(current, mtime)
                if reason is None:
                    return current if current is not None else False
                self._broken(current, reason)
                os.unlink(path)
            self.store.write_bytes_exclusive(self.name, holder.to_bytes())
        return None

    # ------------------------------------------------------------------ S3
    def _try_create_s3(self, holder: Holder) -> Holder | bool | None:
        for _ in range(5):
            data = holder.to_bytes()
            etag = self.store.write_bytes_exclusive(self.name, data)
            if etag is not None:
                # A store that ignores If-None-Match would let two runs both "create" the
                # lock: a second conditional create of the same (identical) bytes must fail.
                if self.store.write_bytes_exclusive(self.name, data) is not None:
                    self.store.delete(self.name)
                    raise LockError(
                        f"{self.where}: this S3 store ignores conditional writes (PutObject with "
                        "If-None-Match), so it cannot hold a lock; use a store that supports them")
                self._etag = etag
                return None
            got = self.store.read_with_etag(self.name)
            if got is None:  # released meanwhile: try again
                continue
            data, etag_found, modified = got
            current = Holder.parse(data)
            reason = self.stale_reason(current, modified)
            if reason is None:
                return current if current is not None else False
            if self.store.delete_if_match(self.name, etag_found):
                self._broken(current, reason)
            # deleted by us or by another breaker: try to create again
        return False

    # ------------------------------------------------------------------ heartbeat
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat_loop, name="caredata-lock-heartbeat",
                                      daemon=True)
        self._beat.start()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.refresh()
            except LockLost as exc:
                self.lost = str(exc)
                self.warn(f"error: {self.where}: {exc}")
                return
            except Exception as exc:  # a transient S3 error: try at the next beat
                self.warn(f"warning: could not refresh the lock heartbeat on {self.where}: "
                          f"{type(exc).__name__}")

    def refresh(self) -> None:
        """Write a new heartbeat time into our lock (only if it is still ours)."""
        holder = self.holder
        if holder is None:
            return
        new = Holder(holder.host, holder.pid, holder.started_at, holder.command, holder.token,
                     self.clock(), holder.pid_ns)
        if self.store.is_s3:
            etag = self.store.write_bytes_if_match(self.name, new.to_bytes(), self._etag)
            if etag is None:
                raise LockLost("the lock was broken or replaced by another process")
            self._etag = etag
        else:
            with self._guard():
                found = self._read_local()
                if found is None or found[0] is None or found[0].token != holder.token:
                    raise LockLost("the lock was broken or replaced by another process")
                self.store.write_bytes(self.name, new.to_bytes())
        self.holder = new


def settings_from_env(env=None) -> dict:
    """``wait``, ``stale_after``, ``heartbeat`` from ``CAREDATA_LOCK_WAIT_SECONDS``,
    ``CAREDATA_LOCK_STALE_SECONDS``, ``CAREDATA_LOCK_HEARTBEAT_SECONDS``."""
    env = os.environ if env is None else env
    out = {}
    for key, name in (("wait", "CAREDATA_LOCK_WAIT_SECONDS"), ("stale_after", "CAREDATA_LOCK_STALE_SECONDS"),
                      ("heartbeat", "CAREDATA_LOCK_HEARTBEAT_SECONDS")):
        raw = env.get(name, "").strip()
        if raw:
            try:
                value = float(raw)
            except ValueError:
                raise LockConfigError(f"{name} must be a number of seconds") from None
            if value < 0:
                raise LockConfigError(f"{name} must not be negative")
            out[key] = value
    return out


def run_lock(warehouse: str, endpoint_url: str | None = None, **kw) -> RunLock:
    """The run lock of a warehouse root, configured from the environment (then ``kw``)."""
    return RunLock(Store(warehouse, endpoint_url=endpoint_url), **{**settings_from_env(), **kw})
