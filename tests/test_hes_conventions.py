"""HES's own conventions (inputs.md "HES APC extracts"), each on a small hand-made table:
a HES extract's rows counted under their provider in the data-quality outputs, ..."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from pipelines import ingest, stages
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit

HES_COLS = ["PROCODE3", "EPIKEY", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX", "NEWNHSNO"]


def nhs(i: int) -> str:
    """A valid NHS number in the 999 test range (never a real one)."""
    k = i
    while True:
        n = with_check_digit(f"999{k:06d}")
        if n:
            return n
        k += 1


def csv(rows: list[dict], cols: list[str]) -> str:
    return "\n".join([",".join(cols)] + [",".join(r.get(c, "") for c in cols) for r in rows]) + "\n"


def put(landing: Path, rel: str, text: str) -> None:
    p = landing / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    old = p.stat().st_mtime - 60  # written before the pipeline looked
    os.utime(p, (old, old))


@pytest.fixture
def zone(tmp_path):
    settings = Settings.load(env={"CAREDATA_LANDING": str(tmp_path / "landing"),
                                  "CAREDATA_WAREHOUSE": str(tmp_path / "warehouse"),
                                  "CAREDATA_PUBLISH": str(tmp_path / "publish")})
    (tmp_path / "landing").mkdir()
    landing, wh, _ = stages.stores(settings)
    return tmp_path / "landing", landing, wh, settings


def episode(i: int, provider: str, end: str, **kw) -> dict:
    row = {"PROCODE3": provider, "EPIKEY": f"K{i}", "EPISTART": "2002-01-02", "EPIEND": end,
           "ADMIDATE": "2002-01-02", "ADMIMETH": "11", "DISMETH": "1", "SEX": "1", "NEWNHSNO": nhs(i)}
    row.update(kw)
    return row


# ------------------------------------------------------------------ data quality per provider
def test_quality_outputs_count_a_hes_extract_under_each_provider(zone):
    path, landing, wh, settings = zone
    rows = [episode(1, "RAA", "2002-01-10"), episode(2, "RAA", "2002-01-11"),
            episode(3, "RAA", "2002-01-12", SEX="X"),                  # SEX invalid: quarantined
            episode(4, "RBB", "2002-01-20"),
            episode(5, "RAA", "2002-02-03", EPISTART="2002-02-01", ADMIDATE="2002-02-01")]
    put(path, "hes_apc/extract.csv", csv(rows, HES_COLS))
    report = ingest.ingest_hes(landing, wh, settings)
    assert report.rows_read == 5 and report.rows_quarantined == 1
    got = {}
    for period in ("2002-01", "2002-02"):
        stages.quality_outputs(settings, period)   # failed with ArrowTypeError before
        for r in wh.read("data_quality_summary", [period]).to_pylist():
            got[(r["period"], r["source"], r["submitter_code"])] = (r["rows_received"], r["rows_quarantined"],
                                                                     r["rows_kept"])
    assert got == {("2002-01", "hes_apc", "RAA"): (3, 1, 2), ("2002-01", "hes_apc", "RBB"): (1, 0, 1),
                   ("2002-02", "hes_apc", "RAA"): (1, 0, 1)}
    dq = pd.concat([wh.read("data_quality", [p]).to_pandas() for p in ("2002-01", "2002-02")])
    assert set(dq["submitter_code"]) == {"RAA", "RBB"}
    sex = dq[(dq["field"] == "SEX") & (dq["rows_failed"] > 0)]
    assert sex[["period", "submitter_code", "rows_failed"]].values.tolist() == [["2002-01", "RAA", 1]]
