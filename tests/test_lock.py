"""The run lock (pipelines/lock.py): a folder and S3 (moto), concurrent acquirers (threads
and processes), stale locks, heartbeat, and `caredata run` refusing to overlap."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pipelines.lock import LOCK_NAME, Holder, LockConfigError, LockError, LockHeld, LockLost, RunLock, settings_from_env
from pipelines.storage import Store


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path):
    if request.param == "folder":
        return Store(tmp_path / "warehouse")
    bucket, endpoint = request.getfixturevalue("s3_bucket")
    return Store(f"s3://{bucket}/warehouse", endpoint_url=endpoint)


def lock_of(store, **kw):
    kw.setdefault("warn", lambda m: None)
    kw.setdefault("command", "caredata run --landing L --warehouse W --publish P")
    return RunLock(store, **kw)


def test_second_run_is_refused_with_the_holder_named(store):
    first = lock_of(store)
    holder = first.acquire()
    try:
        recorded = Holder.parse(store.read_bytes(LOCK_NAME))
        assert recorded == holder
        assert recorded.pid == os.getpid() and recorded.host and recorded.started_at.endswith("Z")
        assert recorded.command == "caredata run --landing L --warehouse W --publish P"
        with pytest.raises(LockHeld) as err:
            lock_of(store, command="second").acquire()
        msg = str(err.value)
        assert f"pid {os.getpid()} on host {holder.host}" in msg
        assert f"started {holder.started_at}" in msg and "caredata run --landing L" in msg
        assert "CAREDATA_LOCK_STALE_SECONDS" in msg
        assert Holder.parse(store.read_bytes(LOCK_NAME)).token == holder.token  # untouched
    finally:
        first.release()
    assert not store.exists(LOCK_NAME)
    with lock_of(store) as again:  # free again
        assert store.exists(LOCK_NAME) and again.holder is not None
    assert not store.exists(LOCK_NAME)


def test_a_waiting_run_gets_the_lock_when_the_first_releases(store):
    first = lock_of(store)
    first.acquire()
    threading.Timer(0.6, first.release).start()
    t0 = time.monotonic()
    with lock_of(store, wait=20, poll=0.1):
        assert 0.5 < time.monotonic() - t0 < 15


def test_waiting_gives_up_after_the_configured_time(store):
    with lock_of(store):
        t0 = time.monotonic()
        with pytest.raises(LockHeld) as err:
            lock_of(store, wait=0.5, poll=0.1).acquire()
        assert 0.4 < time.monotonic() - t0 < 10
        assert err.value.waited >= 0.5


def test_concurrent_threads_never_hold_it_together(store):
    inside, overlaps, entries = [0], [], []
    mutex = threading.Lock()

    def worker(k):
        for _ in range(3):
            with lock_of(store, wait=60, poll=0.02, command=f"worker {k}"):
                with mutex:
                    inside[0] += 1
                    if inside[0] > 1:
                        overlaps.append(k)
                entries.append(k)
                time.sleep(0.02)
                with mutex:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == [] and len(entries) == 15
    assert not store.exists(LOCK_NAME)


def test_only_one_of_simultaneous_acquirers_wins(store):
    barrier = threading.Barrier(6)
    won, refused = [], []

    def worker(k):
        lock = lock_of(store, command=f"worker {k}")
        barrier.wait()
        try:
            lock.acquire()
            won.append(lock)
        except LockHeld:
            refused.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 5
    assert Holder.parse(store.read_bytes(LOCK_NAME)).token == won[0].holder.token
    won[0].release()


def _fake_lock(store, **fields):
    d = {"host": "elsewhere", "pid": 1, "started_at": "2026-01-01T00:00:00Z", "command": "old run",
         "token": "t0", "heartbeat_at": time.time()}
    d.update(fields)
    store.write_bytes(LOCK_NAME, (json.dumps(d) + "\n").encode())


def test_stale_lock_of_a_dead_process_on_this_host_is_broken(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    from pipelines.lock import _pid_namespace

    _fake_lock(store, host=socket.gethostname(), pid=dead.pid, pid_ns=_pid_namespace())
    said = []
    with lock_of(store, warn=said.append) as lock:
        assert Holder.parse(store.read_bytes(LOCK_NAME)).token == lock.holder.token
    assert len(said) == 1
    assert "breaking a stale lock" in said[0] and f"process {dead.pid} is no longer running" in said[0]
    assert "old run" in said[0]


def test_same_host_name_in_another_pid_namespace_is_not_judged_by_pid(store):
    """Two containers may share a host name; a pid of the other one means nothing here."""
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _fake_lock(store, host=socket.gethostname(), pid=dead.pid, pid_ns="pid:[1]")
    with pytest.raises(LockHeld):
        lock_of(store).acquire()


def test_live_lock_on_another_host_is_kept_until_its_heartbeat_is_too_old(store):
    _fake_lock(store, heartbeat_at=time.time() - 100)
    with pytest.raises(LockHeld) as err:
        lock_of(store, stale_after=300, heartbeat=10).acquire()
    assert "host elsewhere" in str(err.value)
    said = []
    with lock_of(store, stale_after=60, heartbeat=10, warn=said.append):
        pass
    assert len(said) == 1 and "last heartbeat is 100 s old" in said[0]
    assert not store.exists(LOCK_NAME)


def test_simultaneous_breakers_of_one_stale_lock_leave_one_holder(store):
    _fake_lock(store, heartbeat_at=time.time() - 10_000)
    barrier = threading.Barrier(5)
    won, refused = [], []

    def worker(k):
        lock = lock_of(store, command=f"worker {k}")
        barrier.wait()
        try:
            lock.acquire()
            won.append(lock)
        except LockHeld:
            refused.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 4
    assert Holder.parse(store.read_bytes(LOCK_NAME)).token == won[0].holder.token
    won[0].release()


def test_heartbeat_refreshes_and_a_broken_lock_is_reported(store):
    said = []
    lock = lock_of(store, heartbeat=0.2, stale_after=5, warn=said.append)
    lock.acquire()
    first = Holder.parse(store.read_bytes(LOCK_NAME)).heartbeat_at
    deadline = time.monotonic() + 10
    while Holder.parse(store.read_bytes(LOCK_NAME)).heartbeat_at == first:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.05)
    # someone removes our lock by hand and another run takes it
    lock._stop.set()
    lock._beat.join()
    store.delete(LOCK_NAME)
    other = lock_of(store)
    other.acquire()
    with pytest.raises(LockLost):
        lock.refresh()
    lock.release()  # must not remove the other run's lock
    assert Holder.parse(store.read_bytes(LOCK_NAME)).token == other.holder.token
    assert any("broken or replaced" in m for m in said)
    other.release()


def test_unreadable_lock_file_is_held_until_old(store):
    store.write_bytes(LOCK_NAME, b"")
    with pytest.raises(LockHeld) as err:
        lock_of(store).acquire()
    assert "cannot be read" in str(err.value)
    with lock_of(store, clock=lambda: time.time() + 7200):
        pass


def test_settings_from_env():
    assert settings_from_env({}) == {}
    assert settings_from_env({"CAREDATA_LOCK_WAIT_SECONDS": "30", "CAREDATA_LOCK_STALE_SECONDS": "900"}) == {
        "wait": 30.0, "stale_after": 900.0}
    with pytest.raises(LockConfigError):
        settings_from_env({"CAREDATA_LOCK_WAIT_SECONDS": "soon"})
    with pytest.raises(LockConfigError):
        settings_from_env({"CAREDATA_LOCK_WAIT_SECONDS": "-1"})
    with pytest.raises(LockConfigError):
        RunLock(Store("/tmp/x"), stale_after=10, heartbeat=60)


def test_a_warehouse_that_cannot_hold_a_lock_is_an_error(tmp_path):
    blocker = tmp_path / "wh"
    blocker.write_text("a file where the warehouse folder should be")
    with pytest.raises(LockError, match="cannot take the run lock.*NotADirectoryError") as err:
        lock_of(Store(blocker)).acquire()
    assert not isinstance(err.value, LockHeld)


# ------------------------------------------------------------------ processes

HOLD = """
import sys, time
from pipelines.lock import RunLock
from pipelines.storage import Store
lock = RunLock(Store(sys.argv[1]), wait=float(sys.argv[2]), poll=0.05, command="holder " + sys.argv[3])
with lock:
    with open(sys.argv[4], "a") as fh:
        fh.write(f"in {sys.argv[3]} {time.time()}\\n")
    time.sleep(float(sys.argv[5]))
    with open(sys.argv[4], "a") as fh:
        fh.write(f"out {sys.argv[3]} {time.time()}\\n")
"""


def test_processes_take_turns_on_a_folder(tmp_path):
    root, log = tmp_path / "warehouse", tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(root), "60", str(k), str(log), "0.3"])
             for k in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    events = [line.split() for line in log.read_text().splitlines()]
    assert len(events) == 6
    # strictly alternating in/out of the same process: never two inside at once
    for a, b in zip(events[0::2], events[1::2]):
        assert a[0] == "in" and b[0] == "out" and a[1] == b[1]
    assert not (root / LOCK_NAME).exists()


def test_a_killed_holder_is_recovered_from(tmp_path):
    root, log = tmp_path / "warehouse", tmp_path / "log"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root), "0", "victim", str(log), "600"])
    try:
        deadline = time.monotonic() + 60
        while not log.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(LockHeld) as err:
            lock_of(Store(root)).acquire()
        assert f"pid {proc.pid}" in str(err.value) and "holder victim" in str(err.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    said = []
    with lock_of(Store(root), warn=said.append):
        pass
    assert said and f"process {proc.pid} is no longer running" in said[0]


# ------------------------------------------------------------------ the command


def test_caredata_run_refuses_while_another_run_holds_the_warehouse(tmp_path, capsys):
    from pipelines import cli

    warehouse = tmp_path / "warehouse"
    (tmp_path / "landing").mkdir()
    with lock_of(Store(warehouse), command="caredata run (the first one)"):
        rc = cli.main(["run", "--landing", str(tmp_path / "landing"), "--warehouse", str(warehouse),
                       "--publish", str(tmp_path / "publish"), "--demo-mode"])
    assert rc == 3
    err = capsys.readouterr().err
    assert "another run holds the lock" in err and "caredata run (the first one)" in err
    assert f"pid {os.getpid()}" in err
    # No work was done: the roots were checked (and the publish root created), nothing written.
    assert not (tmp_path / "publish").exists() or not any((tmp_path / "publish").iterdir())
    assert not warehouse.exists() or [p.name for p in warehouse.iterdir()] in ([], ["_run.lock.guard"])


class IgnoresConditions(Store):
    """An S3 store that silently ignores If-None-Match, as some old S3 servers do."""

    def write_bytes_exclusive(self, path, data):
        self.client.put_object(Bucket=self.bucket, Key=self._key(path), Body=data)
        return "etag"


def test_an_s3_store_without_conditional_writes_is_refused(s3_bucket):
    bucket, endpoint = s3_bucket
    store = IgnoresConditions(f"s3://{bucket}/warehouse", endpoint_url=endpoint)
    with pytest.raises(LockError, match="ignores conditional writes"):
        lock_of(store).acquire()
    assert not store.exists(LOCK_NAME)


def test_caredata_run_with_a_bad_lock_setting_is_a_configuration_error(tmp_path, capsys, monkeypatch):
    from pipelines import cli

    monkeypatch.setenv("CAREDATA_LOCK_WAIT_SECONDS", "a while")
    rc = cli.main(["run", "--landing", str(tmp_path / "landing"), "--warehouse", str(tmp_path / "wh"),
                   "--publish", str(tmp_path / "publish")])
    assert rc == 2
    assert "configuration error: CAREDATA_LOCK_WAIT_SECONDS must be a number" in capsys.readouterr().err
    assert not (tmp_path / "publish").exists()
