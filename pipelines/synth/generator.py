"""generate(): the landing zone and its ground truth (see TRUTH.md)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from . import codes as C
from .fft import write_fft
from .gp import expected_linkage, write_batch_gp
from .hes import HES_PROVIDERS, write_hes_plants
from .population import ALL_PROC, DIAG_INDEX, ID_CATS, make_batch
from .sus import PRACTICE_PLACEHOLDER_CODES, SEVERITY, plant_sus_conventions, write_sus
from .util import NhsAllocator, write_file, ymd
from .world import World, build_world

EPISODE_KEYS = ["batch", "spell", "epiorder", "last", "prov", "period", "epistart", "epiend", "admi", "disdate",
                "admimeth", "dismeth", "cons", "spec", "proc", "proc2", "opdate", "diag", "hesid", "nhs", "nhs_valid",
                "nhsnoind", "dob", "dob_missing", "my_shift", "sex", "pc", "gpprac", "idcat", "true_nhs",
                "true_prac", "visitor", "objection", "readmission", "in_hosp", "classpat", "sid",
                "match_rank", "linked_nhs", "practice_at_epistart", "linked_at_gpprac", "rank5_ambiguous"]


def generate(out_dir, *, seed: int = 0, scale: float = 0.002, months: int = 3, start: str = "2014-01",
             truth_dir=None, progress: bool = True) -> dict:
    t0 = time.time()
    out = Path(out_dir)
    truth = Path(truth_dir) if truth_dir is not None else Path(str(out_dir).rstrip("/") + "_truth")
    if truth.resolve() == out.resolve() or out.resolve() in truth.resolve().parents:
        raise ValueError("truth_dir must not be inside the landing zone")
    for d in ("reference", "gp", "sus_apc", "fft", "hes_apc"):
        if (out / d).is_dir() and any((out / d).iterdir()):
            raise FileExistsError(f"{out / d} is not empty: generate() writes a fresh landing zone")
        (out / d).mkdir(parents=True, exist_ok=True)
    truth.mkdir(parents=True, exist_ok=True)
    w = build_world(seed, scale, months, start)
    alloc = NhsAllocator()
    files: list = []
    faults: list = []
    gp_truth: list = []
    objectors: list = []
    write_reference(w, out, files)
    bar = tqdm(total=len(w.batches) + 2 * len(w.prov_codes), desc="synth", unit="step", file=sys.stderr,
               disable=not progress)
    parts = []
    tallies = []
    for b in range(len(w.batches)):
        B = make_batch(w, b, alloc)
        tallies.append(cohort_death_tally(w, B))
        G = write_batch_gp(w, b, B, out, files, faults, gp_truth, objectors)
        E = B["episodes"]
        E.update(expected_linkage(G, E))
        parts.append({k: E[k] for k in EPISODE_KEYS})
        del B, G
        bar.update(1)
    E = {k: np.concatenate([p[k] for p in parts]) for k in EPISODE_KEYS}
    del parts
    plant_sus_conventions(E)
    cur = write_sus(w, E, out, files, faults, progress=bar)
    hes = write_hes_plants(w, E, cur, out, files)
    n_res = int(w.prac_size.sum())
    fft = write_fft(w, E, cur, out, files, faults, alloc, n_res, progress=bar)
    bar.close()
    tally = pd.concat(tallies, ignore_index=True).groupby(["cons", "cohort"], as_index=False).sum()
    summary = write_truth(w, E, cur, fft, files, faults, gp_truth, objectors, out, truth, seed, scale, months, start,
                          tally, hes)
    summary["seconds"] = round(time.time() - t0, 1)
    return summary


def _cohort_of_group() -> dict:
    """3-character OPCS-4 group -> (its cohort in a spell without an E66 obesity
    diagnosis, its cohort in a spell with one), as the packaged cohort table has them:
    upper GI excludes E66, bariatric requires it."""
    plain, obese = {}, {}
    for name, prefixes in C.COHORT_SPECIALTY:
        for g in prefixes:
            if name != "bariatric_surgery":
                plain[g] = name
            if name != "upper_gi_surgery":
                obese[g] = name
    return {g: (plain.get(g), obese.get(g)) for g in set(plain) | set(obese)}


def cohort_death_tally(w: World, B: dict) -> pd.DataFrame:
    """Per consultant and cohort specialty (methods.md), over one batch's spells with a
    cohort procedure in a patient aged 18 or over at admission: ``procedures``,
    ``deaths_30d`` (any death of the patient from the procedure date to 30 days after:
    the outcome as methods.md defines it, whether the pipeline can see it or not),
    ``expected_planted`` and ``expected_if_rr_1`` (sums of the risk model's probabilities
    with and without the consultant's relative risk). No random draw is made here."""
    S, P = B["spells"], B["persons"]
    groups = _cohort_of_group()
    e66 = S["primary"] == DIAG_INDEX["E668"]
    grp = np.array([c[:3] for c in ALL_PROC] + [""])[np.where(S["proc"] >= 0, S["proc"], len(ALL_PROC))]
    g = pd.Series(grp)
    plain = g.map({k: v[0] for k, v in groups.items()})
    obese = g.map({k: v[1] for k, v in groups.items()})
    cohort = np.where(e66, obese, plain)
    keep = (S["proc"] >= 0) & (S["age"] >= 18) & pd.notna(cohort)
    op = S["opdate"][keep].astype(np.int64)
    death = P["death"][S["pat"][keep]].astype(np.int64)
    return pd.DataFrame({
        "cons": S["cons"][keep], "cohort": cohort[keep].astype(str), "procedures": 1,
        "deaths_30d": ((death >= op) & (death <= op + 30)).astype(int),
        "expected_planted": S["p_death"][keep], "expected_if_rr_1": S["p_death_null"][keep],
    })


def outlier_cohort_figures(w: World, tally: pd.DataFrame) -> dict:
    """For each planted outlier consultant: its figures by cohort specialty over the whole
    generated period, and the relative risk of 30-day death (any cause, methods.md's
    outcome) that its planted relative risk amounts to. The planted relative risk acts on
    the risk model's deaths only; deaths from other causes within 30 days (background
    mortality, a death in a later spell) are not raised by it. Their rate per procedure
    ``b`` is estimated from the other consultants' procedures of the cohort (all-cause
    deaths minus the model's expected deaths), and
    ``relative_risk_30d = (expected_planted + n b) / (expected_if_rr_1 + n b)``."""
    rr = w.cons_rr[tally["cons"].to_numpy()]
    others = tally[rr == 1].groupby("cohort")[["procedures", "deaths_30d", "expected_if_rr_1"]].sum()
    b = ((others["deaths_30d"] - others["expected_if_rr_1"]) / others["procedures"]).clip(lower=0)
    out: dict = {}
    for r in tally[rr > 1].itertuples(index=False):
        other = float(b.get(r.cohort, 0.0)) * r.procedures
        out.setdefault(int(r.cons), []).append(dict(
            specialty=r.cohort, procedures=int(r.procedures), deaths_30d=int(r.deaths_30d),
            expected_deaths_planted=round(float(r.expected_planted), 3),
            expected_deaths_if_rr_1=round(float(r.expected_if_rr_1), 3),
            other_cause_deaths_expected=round(other, 3),
            relative_risk_30d=round((r.expected_planted + other) / (r.expected_if_rr_1 + other), 3)))
    return out


def write_reference(w: World, out: Path, files: list) -> None:
    def q(v):
        return f'"{v}"'

    lines = []
    for p, code in enumerate(w.prac_codes):
        pcode = _pc_string(p)
        cols = [code, w.prac_names[p], "Y60", "Q" + str(70 + w.prac_comm[p] % 30), f"{p % 200 + 1} HIGH STREET",
                "", "", "", "", pcode, ymd(w.prac_open[p]).replace("-", ""), "", "A", "B",
                w.comm_codes[w.prac_comm[p]], "20130401", "", f"0{1000000000 + p * 7919 % 899999999}", "", "", "",
                "0", "", w.comm_codes[w.prac_comm[p]], "", "4", ""]
        lines.append(",".join(q(c) for c in cols))
    for i, e in enumerate(w.extra_epraccur):
        cols = [e["code"], e["name"], "Y60", "Q70", "1 STATION ROAD", "", "", "", "", _pc_string(i),
                "19900101", e["close"], e["status"], "B", e["comm"], "20130401", "", "", "", "", "", "0", "",
                e["comm"], "", e["setting"], ""]
        lines.append(",".join(q(c) for c in cols))
    assert all(len(line.split('","')) == 27 for line in lines)
    write_file(out / "reference" / "epraccur.csv", ("\n".join(lines) + "\n").encode(), mtime=w.start * 86400)
    prov = "PROVIDER_CODE,NAME,COMMISSIONER_CODE\n" + "".join(
        f"{c},{n},{w.comm_codes[w.prov_comm[i]]}\n" for i, (c, n) in enumerate(zip(w.prov_codes, w.prov_names))) + "".join(
        f"{c},{n},{w.comm_codes[i % len(w.comm_codes)]}\n" for i, (c, n) in enumerate(HES_PROVIDERS))
    write_file(out / "reference" / "providers.csv", prov.encode(), mtime=w.start * 86400)
    sites = "SITE_CODE,PROVIDER_CODE,NAME\n" + "".join(
        f"{s},{w.prov_codes[w.site_prov[i]]},{n}\n" for i, (s, n) in enumerate(zip(w.site_codes, w.site_names)))
    write_file(out / "reference" / "sites.csv", sites.encode(), mtime=w.start * 86400)
    for name, rows in (("epraccur.csv", len(lines)), ("providers.csv", len(w.prov_codes) + len(HES_PROVIDERS)),
                       ("sites.csv", len(w.site_codes))):
        files.append(dict(path=f"reference/{name}", source="reference", submitter=None, period=None,
                          submitted_at=None, protocol=None, rows=rows, delimiter=",", gzip=False, bom=False,
                          status="current", reason_kind=None, newest_in_period=None))


def _pc_string(p: int) -> str:
    return f"{C.AREAS[p // 99 % len(C.AREAS)]}{p % 99 + 1} 0AA"


def _parquet(df: pd.DataFrame | pa.Table, path: Path) -> None:
    tbl = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(tbl, path, compression="zstd")


def write_truth(w, E, cur, fft, files, faults, gp_truth, objectors, out, truth, seed, scale, months, start,
                tally=None, hes=None) -> dict:
    # ---- files and faults
    fdf = pd.DataFrame(files)
    flt = pd.DataFrame(faults, columns=["file", "line", "kind", "field", "severity"])
    nf = flt.groupby("file").size()
    fdf["row_faults"] = fdf["path"].map(nf).fillna(0).astype(int)
    fdf["rows"] = fdf["rows"].astype("Int64")
    for c in ("gzip", "bom"):
        fdf[c] = fdf[c].astype(bool)
    fdf["newest_in_period"] = fdf["newest_in_period"].astype("boolean")
    fdf = fdf.sort_values("path").reset_index(drop=True)
    _parquet(fdf, truth / "files.parquet")
    _parquet(flt.sort_values(["file", "line", "field"]).reset_index(drop=True), truth / "row_faults.parquet")
    # ---- GP extracts and objections
    gdf = pd.DataFrame(gp_truth).sort_values(["practice_code", "extract_date"]).reset_index(drop=True)
    _parquet(gdf, truth / "gp_extracts.parquet")
    if objectors:
        o = {k: np.concatenate([x[k] for x in objectors]) for k in objectors[0]}
    else:
        o = dict(nhs_number=np.zeros(0, np.int64), objection=np.zeros(0, np.int8), practice=np.zeros(0, np.int64),
                 extract_date=np.zeros(0, np.int32))
    odf = pd.DataFrame({"nhs_number": o["nhs_number"].astype(str),
                        "objection": np.where(o["objection"] == 1, "9Nu0", "9Nu4"),
                        "objection_type": o["objection"].astype(np.int8),
                        "practice_code": np.array(w.prac_codes)[o["practice"]] if len(o["practice"]) else [],
                        "extract_date": [ymd(d) for d in o["extract_date"]]})
    _parquet(odf.sort_values(["practice_code", "nhs_number"]).reset_index(drop=True), truth / "objectors.parquet")
    # ---- linkage of the current SUS view
    e = cur["eidx"]
    real = e >= 0
    ei = np.where(real, e, 0)
    pr_codes = np.array(w.prac_codes + ["V81999"])
    gp = E["gpprac"][ei]
    prac_cov = E["practice_at_epistart"][ei]
    true_prac = E["true_prac"][ei]
    fault_by_line = flt.groupby(["file", "line"])["kind"].apply(lambda s: ",".join(sorted(set(s)))).to_dict()
    lk = pd.DataFrame({
        "provider_code": np.array(w.prov_codes)[cur["prov"]],
        "susrecid": cur["key"],
        "period": np.array(w.periods)[E["period"][ei]],
        "file": cur["path"], "line": cur["line"],
        "expected_quarantined": cur["rej"],
        "fault_kinds": [fault_by_line.get((f, int(n))) for f, n in zip(cur["path"], cur["line"])],
        "true_nhs_number": np.where(real & ~E["visitor"][ei] | real & E["visitor"][ei], E["true_nhs"][ei].astype(str), None),
        "nhs_number_valid": E["nhs_valid"][ei],
        "nhs_number_verified": E["nhsnoind"][ei] == 1,
        "identity_case": np.array(ID_CATS)[E["idcat"][ei]],
        "match_rank": pd.array(np.where(E["match_rank"][ei] > 0, E["match_rank"][ei], -1), dtype="Int8"),
        "linked_nhs_number": np.where(E["match_rank"][ei] > 0, E["linked_nhs"][ei].astype(str), None),
        "gpprac": np.where(gp >= 0, pr_codes[np.maximum(gp, 0)],
                           pd.Series(gp).map(PRACTICE_PLACEHOLDER_CODES).to_numpy(dtype=object)),
        "practice_at_epistart": np.where(prac_cov >= 0, pr_codes[np.maximum(prac_cov, 0)], None),
        "true_practice_at_epistart": np.where(true_prac >= 0, pr_codes[np.maximum(true_prac, 0)], None),
        "linked_at_gpprac": E["linked_at_gpprac"][ei],
        "type1_patient": E["objection"][ei] == 1,
        "type2_patient": E["objection"][ei] == 2,
        "rank5_ambiguous": E["rank5_ambiguous"][ei],
        "in_any_extract": ~E["visitor"][ei],
    })
    lk.loc[~real, ["true_nhs_number", "linked_nhs_number", "gpprac", "practice_at_epistart"]] = None
    lk["match_rank"] = lk["match_rank"].mask(lk["match_rank"] < 0)
    lk["source"] = "sus_apc"
    # ---- HES conventions planted in the SUS files (sus.plant_sus_conventions)
    kinds = [("epistat_9", E["epistat9"]), ("epiorder_99", E["epiorder99"]), ("no_dob_no_mydob", E["no_mydob"]),
             ("gpprac_placeholder", E["gpprac"] < -2)]
    sp = []
    for kind, flag in kinds:
        f = real & ~cur["rej"] & flag[ei]
        sp.append(pd.DataFrame({
            "plant": kind, "provider_code": np.array(w.prov_codes)[cur["prov"][f]], "susrecid": cur["key"][f],
            "spell_id": [f"{w.prov_codes[p_]}{int(x):010d}" for p_, x in zip(cur["prov"][f], E["spell"][ei[f]])],
            "gpprac": lk["gpprac"].to_numpy()[f],
            "match_rank": pd.array(np.where(E["match_rank"][ei[f]] > 0, E["match_rank"][ei[f]], -1), dtype="Int8"),
            "spell_disdate": [None if kind == "epistat_9" or d < -10**6 else ymd(int(d)) for d in E["disdate"][ei[f]]],
            "spell_dismeth": [None if kind == "epistat_9" else str(int(x)) for x in E["dismeth"][ei[f]]]}))
    sp = pd.concat(sp, ignore_index=True)
    sp["match_rank"] = sp["match_rank"].mask(sp["match_rank"] < 0)
    _parquet(sp.sort_values(["plant", "provider_code", "susrecid"]).reset_index(drop=True),
             truth / "sus_plants.parquet")
    if hes is not None:  # the HES extract's episodes (pipelines/synth/hes.py)
        h = hes[0].copy()
        h["match_rank"] = pd.array(h["match_rank"], dtype="Int8")
        lk = pd.concat([lk, h[lk.columns]], ignore_index=True)
        _parquet(hes[1], truth / "hes_plants.parquet")
    lk = lk.sort_values(["provider_code", "susrecid"]).reset_index(drop=True)
    _parquet(lk, truth / "linkage_episodes.parquet")
    use = lk[~lk["expected_quarantined"]]
    prov = use.groupby(["period", "provider_code"]).agg(
        episodes=("susrecid", "size"), episodes_valid_nhs_number=("nhs_number_valid", "sum"),
        episodes_verified_nhs_number=("nhs_number_verified", "sum"),
        episodes_linked=("match_rank", lambda s: int(s.notna().sum()))).reset_index()
    for r in range(1, 6):
        rr = use[use["match_rank"] == r].groupby(["period", "provider_code"]).size()
        prov[f"linked_rank_{r}"] = [int(rr.get((a, b_), 0)) for a, b_ in zip(prov["period"], prov["provider_code"])]
    prov["pct_valid_nhs_number"] = 100 * prov["episodes_valid_nhs_number"] / prov["episodes"]
    prov["meets_nhs_number_standard"] = prov["pct_valid_nhs_number"] >= 99
    _parquet(prov, truth / "linkage_provider.parquet")
    pu = use[use["gpprac"].isin(w.prac_codes)]
    prac = pu.groupby(["period", "gpprac"]).agg(episodes_expected=("susrecid", "size"),
                                                episodes_linked=("linked_at_gpprac", "sum")).reset_index()
    prac = prac.rename(columns={"gpprac": "practice_code"})
    prac["pct_linked"] = 100 * prac["episodes_linked"] / prac["episodes_expected"]
    _parquet(prac, truth / "linkage_practice.parquet")
    # ---- FFT
    _parquet(fft["counts"], truth / "fft_counts.parquet")
    linked = fft["linked"] if len(fft["linked"]) else pd.DataFrame(
        columns=["period", "provider_code", "tretspef", "extremely_likely", "likely", "neither", "unlikely",
                 "extremely_unlikely", "dont_know", "responses"])
    _parquet(linked, truth / "fft_linked.parquet")
    # ---- consultants and outliers
    cons = pd.DataFrame({"provider_code": np.array(w.prov_codes)[w.cons_prov],
                         "mainspef": np.array(C.SPEC_CODES)[w.cons_spec], "consultant_code": w.cons_codes,
                         "relative_risk": w.cons_rr})
    _parquet(cons, truth / "consultants.parquet")
    groups = _cohort_of_group()
    figures = outlier_cohort_figures(w, tally) if tally is not None else {}
    outliers = []
    for i, r in cons[cons["relative_risk"] > 1].iterrows():
        s = next(x for x in C.SPECIALTIES if x["code"] == r["mainspef"])
        cohorts = sorted({n for pcode, _ in s["procs"] for n in groups.get(pcode[:3], ()) if n})
        outliers.append(dict(provider_code=r["provider_code"], mainspef=r["mainspef"],
                             consultant_code=r["consultant_code"], relative_risk=float(r["relative_risk"]),
                             cohort_specialties=cohorts, cohorts=figures.get(int(i), [])))
    # ---- summary
    status_counts = fdf.groupby(["source", "status"]).size()
    rows_per_feed = fdf[fdf["status"] != "rejected"].groupby("source")["rows"].sum()
    summary = dict(
        seed=seed, scale=scale, months=months, start=start, periods=w.periods,
        out_dir=str(out), truth_dir=str(truth),
        practices=len(w.prac_codes), epraccur_rows=len(w.prac_codes) + len(w.extra_epraccur),
        commissioners=len(w.comm_codes), providers=len(w.prov_codes), sites=len(w.site_codes),
        consultants=len(w.cons_codes), registered_patients_generated=int(w.prac_size.sum()),
        files=int(len(fdf)), files_by_source=fdf.groupby("source").size().astype(int).to_dict(),
        files_by_status={f"{a}/{b}": int(v) for (a, b), v in status_counts.items()},
        rows_per_feed={k: int(v) for k, v in rows_per_feed.items()},
        row_faults=int(len(flt)), row_faults_by_kind=flt.groupby("kind").size().astype(int).to_dict(),
        current_sus_episodes=int(len(lk)),
        current_sus_episodes_by_rank={str(k): int(v) for k, v in
                                      lk["match_rank"].fillna(0).astype(int).value_counts().sort_index().items()},
        gp_extracts=int(len(gdf)),
        type1_objections_newest=int(gdf[gdf["newest_overall"]]["type1_objections"].sum()),
        type2_objections_newest=int(gdf[gdf["newest_overall"]]["type2_objections"].sum()),
        fft_valid_responses_current=int(fft["counts"][["extremely_likely", "likely", "neither", "unlikely",
                                                        "extremely_unlikely", "dont_know"]].to_numpy().sum()),
        low_quality_providers=[w.prov_codes[i] for i in np.flatnonzero(w.prov_low_quality)],
        low_linkage_practices=[w.prac_codes[i] for i in w.low_linkage_practices],
    )
    doc = dict(
        summary={k: v for k, v in summary.items() if k not in ("out_dir", "truth_dir")},
        fault_kinds={k: v for k, v in sorted(SEVERITY.items())},
        whole_file_fault_kinds=["malformed_file", "misnamed_file", "missing_required_column",
                                "majority_rows_rejected"],
        identity_cases=ID_CATS,
        outcomes=dict(outlier_consultants=outliers, risk_model=C.RISK_MODEL,
                      note="30-day death ~ Bernoulli(sigmoid(logit)); age in years at admission"),
        parquet={p.name: p.name for p in sorted(truth.glob("*.parquet"))},
    )
    (truth / "truth.json").write_text(json.dumps(doc, indent=2, sort_keys=True, default=_json_default))
    summary["truth_files"] = sorted(p.name for p in truth.iterdir())
    return summary


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))
