"""A throwaway PostgreSQL server for the operations tests, and a Dagster home on it.

``postgres`` (session): initdb into a temporary folder, start the server on a free port of
127.0.0.1 (its unix socket in the same folder), password authentication over TCP, stop and
delete everything at the end. initdb refuses to run as root, so as root the server runs as
the ``postgres`` user (or ``nobody``) that owns the folder. Skips, saying why, only when
the PostgreSQL binaries are not installed (``apt-get install postgresql``; .ci/run does it).

``pg_database``: a fresh, empty database on that server for one test.

``dagster_home``: a DAGSTER_HOME holding a copy of deploy/dagster.yaml, with the
DAGSTER_PG_* variables pointing at ``pg_database``: the production instance configuration,
on a throwaway database.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY_YAML = ROOT / "deploy" / "dagster.yaml"
PG_USER = "caredata"
PG_PASSWORD = "caredata-test-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's versioned folders."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.path.exists(f"{folder}/initdb") and os.path.exists(f"{folder}/pg_ctl"):
            return Path(folder)
    return None


def _service_user() -> pwd.struct_passwd | None:
    """Who runs the server: ourselves unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.skip("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class PostgresServer:
    bin_dir: Path
    base: Path
    host: str
    port: int
    user: str
    password: str
    socket_dir: Path
    _run_as: pwd.struct_passwd | None = field(default=None, repr=False)

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{db}"

    def connect(self, db: str = "postgres"):
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user,
                                password=self.password, dbname=db)
        conn.autocommit = True
        return conn

    def create_database(self, name: str) -> str:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def psql(self, db: str, sql: str) -> list[list[str]]:
        """Run SQL through the psql client (the operator's tool); rows as lists of strings."""
        psql = self.bin_dir / "psql"
        exe = str(psql) if psql.exists() else (shutil.which("psql") or "psql")
        out = subprocess.run(
            [exe, "-X", "-A", "-t", "-F", "\t", "-h", self.host, "-p", str(self.port), "-U", self.user,
             "-d", db, "-c", sql],
            env={**os.environ, "PGPASSWORD": self.password}, capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql failed: {out.stderr.strip()}")
        return [line.split("\t") for line in out.stdout.splitlines() if line.strip()]

    def env(self, db: str) -> dict[str, str]:
        return {
            "DAGSTER_PG_USERNAME": self.user, "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_HOST": self.host, "DAGSTER_PG_PORT": str(self.port), "DAGSTER_PG_DB": db,
        }


def _run(cmd: list[str], run_as: pwd.struct_passwd | None, **kw) -> subprocess.CompletedProcess:
    if run_as is not None:
        kw.update(user=run_as.pw_uid, group=run_as.pw_gid, extra_groups=[])
        kw["env"] = {**kw.get("env", os.environ), "HOME": kw.get("cwd", "/tmp"), "USER": run_as.pw_name}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def start_postgres() -> PostgresServer:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
                    "install them with `apt-get install postgresql` (.ci/run does)")
    run_as = _service_user()
    # Not under pytest's basetemp: that is mode 0700 for root, and the server's user must reach it.
    base = Path(tempfile.mkdtemp(prefix="caredata-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    pwfile = base / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if run_as is not None:
        for p in (base, sock, pwfile):
            os.chown(p, run_as.pw_uid, run_as.pw_gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    init = _run([str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
                 "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                run_as, env=env, cwd=str(base))
    if init.returncode != 0:
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {init.stderr.strip()[-2000:]}")
    port = _free_port()
    opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c shared_buffers=16MB -c max_connections=60")
    start = _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-o", opts,
                  "-w", "-t", "60", "start"], run_as, env=env, cwd=str(base))
    if start.returncode != 0:
        log = (base / "server.log").read_text()[-2000:] if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {start.stderr.strip()} {log}")
    server = PostgresServer(bin_dir=bin_dir, base=base, host="127.0.0.1", port=port, user=PG_USER,
                            password=PG_PASSWORD, socket_dir=sock, _run_as=run_as)
    deadline = time.monotonic() + 30
    while True:
        try:
            server.connect().close()
            break
        except Exception:  # noqa: BLE001 - still starting
            if time.monotonic() > deadline:
                stop_postgres(server)
                raise
            time.sleep(0.2)
    return server


def stop_postgres(server: PostgresServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    _run([str(server.bin_dir / "pg_ctl"), "-D", str(server.base / "data"), "-m", "immediate", "-w", "stop"],
         server._run_as, env=env, cwd=str(server.base))
    shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A running throwaway PostgreSQL server (see the module docstring)."""
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture
def pg_database(postgres) -> str:
    """The name of a fresh, empty database on the throwaway server."""
    return postgres.create_database(f"dagster_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def dagster_home(postgres, pg_database, tmp_path, monkeypatch) -> Path:
    """DAGSTER_HOME with deploy/dagster.yaml, its DAGSTER_PG_* variables on a fresh database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    for k, v in postgres.env(pg_database).items():
        monkeypatch.setenv(k, v)
    return home
