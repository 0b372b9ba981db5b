"""The whole pipeline with the landing zone, warehouse and publish root all in S3 (a moto
server over HTTP), checked against the generator's ground truth."""

from __future__ import annotations

import contextlib
import io
import json
import os

import boto3
import pandas as pd
import pytest

from pipelines import cli, ingest
from pipelines.publish import read_published
from pipelines.storage import Store
from pipelines.synth import generate
from pipelines.warehouse import Warehouse

pytestmark = pytest.mark.e2e


def test_everything_in_s3(tmp_path, s3_bucket):
    bucket, endpoint = s3_bucket
    landing, truth = tmp_path / "landing", tmp_path / "truth"
    generate(landing, seed=5, scale=0.001, months=1, truth_dir=truth, progress=False)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    for root, _, names in os.walk(landing):
        for n in names:
            p = os.path.join(root, n)
            s3.upload_file(p, bucket, "landing/" + os.path.relpath(p, landing))
    before = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="landing/")["Contents"]}

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["run", "--landing", f"s3://{bucket}/landing", "--warehouse", f"s3://{bucket}/wh",
                       "--publish", f"s3://{bucket}/pub", "--s3-endpoint-url", endpoint, "--demo-mode"])
    assert rc == 0, out.getvalue()

    # the landing zone is never modified
    after = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="landing/")["Contents"]}
    assert after == before
    # the ledger explains every file as the truth says
    files = pd.read_parquet(truth / "files.parquet")
    led = ingest.read_ledger(Warehouse(Store(f"s3://{bucket}/wh", endpoint))).to_pandas()
    m = files.merge(led, left_on="path", right_on="file_name", how="left", suffixes=("_truth", ""))
    assert (m.status == m.status_truth).all(), m[m.status != m.status_truth][["path", "status_truth", "status"]]
    # published datasets follow their manifests, and the figures are the truth's
    pub = Store(f"s3://{bucket}/pub", endpoint)
    cov = read_published(pub, "public", "linkage_coverage_provider").to_pandas()
    tp = pd.read_parquet(truth / "linkage_provider.parquet")
    mm = tp.merge(cov, on=["period", "provider_code"], suffixes=("_t", ""))
    assert len(mm) == len(tp) > 0
    big = mm.episodes.notna()  # counts 1..7 are blanked by disclosure control
    assert (mm.loc[big, "episodes"] == mm.loc[big, "episodes_t"]).all()
    manifest = json.loads(pub.read_bytes("restricted/linked_episodes/_manifest.json"))
    assert manifest["partitions"]
    assert read_published(pub, "restricted", "linked_episodes").num_rows > 0
