"""The whole pipeline on a generated landing zone, checked against the generator's ground
truth (pipelines/synth/TRUTH.md): `caredata run` through Dagster, once per session."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import threading
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import cli, ingest, schemas
from pipelines.config import DEMO_PSEUDO_KEY
from pipelines.pseudo import SPELL_KIND, SUSRECID_KIND, person_id, record_key_id
from pipelines.storage import Store
from pipelines.synth import generate
from pipelines.warehouse import Warehouse

from helpers import found_in, parquet_values_text

pytestmark = pytest.mark.e2e

SIX = ["extremely_likely", "likely", "neither", "unlikely", "extremely_unlikely", "dont_know"]


class _Receiver(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Receiver.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    landing, truth = root / "landing", root / "truth"
    generate(landing, seed=11, scale=0.002, months=2, start="2014-01", truth_dir=truth, progress=False)
    # a local webhook receiver, as Slack or Teams would be
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), _env(CAREDATA_DATA_QUALITY__WEBHOOK_URL=url):
        rc = cli.main(["run", "--landing", str(landing), "--warehouse", str(root / "wh"),
                       "--publish", str(root / "pub"), "--demo-mode"])
    server.shutdown()
    return {"rc": rc, "stdout": out.getvalue(), "root": root, "landing": landing, "truth": truth,
            "wh": Warehouse(Store(root / "wh")), "pub": root / "pub", "webhook": list(_Receiver.received)}


@contextlib.contextmanager
def _env(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_operators_are_told_of_held_submissions_by_webhook(run):
    files = _truth(run, "files")
    held = files[files.status == "held"].iloc[0]
    msgs = [m for m in run["webhook"] if m.get("event") == "submission_held"]
    assert any(m["submitter_code"] == held.submitter and m["period"] == held.period for m in msgs), run["webhook"]
    assert all("text" in m for m in run["webhook"])
    below = [m for m in run["webhook"] if m.get("event") == "below_sanction_threshold"]
    assert below  # the generator plants providers under the 99% NHS number standard
    numbers = set(_truth(run, "objectors").nhs_number)
    assert not any(n in json.dumps(run["webhook"]) for n in numbers)


def _truth(run, name) -> pd.DataFrame:
    return pd.read_parquet(run["truth"] / f"{name}.parquet")


def test_run_succeeds_and_says_what_it_published_and_held_back(run):
    assert run["rc"] == 0, run["stdout"]
    text = run["stdout"]
    assert "Published to" in text and "Held back:" in text
    # The engine the heavy steps ran on: duckdb, or spark under `make test-spark`.
    assert f"\nEngine: {os.environ.get('CAREDATA_ENGINE') or 'duckdb'}\n" in text
    files = _truth(run, "files")
    # Named as the public ledger names them: a name that breaks its folder's convention by
    # its digest (supplier text may name a patient), and never in full.
    led = ingest.read_ledger(run["wh"]).to_pandas()
    shown = {f: ingest.public_file_name(f, h) for f, h in zip(led.file_name, led.sha256)}
    for path in files[files.status.isin(["rejected", "held"])].path:
        assert f" {shown[path]}: " in text, f"{path} not reported as held back"
        if shown[path] != path:
            assert path not in text, f"{path} printed in full"
    for name in [d.name for d in schemas.datasets("public")]:
        assert (run["pub"] / "public" / name / "_manifest.json").exists(), name
    for name in ("linked_episodes", "linked_spells"):
        assert (run["pub"] / "restricted" / name / "_manifest.json").exists(), name
    assert (run["pub"] / "public" / "data_dictionary.html").exists()
    assert list((run["pub"] / "public" / "funnel_plots").rglob("*.png"))
    assert list((run["pub"] / "public" / "funnel_plots").rglob("*.svg"))  # with hover text


def test_ledger_explains_every_file_as_the_truth_says(run):
    files = _truth(run, "files")
    led = ingest.read_ledger(run["wh"]).to_pandas()
    m = files.merge(led, left_on="path", right_on="file_name", how="left", suffixes=("_truth", ""))
    assert m["status"].notna().all(), "a file is missing from the ledger"
    wrong = m[m["status_truth"] != m["status"]]
    assert wrong.empty, wrong[["path", "status_truth", "status", "reason"]].to_string()
    assert m.loc[m.status.isin(["rejected", "held"]), "reason"].str.len().gt(10).all()
    published = pd.read_parquet(run["pub"] / "public" / "submissions")
    assert set(published.file_name) == {ingest.public_file_name(f, h) for f, h in zip(led.file_name, led.sha256)
                                        if f in set(files.path)}
    assert any(n.endswith(".csv") for n in published.file_name)  # conventional names as they are
    assert any("/unrecognised-" in n for n in published.file_name)  # the planted misnamed files
    assert any(n.startswith("hes_apc/extract-") for n in published.file_name)  # the HES extract
    ok = published[published.status != "rejected"]
    assert (ok.rows_received == ok.rows_kept + ok.rows_quarantined).all()


def test_quarantine_holds_exactly_the_planted_reject_rows(run):
    faults = _truth(run, "row_faults")
    files = _truth(run, "files")
    taken = set(files[files.status.isin(["current", "superseded", "held"])].path)
    planted = faults[(faults.severity == "reject") & faults.file.isin(taken)][["file", "line"]].drop_duplicates()
    q = run["wh"].read("quarantine").to_pandas()
    got = q[["file_name", "line"]].rename(columns={"file_name": "file"}).drop_duplicates()
    m = planted.merge(got, on=["file", "line"], how="outer", indicator=True)
    assert (m._merge == "both").all(), m[m._merge != "both"].to_string()
    assert q.rule_ids.map(len).gt(0).all() and q.messages.map(len).eq(q.rule_ids.map(len)).all()


def test_planted_warn_faults_are_kept_and_flagged(run):
    """Every planted warn-severity fault (bad NHS numbers, malformed consultant, ICD-10,
    OPCS-4 and MODE codes) in a file taken in: the row is kept, flagged by a rule on the
    planted field."""
    faults = _truth(run, "row_faults")
    files = _truth(run, "files")
    taken = files[files.status.isin(["current", "superseded"]) & files.source.isin(["sus_apc", "fft"])]
    warn = faults[(faults.severity == "warn") & faults.file.isin(set(taken.path))].copy()
    assert {"invalid_nhs_number", "missing_nhs_number"} <= set(warn.kind)
    # a row that also carries a reject fault is quarantined instead (tested above)
    rejected = faults[faults.severity == "reject"][["file", "line"]].drop_duplicates()
    warn = warn.merge(rejected, on=["file", "line"], how="left", indicator=True)
    warn = warn[warn._merge == "left_only"].drop(columns="_merge")
    warn["submission_id"] = warn.file.str.replace(r"^(sus_apc|fft)/|\.csv(\.gz)?$", "", regex=True)
    silver = pd.concat([
        run["wh"].read(t).to_pandas()[["submission_id", "line", "dq_warnings"]]
        for t in ("sus_episodes", "fft_responses")])
    m = warn.merge(silver, on=["submission_id", "line"], how="left")
    assert len(m) >= 10 and m.dq_warnings.notna().all(), "a warned row was not kept"
    flagged = [any(w.startswith(f"{f}_") for w in list(ws)) for f, ws in zip(m.field, m.dq_warnings)]
    assert all(flagged), m[[not x for x in flagged]][["file", "line", "kind", "field", "dq_warnings"]]


def test_held_submission_reaches_nothing_downstream(run):
    files = _truth(run, "files")
    held = files[files.status == "held"]
    assert len(held) >= 1
    linked = run["wh"].read_raw("linked_episodes").to_pandas()
    held_ids = {Path(p).name.split(".")[0] for p in held.path}
    assert not set(linked.submission_id) & held_ids
    dqs = pd.read_parquet(run["pub"] / "public" / "data_quality_summary")
    for p in held.itertuples():
        row = dqs[(dqs.submitter_code == p.submitter) & (dqs.period.astype(str) == p.period) & (dqs.source == p.source)]
        assert row.held.all() and row.held_reason.str.contains("held").all()


def test_linkage_precision_and_recall_per_rank_equal_the_truth(run):
    truth = _truth(run, "linkage_episodes")
    truth = truth[~truth.expected_quarantined]
    ours = run["wh"].read_raw("linked_episodes").to_pandas()
    m = truth.merge(ours, on=["provider_code", "susrecid"], how="outer", indicator=True, suffixes=("_t", ""))
    assert (m._merge == "both").all(), "the current episode set differs from the truth"
    linked = m[m.match_rank.notna()]
    # precision: every link is to the true person (a twin at rank 5 excepted, which the
    # truth's own expected link names)
    assert (linked.linked_nhs_number == linked.linked_nhs_number_t).all()
    assert (linked.linked_nhs_number == linked.true_nhs_number).mean() > 0.995
    # recall equal to what the ranks allow, rank by rank
    assert (m.match_rank.fillna(0).astype(int) == m.match_rank_t.fillna(0).astype(int)).all()
    assert not linked.type1_patient.any() or (linked[linked.type1_patient].identity_case.str.startswith("nhs_missing")).all()


def test_linkage_precision_and_recall_by_rank_have_sensible_floors(run):
    """pipelines.linkage_accuracy on this run (docs/methods-linkage.md has the figures):
    ranks 1-4 only ever take the episode's own valid number, so every such link is right;
    rank 5 may meet a twin; together the ranks recall nearly every true pair."""
    from pipelines.linkage_accuracy import precision_recall_by_rank

    truth = _truth(run, "linkage_episodes")
    got = precision_recall_by_rank(truth, run["wh"].read_raw("linked_episodes").to_pandas()).set_index("rank")
    assert (got.loc[["1", "2", "3", "4"], "precision"] == 1.0).all(), got
    assert got.loc["5", "links"] > 0 and got.loc["5", "precision"] >= 0.9, got
    assert got.loc["1", "recall"] >= 0.8 and got.loc["1-5", "recall"] >= 0.95, got
    assert got["cumulative_recall"].iloc[:5].is_monotonic_increasing
    # the ranks' links are the run's: the counts the truth's own expected ranks give
    kept = truth[~truth.expected_quarantined]
    for r in "12345":
        assert got.loc[r, "links"] == int((kept.match_rank == int(r)).sum()), r


def test_coverage_figures_equal_the_truth(run):
    tp = _truth(run, "linkage_provider")
    op = run["wh"].read("linkage_coverage_provider").to_pandas()
    cols = ["episodes", "episodes_valid_nhs_number", "episodes_verified_nhs_number", "episodes_linked",
            "linked_rank_1", "linked_rank_2", "linked_rank_3", "linked_rank_4", "linked_rank_5",
            "meets_nhs_number_standard"]
    m = tp.merge(op, on=["period", "provider_code"], suffixes=("_t", ""))
    assert len(m) == len(tp) == len(op)
    for c in cols:
        assert (m[c] == m[c + "_t"]).all(), c
    tpr = _truth(run, "linkage_practice")
    opr = run["wh"].read("linkage_coverage_practice").to_pandas()
    m = tpr.merge(opr, on=["period", "practice_code"], suffixes=("_t", ""))
    assert len(m) == len(tpr)
    for c in ("episodes_expected", "episodes_linked"):
        assert (m[c] == m[c + "_t"]).all(), c
    ge = _truth(run, "gp_extracts")
    ge = ge[ge.newest_in_period]
    m = ge.merge(opr, on=["period", "practice_code"], suffixes=("_t", ""))
    assert len(m) == len(ge)
    for c in ("registered_patients", "type1_objections", "type2_objections"):
        assert (m[c] == m[c + "_t"]).all(), c


def test_public_coverage_is_the_truth_under_disclosure_control(run):
    pub = pd.read_parquet(run["pub"] / "public" / "linkage_coverage_practice")
    staged = run["wh"].read("linkage_coverage_practice").to_pandas()
    m = staged.merge(pub, on=["period", "practice_code"], suffixes=("", "_pub"))
    small = m.registered_patients.between(1, 7)
    assert (m.registered_patients_suppressed == small).all()
    assert (m.loc[~small, "registered_patients"].fillna(-1) == m.loc[~small, "registered_patients_pub"].fillna(-1)).all()
    assert m.registered_patients.isna().any() and (m.registered_patients > 7).any()  # both kinds present
    assert m.loc[small, "registered_patients_pub"].isna().all()


def _fft_truth(run):
    fc = _truth(run, "fft_counts")
    fc["responses"] = fc[SIX].sum(axis=1)
    return fc


def test_fft_counts_equal_the_truth_where_published(run):
    fc = _fft_truth(run)
    scores = pd.read_parquet(run["pub"] / "public" / "fft_scores")
    scores["period"] = scores["period"].astype(str)
    levels = {
        "provider": fc.groupby(["period", "setting", "provider_code"])[SIX + ["responses"]].sum().reset_index()
        .rename(columns={"provider_code": "org_code"}),
        "site": fc.groupby(["period", "setting", "site_code"])[SIX + ["responses"]].sum().reset_index()
        .rename(columns={"site_code": "org_code"}),
        "national": fc.groupby(["period", "setting"])[SIX + ["responses"]].sum().reset_index().assign(org_code="ENG"),
    }
    w = fc[fc.ward_code.notna()].assign(org_code=lambda d: d.site_code + "/" + d.ward_code)
    levels["ward"] = w.groupby(["period", "setting", "org_code"])[SIX + ["responses"]].sum().reset_index()
    for level, t in levels.items():
        ours = scores[scores.level == level]
        m = t.merge(ours, on=["period", "setting", "org_code"], how="outer", suffixes=("_t", ""), indicator=True)
        assert (m._merge == "both").all(), (level, m[m._merge != "both"].head())
        shown = m[~m.suppressed]
        for c in SIX + ["responses"]:
            assert (shown[c] == shown[c + "_t"]).all(), (level, c)
        # rule 1: every organisation with 1 to 4 responses is suppressed (not national)
        if level != "national":
            assert m[m.responses_t.between(1, 4)].suppressed.all(), level
        else:
            assert not m.suppressed.any()
    nat = scores[scores.level == "national"]
    exp = 100 * (nat.extremely_likely + nat.likely) / nat.responses
    assert (abs(nat.pct_recommend - exp) < 1e-9).all()


def test_fft_mode_adds_up_to_the_published_scores(run):
    """fft_mode (docs/methods-fft.md "Mode of collection"): England's modes add up to
    England's responses of the setting, and a trust's, where none is suppressed, to its
    fft_scores row; a trust suppressed in fft_scores has every mode suppressed."""
    modes = pd.read_parquet(run["pub"] / "public" / "fft_mode")
    scores = pd.read_parquet(run["pub"] / "public" / "fft_scores")
    for t in (modes, scores):
        t["period"] = t["period"].astype(str)
    assert len(modes) > 0 and set(modes.level) == {"provider", "national"}
    key = ["period", "setting", "level", "org_code"]
    total = modes.groupby(key, observed=True).agg(responses=("responses", "sum"),
                                                  any_suppressed=("suppressed", "any")).reset_index()
    m = total.merge(scores[key + ["responses", "suppressed"]], on=key, how="left", suffixes=("", "_scores"))
    assert m.responses_scores.notna().any() and m.suppressed.notna().all()
    open_ = m[~m.any_suppressed & ~m.suppressed]
    assert len(open_) > 0 and (open_.responses == open_.responses_scores).all()
    assert m[m.suppressed].any_suppressed.all()
    assert not modes[modes.level == "national"].suppressed.any()


def test_fft_by_specialty_equals_the_truth(run):
    fl = _truth(run, "fft_linked")
    ours = pd.read_parquet(run["pub"] / "public" / "fft_by_specialty")
    ours["period"] = ours["period"].astype(str)
    m = fl.merge(ours, on=["period", "provider_code", "tretspef"], how="outer", suffixes=("_t", ""), indicator=True)
    assert (m._merge == "both").all(), m[m._merge != "both"].head()
    shown = m[~m.suppressed]
    assert len(shown) > 0
    for c in SIX + ["responses"]:
        assert (shown[c] == shown[c + "_t"]).all(), c
    assert (m.suppressed == m.responses_t.between(1, 4)).all()


def _published_files(run):
    return [p for p in run["pub"].rglob("*") if p.is_file()]


def test_scanner_finds_no_identifier_in_any_published_value(run):
    from pipelines import disclosure

    scanned = 0
    for path in _published_files(run):
        if path.suffix != ".parquet":
            continue
        zone, name = path.relative_to(run["pub"]).parts[:2]
        t = pq.read_table(path)
        if zone == "public":
            findings = disclosure.scan_for_identifiers(t, dataset=name)
            assert not findings, (path, findings)
        else:
            violations = disclosure.check_restricted(schemas.get(name), t)
            assert not violations, (path, violations)
        scanned += 1
    # 14 public datasets x 2 periods (linkage_quality and revisions, empty here, and fft_mode
    # included), the ledger (one partition: the month this run first saw its files), restricted x 2
    public = [d for d in schemas.datasets("public") if d.name != "submissions"]
    assert len(public) == 14 and scanned == len(public) * 2 + 1 + 2 * 2


def test_no_identifier_anywhere_in_what_was_published(run):
    objectors = _truth(run, "objectors")
    episodes = _truth(run, "linkage_episodes")
    # every number (one pass over each file finds all of them, so no sample is needed)
    numbers = set(episodes.true_nhs_number.dropna()) | set(objectors.nhs_number)
    for path in _published_files(run):
        text = path.read_bytes().decode("utf-8", "replace")
        if path.suffix == ".parquet":
            names = set(pq.read_schema(path).names)
            assert not {"nhs_number", "postcode", "date_of_birth", "dob", "homeadd"} & names, path
            text += "\n" + parquet_values_text(path)
        assert not found_in(text, numbers), f"{path}: an NHS number appears"


def test_restricted_zone_has_no_type2_patient_and_no_type1_link(run):
    objectors = _truth(run, "objectors")
    type2_ids = {person_id(DEMO_PSEUDO_KEY, n) for n in objectors[objectors.objection_type == 2].nhs_number}
    for name in ("linked_episodes", "linked_spells"):
        t = pd.read_parquet(run["pub"] / "restricted" / name)
        assert len(t) > 0
        assert not set(t.person_id.dropna()) & type2_ids, name
    type1 = set(objectors[objectors.objection_type == 1].nhs_number)
    linked = run["wh"].read_raw("linked_episodes").to_pandas()
    assert not set(linked.linked_nhs_number.dropna()) & type1


def test_type1_rows_never_stored_anywhere(run):
    type1 = set(_truth(run, "objectors").query("objection_type == 1").nhs_number)
    assert type1
    spaced = {f"{n[:3]} {n[3:6]} {n[6:]}" for n in type1}
    searched = {"silver": 0, "quarantine": 0, "data_docs": 0}
    for base in (run["root"] / "wh", run["pub"]):
        for path in base.rglob("*"):
            if not path.is_file():
                continue
            # A type 1 patient's hospital episodes carry their number (SUS data: type 1 is about
            # GP data); what must never exist is their GP row, in silver, quarantine or docs.
            gp_part = "/silver/gp_patients/" in str(path) or (
                "/quarantine/" in str(path) and path.name.startswith("GP_"))
            if not (gp_part or "data_docs/gp" in str(path)):
                continue
            text = path.read_bytes().decode("utf-8", "replace")
            if path.suffix == ".parquet":
                text += "\n" + parquet_values_text(path)  # zstd pages hide values from the bytes
            assert not found_in(text, type1 | spaced), path
            searched[next(k for k in searched if k in str(path))] += 1
    assert all(searched.values()), searched  # each place the GP rows could be was searched
    # The search finds what it looks for: other patients' GP numbers are in silver.
    silver = "\n".join(parquet_values_text(p) for p in (run["root"] / "wh").rglob("*.parquet")
                       if "/silver/gp_patients/" in str(p))
    others = set(_truth(run, "linkage_episodes").true_nhs_number.dropna()) - type1
    assert found_in(silver, others)


def test_data_docs_written_for_validation_runs(run):
    pages = list((run["root"] / "wh" / "data_docs").rglob("index.html"))
    assert pages


def test_every_dataset_reads_the_same_in_pandas_and_duckdb(run):
    for name in ("linkage_coverage_provider", "linkage_quality", "fft_scores", "data_quality_summary"):
        folder = run["pub"] / "public" / name
        pdf = pd.read_parquet(folder)
        n = duckdb.sql(f"select count(*) from read_parquet('{folder}/period=*/*.parquet', hive_partitioning=true)").fetchall()[0][0]
        assert len(pdf) == n > 0
        assert list(pdf.columns).count("period") == 1


def test_linkage_quality_is_published_and_adds_up_to_the_provider_coverage(run):
    """Every characteristic of linkage_quality splits the provider's episodes of
    linkage_coverage_provider; counts read as Int64; the 1-to-7 rule holds."""
    lq = pd.read_parquet(run["pub"] / "public" / "linkage_quality")
    cov = pd.read_parquet(run["pub"] / "public" / "linkage_coverage_provider")
    assert len(lq) > 0
    assert str(lq["episodes"].dtype) == "Int64" and str(lq["episodes_linked"].dtype) == "Int64"
    assert set(lq["characteristic"].astype(str)) == {"age_band", "sex", "admission_method", "match_rank",
                                                     "nhs_number_status"}
    shown = lq["episodes"].dropna()
    assert not ((shown >= 1) & (shown <= 7)).any()
    checked = 0
    for (period, provider, ch), g in lq.groupby(["period", "provider_code", "characteristic"], observed=True):
        c = cov[(cov["period"].astype(str) == str(period)) & (cov["provider_code"] == provider)]
        assert len(c) == 1
        if g["episodes_suppressed"].any() or pd.isna(c["episodes"].iloc[0]):
            continue
        assert int(g["episodes"].sum()) == int(c["episodes"].iloc[0]), (period, provider, ch)
        if ch == "match_rank" and not g["episodes_linked_suppressed"].any() \
                and not pd.isna(c["episodes_linked"].iloc[0]):
            assert int(g["episodes_linked"].sum()) == int(c["episodes_linked"].iloc[0])
        checked += 1
    assert checked > 0


# --------------------------------------------------------------------------- periods of any month
def _land(path: Path, text: str) -> None:
    """A landing file as a supplier writes it, an hour before the pipeline looks."""
    import time

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    past = time.time() - 3600
    os.utime(path, (past, past))


def _any_month_landing(root: Path, next_year: int) -> Path:
    from pipelines.nhs_number import with_check_digit

    ep = [""] * 27
    ep[0], ep[1], ep[9], ep[10], ep[12], ep[14], ep[25] = "A81001", "THE SURGERY", "TS1 1AA", "19740401", "A", "00K", "4"
    nhs = [n for n in (with_check_digit(f"999{i:06d}") for i in range(40)) if n][:6]
    gp_head = ("NHS_NUMBER,DATE_OF_BIRTH,SEX,POSTCODE,LSOA,ETHNIC_CATEGORY,REGISTRATION_DATE,"
               "DEREGISTRATION_DATE,DATE_OF_DEATH,OBJECTION\n")
    gp = gp_head + "".join(f"{n},1950-01-15,1,TS1 1AA,,A,1980-01-01,,,\n" for n in nhs)
    sus_head = "PROCODE3,SUSRECID,EPISTART,EPIEND,ADMIDATE,ADMIMETH,DISMETH,SEX,NEWNHSNO,GPPRAC\n"

    def sus(year: int) -> str:
        return sus_head + "".join(f"RGT,R{year}{i},{year}-01-0{i + 1},{year}-01-1{i},{year}-01-0{i + 1},21,1,1,{n},A81001\n"
                                  for i, n in enumerate(nhs[:3]))

    files = {
        "reference/epraccur.csv": ",".join(ep) + "\n",
        "reference/providers.csv": "PROVIDER_CODE,NAME,COMMISSIONER_CODE\nRGT,CAMBRIDGE UNIVERSITY HOSPITALS,00K\n",
        "reference/sites.csv": "SITE_CODE,PROVIDER_CODE,NAME\nRGT01,RGT,ADDENBROOKE'S\n",
        "gp/GP_A81001_19890131.csv": gp,
        "sus_apc/APC_RGT_198901_19890215120000_BULK.csv": sus(1989),
        f"gp/GP_A81001_{next_year}0131.csv": gp,
        f"sus_apc/APC_RGT_{next_year}01_{next_year}0215120000_BULK.csv": sus(next_year),
    }
    for name, text in files.items():
        _land(root / name, text)
    return root


def test_a_period_of_1989_or_of_next_year_is_run_never_a_crash(tmp_path):
    """Files of 1989 and of next year: each taken in, quarantined or rejected by the rules,
    the run exits 0, every file has an outcome; the periods are dynamic partitions holding
    only those months; once the 1989 files are removed, 1989-01 is no longer run."""
    from datetime import date

    import dagster as dg

    from pipelines.partitions import PERIODS

    next_year = date.today().year + 1
    landing = _any_month_landing(tmp_path / "landing", next_year)
    home = tmp_path / "dagster_home"
    home.mkdir()

    def run_once() -> tuple[int, str]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), _env(DAGSTER_HOME=str(home)):
            rc = cli.main(["run", "--landing", str(landing), "--warehouse", str(tmp_path / "wh"),
                           "--publish", str(tmp_path / "pub"), "--demo-mode"])
        return rc, out.getvalue()

    def partitions() -> list[str]:
        with _env(DAGSTER_HOME=str(home)), dg.DagsterInstance.get() as instance:
            return list(instance.get_dynamic_partitions(PERIODS))

    rc, stdout = run_once()
    assert rc == 0, stdout
    periods = next(s for s in stdout.splitlines() if s.startswith("Periods: "))[len("Periods: "):].split(", ")
    assert periods == ["1989-01", f"{next_year}-01"], stdout
    assert partitions() == periods
    ledger = ingest.read_ledger(Warehouse(Store(tmp_path / "wh"))).to_pandas().set_index("file_name")
    on_disk = {p.relative_to(landing).as_posix() for p in landing.rglob("*") if p.is_file()}
    assert set(ledger.index) == on_disk
    assert "pending" not in set(ledger["status"]), ledger["status"]
    assert ledger.at["sus_apc/APC_RGT_198901_19890215120000_BULK.csv", "status"] == "current"
    published = json.loads((tmp_path / "pub" / "public" / "linkage_coverage_summary" / "_manifest.json").read_text())
    assert "1989-01" in published["partitions"]

    # Run again: nothing new, nothing crashes.
    rc, stdout = run_once()
    assert rc == 0, stdout

    # The 1989 files are removed from the landing zone: 1989-01 stops being run.
    (landing / "gp" / "GP_A81001_19890131.csv").unlink()
    (landing / "sus_apc" / "APC_RGT_198901_19890215120000_BULK.csv").unlink()
    rc, stdout = run_once()
    assert rc == 0, stdout
    assert "1989-01" not in next(s for s in stdout.splitlines() if s.startswith("Periods: "))
    assert "1989-01" not in partitions()


# --------------------------------------------------------------------------- HES extract
# Each plant of the generator's HES extract (TRUTH.md "The HES APC extract",
# hes_plants.parquet) against what the pipeline made of it.

def _plants(run, plant=None) -> pd.DataFrame:
    p = _truth(run, "hes_plants")
    return p if plant is None else p[p.plant == plant]


def _restricted(run, name) -> pd.DataFrame:
    return pd.read_parquet(run["pub"] / "restricted" / name)


def _ep_key(provider, susrecid) -> str:
    """An episode's SUSRECID as the restricted zone publishes it (a keyed pseudonym)."""
    return record_key_id(DEMO_PSEUDO_KEY, SUSRECID_KIND, provider, susrecid)


def _spell_key(provider, spell_id) -> str:
    """A spell id as the restricted zone publishes it (a keyed pseudonym)."""
    return record_key_id(DEMO_PSEUDO_KEY, SPELL_KIND, provider, spell_id)


def _ep_keys(frame: pd.DataFrame) -> set:
    return {_ep_key(pr, s) for pr, s in zip(frame.provider_code, frame.susrecid)}


def _spell_of(run, plant) -> pd.Series:
    """The published spell a plant's episodes must form: exactly one, ``DER:`` + its first
    episode's key."""
    p = _plants(run, plant)
    eps = _restricted(run, "linked_episodes")
    got = eps[eps.provider_code.isin(p.provider_code) & eps.susrecid.isin(_ep_keys(p))]
    assert len(got) == len(p), plant
    provider = p.provider_code.iloc[0]
    spells = _restricted(run, "linked_spells")
    spells = spells[spells.provider_code == provider]
    ids = set(spells.spell_id) & {_spell_key(provider, "DER:" + k) for k in p.susrecid}
    # one spell, from its first episode
    assert ids == {_spell_key(provider, "DER:" + p.spell_first_susrecid.iloc[0])}, (plant, ids)
    return spells[spells.spell_id == ids.pop()].iloc[0]


def _date(v):
    return None if v is None or pd.isna(v) else str(pd.Timestamp(v).date())


def test_hes_extract_is_taken_in_under_its_rows_providers(run):
    led = ingest.read_ledger(run["wh"]).to_pandas()
    hes = led[led.file_name.str.startswith("hes_apc/")]
    assert len(hes) == 1 and (hes.status == "current").all(), hes.to_string()
    plants = _plants(run)
    eps = run["wh"].read_raw("linked_episodes").to_pandas()
    assert set(eps[eps.provider_code.isin(["RZA", "RZB"])].susrecid) == set(plants.susrecid)
    dq = pd.read_parquet(run["pub"] / "public" / "data_quality_summary")
    assert {"RZA", "RZB"} <= set(dq[dq.source == "hes_apc"].submitter_code)


def test_hes_death_in_the_second_episode_counts_for_the_first_episodes_procedure(run):
    p = _plants(run, "death")
    s = _spell_of(run, "death")
    assert s.index_procedure == p.spell_index_procedure.iloc[0]
    assert bool(s.death_30d) is True and s.dismeth == "4"
    assert _date(s.disdate) == p.spell_disdate.iloc[0]
    assert s.consultant_code == "C9100001"  # the episode holding the procedure, not the one that ended it


def test_hes_episode_without_dob_or_mydob_takes_its_age_from_the_gp_record(run):
    p = _plants(run, "no_dob").iloc[0]
    eps = _restricted(run, "linked_episodes")
    e = eps[(eps.provider_code == p.provider_code) & (eps.susrecid == _ep_key(p.provider_code, p.susrecid))].iloc[0]
    assert int(e.match_rank) == 4 == int(p.match_rank)
    assert int(e.age_at_admission) == int(p.age_at_admission)
    s = _spell_of(run, "no_dob")
    assert s.index_procedure == p.spell_index_procedure  # an adult: an index spell


def test_hes_epiorder_99_sorts_after_every_real_order(run):
    p = _plants(run, "epiorder_99")
    s = _spell_of(run, "epiorder_99")
    assert _date(s.disdate) == p.spell_disdate.iloc[0] and s.dismeth == p.spell_dismeth.iloc[0]


def test_hes_unfinished_episodes_open_no_spell_outcome(run):
    for plant in ("unfinished_9", "unfinished_1"):
        p = _plants(run, plant)
        assert p.epistat.isin(["1", "9"]).any()
        s = _spell_of(run, plant)
        assert pd.isna(s.disdate) and pd.isna(s.index_procedure) and pd.isna(s.los_days), plant
        assert not bool(s.emergency_readmission_30d) if pd.notna(s.emergency_readmission_30d) else True
    eps = _restricted(run, "linked_episodes")
    unfinished = _plants(run)[_plants(run).epistat.isin(["1", "9"])]
    assert _ep_keys(unfinished) <= set(eps.susrecid)  # they count in activity


def test_hes_gpprac_placeholders_are_in_no_practices_episodes(run):
    p = _plants(run)
    ph = p[p.plant.str.startswith("gpprac_")]
    assert set(ph.gpprac) == {"V81997", "V81998", "V81999", "&"}
    opr = run["wh"].read("linkage_coverage_practice").to_pandas()
    assert not set(opr.practice_code) & set(ph.gpprac)
    # every other HES episode with a real GPPRAC counts for that practice: the expected
    # episodes equal the truth's, which leaves the placeholders out
    tpr = _truth(run, "linkage_practice")
    m = tpr.merge(opr, on=["period", "practice_code"], suffixes=("_t", ""))
    assert (m.episodes_expected == m.episodes_expected_t).all()
    lk = _truth(run, "linkage_episodes")
    assert lk[lk.susrecid.isin(ph.susrecid)].gpprac.isna().all()


def test_hes_placeholder_dates_are_read_as_empty_with_a_warning_and_open_no_period(run):
    p = _plants(run)
    p = p[p.warning.notna()]
    assert {"DISDATE_PLACEHOLDER", "DOB_PLACEHOLDER", "OPDATE_01_PLACEHOLDER"} <= set(p.warning)
    silver = run["wh"].read("sus_episodes").to_pandas()
    silver = silver[silver.source == "hes_apc"]
    for r in p.itertuples():
        row = silver[(silver.provider_code == r.provider_code) & (silver.susrecid == r.susrecid)]
        assert len(row) == 1, r.plant
        row = row.iloc[0]
        assert r.warning in list(row.dq_warnings), (r.plant, row.dq_warnings)
        v = row[r.placeholder_column]
        if r.placeholder_column == "procedure_dates":
            assert all(pd.isna(x) for x in v), r.plant
        else:
            assert pd.isna(v), r.plant
    assert (silver.period.astype(str) >= "2014-01").all()
    periods = {str(x) for x in run["wh"].read("linkage_coverage_provider").to_pandas().period}
    assert periods == set(_truth(run, "linkage_provider").period)
    # the placeholder procedure date: the index procedure is dated by its EPISTART
    s = _spell_of(run, "opdate_placeholder")
    op = _plants(run, "opdate_placeholder").iloc[0]
    assert s.index_procedure == op.spell_index_procedure and _date(s.index_procedure_date) == op.admidate
    # the placeholder DOB: read as empty, the episode links on MYDOB (rank 3)
    d = _plants(run, "dob_placeholder").iloc[0]
    eps = _restricted(run, "linked_episodes")
    assert int(eps[(eps.provider_code == d.provider_code)
                   & (eps.susrecid == _ep_key(d.provider_code, d.susrecid))].match_rank.iloc[0]) == 3


def test_hes_stay_without_nhs_number_is_one_spell_through_pseudo_hesid(run):
    p = _plants(run, "pseudo_hesid")
    assert len(p) == 2 and p.match_rank.isna().all()
    s = _spell_of(run, "pseudo_hesid")
    assert _date(s.disdate) == p.spell_disdate.iloc[0]
    eps = _restricted(run, "linked_episodes")
    got = eps[eps.susrecid.isin(_ep_keys(p))]
    assert len(got) == len(p)
    assert got.match_rank.isna().all() and got.person_id.nunique() == 1 and got.person_id.notna().all()


def test_hes_conventions_in_sus_files_are_read_as_hes_defines_them(run):
    """sus_plants.parquet: EPISTAT 9 on a spell's last episode leaves it without a discharge;
    EPIORDER 99 sorts last (its discharge is the spell's); no DOB nor MYDOB: rank 4 at most
    and the age from the GP record; GPPRAC placeholders in no practice's episodes."""
    sp = _truth(run, "sus_plants")
    # the keys as the restricted zone publishes them (keyed pseudonyms)
    sp = sp.assign(spell_id=[_spell_key(pr, s) for pr, s in zip(sp.provider_code, sp.spell_id)],
                   susrecid=[_ep_key(pr, s) for pr, s in zip(sp.provider_code, sp.susrecid)])
    spells = _restricted(run, "linked_spells")
    eps = _restricted(run, "linked_episodes")
    u = sp[sp.plant == "epistat_9"].merge(spells, on=["provider_code", "spell_id"])
    assert len(u) >= 3 and u.disdate.isna().all() and u.los_days.isna().all() and u.dismeth.isna().all()
    o = sp[sp.plant == "epiorder_99"].merge(spells, on=["provider_code", "spell_id"], suffixes=("", "_got"))
    assert len(o) >= 3
    assert (o.spell_disdate == o.disdate.map(_date)).all() and (o.spell_dismeth == o.dismeth).all()
    n = sp[sp.plant == "no_dob_no_mydob"].merge(eps, on=["provider_code", "susrecid"], suffixes=("_t", ""))
    linked = n[n.match_rank.notna()]
    assert len(linked) >= 3 and (linked.match_rank == 4).all() and linked.age_at_admission.notna().all()
    g = sp[sp.plant == "gpprac_placeholder"]
    opr = run["wh"].read("linkage_coverage_practice").to_pandas()
    assert len(g) >= 3 and not set(opr.practice_code) & set(g.gpprac)
