"""NHS Digital's artificial HES sample (financial year 2001/02) through `caredata run`: alone
with reference files made from what it holds, and beside a small generated landing zone.
Each month of the sample is its own period (a dynamic partition), whatever the year; the
run publishes every dataset it can compute and exits 0; the partitions are the months with
data, and a month whose files were all removed stops being run.

The sample is found where CI clones it, beside the repository:
``<repo>/../shared/reference/artificial_hes/``."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from pipelines import cli, schemas
from pipelines.partitions import PERIODS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT.parent / "shared" / "reference" / "artificial_hes"
SAMPLE = SAMPLE_DIR / "artificial_hes_apc_0102.csv"
NO_PRACTICE = {"V81997", "V81998", "V81999", "&"}
FFT = {"fft_scores", "fft_by_specialty", "fft_mode"}  # a HES extract holds no FFT response


def _rows() -> list[dict]:
    assert SAMPLE.exists(), f"the artificial HES sample is not at {SAMPLE} (clone shared/ beside the repo)"
    with SAMPLE.open(newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _sample_months(rows: list[dict]) -> set[str]:
    """The months of the sample's EPIEND dates (real ones: placeholders are before 1890)."""
    return {r["EPIEND"][:7] for r in rows if r["EPIEND"][:4].isdigit() and int(r["EPIEND"][:4]) >= 1890}


def _epraccur_row(code: str) -> str:
    cols = [""] * 27
    cols[0], cols[1], cols[9], cols[10], cols[12], cols[14], cols[25] = (
        code, "THE SURGERY", "TS1 1AA", "19740401", "A", "00K", "4")
    return ",".join(cols)


def _reference_from_sample(rows: list[dict], reference: Path, append: bool = False) -> None:
    """providers.csv and epraccur.csv naming every provider and practice the sample names
    (appended to a landing zone's own when ``append``); sites.csv as it is, or empty."""
    reference.mkdir(parents=True, exist_ok=True)
    providers = sorted({r["PROCODE3"].strip() for r in rows if len(r["PROCODE3"].strip()) == 3})
    practices = sorted({r["GPPRAC"].strip() for r in rows
                        if len(r["GPPRAC"].strip()) == 6 and r["GPPRAC"].strip() not in NO_PRACTICE})
    prov, ep, sites = reference / "providers.csv", reference / "epraccur.csv", reference / "sites.csv"
    have_prov = {line.split(",", 1)[0] for line in prov.read_text().splitlines()[1:]} if append else set()
    have_ep = {line.split(",", 1)[0] for line in ep.read_text().splitlines()} if append else set()
    prov_text = prov.read_text() if append else "PROVIDER_CODE,NAME,COMMISSIONER_CODE\n"
    ep_text = ep.read_text() if append else ""
    prov.write_text(prov_text + "".join(f"{p},PROVIDER {p},00K\n" for p in providers if p not in have_prov))
    ep.write_text(ep_text + "".join(_epraccur_row(g) + "\n" for g in practices if g not in have_ep))
    if not append:
        sites.write_text("SITE_CODE,PROVIDER_CODE,NAME\n")


def _run(tmp: Path, landing: Path) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["run", "--landing", str(landing), "--warehouse", str(tmp / "wh"),
                       "--publish", str(tmp / "pub"), "--demo-mode"])
    return rc, out.getvalue()


def _periods_line(stdout: str) -> list[str]:
    line = next(s for s in stdout.splitlines() if s.startswith("Periods: "))
    return line[len("Periods: "):].split(", ")


def _partitions(pub: Path, zone: str, name: str) -> set[str]:
    return set(json.loads((pub / zone / name / "_manifest.json").read_text())["partitions"])


def _allowed_extra(periods: set[str], months: set[str]) -> set[str]:
    """Periods beside the sample's months: none. Its row whose EPIEND is the placeholder
    1801-01-01 ("not known", quarantined) goes under the file's latest EPIEND month and
    opens no 1801-01 period of its own."""
    return periods - months


@pytest.fixture
def dagster_home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_the_artificial_hes_sample_alone_is_published_month_by_month(tmp_path, dagster_home):
    rows = _rows()
    months = _sample_months(rows)
    assert len(months) == 12 and min(months) == "2001-04" and max(months) == "2002-03"
    landing = tmp_path / "landing"
    (landing / "hes_apc").mkdir(parents=True)
    shutil.copy(SAMPLE, landing / "hes_apc" / SAMPLE.name)
    _reference_from_sample(rows, landing / "reference")

    rc, stdout = _run(tmp_path, landing)
    assert rc == 0, stdout
    periods = set(_periods_line(stdout))
    assert months <= periods and not _allowed_extra(periods, months), periods

    # The UI's partitions are the months with data: no 2012 onwards, no empty month.
    with dg.DagsterInstance.get() as instance:
        assert set(instance.get_dynamic_partitions(PERIODS)) == periods

    pub = tmp_path / "pub"
    for ds in schemas.datasets("public"):
        assert (pub / "public" / ds.name / "_manifest.json").exists(), ds.name
        if ds.name not in FFT | {"submissions"}:
            assert months <= _partitions(pub, "public", ds.name), ds.name
    for ds in schemas.datasets("restricted"):  # the demo key
        assert months <= _partitions(pub, "restricted", ds.name), ds.name

    # The ledger: the extract taken in whole, every row kept or quarantined.
    ledger = pq.read_table(pub / "public" / "submissions").to_pandas().set_index("file_name")
    # A HES extract's name is free text: the public ledger names it by its digest.
    hes = ledger.loc[f"hes_apc/extract-{hashlib.sha256(SAMPLE.read_bytes()).hexdigest()[:12]}"]
    assert hes["status"] == "current"
    assert hes["rows_received"] == len(rows) == hes["rows_kept"] + hes["rows_quarantined"]
    assert set(ledger["status"]) == {"current"}  # the three reference files too


def test_the_sample_beside_a_generated_landing_zone_then_removed(tmp_path, dagster_home):
    from pipelines.synth import generate

    rows = _rows()
    months = _sample_months(rows)
    landing = tmp_path / "landing"
    generate(landing, seed=3, scale=0.001, months=2, start="2014-01", truth_dir=tmp_path / "truth", progress=False)
    (landing / "hes_apc").mkdir(exist_ok=True)
    shutil.copy(SAMPLE, landing / "hes_apc" / SAMPLE.name)
    _reference_from_sample(rows, landing / "reference", append=True)

    rc, stdout = _run(tmp_path, landing)
    assert rc == 0, stdout
    periods = set(_periods_line(stdout))
    generated = {"2014-01", "2014-02"}
    assert generated | months <= periods, periods
    assert not _allowed_extra(periods - generated, months), periods
    with dg.DagsterInstance.get() as instance:
        assert set(instance.get_dynamic_partitions(PERIODS)) == periods
    pub = tmp_path / "pub"
    for name in ("linkage_coverage_summary", "data_quality_summary", "consultant_outcomes"):
        assert generated | months <= _partitions(pub, "public", name), name
    assert generated <= _partitions(pub, "public", "fft_scores")

    # The extract is removed from the landing zone: its months stop being run and leave the
    # partitions; their last publication stands.
    (landing / "hes_apc" / SAMPLE.name).unlink()
    rc, stdout = _run(tmp_path, landing)
    assert rc == 0, stdout
    assert _periods_line(stdout) == ["2014-01", "2014-02"]
    with dg.DagsterInstance.get() as instance:
        assert sorted(instance.get_dynamic_partitions(PERIODS)) == ["2014-01", "2014-02"]
    assert months <= _partitions(pub, "public", "linkage_coverage_summary")


def test_hes_months_are_pending_until_run_and_leave_with_the_file(tmp_path):
    """What the sensor sees of a HES extract the nightly scan took in: its months are
    pending (fingerprinted) until each month's current view is built from them; its months
    are periods while the file is in the landing zone, and not once it is removed."""
    import time

    from pipelines import stages
    from pipelines.config import Settings

    rows = _rows()
    months = _sample_months(rows)
    landing = tmp_path / "landing"
    (landing / "hes_apc").mkdir(parents=True)
    shutil.copy(SAMPLE, landing / "hes_apc" / SAMPLE.name)
    _reference_from_sample(rows, landing / "reference")
    settings = Settings(landing=str(landing), warehouse=str(tmp_path / "wh"), publish=str(tmp_path / "pub"),
                        demo_mode=True)
    assert stages.pending_periods(settings) == {}  # HES has no period in its name: the scan takes it in
    stages.scan(settings)
    stages.load_reference(settings)
    stages.ingest_hes(settings)
    pending = stages.pending_periods(settings)
    assert months <= set(pending) and not _allowed_extra(set(pending), months), pending
    assert set(stages.periods(settings)) == set(pending)
    time.sleep(1.1)  # (mtimes of a coarse file system)
    for period in pending:
        stages.current_sus(settings, period)
    assert stages.pending_periods(settings) == {}
    assert set(stages.periods(settings)) == set(pending)

    (landing / "hes_apc" / SAMPLE.name).unlink()
    assert stages.periods(settings) == []
    assert stages.pending_periods(settings) == {}
