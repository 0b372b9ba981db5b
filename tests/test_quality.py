"""Data-quality datasets (pipelines/quality.py) on a small example computed by hand."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines import schemas
from pipelines.config import Settings
from pipelines.quality import data_quality_tables, is_held


@pytest.fixture
def settings():
    return Settings()


def ledger(rows):
    cols = ["file_name", "submission_id", "source", "submitter_code", "reporting_period", "status",
            "reason", "rows_received", "rows_quarantined", "rows_kept"]
    return pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])


def dq_rules(rows):
    cols = ["period", "submission_id", "source", "submitter_code", "rule_id", "field", "severity",
            "rows_checked", "rows_failed"]
    t = pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])
    return t.append_column("example_lines", pa.array([[] for _ in rows], pa.list_(pa.string())))


def dq_fields(rows):
    cols = ["period", "submission_id", "source", "submitter_code", "field", "rows", "rows_valid"]
    return pa.Table.from_pylist([dict(zip(cols, r)) for r in rows])


LEDGER = ledger([
    # RXX: a current NET file and a held one in 2024-03; an older superseded BULK left out
    ("sus_apc/a.csv", "A", "sus_apc", "RXX", "2024-03", "current", "", 100, 10, 90),
    ("sus_apc/b.csv", "B", "sus_apc", "RXX", "2024-03", "held", "60 of 100 rows rejected", 100, 60, 40),
    ("sus_apc/old.csv", "OLD", "sus_apc", "RXX", "2024-03", "superseded", "replaced", 50, 0, 50),
    # RYY: one good file
    ("sus_apc/c.csv", "C", "sus_apc", "RYY", "2024-03", "current", "", 10, 0, 10),
    ("reference/sites.csv", "sites", "reference", None, None, "current", "", None, None, None),
])
RULES = dq_rules([
    ("2024-03", "A", "sus_apc", "RXX", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 100, 10),
    ("2024-03", "B", "sus_apc", "RXX", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 100, 60),
    ("2024-03", "A", "sus_apc", "RXX", "NEWNHSNO_INVALID", "NEWNHSNO", "warn", 100, 2),
    ("2024-03", "B", "sus_apc", "RXX", "NEWNHSNO_INVALID", "NEWNHSNO", "warn", 100, 0),
    ("2024-03", "OLD", "sus_apc", "RXX", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 50, 50),
    ("2024-03", "C", "sus_apc", "RYY", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 10, 0),
    ("2024-03", "C", "sus_apc", "RYY", "GPPRAC_UNKNOWN", "GPPRAC", "warn", 0, 0),
])
FIELDS = dq_fields([
    ("2024-03", "A", "sus_apc", "RXX", "NEWNHSNO", 100, 98),
    ("2024-03", "B", "sus_apc", "RXX", "NEWNHSNO", 100, 100),
    ("2024-03", "A", "sus_apc", "RXX", "EPIEND", 100, 90),
    ("2024-03", "B", "sus_apc", "RXX", "EPIEND", 100, 40),
    ("2024-03", "OLD", "sus_apc", "RXX", "EPIEND", 50, 0),
    ("2024-03", "C", "sus_apc", "RYY", "NEWNHSNO", 10, 10),
    ("2024-03", "C", "sus_apc", "RYY", "EPIEND", 10, 10),
    ("2024-03", "C", "sus_apc", "RYY", "CONSULT", 10, 9),
])


def test_data_quality_by_hand(settings):
    out = data_quality_tables(RULES, FIELDS, LEDGER, settings)
    dq = out["data_quality"]
    assert dq.schema.equals(schemas.get("data_quality").arrow_schema(include_partition=True), check_metadata=False)
    rows = {(r["submitter_code"], r["rule_id"]): r for r in dq.to_pylist()}
    assert set(rows) == {("RXX", "EPIEND_BEFORE_EPISTART"), ("RXX", "NEWNHSNO_INVALID"),
                         ("RYY", "EPIEND_BEFORE_EPISTART"), ("RYY", "GPPRAC_UNKNOWN")}
    r = rows[("RXX", "EPIEND_BEFORE_EPISTART")]  # OLD (superseded) left out
    assert (r["rows_checked"], r["rows_failed"], r["pct_passed"]) == (200, 70, 65.0)
    assert rows[("RXX", "NEWNHSNO_INVALID")]["pct_passed"] == 99.0
    assert rows[("RYY", "GPPRAC_UNKNOWN")]["pct_passed"] is None  # nothing checked
    assert all(r["period"] == "2024-03" and r["source"] == "sus_apc" for r in dq.to_pylist())


def test_data_quality_summary_by_hand(settings):
    out = data_quality_tables(RULES, FIELDS, LEDGER, settings)
    s = out["data_quality_summary"]
    assert s.schema.equals(schemas.get("data_quality_summary").arrow_schema(include_partition=True),
                           check_metadata=False)
    rows = {r["submitter_code"]: r for r in s.to_pylist()}
    assert set(rows) == {"RXX", "RYY"}
    rxx = rows["RXX"]
    assert (rxx["rows_received"], rxx["rows_quarantined"], rxx["rows_kept"]) == (200, 70, 130)
    # NEWNHSNO 198/200 = 0.99; EPIEND 130/200 = 0.65 -> 100 * mean = 82.0
    assert rxx["dq_score"] == pytest.approx(82.0)
    assert rxx["pct_valid_nhs_number"] == pytest.approx(99.0)
    assert rxx["below_sanction_threshold"] is True  # score under 95
    assert rxx["held"] is True and rxx["held_reason"] == "60 of 100 rows rejected"
    ryy = rows["RYY"]
    # 1.0, 1.0, 0.9 -> 96.67; NHS 100%
    assert ryy["dq_score"] == pytest.approx(100 * 2.9 / 3)
    assert ryy["below_sanction_threshold"] is False
    assert ryy["held"] is False and ryy["held_reason"] is None
    assert ryy["rows_received"] == ryy["rows_kept"] == 10


def test_nhs_number_rate_alone_triggers_sanction(settings):
    fields = dq_fields([
        ("2024-03", "C", "sus_apc", "RYY", "NEWNHSNO", 100, 98),  # 98% < 99%
        ("2024-03", "C", "sus_apc", "RYY", "EPIEND", 100, 100),
    ])
    rows = data_quality_tables(dq_rules([]), fields, LEDGER, settings)["data_quality_summary"].to_pylist()
    row = next(r for r in rows if r["submitter_code"] == "RYY")
    # RXX has no dq rows here: still listed (from the ledger), with no score
    assert next(r for r in rows if r["submitter_code"] == "RXX")["dq_score"] is None
    assert row["dq_score"] == pytest.approx(99.0) and row["pct_valid_nhs_number"] == pytest.approx(98.0)
    assert row["below_sanction_threshold"] is True


def test_fft_nhs_number_reported_not_scored(settings):
    led = ledger([("fft/f.csv", "F", "fft", "RXX", "2024-03", "current", "", 4, 0, 4)])
    fields = dq_fields([
        ("2024-03", "F", "fft", "RXX", "NHS_NUMBER", 4, 1),
        ("2024-03", "F", "fft", "RXX", "RESPONSE", 4, 4),
    ])
    row = data_quality_tables(dq_rules([]), fields, led, settings)["data_quality_summary"].to_pylist()[0]
    assert row["dq_score"] == 100.0 and row["pct_valid_nhs_number"] == 25.0
    assert row["below_sanction_threshold"] is False


def test_thresholds_from_settings():
    s = Settings.load(env={"CAREDATA_DATA_QUALITY__SANCTION_SCORE": "80"})
    rows = {r["submitter_code"]: r for r in
            data_quality_tables(RULES, FIELDS, LEDGER, s)["data_quality_summary"].to_pylist()}
    assert rows["RXX"]["below_sanction_threshold"] is False  # 82 >= 80, NHS 99% >= 99%


def test_empty_inputs(settings):
    empty = ledger([])
    out = data_quality_tables(dq_rules([]), dq_fields([]), empty, settings)
    assert out["data_quality"].num_rows == 0 and out["data_quality_summary"].num_rows == 0


def test_is_held(settings):
    assert is_held(100, 51, settings) is True
    assert is_held(100, 50, settings) is False  # "more than half"
    assert is_held(0, 0, settings) is False
    assert is_held(3, 2, settings) is True


# --------------------------------------------------------------------------- many submissions
# The summary is worked out for every (period, source, submitter) group at once. These
# tests hold it to figures worked by hand on several submitters, and to the plain
# one-group-at-a-time computation it replaced (kept below as the reference) on generated
# months with many submissions and the awkward cases: held files with and without
# reasons, empty files (no dq rows), missing counts and fields, superseded, rejected and
# repeated ledger rows, other sources, several periods and many scored fields.

MULTI_LEDGER = ledger([
    # P1: two current extracts; P2: an empty file (no dq rows: placed by its reporting
    # period); P3: held twice for the same reason plus a current one; P4: held, no reason,
    # no row counts; P5: only a rejected file (left out)
    ("gp/p1a.csv", "P1A", "gp", "P1", "2024-03", "current", "", 10, 1, 9),
    ("gp/p1b.csv", "P1B", "gp", "P1", "2024-03", "current", "", 30, 3, 27),
    ("gp/p2.csv", "P2", "gp", "P2", "2024-03", "current", "", 0, 0, 0),
    ("gp/p3a.csv", "P3A", "gp", "P3", "2024-03", "held", "8 of 10 rows rejected", 10, 8, 2),
    ("gp/p3b.csv", "P3B", "gp", "P3", "2024-03", "held", "8 of 10 rows rejected", 10, 8, 2),
    ("gp/p3c.csv", "P3C", "gp", "P3", "2024-03", "current", "", 5, 0, 5),
    ("gp/p4.csv", "P4", "gp", "P4", "2024-03", "held", "", None, None, None),
    ("gp/p5.csv", "P5", "gp", "P5", "2024-03", "rejected", "unreadable", None, None, None),
    # FFT: the NHS number is reported, not scored
    ("fft/f.csv", "F1", "fft", "RXX", "2024-03", "current", "", 4, 0, 4),
])
MULTI_FIELDS = dq_fields([
    ("2024-03", "P1A", "gp", "P1", "NHS_NUMBER", 10, 10),
    ("2024-03", "P1A", "gp", "P1", "SEX", 10, 5),
    ("2024-03", "P1B", "gp", "P1", "NHS_NUMBER", 30, 29),
    ("2024-03", "P1B", "gp", "P1", "SEX", 30, 30),
    ("2024-03", "P1B", "gp", "P1", "POSTCODE", 0, 0),       # no rows: not scored
    ("2024-03", "P3A", "gp", "P3", "NHS_NUMBER", 10, 10),
    ("2024-03", "P3B", "gp", "P3", "NHS_NUMBER", 10, 10),
    ("2024-03", "P3C", "gp", "P3", "NHS_NUMBER", 5, 5),
    ("2024-03", "P4", "gp", "P4", "SEX", 4, None),           # rows_valid missing: 0
    ("2024-03", "P5", "gp", "P5", "SEX", 4, 4),              # rejected: left out
    ("2024-03", "F1", "fft", "RXX", "NHS_NUMBER", 4, 2),
    ("2024-03", "F1", "fft", "RXX", "RESPONSE", 4, 3),
])


def test_many_submitters_by_hand(settings):
    out = data_quality_tables(dq_rules([]), MULTI_FIELDS, MULTI_LEDGER, settings)["data_quality_summary"]
    rows = out.to_pylist()
    assert [(r["source"], r["submitter_code"]) for r in rows] == [
        ("fft", "RXX"), ("gp", "P1"), ("gp", "P2"), ("gp", "P3"), ("gp", "P4")]
    r = {r["submitter_code"]: r for r in rows}
    # P1: NHS_NUMBER 39/40, SEX 35/40 -> 100 x (0.975 + 0.875) / 2 = 92.5; NHS 97.5%
    assert (r["P1"]["rows_received"], r["P1"]["rows_quarantined"], r["P1"]["rows_kept"]) == (40, 4, 36)
    assert r["P1"]["dq_score"] == pytest.approx(92.5)
    assert r["P1"]["pct_valid_nhs_number"] == pytest.approx(97.5)
    assert r["P1"]["below_sanction_threshold"] is True and r["P1"]["held"] is False
    # P2: an empty file, no dq rows: listed with its counts, no score, not sanctioned
    assert r["P2"]["period"] == "2024-03" and r["P2"]["rows_received"] == 0
    assert r["P2"]["dq_score"] is None and r["P2"]["pct_valid_nhs_number"] is None
    assert r["P2"]["below_sanction_threshold"] is False
    # P3: one reason, once; counts over all three files
    assert r["P3"]["held"] is True and r["P3"]["held_reason"] == "8 of 10 rows rejected"
    assert (r["P3"]["rows_received"], r["P3"]["rows_kept"], r["P3"]["dq_score"]) == (25, 9, 100.0)
    # P4: held with no reason; no counts at all -> nulls; SEX 0/4 -> 0
    assert r["P4"]["held"] is True and r["P4"]["held_reason"] is None
    assert r["P4"]["rows_received"] is None and r["P4"]["rows_kept"] is None
    assert r["P4"]["dq_score"] == 0.0 and r["P4"]["below_sanction_threshold"] is True
    # FFT: RESPONSE 3/4 scored only; NHS number 2/4 reported, never sanctioned on
    assert r["RXX"]["dq_score"] == 75.0 and r["RXX"]["pct_valid_nhs_number"] == 50.0


def _reference_tables(dq_rules_t, dq_fields_t, ledger_t, settings):
    """The one-group-at-a-time implementation the vectorised one replaced, as it was."""
    import pandas as pd

    from expectations.rules import NHS_NUMBER_FIELD, NHS_NUMBER_SANCTIONED

    def frame(table, columns):
        if table is None or table.num_rows == 0:
            return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
        df = table.to_pandas()
        for c in columns:
            if c not in df.columns:
                df[c] = None
        return df

    def pct(num, den):
        num, den = num.astype("float64"), den.astype("float64")
        return (100.0 * num / den).where(den > 0)

    led = frame(ledger_t, ["submission_id", "source", "submitter_code", "reporting_period", "status",
                           "reason", "rows_received", "rows_quarantined", "rows_kept"])
    led = led[led["status"].isin(("current", "held")) & led["source"].isin(("gp", "sus_apc", "hes_apc", "fft"))]
    led = led.drop_duplicates("submission_id", keep="last").set_index("submission_id")
    keep = set(led.index)
    rules = frame(dq_rules_t, ["period", "submission_id", "source", "submitter_code", "rule_id", "field",
                               "severity", "rows_checked", "rows_failed"])
    rules = rules[rules["submission_id"].isin(keep)]
    fields = frame(dq_fields_t, ["period", "submission_id", "source", "submitter_code", "field", "rows",
                                 "rows_valid"])
    fields = fields[fields["submission_id"].isin(keep)]
    key = ["period", "source", "submitter_code"]
    if len(rules):
        dq = (rules.assign(rows_checked=rules["rows_checked"].fillna(0).astype("int64"),
                           rows_failed=rules["rows_failed"].fillna(0).astype("int64"))
              .groupby(key + ["rule_id", "field", "severity"], dropna=False, sort=True)
              [["rows_checked", "rows_failed"]].sum().reset_index())
        dq["pct_passed"] = pct(dq["rows_checked"] - dq["rows_failed"], dq["rows_checked"])
    else:
        dq = pd.DataFrame(columns=key + ["rule_id", "field", "severity", "rows_checked", "rows_failed", "pct_passed"])
    data_quality = schemas.get("data_quality").conform(
        pa.Table.from_pandas(dq.reset_index(drop=True), preserve_index=False))

    # HES (added with the per-provider rule): a HES extract's dq rows carry their provider
    # (none: "UNKNOWN"); its group's rows received are its fields' largest row count, the
    # quarantined and kept unknown without the quarantine.
    def provider(df):
        df = df.copy()
        hes = df["submission_id"].map(led["source"]).eq("hes_apc")
        df["submitter_code"] = [("UNKNOWN" if h and (c is None or c != c) else c)
                                for h, c in zip(hes, df["submitter_code"])]
        return df

    rules, fields = provider(rules), provider(fields)
    if len(rules):
        dq = (rules.assign(rows_checked=rules["rows_checked"].fillna(0).astype("int64"),
                           rows_failed=rules["rows_failed"].fillna(0).astype("int64"))
              .groupby(key + ["rule_id", "field", "severity"], dropna=False, sort=True)
              [["rows_checked", "rows_failed"]].sum().reset_index())
        dq["pct_passed"] = pct(dq["rows_checked"] - dq["rows_failed"], dq["rows_checked"])
        data_quality = schemas.get("data_quality").conform(
            pa.Table.from_pandas(dq.reset_index(drop=True), preserve_index=False))
    rows = []
    for df in (rules, fields):
        for r in df.itertuples(index=False):
            hes = led.at[r.submission_id, "source"] == "hes_apc"
            rows.append((r.submission_id, r.period, r.submitter_code if hes else led.at[r.submission_id, "submitter_code"]))
    placed = pd.DataFrame(rows, columns=["submission_id", "period", "submitter_code"], dtype="object").drop_duplicates()
    unplaced = [s for s in led.index if s not in set(placed["submission_id"])
                and led.at[s, "source"] != "hes_apc"]
    extra = pd.DataFrame({"submission_id": unplaced,
                          "period": [led.at[s, "reporting_period"] for s in unplaced],
                          "submitter_code": [led.at[s, "submitter_code"] for s in unplaced]}, dtype="object")
    placed = pd.concat([placed, extra.dropna(subset=["period"])], ignore_index=True)
    placed["source"] = placed["submission_id"].map(led["source"])
    for c in ("rows_received", "rows_quarantined", "rows_kept"):
        placed[c] = placed["submission_id"].map(led[c]).astype("Float64")
    for i in placed.index[placed["source"] == "hes_apc"]:
        sid, per, sub = placed.at[i, "submission_id"], placed.at[i, "period"], placed.at[i, "submitter_code"]
        mine = fields[(fields["submission_id"] == sid) & (fields["period"] == per) & (fields["submitter_code"] == sub)]
        got = [float(x) for x in mine["rows"] if x is not None and x == x]
        placed.at[i, "rows_received"] = max(got) if got else pd.NA
        placed.at[i, "rows_quarantined"] = pd.NA
        placed.at[i, "rows_kept"] = pd.NA
    placed["held"] = placed["submission_id"].map(led["status"]).eq("held")
    placed["reason"] = placed["submission_id"].map(led["reason"])
    out_rows = []
    for (period, source, submitter), grp in placed.groupby(key, dropna=False, sort=True):
        subs = set(grp["submission_id"])
        f = fields[fields["submission_id"].isin(subs)]
        if source == "hes_apc":  # a HES extract's fields of this period and provider only
            f = f[(f["period"] == period) & (f["submitter_code"] == submitter)]
        f = (f.assign(rows=f["rows"].fillna(0).astype("int64"), rows_valid=f["rows_valid"].fillna(0).astype("int64"))
             .groupby("field")[["rows", "rows_valid"]].sum())
        nhs_field = NHS_NUMBER_FIELD.get(source)
        scored = f[f["rows"] > 0]
        if source == "fft":
            scored = scored.drop(index=[nhs_field], errors="ignore")
        dq_score = float(100.0 * (scored["rows_valid"] / scored["rows"]).mean()) if len(scored) else None
        pct_nhs = None
        if nhs_field in f.index and f.at[nhs_field, "rows"] > 0:
            pct_nhs = float(100.0 * f.at[nhs_field, "rows_valid"] / f.at[nhs_field, "rows"])
        below = dq_score is not None and dq_score < float(settings.t("data_quality", "sanction_score"))
        if source in NHS_NUMBER_SANCTIONED and pct_nhs is not None:
            below = below or pct_nhs < float(settings.t("data_quality", "sanction_nhs_number_pct"))
        held = bool(grp["held"].any())
        reasons = [r for r in grp.loc[grp["held"], "reason"].dropna().unique().tolist() if r]
        total = lambda c: None if grp[c].isna().all() else int(grp[c].sum())  # noqa: E731
        out_rows.append({
            "period": period, "source": source, "submitter_code": submitter,
            "rows_received": total("rows_received"), "rows_quarantined": total("rows_quarantined"),
            "rows_kept": total("rows_kept"), "dq_score": dq_score, "pct_valid_nhs_number": pct_nhs,
            "below_sanction_threshold": bool(below), "held": held,
            "held_reason": "; ".join(reasons) if held and reasons else None,
        })
    summary_schema = schemas.get("data_quality_summary").arrow_schema(include_partition=True)
    summary = pa.Table.from_pylist(out_rows, schema=summary_schema) if out_rows else summary_schema.empty_table()
    return {"data_quality": data_quality,
            "data_quality_summary": schemas.get("data_quality_summary").conform(summary)}


def _generated_month(seed: int):
    """A month of many submissions from a seeded generator: GP practices, SUS and FFT
    providers, several files per submitter with every status, held files with repeated,
    distinct, empty and missing reasons, files with no dq rows, missing counts and
    fields, up to 16 scored fields (the mean's summation order matters), a second period,
    a repeated ledger row and files from sources that are not scored."""
    import random

    from expectations.rules import NHS_NUMBER_FIELD

    rnd = random.Random(seed)
    statuses = ["current"] * 6 + ["held", "superseded", "rejected", "pending"]
    reasons = ["", None, "60 of 100 rows rejected", "70 of 100 rows rejected"]
    fields_of = {src: [NHS_NUMBER_FIELD[src]] + [f"F{i:02d}" for i in range(15)] for src in NHS_NUMBER_FIELD}
    led, rules, fields = [], [], []
    n = 0
    for src, count in (("gp", 40), ("sus_apc", 8), ("hes_apc", 3), ("fft", 6), ("reference", 2)):
        for s in range(count):
            submitter = f"{src[:1].upper()}{s:03d}"
            hes = src == "hes_apc"  # a HES extract: no submitter; its rows carry their providers
            for _ in range(rnd.randint(1, 4)):
                n += 1
                sid = f"S{n:04d}"
                status = rnd.choice(statuses)
                period = rnd.choice(["2024-03"] * 5 + ["2024-02", None])
                received = rnd.choice([None, 0] + [rnd.randint(1, 5000) for _ in range(4)])
                quarantined = None if received is None else rnd.randint(0, received)
                kept = None if received is None or rnd.random() < 0.1 else received - quarantined
                reason = rnd.choice(reasons) if status == "held" else rnd.choice(["", None, "replaced"])
                led.append((f"{src}/{sid}.csv", sid, src, None if hes else submitter, None if hes else period,
                            status, reason, received, quarantined, kept))
                if rnd.random() < 0.05:  # the same submission again: the last row counts
                    led.append((f"{src}/{sid}.csv.gz", sid, src, submitter, period, rnd.choice(statuses),
                                rnd.choice(reasons), received, quarantined, kept))
                if src == "reference" or rnd.random() < 0.15:
                    continue  # no dq rows (an empty or unreadable file)
                dq_period = period or "2024-03"
                names = rnd.sample(fields_of[src], rnd.randint(1, len(fields_of[src])))
                providers = [("RA1", "2024-03"), ("RB2", "2024-03"), ("RA1", "2024-02"), (None, "2024-03")]
                for who, per in (rnd.sample(providers, rnd.randint(1, 4)) if hes else [(submitter, dq_period)]):
                    for name in names:
                        rows = rnd.choice([0] + [rnd.randint(1, 5000) for _ in range(5)])
                        valid = rnd.choice([None, rows, rnd.randint(0, rows), 0])
                        fields.append((per, sid, src, who, name if rnd.random() > 0.03 else None,
                                       rows if rnd.random() > 0.03 else None, valid))
                    for rule in rnd.sample(["R1", "R2", "R3"], rnd.randint(0, 3)):
                        checked = rnd.randint(0, 5000)
                        rules.append((per, sid, src, who, rule, f"F{rule}", rnd.choice(["reject", "warn"]),
                                      checked, rnd.choice([None, rnd.randint(0, checked)])))
    return dq_rules(rules), dq_fields(fields), ledger(led)


@pytest.mark.parametrize("seed", range(6))
def test_matches_per_group_reference(settings, seed):
    import pandas.testing as pdt

    rules, fields, led = _generated_month(seed)
    got = data_quality_tables(rules, fields, led, settings)
    want = _reference_tables(rules, fields, led, settings)
    assert want["data_quality_summary"].num_rows > 40  # many groups, several periods and sources
    for name in ("data_quality", "data_quality_summary"):
        assert got[name].schema.equals(want[name].schema, check_metadata=True), name
        pdt.assert_frame_equal(got[name].to_pandas(), want[name].to_pandas(), check_exact=True)
        assert got[name].equals(want[name]), name


def test_matches_reference_with_only_empty_files(settings):
    # every kept file lacks dq rows: the summary comes from the ledger alone
    led = ledger([("gp/a.csv", "A", "gp", "P1", "2024-03", "current", "", 0, 0, 0),
                  ("gp/b.csv", "B", "gp", "P2", None, "held", "x", 3, 3, 0)])
    got = data_quality_tables(dq_rules([]), dq_fields([]), led, settings)
    want = _reference_tables(dq_rules([]), dq_fields([]), led, settings)
    for name in ("data_quality", "data_quality_summary"):
        assert got[name].equals(want[name]), name
    assert got["data_quality_summary"].to_pylist() == [{
        "period": "2024-03", "source": "gp", "submitter_code": "P1", "rows_received": 0, "rows_quarantined": 0,
        "rows_kept": 0, "dq_score": None, "pct_valid_nhs_number": None, "below_sanction_threshold": False,
        "held": False, "held_reason": None,
        # no scored field, no header recorded: no DQMI figure
        "dqmi_coverage": None, "dqmi_completeness": None, "dqmi_validity": None, "dqmi_default_share": None,
        "dqmi_score": None}]


# A HES extract (one ledger row, no submitter of its own) counts under the provider in each
# row's PROCODE3, per period of EPIEND: its dq rows carry that provider.
HES_LEDGER = ledger([("hes_apc/extract.csv", "extract", "hes_apc", None, None, "current", "", 6, 2, 4)])
HES_RULES = dq_rules([
    ("2002-01", "extract", "hes_apc", "RAA", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 3, 1),
    ("2002-01", "extract", "hes_apc", "RBB", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 2, 0),
    ("2002-02", "extract", "hes_apc", "RAA", "EPIEND_BEFORE_EPISTART", "EPIEND", "reject", 1, 1),
])
HES_FIELDS = dq_fields([
    ("2002-01", "extract", "hes_apc", "RAA", "EPIEND", 3, 2),
    ("2002-01", "extract", "hes_apc", "RAA", "NEWNHSNO", 3, 3),
    ("2002-01", "extract", "hes_apc", "RBB", "EPIEND", 2, 2),
    ("2002-01", "extract", "hes_apc", "RBB", "NEWNHSNO", 2, 1),
    ("2002-02", "extract", "hes_apc", "RAA", "EPIEND", 1, 0),
    ("2002-02", "extract", "hes_apc", "RAA", "NEWNHSNO", 1, 1),
])
HES_QUARANTINE = pa.table({"period": ["2002-01", "2002-02"], "submission_id": ["extract", "extract"],
                           "submitter_code": ["RAA", "RAA"]})


def test_quality_hes_extract_counts_under_each_provider(settings):
    out = data_quality_tables(HES_RULES, HES_FIELDS, HES_LEDGER, settings, quarantine=HES_QUARANTINE)
    rows = {(r["period"], r["submitter_code"]): r for r in out["data_quality_summary"].to_pylist()}
    assert set(rows) == {("2002-01", "RAA"), ("2002-01", "RBB"), ("2002-02", "RAA")}
    assert all(r["source"] == "hes_apc" for r in rows.values())
    counts = {k: (r["rows_received"], r["rows_quarantined"], r["rows_kept"]) for k, r in rows.items()}
    assert counts == {("2002-01", "RAA"): (3, 1, 2), ("2002-01", "RBB"): (2, 0, 2), ("2002-02", "RAA"): (1, 1, 0)}
    # the file's totals are the sum of its groups
    assert sum(c[0] for c in counts.values()) == 6 and sum(c[1] for c in counts.values()) == 2
    assert rows[("2002-01", "RAA")]["dq_score"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    assert rows[("2002-01", "RBB")]["pct_valid_nhs_number"] == pytest.approx(50.0)
    dq = {(r["period"], r["submitter_code"], r["rule_id"]): r["rows_failed"] for r in out["data_quality"].to_pylist()}
    assert dq == {("2002-01", "RAA", "EPIEND_BEFORE_EPISTART"): 1, ("2002-01", "RBB", "EPIEND_BEFORE_EPISTART"): 0,
                  ("2002-02", "RAA", "EPIEND_BEFORE_EPISTART"): 1}
    # without the quarantine the per-provider quarantined and kept counts are unknown, not guessed
    plain = data_quality_tables(HES_RULES, HES_FIELDS, HES_LEDGER, settings)["data_quality_summary"].to_pylist()
    assert {(r["rows_received"], r["rows_quarantined"]) for r in plain} == {(3, None), (2, None), (1, None)}


def test_quality_hes_rows_without_provider_count_under_unknown(settings):
    rules = dq_rules([("2002-01", "extract", "hes_apc", None, "PROCODE3_NULL", "PROCODE3", "reject", 1, 1)])
    fields = dq_fields([("2002-01", "extract", "hes_apc", None, "PROCODE3", 1, 0)])
    q = pa.table({"period": ["2002-01"], "submission_id": ["extract"], "submitter_code": pa.array([None], pa.string())})
    out = data_quality_tables(rules, fields, HES_LEDGER, settings, quarantine=q)
    (row,) = out["data_quality_summary"].to_pylist()
    assert row["submitter_code"] == "UNKNOWN" and (row["rows_received"], row["rows_quarantined"]) == (1, 1)
    assert out["data_quality"].column("submitter_code").to_pylist() == ["UNKNOWN"]
