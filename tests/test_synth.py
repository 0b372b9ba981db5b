"""The synthetic landing zone (pipelines.synth): layout, codes, faults, determinism, ground truth."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.nhs_number import canonical_series, valid_series
from pipelines.schemas import inputs as I
from pipelines.synth import generate

SCALE, MONTHS, START = 0.001, 2, "2014-01"


@pytest.fixture(scope="module")
def zone(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = generate(root / "landing", seed=0, scale=SCALE, months=MONTHS, start=START, progress=False)
    truth = root / "landing_truth"
    return dict(lz=root / "landing", truth=truth, summary=summary,
                files=pd.read_parquet(truth / "files.parquet"),
                faults=pd.read_parquet(truth / "row_faults.parquet"))


def read_raw(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data


def read_csv(path: Path) -> pd.DataFrame:
    text = read_raw(path).decode("utf-8-sig")
    first = text.split("\n", 1)[0]
    sep = "|" if first.count("|") > first.count(",") else ","
    return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)


def faults_of(zone, rel: str) -> pd.DataFrame:
    f = zone["faults"]
    return f[f["file"] == rel]


def readable(zone, source: str) -> pd.DataFrame:
    f = zone["files"]
    return f[(f["source"] == source) & (f["status"] != "rejected")]


def parse_date(s: pd.Series) -> pd.Series:
    return pd.to_datetime(s.where(s != ""), format="%Y-%m-%d", errors="coerce")


# --------------------------------------------------------------------------- layout


def test_truth_is_outside_the_landing_zone(zone):
    assert zone["truth"].is_dir() and (zone["truth"] / "truth.json").is_file()
    assert not any(p.name.endswith(".parquet") or p.name == "truth.json" for p in zone["lz"].rglob("*"))
    assert set(p.name for p in zone["lz"].iterdir()) == {"reference", "gp", "sus_apc", "fft", "hes_apc"}


def test_file_names_match_the_feed_patterns_except_planted_misnamed(zone):
    files = zone["files"].set_index("path")
    on_disk = {str(p.relative_to(zone["lz"])) for p in zone["lz"].rglob("*") if p.is_file()}
    assert on_disk == set(files.index)
    feeds = {"gp": I.GP, "sus_apc": I.SUS_APC, "fft": I.FFT}
    misnamed = 0
    for path, rec in files.iterrows():
        folder, name = path.split("/", 1)
        if folder == "reference":
            assert name in ("epraccur.csv", "providers.csv", "sites.csv")
            continue
        if folder == "hes_apc":  # any name (inputs.md)
            assert pd.isna(rec["submitter"]) and pd.isna(rec["period"])
            continue
        ok = bool(feeds[folder].name_pattern.match(name))
        if rec["reason_kind"] == "misnamed_file":
            misnamed += 1
            assert not ok, path
        else:
            assert ok, path
            m = feeds[folder].name_pattern.match(name)
            assert m.group("submitter") == rec["submitter"]
    assert misnamed >= 2  # one GP, one SUS


def test_epraccur_has_27_columns_no_header_and_valid_codes(zone):
    ep = pd.read_csv(zone["lz"] / "reference" / "epraccur.csv", header=None, dtype=str, keep_default_na=False)
    assert ep.shape[1] == 27
    assert ep[0].str.fullmatch(r"[A-Z]\d{5}").all()  # first row is data, not a header
    assert set(ep[12]) <= {"A", "C", "D", "P"} and {"A", "C"} <= set(ep[12])
    assert ep[10].str.fullmatch(r"\d{8}").all()
    assert ep[14].str.fullmatch(r"\d{2}[A-Z]").all()
    gp = ep[(ep[12] == "A") & (ep[25] == "4")]
    assert len(gp) >= 8 and ep[25].ne("4").any()
    assert ep[14].nunique() >= 2
    providers = read_csv(zone["lz"] / "reference" / "providers.csv")
    sites = read_csv(zone["lz"] / "reference" / "sites.csv")
    assert list(providers.columns) == ["PROVIDER_CODE", "NAME", "COMMISSIONER_CODE"]
    assert list(sites.columns) == ["SITE_CODE", "PROVIDER_CODE", "NAME"]
    assert len(providers) >= 3 and providers["PROVIDER_CODE"].str.fullmatch(r"[A-Z0-9]{3}").all()
    assert sites["SITE_CODE"].str.len().eq(5).all()
    assert sites.groupby("PROVIDER_CODE").size().min() >= 2
    assert set(providers["COMMISSIONER_CODE"]) <= set(ep[14])


def test_headers_have_required_columns_except_the_planted_one(zone):
    feeds = {"gp": I.GP, "sus_apc": I.SUS_APC, "fft": I.FFT, "hes_apc": I.HES_APC}
    missing = 0
    for _, rec in zone["files"].iterrows():
        if rec["source"] not in feeds or rec["reason_kind"] == "malformed_file":
            continue
        header = set(read_csv(zone["lz"] / rec["path"]).columns)
        lacks = set(feeds[rec["source"]].required) - header
        if rec["reason_kind"] == "missing_required_column":
            missing += 1
            assert lacks, rec["path"]
        else:
            assert not lacks, (rec["path"], lacks)
    assert missing >= 2


def test_malformed_files_cannot_be_parsed(zone):
    bad = zone["files"][zone["files"]["reason_kind"] == "malformed_file"]
    assert len(bad) >= 2
    for path in bad["path"]:
        with pytest.raises(Exception):
            text = read_raw(zone["lz"] / path).decode("utf-8")
            pd.read_csv(io.StringIO(text), dtype=str, engine="c")


def test_delimiter_gzip_bom_and_protocol_variants_present(zone):
    sus = readable(zone, "sus_apc")
    assert (sus["delimiter"] == "|").any() and (sus["delimiter"] == ",").any()
    assert sus["gzip"].any() and sus["bom"].any()
    for _, rec in sus.iterrows():
        raw = read_raw(zone["lz"] / rec["path"])
        assert raw.startswith(b"\xef\xbb\xbf") == rec["bom"]
        assert (raw.split(b"\n", 1)[0].count(b"|") > 10) == (rec["delimiter"] == "|")
    assert {"BULK", "NET"} <= set(sus["protocol"])
    net = sus[sus["protocol"] == "NET"].iloc[0]
    df = read_csv(zone["lz"] / net["path"])
    assert set(df["CDS_UPDATE_TYPE"]) == {"9", "1"}
    assert any("PSEUDO_HESID" in read_csv(zone["lz"] / p).columns for p in sus["path"])
    assert (zone["files"]["status"] == "superseded").any() and (zone["files"]["status"] == "held").any()
    # one resubmission arrived (mtime) before the file it supersedes
    f = sus[sus["protocol"] == "BULK"]
    inverted = False
    for (sub, per), g in f.groupby(["submitter", "period"]):
        g = g.sort_values("submitted_at")
        mt = [(zone["lz"] / p).stat().st_mtime for p in g["path"]]
        inverted |= any(a > b for a, b in zip(mt, mt[1:]))
    assert inverted


# --------------------------------------------------------------------------- codes and faults

CODE_CHECKS = {
    "sus_apc": {"ADMIMETH": I.ADMIMETH_CODES, "DISMETH": I.DISMETH_CODES, "SEX": I.SEX_CODES,
                "NHSNOIND": I.NHSNOIND_CODES, "EPISTAT": I.EPISTAT_CODES},
    "fft": {"SETTING": I.FFT_SETTINGS, "RESPONSE": I.FFT_RESPONSES, "MODE": I.FFT_MODES + ("",)},
    "gp": {"SEX": I.SEX_CODES, "OBJECTION": I.OBJECTION_CODES + ("",), "ETHNIC_CATEGORY": I.ETHNIC_CODES + ("",)},
}
SHAPES = {"CONSULT": r"C\d{7}", "DIAG_4_01": r"[A-Z]\d{2}[0-9X]?", "OPERTN_4_01": r"[A-Z]\d{3}|-"}


def _fault_set(zone, rel, fields):
    f = faults_of(zone, rel)
    return set(zip(f["line"], f["field"])) & {(n, c) for n in f["line"] for c in fields} if len(f) else set()


def test_codes_in_code_sets_except_where_planted(zone):
    seen_bad = 0
    for source, checks in CODE_CHECKS.items():
        for _, rec in readable(zone, source).iterrows():
            df = read_csv(zone["lz"] / rec["path"])
            f = faults_of(zone, rec["path"])
            planted = set(zip(f["line"], f["field"]))
            cols = dict(checks)
            if source == "sus_apc":
                cols.update({c: None for c in SHAPES})
            for col, codes in cols.items():
                vals = df[col]
                if codes is None:
                    bad = ~(vals.str.fullmatch(SHAPES[col]) | vals.eq(""))
                else:
                    bad = ~vals.isin(codes)
                lines = set((np.flatnonzero(bad.to_numpy()) + 2).tolist())
                assert lines == {n for n, c in planted if c == col}, (rec["path"], col)
                seen_bad += len(lines)
    assert seen_bad > 0


def test_nhs_numbers_valid_except_planted(zone):
    cols = {"sus_apc": "NEWNHSNO", "gp": "NHS_NUMBER", "fft": "NHS_NUMBER"}
    n_invalid = 0
    for source, col in cols.items():
        for _, rec in readable(zone, source).iterrows():
            df = read_csv(zone["lz"] / rec["path"])
            v = df[col]
            present = canonical_series(v).notna().to_numpy()
            valid = valid_series(v).to_numpy()
            f = faults_of(zone, rec["path"])
            inv = set(f[f["kind"] == "invalid_nhs_number"]["line"])
            mis = set(f[f["kind"] == "missing_nhs_number"]["line"])
            assert set((np.flatnonzero(present & ~valid) + 2).tolist()) == inv, rec["path"]
            if source != "fft":  # FFT NHS numbers are optional: missing is not a fault
                assert set((np.flatnonzero(~present) + 2).tolist()) == mis, rec["path"]
            n_invalid += len(inv)
            # never a number outside the synthetic ranges (999 test range first, then other 9xx)
            digits = canonical_series(v).dropna()
            assert digits.str.startswith("9").all()
    assert n_invalid > 0


def test_every_planted_fault_is_really_there(zone):
    sites = read_csv(zone["lz"] / "reference" / "sites.csv")
    files = zone["files"].set_index("path")
    kinds = set()
    for path, f in zone["faults"].groupby("file"):
        rec = files.loc[path]
        df = read_csv(zone["lz"] / path)
        for _, r in f.iterrows():
            row = df.iloc[r["line"] - 2]
            val = row[r["field"]]
            k = r["kind"]
            kinds.add(k)
            if k == "invalid_nhs_number":
                assert val and not valid_series(pd.Series([val]))[0]
            elif k == "missing_nhs_number":
                assert val == ""
            elif k == "bad_code":
                codes = {**CODE_CHECKS["sus_apc"], **CODE_CHECKS["fft"], **CODE_CHECKS["gp"]}[r["field"]] \
                    if r["field"] != "SEX" else I.SEX_CODES
                assert val not in codes
            elif k == "malformed_consultant":
                assert not re.fullmatch(r"C\d{7}", val)
            elif k in ("bad_icd10", "bad_opcs4"):
                assert not re.fullmatch(SHAPES[r["field"]], val)
            elif k == "epiend_before_epistart":
                assert pd.Timestamp(row["EPIEND"]) < pd.Timestamp(row["EPISTART"])
            elif k == "dob_after_admidate":
                assert pd.Timestamp(row["DOB"]) > pd.Timestamp(row["ADMIDATE"])
            elif k == "future_date":
                submitted = rec["submitted_at"]
                assert pd.Timestamp(val) > pd.Timestamp(submitted[:8] if len(submitted) > 10 else submitted)
            elif k == "unparseable_date":
                assert pd.isna(pd.to_datetime(val, format="%Y-%m-%d", errors="coerce"))
            elif k == "response_date_outside_period":
                assert pd.Timestamp(val).strftime("%Y-%m") != rec["period"]
            elif k == "provider_mismatch":
                assert val != rec["submitter"]
            elif k == "duplicate_key":
                assert (df[r["field"]].iloc[: r["line"] - 2] == val).any()
            elif k == "unknown_site":
                assert val not in set(sites[sites["PROVIDER_CODE"] == rec["submitter"]]["SITE_CODE"])
            else:
                raise AssertionError(f"undocumented fault kind {k}")
    assert {"invalid_nhs_number", "missing_nhs_number", "bad_code", "malformed_consultant", "bad_icd10",
            "bad_opcs4", "epiend_before_epistart", "dob_after_admidate", "future_date", "unparseable_date",
            "response_date_outside_period", "provider_mismatch", "duplicate_key", "unknown_site"} <= kinds


def test_held_file_has_a_majority_of_rejected_rows(zone):
    held = zone["files"][zone["files"]["status"] == "held"]
    assert len(held) == 1
    rec = held.iloc[0]
    f = faults_of(zone, rec["path"])
    assert f[f["severity"] == "reject"]["line"].nunique() > rec["rows"] / 2


# --------------------------------------------------------------------------- determinism


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(zone, tmp_path):
    generate(tmp_path / "a", seed=0, scale=SCALE, months=MONTHS, start=START, progress=False)
    generate(tmp_path / "b", seed=7, scale=SCALE, months=MONTHS, start=START, progress=False)
    assert _digest(tmp_path / "a") == _digest(zone["lz"])
    assert _digest(tmp_path / "a_truth") == _digest(zone["truth"])
    assert _digest(tmp_path / "b") != _digest(zone["lz"])


# --------------------------------------------------------------------------- ground truth


def _sus_current_view(zone) -> pd.DataFrame:
    """Apply the accepted SUS submissions in submission-time order (an independent implementation)."""
    sus = readable(zone, "sus_apc")
    sus = sus[sus["status"] != "held"].sort_values("submitted_at")
    rej = zone["faults"][zone["faults"]["severity"] == "reject"]
    out = []
    for (prov, per), g in sus.groupby(["submitter", "period"]):
        state: dict = {}
        for _, rec in g.sort_values("submitted_at").iterrows():
            df = read_csv(zone["lz"] / rec["path"])
            bad = set(rej[rej["file"] == rec["path"]]["line"])
            if rec["protocol"] == "BULK":
                state = {}
                for _, row in df.iterrows():  # first occurrence of a key; later duplicates are faults
                    state.setdefault(row["SUSRECID"], row)
            else:
                for i, row in df.iterrows():
                    if i + 2 in bad:
                        continue
                    if row["CDS_UPDATE_TYPE"] == "1":
                        state.pop(row["SUSRECID"], None)
                    else:
                        state[row["SUSRECID"]] = row
        for key, row in state.items():
            r = row.to_dict()
            r["_provider"] = prov
            out.append(r)
    return pd.DataFrame(out)


def test_current_sus_view_matches_linkage_truth(zone):
    cur = _sus_current_view(zone)
    lk = pd.read_parquet(zone["truth"] / "linkage_episodes.parquet")
    lk = lk[lk["source"] == "sus_apc"]
    assert set(zip(cur["_provider"], cur["SUSRECID"])) == set(zip(lk["provider_code"], lk["susrecid"]))
    # episodes belong to the period of their EPIEND, multi-episode spells end with DISDATE on the last
    assert (cur["EPIEND"].str[:7].isin(zone["summary"]["periods"])).all()
    spells = cur.groupby("SUSSPELLID")["EPIORDER"].max()
    assert (spells > "01").any()
    last = cur.merge(spells.rename("MAXORD"), left_on="SUSSPELLID", right_index=True)
    assert (last[last["EPIORDER"] < last["MAXORD"]]["DISDATE"] == "").all()


def test_linkage_ranks_recomputed_from_the_files(zone):
    # GP patients: newest accepted extract of each practice, type 1 rows and faulted rows left out
    gpf = readable(zone, "gp")
    gpf = gpf.loc[gpf.sort_values("submitted_at").groupby("submitter")["submitted_at"].idxmax()]
    rows = []
    for _, rec in gpf.iterrows():
        df = read_csv(zone["lz"] / rec["path"])
        bad = set(faults_of(zone, rec["path"])["line"])
        df = df[~(df.index + 2).isin(bad) & (df["OBJECTION"] != "9Nu0")].copy()
        df["practice"] = rec["submitter"]
        rows.append(df)
    gp = pd.concat(rows, ignore_index=True)
    gp["nhs"] = canonical_series(gp["NHS_NUMBER"])
    gp["pc"] = gp["POSTCODE"].str.replace(" ", "").str.upper()
    cur = pd.concat([_sus_current_view(zone), _hes_rows(zone)], ignore_index=True)
    cur["nhs"] = canonical_series(cur["NEWNHSNO"])
    cur["valid"] = valid_series(cur["NEWNHSNO"]).to_numpy()
    cur["pc"] = cur["HOMEADD"].str.replace(" ", "").str.upper()
    cur["my"] = np.where(cur["DOB"] != "", cur["DOB"].str[5:7] + cur["DOB"].str[:4],
                         cur["MYDOB"].str[:2] + cur["MYDOB"].str[2:])
    gp["my"] = gp["DATE_OF_BIRTH"].str[5:7] + gp["DATE_OF_BIRTH"].str[:4]
    m = cur[cur["valid"]].reset_index().merge(gp, on="nhs", suffixes=("", "_gp"))
    sex_ok = m["SEX"].isin(["1", "2"]) & (m["SEX"] == m["SEX_gp"])
    dob_eq = (m["DOB"] != "") & (m["DOB"] == m["DATE_OF_BIRTH"])
    pc_eq = (m["pc"] != "") & (m["pc"] == m["pc_gp"])
    m["lvl"] = np.where(dob_eq & sex_ok & pc_eq, 1, np.where(dob_eq & sex_ok, 2,
                        np.where((m["my"] == m["my_gp"]) & sex_ok, 3, 4)))
    rank = m.groupby("index")["lvl"].min()
    keyed = gp[gp["SEX"].isin(["1", "2"])].drop_duplicates(["DATE_OF_BIRTH", "SEX", "pc", "nhs"])
    cnt = keyed.groupby(["DATE_OF_BIRTH", "SEX", "pc"]).size().rename("n").reset_index()
    inv = cur[~cur["valid"] & (cur["DOB"] != "") & cur["SEX"].isin(["1", "2"]) & (cur["pc"] != "")].reset_index()
    inv = inv.merge(cnt, left_on=["DOB", "SEX", "pc"], right_on=["DATE_OF_BIRTH", "SEX", "pc"])
    r5 = inv[inv["n"] == 1]["index"]
    expect = pd.Series(0, index=cur.index)
    expect.loc[rank.index] = rank
    expect.loc[r5] = 5
    cur["rank"] = expect
    lk = pd.read_parquet(zone["truth"] / "linkage_episodes.parquet")
    both = cur.merge(lk, left_on=["_provider", "SUSRECID"], right_on=["provider_code", "susrecid"])
    assert len(both) == len(lk)
    assert (both["rank"] == both["match_rank"].fillna(0).astype(int)).all()
    assert set(both["rank"]) == {0, 1, 2, 3, 4, 5}
    # every kind of unlinkable episode is planted
    un = lk[lk["match_rank"].isna()]
    assert (un["nhs_number_valid"] & ~un["in_any_extract"]).any()  # valid number in no extract
    assert (~un["nhs_number_valid"] & lk.loc[un.index, "fault_kinds"].fillna("").str.contains("nhs")).any()
    assert un["type1_patient"].any()
    assert un["rank5_ambiguous"].any() or (un["identity_case"] == "nhs_missing_postcode_differs").any()
    # type 1 patients never link
    t1 = lk[lk["type1_patient"]]
    assert len(t1) and (t1["linked_nhs_number"] != t1["true_nhs_number"]).all()  # never linked to themselves


def _hes_rows(zone) -> pd.DataFrame:
    """The HES extract's rows as the linkage reads them: keyed by PROCODE3 and SUSRECID,
    else EPIKEY; HES placeholder dates read as empty."""
    hes = read_csv(zone["lz"] / "hes_apc" / "HES_APC_extract.csv")
    hes["_provider"] = hes["PROCODE3"]
    hes["SUSRECID"] = hes["SUSRECID"].where(hes["SUSRECID"] != "", hes["EPIKEY"])
    hes["DOB"] = hes["DOB"].mask(hes["DOB"].isin(["1800-01-01", "1801-01-01", "1600-01-01", "1582-10-15"]), "")
    return hes


def test_coverage_truth_has_low_providers_and_practices(zone):
    prov = pd.read_parquet(zone["truth"] / "linkage_provider.parquet")
    prac = pd.read_parquet(zone["truth"] / "linkage_practice.parquet")
    assert (~prov["meets_nhs_number_standard"]).any()
    assert (prac["pct_linked"] < 90).any() and (prac["pct_linked"] >= 90).any()
    lk = pd.read_parquet(zone["truth"] / "linkage_episodes.parquet")
    use = lk[~lk["expected_quarantined"]]
    assert prov["episodes"].sum() == len(use)
    assert prov[[f"linked_rank_{r}" for r in range(1, 6)]].sum().sum() == use["match_rank"].notna().sum()


def test_gp_extract_truth_recounted_from_files(zone):
    gx = pd.read_parquet(zone["truth"] / "gp_extracts.parquet")
    assert len(gx) == len(readable(zone, "gp"))
    for _, t in gx.iterrows():
        df = read_csv(zone["lz"] / t["file"])
        bad = set(faults_of(zone, t["file"])["line"])
        ok = ~(df.index + 2).isin(bad)
        d = t["extract_date"]
        assert len(df) == t["rows"]
        assert (df["OBJECTION"] == "9Nu0").sum() == t["type1_objections"]
        assert (df["OBJECTION"] == "9Nu4").sum() == t["type2_objections"]
        reg = ok & (df["DEREGISTRATION_DATE"] == "") & (df["DATE_OF_DEATH"] == "") & (df["OBJECTION"] != "9Nu0")
        assert reg.sum() == t["registered_patients"]
        # everyone listed was registered at some time in the 12 months before the extract date
        assert (df["REGISTRATION_DATE"][ok] <= d).all()
        dereg = parse_date(df["DEREGISTRATION_DATE"])
        assert (dereg.isna() | (dereg >= pd.Timestamp(d) - pd.Timedelta(days=366))).all()
    share1 = gx["type1_objections"].sum() / gx["rows"].sum()
    share2 = gx["type2_objections"].sum() / gx["rows"].sum()
    assert 0.005 < share1 < 0.06 and 0.002 < share2 < 0.01
    # some practices miss a month; some send two extracts in a month
    per = gx.groupby("practice_code")["period"].nunique()
    assert (per < MONTHS).any()
    assert (gx.groupby(["practice_code", "period"]).size() > 1).any()
    obj = pd.read_parquet(zone["truth"] / "objectors.parquet")
    newest = gx[gx["newest_overall"]]
    assert len(obj) == newest["type1_objections"].sum() + newest["type2_objections"].sum()
    # a patient who moved practice is listed at both
    allp = pd.concat([read_csv(zone["lz"] / f).assign(p=f) for f in newest["file"]])
    assert (allp.groupby(canonical_series(allp["NHS_NUMBER"]))["p"].nunique() > 1).any()


def test_fft_counts_recounted_from_files(zone):
    fft = readable(zone, "fft")
    current = fft[fft["status"] == "current"]
    rows = []
    for _, rec in current.iterrows():
        df = read_csv(zone["lz"] / rec["path"])
        f = faults_of(zone, rec["path"])
        bad = set(f[f["severity"] == "reject"]["line"])
        df = df[~(df.index + 2).isin(bad)]
        rows.append(df.assign(period=rec["period"]))
    df = pd.concat(rows)
    got = df.groupby(["period", "SETTING", "PROVIDER_CODE", "SITE_CODE", "WARD_CODE", "RESPONSE"]).size()
    t = pd.read_parquet(zone["truth"] / "fft_counts.parquet").fillna({"ward_code": ""})
    names = ["extremely_likely", "likely", "neither", "unlikely", "extremely_unlikely", "dont_know"]
    exp = {}
    for _, r in t.iterrows():
        for i, n in enumerate(names):
            if r[n]:
                exp[(r["period"], r["setting"], r["provider_code"], r["site_code"], r["ward_code"], str(i + 1))] = r[n]
    assert got.to_dict() == exp
    # realistic shares: IP ~96% recommend, A&E ~86%
    pct = df.groupby("SETTING")["RESPONSE"].apply(lambda s: 100 * s.isin(["1", "2"]).mean())
    assert pct["IP"] > 92 and 78 < pct["AE"] < 92
    assert (df[df["SETTING"] == "IP"]["WARD_CODE"] != "").all()
    assert (df[df["SETTING"] == "AE"]["WARD_CODE"] == "").all()
    linked = pd.read_parquet(zone["truth"] / "fft_linked.parquet")
    assert linked["responses"].sum() > 0
    assert linked["responses"].sum() <= (df[df["SETTING"] == "IP"]["NHS_NUMBER"] != "").sum()


def test_fft_linked_truth_recomputed(zone):
    cur = _sus_current_view(zone)
    spells = cur[(cur["DISDATE"] != "") & valid_series(cur["NEWNHSNO"]).to_numpy()]
    spells = spells.assign(nhs=canonical_series(spells["NEWNHSNO"]), dis=pd.to_datetime(spells["DISDATE"]))
    fft = readable(zone, "fft")
    total = 0
    for _, rec in fft[fft["status"] == "current"].iterrows():
        df = read_csv(zone["lz"] / rec["path"])
        f = faults_of(zone, rec["path"])
        bad = set(f[f["severity"] == "reject"]["line"])
        df = df[~(df.index + 2).isin(bad) & (df["SETTING"] == "IP") & valid_series(df["NHS_NUMBER"]).to_numpy()]
        df = df.assign(nhs=canonical_series(df["NHS_NUMBER"]), d=pd.to_datetime(df["RESPONSE_DATE"]))
        m = df.reset_index().merge(spells[spells["_provider"] == rec["submitter"]], on="nhs")
        m = m[(m["dis"] <= m["d"]) & (m["dis"] >= m["d"] - pd.Timedelta(days=2))]
        total += m["index"].nunique()
    linked = pd.read_parquet(zone["truth"] / "fft_linked.parquet")
    assert total == linked["responses"].sum() > 0


# --------------------------------------------------------------------------- realism


def test_population_and_activity_look_real(zone):
    gx = pd.read_parquet(zone["truth"] / "gp_extracts.parquet")
    newest = gx[gx["newest_overall"]]
    gp = pd.concat([read_csv(zone["lz"] / f) for f in newest["file"]])
    gp = gp[gp["DATE_OF_BIRTH"].str.fullmatch(r"\d{4}-\d{2}-\d{2}")]
    age = (pd.Timestamp(START + "-01") - pd.to_datetime(gp["DATE_OF_BIRTH"], errors="coerce")).dt.days / 365.25
    assert 0.12 < (age >= 65).mean() < 0.25 and 0.15 < (age < 18).mean() < 0.28
    assert 0.45 < (gp["SEX"] == "2").mean() < 0.56
    cur = _sus_current_view(zone)
    cur = cur[cur["DOB"].str.fullmatch(r"\d{4}-\d{2}-\d{2}") & cur["ADMIDATE"].str.fullmatch(r"\d{4}-\d{2}-\d{2}")]
    cur_age = (pd.to_datetime(cur["ADMIDATE"], errors="coerce") - pd.to_datetime(cur["DOB"], errors="coerce")).dt.days / 365.25
    # admission rate rises with age: episodes per patient, 75+ vs 20-50
    rate_old = (cur_age >= 75).sum() / (age >= 75).sum()
    rate_young = ((cur_age >= 20) & (cur_age < 50)).sum() / ((age >= 20) & (age < 50)).sum()
    assert rate_old > 2 * rate_young
    died = cur["DISMETH"] == "4"
    assert died.any() and died[cur_age >= 75].mean() > died[cur_age < 50].mean()
    assert cur["NHSNOIND"].eq("01").mean() > 0.9
    assert cur["CONSULT"].str.fullmatch(r"C\d{7}").mean() > 0.99
    ops = set(cur["OPERTN_4_01"].str[:3])
    assert {"K40", "K75", "W37", "H07", "M61"} & ops
    assert cur["ADMIMETH"].isin(["21", "22", "23", "24", "25", "28"]).any()
    diag = pd.concat([cur[f"DIAG_4_{i:02d}"] for i in range(1, 21)])
    assert {"I500", "E119", "J449"} <= set(diag)


def test_truth_json_and_truth_md_document_every_file_and_field(zone):
    doc = json.loads((zone["truth"] / "truth.json").read_text())
    assert doc["summary"]["practices"] >= 8 and doc["summary"]["providers"] >= 3
    assert doc["summary"]["commissioners"] >= 2
    assert not re.search(r"\b9\d{9}\b", json.dumps(doc["summary"]))  # no NHS numbers in the summary
    assert doc["outcomes"]["outlier_consultants"]
    assert all(3 <= o["relative_risk"] <= 4 for o in doc["outcomes"]["outlier_consultants"])
    md = (Path(__file__).parents[1] / "pipelines" / "synth" / "TRUTH.md").read_text()
    for p in zone["truth"].glob("*.parquet"):
        assert f"`{p.name}`" in md, p.name
        for col in pd.read_parquet(p).columns:
            assert f"`{col}`" in md, (p.name, col)
    for kind in set(zone["faults"]["kind"]) | set(zone["files"]["reason_kind"].dropna()):
        assert f"`{kind}`" in md, kind
    s = zone["summary"]
    assert s["files"] == len(zone["files"]) and s["periods"] == ["2014-01", "2014-02"]


def test_hes_extract_holds_every_planted_convention(zone):
    """The HES extract (TRUTH.md "The HES APC extract"): HES-only providers, no SUSSPELLID,
    EPIKEY keys, placeholders, EPIORDER 99, unfinished episodes, no DOB/MYDOB, PSEUDO_HESID."""
    hes = read_csv(zone["lz"] / "hes_apc" / "HES_APC_extract.csv")
    plants = pd.read_parquet(zone["truth"] / "hes_plants.parquet")
    assert "SUSSPELLID" not in hes.columns and "CDS_UPDATE_TYPE" not in hes.columns
    assert {"EPIKEY", "PSEUDO_HESID"} <= set(hes.columns)
    sus_providers = set(readable(zone, "sus_apc")["submitter"])
    assert set(hes["PROCODE3"]) == {"RZA", "RZB"} and not set(hes["PROCODE3"]) & sus_providers
    providers = read_csv(zone["lz"] / "reference" / "providers.csv")
    assert {"RZA", "RZB"} <= set(providers["PROVIDER_CODE"])
    hes["key"] = hes["SUSRECID"].where(hes["SUSRECID"] != "", hes["EPIKEY"])
    assert (hes["SUSRECID"] == "").any() and hes["key"].is_unique
    m = plants.merge(hes, left_on=["provider_code", "susrecid"], right_on=["PROCODE3", "key"], how="outer",
                     indicator=True)
    assert (m._merge == "both").all() and len(m) == len(hes)
    dates = hes[[c for c in hes.columns if c in ("DOB", "DISDATE") or c.startswith("OPDATE_")]]
    assert {"1800-01-01", "1801-01-01", "1600-01-01", "1582-10-15"} <= set(dates.to_numpy().ravel())
    assert {"V81997", "V81998", "V81999", "&"} <= set(hes["GPPRAC"])
    assert "99" in set(hes["EPIORDER"]) and {"1", "9"} <= set(hes["EPISTAT"])
    assert ((hes["DOB"] == "") & (hes["MYDOB"] == "") & (hes["NEWNHSNO"] != "")).any()
    nonhs = hes[hes["NEWNHSNO"] == ""]
    assert len(nonhs) >= 2 and nonhs["PSEUDO_HESID"].nunique() == 1
    death = m[m.plant == "death"].sort_values("EPIORDER")
    assert death["OPERTN_4_01"].iloc[0] == "K401" and death["DISMETH"].iloc[-1] == "4"
    # stays are multi-episode without a spell id: same person, provider and admission date
    multi = m.groupby(["plant"]).size()
    assert (multi > 1).sum() >= 3
    # every HES episode is in the linkage truth, counted under its own provider
    lk = pd.read_parquet(zone["truth"] / "linkage_episodes.parquet")
    h = lk[lk.source == "hes_apc"]
    assert set(zip(h.provider_code, h.susrecid)) == set(zip(hes.PROCODE3, hes.key))
    assert h[h.susrecid.isin(plants[plants.plant.str.startswith("gpprac_")].susrecid)].gpprac.isna().all()


def test_hes_conventions_planted_in_sus_files(zone):
    """EPIORDER 99, EPISTAT 9, GPPRAC placeholders and episodes without DOB and MYDOB in
    the SUS files, as sus_plants.parquet lists them."""
    cur = _sus_current_view(zone)
    sp = pd.read_parquet(zone["truth"] / "sus_plants.parquet")
    assert {"epistat_9", "epiorder_99", "no_dob_no_mydob", "gpprac_placeholder"} == set(sp.plant)
    m = sp.merge(cur, left_on=["provider_code", "susrecid"], right_on=["_provider", "SUSRECID"])
    assert len(m) == len(sp)
    by = {k: g for k, g in m.groupby("plant")}
    assert (by["epistat_9"].EPISTAT == "9").all() and (by["epistat_9"].DISDATE != "").all()
    assert set(cur.EPISTAT) == {"3", "9"} and (cur.EPISTAT == "9").sum() == len(by["epistat_9"])
    assert (by["epiorder_99"].EPIORDER == "99").all() and (cur.EPIORDER == "99").sum() == len(by["epiorder_99"])
    nd = by["no_dob_no_mydob"]
    assert ((nd.DOB == "") & (nd.MYDOB == "")).all() and (nd.match_rank.isna() | (nd.match_rank == 4)).all()
    assert set(by["gpprac_placeholder"].GPPRAC) == {"V81997", "V81998", "&"}
    prac = pd.read_parquet(zone["truth"] / "linkage_practice.parquet")
    assert not set(prac.practice_code) & {"V81997", "V81998", "V81999", "&"}
