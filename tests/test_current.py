"""The current view (pipelines.current): SUS BULK/NET in submission-time order, HES as net
change, held submissions skipped, GP newest extract, FFT newest file.

The validator is replaced by a small stand-in honouring its contract (rows with SEX 'X'
or a required value missing are rejected) so that many submissions stay quick.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipelines import current, ingest
from pipelines.config import Settings
from pipelines.nhs_number import with_check_digit
from pipelines.schemas.inputs import FEEDS
from pipelines.storage import Store
from pipelines.warehouse import Warehouse

SUS_COLS = ["PROCODE3", "SUSRECID", "EPISTART", "EPIEND", "ADMIDATE", "ADMIMETH", "DISMETH", "SEX",
            "EPIORDER", "CDS_UPDATE_TYPE"]
GP_COLS = ["NHS_NUMBER", "DATE_OF_BIRTH", "SEX", "REGISTRATION_DATE", "OBJECTION"]
FFT_COLS = ["RESPONSE_ID", "PROVIDER_CODE", "SITE_CODE", "SETTING", "RESPONSE_DATE", "RESPONSE"]


def fake_validate(source, frame, *, period, submitter, file_name, context=None, data_docs_dir=None):
    n = len(frame)
    bad = np.zeros(n, dtype=bool)
    for c in FEEDS[source].required:
        if c in frame:
            bad |= frame[c].isna().to_numpy()
    if "SEX" in frame:
        bad |= (frame["SEX"] == "X").fillna(False).to_numpy(dtype=bool)
    ids = [["BAD"] if b else [] for b in bad]
    return SimpleNamespace(
        rejected=bad, rule_ids=ids, messages=[["bad row"] if b else [] for b in bad],
        rule_counts=pd.DataFrame([{"rule_id": "BAD", "field": "SEX", "severity": "reject", "rows_checked": n,
                                   "rows_failed": int(bad.sum()), "example_lines": []}]),
        field_scores=pd.DataFrame({"field": ["SEX"], "rows": [n], "rows_valid": [n - int(bad.sum())]}),
        data_docs=None)


FAKE = ingest.one_by_one(fake_validate)
"""The stand-in validator, passed to ingest as ``validator=`` (no Great Expectations run)."""


def put(landing: Path, rel: str, rows: list[dict], cols: list[str]) -> None:
    p = landing / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    p.write_text("\n".join(lines) + "\n")
    old = p.stat().st_mtime - 60
    os.utime(p, (old, old))


def ep(rid, payload="1", update="", provider="RGT", sex="1") -> dict:
    return {"PROCODE3": provider, "SUSRECID": rid, "EPISTART": "2024-01-05", "EPIEND": "2024-01-10",
            "ADMIDATE": "2024-01-05", "ADMIMETH": "11", "DISMETH": "1", "SEX": sex, "EPIORDER": payload,
            "CDS_UPDATE_TYPE": update}


def sus_name(ts: int, protocol: str, provider="RGT") -> str:
    return f"sus_apc/APC_{provider}_202401_202402{ts:02d}120000_{protocol}.csv"


class Zone:
    def __init__(self, root: Path):
        self.landing = root / "landing"
        self.landing.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.landing)
        self.wh = Warehouse(Store(root / "warehouse"))
        self.settings = Settings()

    def sus(self):
        return ingest.ingest("sus_apc", "2024-01", self.store, self.wh, self.settings, validator=FAKE)

    def view(self, period="2024-01") -> dict:
        t = current.current_sus(self.wh, period).to_pandas()
        # EPIORDER carries each row's payload here; silver writes it with a leading 0 ("02")
        return {(p, r): str(int(e)) if isinstance(e, str) and e.isdigit() else e
                for p, r, e in zip(t["provider_code"], t["susrecid"], t["epiorder"])}

    def status(self) -> dict:
        led = ingest.read_ledger(self.wh).to_pandas()
        return dict(zip(led["file_name"], led["status"]))


@pytest.fixture
def zone(tmp_path):
    return Zone(tmp_path)


# ----------------------------------------------------------------------------- SUS
def test_bulk_resubmission_removes_absent_episodes(zone):
    put(zone.landing, sus_name(1, "BULK"), [ep("A"), ep("B"), ep("C")], SUS_COLS)
    zone.sus()
    assert set(zone.view()) == {("RGT", "A"), ("RGT", "B"), ("RGT", "C")}
    put(zone.landing, sus_name(2, "BULK"), [ep("A", "2"), ep("C", "2")], SUS_COLS)
    zone.sus()
    assert zone.view() == {("RGT", "A"): "2", ("RGT", "C"): "2"}
    assert zone.status() == {sus_name(1, "BULK"): "superseded", sus_name(2, "BULK"): "current"}
    # Earlier submissions stay readable for audit.
    old = zone.wh.read("sus_episodes", parts=[zone.wh.path("sus_episodes", "2024-01", "APC_RGT_202401_20240201120000_BULK")])
    assert sorted(old.column("susrecid").to_pylist()) == ["A", "B", "C"]


def test_net_inserts_replaces_and_deletes(zone):
    put(zone.landing, sus_name(1, "BULK"), [ep("A"), ep("B"), ep("C")], SUS_COLS)
    put(zone.landing, sus_name(2, "NET"), [ep("B", "2", "9"), ep("C", "2", "1"), ep("D", "2", "9")], SUS_COLS)
    zone.sus()
    assert zone.view() == {("RGT", "A"): "1", ("RGT", "B"): "2", ("RGT", "D"): "2"}
    put(zone.landing, sus_name(3, "NET"), [ep("D", "3", "1"), ep("Q", "3", "1")], SUS_COLS)  # Q: nothing to delete
    zone.sus()
    assert zone.view() == {("RGT", "A"): "1", ("RGT", "B"): "2"}
    assert set(zone.status().values()) == {"current"}


def test_submission_time_not_arrival_order_decides(zone):
    # The later bulk arrives first; the NET submitted before it arrives afterwards and is
    # already replaced by it.
    put(zone.landing, sus_name(5, "BULK"), [ep("A", "5"), ep("B", "5")], SUS_COLS)
    zone.sus()
    put(zone.landing, sus_name(3, "NET"), [ep("C", "3", "9"), ep("A", "3", "1")], SUS_COLS)
    zone.sus()
    assert zone.view() == {("RGT", "A"): "5", ("RGT", "B"): "5"}
    assert zone.status()[sus_name(3, "NET")] == "superseded"


def test_held_submission_skipped_and_providers_independent(zone):
    put(zone.landing, sus_name(1, "BULK"), [ep("A"), ep("B")], SUS_COLS)
    put(zone.landing, sus_name(1, "BULK", "R1H"), [ep("X", provider="R1H")], SUS_COLS)
    put(zone.landing, sus_name(2, "BULK"), [ep("C", "2"), ep("D", "2", sex="X"), ep("E", "2", sex="X")], SUS_COLS)
    zone.sus()
    assert zone.status()[sus_name(2, "BULK")] == "held"
    assert zone.view() == {("RGT", "A"): "1", ("RGT", "B"): "1", ("R1H", "X"): "1"}


def test_hes_rows_apply_as_net_change_in_first_seen_order(zone):
    put(zone.landing, sus_name(1, "BULK"), [ep("A"), ep("B")], SUS_COLS)
    zone.sus()
    hes_cols = [c for c in SUS_COLS if c != "CDS_UPDATE_TYPE"] + ["EPIKEY"]
    put(zone.landing, "hes_apc/extract.csv",
        [ep("A", "77"), {**ep("", "77"), "EPIKEY": "K1"}, ep("A", "77", provider="R1H"),
         {**ep("Z", "77"), "EPIEND": "2024-02-03"}], hes_cols)
    report = ingest.ingest_hes(zone.store, zone.wh, zone.settings, validator=FAKE)
    assert set(report.partitions) == {"2024-01", "2024-02"}
    assert zone.view() == {("RGT", "A"): "77", ("RGT", "B"): "1", ("RGT", "K1"): "77", ("R1H", "A"): "77"}
    assert zone.view("2024-02") == {("RGT", "Z"): "77"}
    # A bulk submitted after the extract was first seen replaces the provider's period.
    put(zone.landing, "sus_apc/APC_RGT_202401_20991231120000_BULK.csv", [ep("B", "9")], SUS_COLS)
    zone.sus()
    assert zone.view() == {("RGT", "B"): "9", ("R1H", "A"): "77"}


# ----------------------------------------------------------------------------- property
@st.composite
def submissions(draw):
    n = draw(st.integers(1, 5))
    times = draw(st.lists(st.integers(1, 28), min_size=n, max_size=n, unique=True))
    subs = []
    for k, t in enumerate(times):
        protocol = draw(st.sampled_from(["BULK", "NET"]))
        provider = draw(st.sampled_from(["RGT", "R1H"]))
        ids = draw(st.lists(st.sampled_from("ABCDE"), min_size=1, max_size=4, unique=True))
        held = draw(st.integers(0, 5)) == 0
        rows = []
        for rid in ids:
            update = "" if protocol == "BULK" else draw(st.sampled_from(["9", "9", "1"]))
            rows.append(ep(rid, str(k), update, provider, sex="X" if held else "1"))
        subs.append({"name": sus_name(t, protocol, provider), "time": t, "protocol": protocol,
                     "provider": provider, "rows": rows, "held": held})
    order = draw(st.permutations(list(range(n))))
    breaks = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return subs, order, breaks


def model(subs) -> dict:
    state: dict[str, dict] = {}
    for s in sorted(subs, key=lambda s: s["time"]):
        if s["held"]:
            continue
        cur = state.setdefault(s["provider"], {})
        if s["protocol"] == "BULK":
            cur.clear()
        for r in s["rows"]:
            if r["CDS_UPDATE_TYPE"] == "1":
                cur.pop(r["SUSRECID"], None)
            else:
                cur[r["SUSRECID"]] = r["EPIORDER"]
    return {(p, rid): v for p, cur in state.items() for rid, v in cur.items()}


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(submissions())
def test_any_arrival_order_gives_the_submission_time_order_view(case):
    subs, order, breaks = case
    with tempfile.TemporaryDirectory() as tmp:
        zone = Zone(Path(tmp))
        for i, k in enumerate(order):
            put(zone.landing, subs[k]["name"], subs[k]["rows"], SUS_COLS)
            if breaks[i] or i == len(order) - 1:
                zone.sus()  # an ingest run between arrivals
        assert zone.view() == model(subs)
        # Ledger statuses agree with the view: every file current, superseded or held.
        st_ = zone.status()
        assert all(st_[s["name"]] == "held" for s in subs if s["held"])
        for s in subs:
            if s["held"]:
                continue
            later_bulk = any(o["provider"] == s["provider"] and o["protocol"] == "BULK" and not o["held"]
                             and o["time"] > s["time"] for o in subs)
            assert st_[s["name"]] == ("superseded" if later_bulk else "current")


# ----------------------------------------------------------------------------- GP, FFT
def gp_rows(*numbers, sex="1"):
    return [{"NHS_NUMBER": with_check_digit(f"999{n:06d}") or "", "DATE_OF_BIRTH": "1970-01-01", "SEX": sex,
             "REGISTRATION_DATE": "2000-01-01"} for n in numbers]


def two_months_of_gp(zone):
    """Two practices over January and February 2024: a superseded extract, a held one."""
    put(zone.landing, "gp/GP_A81001_20240110.csv", gp_rows(1, 2), GP_COLS)
    put(zone.landing, "gp/GP_A81001_20240125.csv", gp_rows(1, 2, 3), GP_COLS)
    put(zone.landing, "gp/GP_A81002_20240115.csv", gp_rows(4), GP_COLS)
    ingest.ingest("gp", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    put(zone.landing, "gp/GP_A81001_20240210.csv", gp_rows(1, sex="X") + gp_rows(2, sex="X"), GP_COLS)  # held
    put(zone.landing, "gp/GP_A81002_20240205.csv", gp_rows(4, 5), GP_COLS)
    ingest.ingest("gp", "2024-02", zone.store, zone.wh, zone.settings, validator=FAKE)


def test_gp_newest_extract_supersedes_and_held_is_skipped(zone):
    two_months_of_gp(zone)
    newest, in_jan, extracts = current.gp_current(zone.wh, "2024-01")
    by_practice = newest.to_pandas().groupby("practice_code")["submission_id"].unique().to_dict()
    assert {k: list(v) for k, v in by_practice.items()} == {
        "A81001": ["GP_A81001_20240125"], "A81002": ["GP_A81002_20240205"]}
    assert sorted(in_jan.to_pandas()["submission_id"].unique()) == ["GP_A81001_20240125", "GP_A81002_20240115"]
    assert extracts.num_rows == 5
    assert dict(zip(extracts.column("submission_id").to_pylist(), extracts.column("held").to_pylist()))[
        "GP_A81001_20240210"] is True
    st_ = zone.status()
    assert st_["gp/GP_A81001_20240110.csv"] == "superseded"
    assert st_["gp/GP_A81001_20240125.csv"] == "current"
    assert st_["gp/GP_A81001_20240210.csv"] == "held"
    _, in_feb, _ = current.gp_current(zone.wh, "2024-02")
    assert sorted(in_feb.to_pandas()["submission_id"].unique()) == ["GP_A81002_20240205"]


def test_gp_current_lazy_chooses_the_same_rows_without_reading_them(zone):
    two_months_of_gp(zone)
    for period in ("2024-01", "2024-02", None):
        eager = current.gp_current(zone.wh, period)
        lazy = current.gp_current_lazy(zone.wh, period)
        assert isinstance(lazy.patients_newest_overall, pads.Dataset)
        for name in ("patients_newest_overall", "patients_newest_in_period"):
            got, want = getattr(lazy, name).to_table(), getattr(eager, name)
            assert got.schema.equals(want.schema), name
            assert got.equals(want), name
        assert lazy.extracts.equals(eager.extracts)
    # only the columns asked for, typed as declared (and submission_id: a chunk part holds
    # the superseded extract's rows too, told apart by it)
    slim = current.gp_current_lazy(zone.wh, "2024-01", columns=["nhs_number", "extract_date", "period"])
    assert slim.patients_newest_in_period.schema.names == ["nhs_number", "extract_date", "period", "submission_id"]
    assert slim.patients_newest_in_period.to_table().num_rows == 4
    # nothing taken in yet: empty datasets with the declared columns
    empty = current.gp_current_lazy(Warehouse(Store(zone.landing.parent / "empty-wh")), "2024-01")
    assert empty.patients_newest_overall.to_table().num_rows == 0
    assert "nhs_number" in empty.patients_newest_overall.schema.names


def test_a_released_extract_is_not_held_for_every_reader_of_the_gp_extracts(zone):
    two_months_of_gp(zone)
    feb = "GP_A81001_20240210"
    ingest.release_held(zone.wh, f"gp/{feb}.csv", "ops")
    stored = zone.wh.read("gp_extracts").to_pandas().set_index("submission_id")["held"]
    assert bool(stored[feb]) is True  # the record of the take-in is not edited
    held = current.gp_extracts(zone.wh).to_pandas().set_index("submission_id")["held"]
    assert not held.any()
    assert zone.status()[f"gp/{feb}.csv"] == "current"
    for period in ("2024-02", None):
        eager, lazy = current.gp_current(zone.wh, period), current.gp_current_lazy(zone.wh, period)
        assert lazy.extracts.equals(eager.extracts)
        assert lazy.patients_newest_in_period.to_table().equals(eager.patients_newest_in_period)
    # every row of that extract was rejected: released, it is the practice's (empty) current one
    _, in_feb, _ = current.gp_current(zone.wh, "2024-02")
    assert sorted(in_feb.to_pandas()["submission_id"].unique()) == ["GP_A81002_20240205"]
    with pytest.raises(ValueError, match="not held"):
        ingest.release_held(zone.wh, f"gp/{feb}.csv", "ops")


def test_warehouse_dataset_reads_an_older_part_missing_a_column_as_null(zone):
    from pipelines import schemas

    full = schemas.get("gp_patients").arrow_schema(include_partition=False)
    row = {n: None for n in full.names}
    row.update(submission_id="GP_A81001_20240110", line=2, practice_code="A81001", nhs_number_valid=False,
               type2_objection=False, extract_date=pd.Timestamp("2024-01-10").date())
    old = pa.Table.from_pylist([row], schema=full).drop_columns(["lsoa", "ethnic_category"])
    old = old.set_column(old.schema.get_field_index("line"), "line", old.column("line").cast(pa.int32()))
    path = zone.wh.path("gp_patients", "2024-01", "GP_A81001_20240110")
    zone.wh.store.write_parquet(path, old)
    got = zone.wh.dataset("gp_patients", parts=[path]).to_table()
    assert got.schema.equals(schemas.get("gp_patients").arrow_schema(include_partition=True))
    assert got.column("lsoa").to_pylist() == [None] and got.column("line").to_pylist() == [2]
    assert got.column("period").to_pylist() == ["2024-01"]
    with pytest.raises(ValueError):
        zone.wh.dataset("gp_patients", parts=[path], columns=["no_such_column"])


def test_fft_newest_file_replaces(zone):
    def rows(*ids):
        return [{"RESPONSE_ID": i, "PROVIDER_CODE": "RGT", "SITE_CODE": "RGT01", "SETTING": "IP",
                 "RESPONSE_DATE": "2024-01-15", "RESPONSE": "1"} for i in ids]

    put(zone.landing, "fft/FFT_RGT_202401_20240205120000.csv", rows("1", "2", "3"), FFT_COLS)
    ingest.ingest("fft", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    put(zone.landing, "fft/FFT_RGT_202401_20240203120000.csv", rows("9"), FFT_COLS)  # older, arrives later
    put(zone.landing, "fft/FFT_RGT_202401_20240210120000.csv", rows("1", "4"), FFT_COLS)
    ingest.ingest("fft", "2024-01", zone.store, zone.wh, zone.settings, validator=FAKE)
    t = current.current_fft(zone.wh, "2024-01")
    assert sorted(t.column("response_id").to_pylist()) == ["1", "4"]
    assert set(t.column("submission_id").to_pylist()) == {"FFT_RGT_202401_20240210120000"}
    st_ = zone.status()
    assert st_["fft/FFT_RGT_202401_20240205120000.csv"] == "superseded"
    assert st_["fft/FFT_RGT_202401_20240203120000.csv"] == "superseded"


def test_gp_death_extracts_about_one_a_year_back_to_the_window():
    def ex(practice, *dates, held=()):
        return [dict(period=d[:7], submission_id=f"GP_{practice}_{d.replace('-', '')}", practice_code=practice,
                     extract_date=pd.Timestamp(d), held=d in held) for d in dates]
    monthly = [f"{y}-{m:02d}-01" for y in (2014, 2015, 2016) for m in range(1, 13)]
    extracts = pd.DataFrame(ex("P1", *monthly, held=("2016-12-01",)) + ex("P2", "2014-06-01", "2016-06-01"))
    chosen = current.gp_death_extracts(extracts, since=pd.Timestamp("2014-01-01"), until=pd.Timestamp("2017-12-31"))
    p1 = sorted(chosen.loc[chosen["practice_code"] == "P1", "extract_date"].dt.strftime("%Y-%m-%d"))
    # newest not held, then the oldest within 330 days of the last chosen, down to the window start
    assert p1 == ["2014-01-01", "2014-05-01", "2015-03-01", "2016-01-01", "2016-11-01"]
    # every gap is within the look-back, so every death from 2014-01-01 is on some chosen extract
    gaps = pd.Series(pd.to_datetime(p1)).diff().dt.days.dropna()
    assert gaps.max() <= current.DEATH_LOOKBACK_DAYS
    # a two-year gap: both extracts, nothing better exists
    assert sorted(chosen.loc[chosen["practice_code"] == "P2", "extract_date"].dt.year) == [2014, 2016]
    # an ``until`` before the newest: the chain starts from the newest up to it
    early = current.gp_death_extracts(extracts, since=pd.Timestamp("2014-01-01"), until=pd.Timestamp("2014-12-31"))
    assert sorted(early.loc[early["practice_code"] == "P1", "extract_date"].dt.strftime("%Y-%m")) == ["2014-01", "2014-02", "2014-12"]


def test_a_chunk_of_three_extracts_is_one_silver_part_and_each_view_picks_its_extracts_rows(zone):
    """January's three GP extracts are validated as one chunk: their silver rows are one
    part (each row carrying its submission id), not three. The current view, eager and
    lazy, and an engine reading the part's file itself (linkage) take only the rows of the
    chosen extracts: the superseded January extract of A81001 shares the part and is left out."""
    from pipelines import linkage
    from pipelines.engine import DuckDBEngine

    two_months_of_gp(zone)
    jan = zone.wh.parts("gp_patients", ["2024-01"])
    assert len(jan) == 1 and current.CHUNK_PART in jan[0]
    in_part = zone.wh.read("gp_patients", parts=jan).column("submission_id").to_pylist()
    assert sorted(set(in_part)) == ["GP_A81001_20240110", "GP_A81001_20240125", "GP_A81002_20240115"]
    eager = current.gp_current(zone.wh, "2024-01").patients_newest_in_period
    assert sorted(eager.column("submission_id").to_pylist()) == (
        ["GP_A81001_20240125"] * 3 + ["GP_A81002_20240115"])
    # rows in the order one part per extract gave (parts by name, a file's rows in order)
    assert eager.column("submission_id").to_pylist() == ["GP_A81001_20240125"] * 3 + ["GP_A81002_20240115"]
    assert eager.column("line").to_pylist() == [2, 3, 4, 2]
    lazy = current.gp_current_lazy(zone.wh, "2024-01").patients_newest_in_period
    assert lazy.to_table().equals(eager)
    # the engine given the files (not the dataset) applies the same filter
    got = linkage._gp_input(lazy, {"submission_id": pa.string(), "nhs_number": pa.string()},
                            ("nhs_number",), "gp_patients")
    assert got.where is not None and len(got.paths) == 1
    with DuckDBEngine() as eng:
        rows = eng.query("SELECT submission_id, count(*) AS n FROM gp GROUP BY 1 ORDER BY 1", {"gp": got})
        only_nhs = eng.query("SELECT count(*) AS n FROM gp",
                             {"gp": linkage._gp_input(lazy, {"nhs_number": pa.string()}, ("nhs_number",), "gp")})
    assert rows.to_pylist() == [{"submission_id": "GP_A81001_20240125", "n": 3},
                                {"submission_id": "GP_A81002_20240115", "n": 1}]
    assert only_nhs.column("n").to_pylist() == [4]  # the filter's column need not be read out


def test_a_parquet_input_with_where_keeps_only_those_rows_on_duckdb(tmp_path):
    import pyarrow.parquet as pq

    from pipelines.engine import DuckDBEngine, Parquet

    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"submission_id": ["a", "b", "c", "a"], "x": [1, 2, 3, 4]}), path)
    schema = pa.schema([("x", pa.int64())])
    with DuckDBEngine() as eng:
        kept = eng.query("SELECT x FROM t ORDER BY x", {"t": Parquet((str(path),), schema, where=("submission_id", ("a", "c")))})
        every = eng.query("SELECT x FROM t ORDER BY x", {"t": Parquet((str(path),), schema)})
        none = eng.query("SELECT x FROM t", {"t": Parquet((str(path),), schema, where=("submission_id", ()))})
    assert kept.column("x").to_pylist() == [1, 3, 4]
    assert every.column("x").to_pylist() == [1, 2, 3, 4]
    assert none.num_rows == 0
