"""Shared fixtures: a real S3 (moto server over HTTP), generated landing zones."""

from __future__ import annotations

import os
import socket
import sys
import uuid

import pytest

# A pytest-xdist worker's __main__ has neither __spec__ nor __file__: pyspark.sql.connect, which
# Great Expectations imports when pyspark is installed, takes that for a doctest run and exits
# the worker. Naming an empty module as its file keeps it a worker (multiprocessing's spawn
# children run that empty module as their __mp_main__).
if os.environ.get("PYTEST_XDIST_WORKER"):
    _main = sys.modules["__main__"]
    if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
        _main.__file__ = os.path.join(os.path.dirname(__file__), "xdist_main.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on loopback, reached over HTTP like any S3 endpoint."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-2")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket; returns (bucket_name, endpoint_url)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-2").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    return name, s3_endpoint


# A throwaway PostgreSQL server and a DAGSTER_HOME on it (deploy/dagster.yaml): tests/pg.py.
from pg import dagster_home, pg_database, postgres  # noqa: E402,F401
