"""One batch of practices: its patients, registrations, deaths and hospital spells/episodes.

Everything is numeric (numpy); strings are only made when files are written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import codes as C
from .util import BIG, NULL, NhsAllocator, invalidate, mod11_valid
from .world import World, age_rate_shape, rng_for

YEAR = 365.25
N_SPEC = len(C.SPECIALTIES)
ALL_DIAG = sorted({d for s in C.SPECIALTIES for d in s["diag"]} | {c for c, _, _ in C.CHARLSON}
                  | {c for c, _ in C.FILLER_DIAG} | {"E668"})
DIAG_INDEX = {c: i for i, c in enumerate(ALL_DIAG)}
ALL_PROC = sorted({p for s in C.SPECIALTIES for p, _ in s["procs"]} | {"Y532"})
PROC_INDEX = {c: i for i, c in enumerate(ALL_PROC)}
CHARLSON_W = {c: w for c, w, _ in C.CHARLSON}
ADMIMETH = ["11", "12", "13", "21", "22", "23", "24", "25", "28", "2A", "2B", "2C", "2D", "31", "32", "81"]
ADMI_EL_P = np.array([0.7, 0.2, 0.1])
ADMI_EM_P = np.array([0.6, 0.08, 0.02, 0.1, 0.02, 0.15, 0.01, 0.01, 0.005, 0.005])
ADMI_EM_P = ADMI_EM_P / ADMI_EM_P.sum()
# Identity categories of a hospital record (see TRUTH.md).
ID_CATS = ["clean", "postcode_differs", "dob_day_differs", "dob_missing_mydob_ok", "sex_differs",
           "dob_missing_mydob_differs", "nhs_missing", "nhs_missing_postcode_differs", "nhs_invalid",
           "dob_after_admidate", "sex_bad_code"]
ID_P_NORMAL = np.array([0.9105, 0.04, 0.015, 0.01, 0.008, 0.005, 0.003, 0.001, 0.0015, 0.0005, 0.0005])
ID_P_LOWQ = np.array([0.8710, 0.04, 0.015, 0.01, 0.008, 0.005, 0.03, 0.006, 0.014, 0.0005, 0.0005])


def _choice_rows(rng, weights: np.ndarray) -> np.ndarray:
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), weights.shape[1] - 1)


def make_batch(w: World, b: int, alloc: NhsAllocator) -> dict:
    rng = rng_for(w.seed, 1, b)
    pr = w.batches[b]
    sizes = w.prac_size[pr]
    N = int(sizes.sum())
    start, end = w.start, w.end
    lookback = start - 366

    # ---- residents
    prac = np.repeat(pr, sizes)
    band = rng.choice(len(C.AGE_BANDS), size=N, p=C.AGE_SHARES)
    age = C.AGE_BANDS[band] + rng.random(N) * np.where(band == len(C.AGE_BANDS) - 1, 12, 5)
    dob = (start - age * YEAR).astype(np.int32)
    p_female = 0.505 + 0.25 * np.clip((age - 65) / 30, 0, 1)
    sex = np.where(rng.random(N) < p_female, 2, 1).astype(np.int8)
    odd = rng.random(N)
    sex[odd < 0.0004] = 0
    sex[(odd >= 0.0004) & (odd < 0.0008)] = 9
    units = np.maximum(30, sizes // 25)
    unit_of = rng.integers(0, 1 << 30, N) % np.repeat(units, sizes)
    pc = prac.astype(np.int64) * C.PC_PER_PRACTICE + C.UNITS_PER_SECTOR + unit_of
    eth = rng.choice(len(C.ETHNIC), size=N, p=C.ETHNIC_P).astype(np.int8)
    eth[rng.random(N) < 0.05] = -1
    reg0 = np.maximum(dob + rng.integers(0, 60, N), start - (rng.exponential(8 * YEAR, N)).astype(np.int32))
    recent = rng.random(N) < 0.03
    reg0 = np.where(recent, np.maximum(dob, lookback + rng.integers(0, end - lookback, N)), reg0).astype(np.int32)
    obj = np.zeros(N, dtype=np.int8)
    u = rng.random(N)
    obj[u < np.repeat(w.prac_type1_rate[pr], sizes)] = 1
    obj[(obj == 0) & (rng.random(N) < 0.005)] = 2
    # twins: same date of birth, sex and postcode as the previous patient of the practice
    twin = np.flatnonzero((rng.random(N) < 0.004) & (np.arange(N) > 0))
    twin = twin[prac[twin] == prac[twin - 1]]
    dob[twin], sex[twin], pc[twin] = dob[twin - 1], sex[twin - 1], pc[twin - 1]
    is_twin = np.zeros(N, dtype=bool)
    is_twin[twin] = True
    is_twin[twin - 1] = True
    nhs = alloc.get(w.patient_offset[pr[0]] + rng.permutation(N))
    # background deaths in [lookback, end)
    q = np.minimum(0.4, 3e-5 * np.exp(0.095 * age))
    T = (end - lookback) / YEAR
    bg_die = rng.random(N) < 1 - (1 - q) ** T
    death = np.where(bg_die, lookback + rng.integers(0, end - lookback, N), BIG).astype(np.int32)
    # movers and leavers
    move_u = rng.random(N)
    mover = (move_u < 0.08 * T) & (len(pr) > 1)
    leaver = (move_u >= 0.08 * T) & (move_u < 0.10 * T)
    move_d = (lookback + rng.integers(0, end - lookback, N)).astype(np.int32)
    move_d = np.maximum(move_d, reg0 + 1)
    mover &= move_d < np.minimum(death, end)
    leaver &= move_d < np.minimum(death, end)
    new_prac = pr[rng.integers(0, len(pr), N)]
    clash = new_prac == prac
    new_prac[clash] = pr[(np.searchsorted(pr, new_prac[clash]) + 1) % len(pr)]
    new_reg = (move_d + rng.integers(0, 15, N)).astype(np.int32)
    new_pc = new_prac.astype(np.int64) * C.PC_PER_PRACTICE + C.UNITS_PER_SECTOR + \
        rng.integers(0, 1 << 30, N) % units[np.searchsorted(pr, new_prac)]
    mover &= new_reg < end
    hesid = rng.integers(1 << 40, 1 << 62, N)

    # ---- visitors: valid NHS numbers, never registered with a practice in any extract
    V = int(w.visitor_n[b])
    vband = rng.choice(len(C.AGE_BANDS), size=V, p=C.AGE_SHARES)
    vage = C.AGE_BANDS[vband] + rng.random(V) * 5
    v_pr = pr[rng.integers(0, len(pr), V)]
    persons = dict(
        nhs=np.concatenate([nhs, alloc.get(w.visitor_offset[b] + np.arange(V))]),
        dob=np.concatenate([dob, (start - vage * YEAR).astype(np.int32)]),
        sex=np.concatenate([sex, rng.integers(1, 3, V).astype(np.int8)]),
        age=np.concatenate([age, vage]),
        pc=np.concatenate([pc, v_pr.astype(np.int64) * C.PC_PER_PRACTICE + rng.integers(0, C.UNITS_PER_SECTOR, V)]),
        prac=np.concatenate([prac, np.full(V, -2)]),
        reg0=np.concatenate([reg0, np.full(V, NULL, dtype=np.int32)]),
        obj=np.concatenate([obj, np.zeros(V, np.int8)]),
        death=np.concatenate([death, np.full(V, BIG, dtype=np.int32)]),
        mover=np.concatenate([mover, np.zeros(V, bool)]),
        move_d=np.concatenate([move_d, np.full(V, BIG, dtype=np.int32)]),
        new_prac=np.concatenate([new_prac, np.full(V, -2)]),
        new_reg=np.concatenate([new_reg, np.full(V, BIG, dtype=np.int32)]),
        new_pc=np.concatenate([new_pc, np.full(V, -1)]),
        leaver=np.concatenate([leaver, np.zeros(V, bool)]),
        twin=np.concatenate([is_twin, np.zeros(V, bool)]),
        hesid=np.concatenate([hesid, rng.integers(1 << 40, 1 << 62, V)]),
        visitor=np.concatenate([np.zeros(N, bool), np.ones(V, bool)]),
        eth=np.concatenate([eth, np.full(V, -1, np.int8)]),
    )
    spells = make_spells(w, b, persons, N, rng)
    # final deaths
    sd = spells["death"]
    pd_death = np.full(len(persons["nhs"]), BIG, dtype=np.int32)
    np.minimum.at(pd_death, spells["pat"], sd)
    persons["death"] = np.minimum(persons["death"], pd_death)
    persons["mover"] &= persons["new_reg"] < persons["death"]
    persons["leaver"] &= persons["move_d"] < persons["death"]
    rows = make_rows(persons, N, rng)
    episodes = make_episodes(w, b, persons, spells, rng)
    return dict(persons=persons, rows=rows, spells=spells, episodes=episodes, n_residents=N, rng=rng)


def make_rows(P: dict, N: int, rng) -> dict:
    """Registration rows: one per patient and practice (movers have two)."""
    death = P["death"][:N]
    lag_dereg = rng.integers(1, 30, N)
    dereg0 = np.full(N, BIG, dtype=np.int32)
    mv, lv = P["mover"][:N], P["leaver"][:N]
    dereg0[mv | lv] = P["move_d"][:N][mv | lv]
    died = death < BIG
    dereg0 = np.where(died, np.minimum(dereg0, death + lag_dereg), dereg0).astype(np.int32)
    m = np.flatnonzero(mv)
    dereg1 = np.where(died[m], death[m] + lag_dereg[m], BIG).astype(np.int32)
    death_rec = np.where(died, death + rng.integers(0, 10, N), BIG).astype(np.int32)
    idx = np.concatenate([np.arange(N), m])
    rows = dict(
        person=idx,
        prac=np.concatenate([P["prac"][:N], P["new_prac"][m]]),
        reg=np.concatenate([P["reg0"][:N], P["new_reg"][m]]).astype(np.int32),
        dereg=np.concatenate([dereg0, dereg1]).astype(np.int32),
        pc=np.concatenate([P["pc"][:N], P["new_pc"][m]]),
        death=death[idx], death_rec=death_rec[idx],
    )
    order = np.lexsort((rows["person"], rows["prac"]))
    return {k: v[order] for k, v in rows.items()}


def _spec_weights(age, em, female, maternity):
    W = np.zeros((len(age), N_SPEC))
    child = age < 16
    for j, s in enumerate(C.SPECIALTIES):
        wj = np.where(em, s["w_em"], s["w_el"]).astype(float)
        if s["age"] == "adult":
            wj = wj * (~child)
        elif s["age"] == "child":
            wj = wj * child
        elif s["age"] == "old":
            wj = wj * (age >= 70) * (1 + (age >= 80))
        elif s["age"] == "any":
            wj = wj * np.where(child, 0.3, 1.0)
        elif s["age"] == "maternity":
            wj = wj * 0
        if s["sex"] == "2":
            wj = wj * female
        if s["code"] == "300":
            wj = wj * (0.5 + age / 60)
        W[:, j] = wj
    W[maternity] = 0
    W[maternity, C.SPEC_INDEX["501"]] = 1
    return W


def _draw_spell_details(w: World, P: dict, pat, admi, em, prov, rng, maternity=None, spec=None):
    n = len(pat)
    age = (admi - P["dob"][pat]) / YEAR
    female = P["sex"][pat] == 2
    if maternity is None:
        maternity = female & (age >= 16) & (age < 45) & (rng.random(n) < 0.3)
    if spec is None:
        spec = _choice_rows(rng, _spec_weights(age, em, female, maternity))
    admimeth = np.where(em, 3 + rng.choice(10, size=n, p=ADMI_EM_P), rng.choice(3, size=n, p=ADMI_EL_P))
    admimeth = np.where(maternity, np.where(rng.random(n) < 0.7, 13, 14), admimeth)
    admimeth = np.where((~maternity) & em & (rng.random(n) < 0.005), 15, admimeth)
    emergency = (admimeth >= 3) & (admimeth <= 12)
    proc = np.full(n, -1, dtype=np.int64)
    primary = np.zeros(n, dtype=np.int64)
    los_mean = np.zeros(n)
    for j, s in enumerate(C.SPECIALTIES):
        m = np.flatnonzero(spec == j)
        if not len(m):
            continue
        pp = np.where(em[m], s["p_proc"][1], s["p_proc"][0])
        has = rng.random(len(m)) < pp
        pw = np.array([x[1] for x in s["procs"]], dtype=float)
        pick = rng.choice(len(pw), size=len(m), p=pw / pw.sum())
        codes = np.array([PROC_INDEX[x[0]] for x in s["procs"]])
        proc[m[has]] = codes[pick[has]]
        dg = np.array([DIAG_INDEX[d] for d in s["diag"]])
        primary[m] = dg[rng.integers(0, len(dg), len(m))]
        los_mean[m] = np.where(em[m], s["los"][1], s["los"][0])
    bariatric = np.isin(proc, [PROC_INDEX["G301"], PROC_INDEX["G331"]])
    primary[bariatric] = DIAG_INDEX["E668"]
    los = np.floor(rng.exponential(los_mean * (1 + np.clip(age - 60, 0, 40) / 40))).astype(np.int32)
    daycase = (~em) & (rng.random(n) < 0.45) & ~np.isin(spec, [C.SPEC_INDEX["170"], C.SPEC_INDEX["501"]])
    los[daycase] = 0
    los = np.minimum(los, 120)
    op_off = np.where(em, rng.integers(0, 4, n), (rng.random(n) < 0.25).astype(int))
    opdate = np.where(proc >= 0, admi + np.minimum(op_off, los), NULL).astype(np.int32)
    # consultant
    cs = w.cons_start[prov, spec]
    cons = cs + (rng.random(n) * w.cons_n[prov, spec]).astype(np.int64)
    # 30-day death model (RISK_MODEL in codes.py)
    cm = P["cm"][pat]
    charl = (cm * np.array([x[1] for x in C.CHARLSON])).sum(axis=1)
    pcode = np.array(ALL_DIAG)[primary]
    for j, (c, wt, _) in enumerate(C.CHARLSON):
        charl = charl + np.where((pcode == c) & ~cm[:, j], wt, 0)
    grp = np.array([p[:3] for p in ALL_PROC])
    peff = np.array([C.PROC_EFFECT.get(g, 0.0) for g in grp])
    RM = C.RISK_MODEL
    logit = (RM["intercept"] + RM["per_10_years_over_65"] * (age - 65) / 10 + RM["emergency"] * emergency
             + RM["male"] * (P["sex"][pat] == 1) + RM["per_charlson_point"] * charl
             + np.where(proc >= 0, peff[np.maximum(proc, 0)], 0.0) + np.log(w.cons_rr[cons]) * (proc >= 0)
             - 2.5 * maternity)
    # both probabilities are kept for the truth (the planted relative risk, by consultant);
    # no random draw depends on them
    p_null = 1 / (1 + np.exp(-(logit - np.log(w.cons_rr[cons]) * (proc >= 0))))
    p_death = 1 / (1 + np.exp(-logit))
    died = rng.random(n) < p_death
    anchor = np.where(proc >= 0, opdate, admi)
    death = np.where(died, anchor + 1 + np.floor(rng.beta(1, 2.5, n) * 30).astype(np.int32), BIG).astype(np.int32)
    in_hosp = died & (death <= admi + los)
    disdate = np.where(in_hosp, death, admi + los).astype(np.int32)
    return dict(pat=pat, admi=admi.astype(np.int32), em=em, emergency=emergency, maternity=maternity, spec=spec,
                admimeth=admimeth, proc=proc, primary=primary, opdate=opdate, cons=cons, prov=prov,
                charlson=charl, death=death, in_hosp=in_hosp, disdate=disdate, age=age,
                p_death=p_death, p_death_null=p_null)


def _comorbidities(P: dict, who: np.ndarray, N: int, rng) -> None:
    """Patient-level Charlson conditions and fillers (rising with age), drawn for patients with spells."""
    n_all = len(P["nhs"])
    age = P["age"][who]
    cm = np.zeros((n_all, len(C.CHARLSON)), dtype=bool)
    fill = np.zeros((n_all, len(C.FILLER_DIAG)), dtype=bool)
    for j, (_, _, p75) in enumerate(C.CHARLSON):
        cm[who, j] = rng.random(len(who)) < np.clip(p75 * (age / 75) ** 3, 0, 3 * p75) * (age >= 18)
    for j, (_, p75) in enumerate(C.FILLER_DIAG):
        fill[who, j] = rng.random(len(who)) < np.clip(p75 * (age / 75) ** 2, 0, 0.9) * (age >= 18)
    P["cm"], P["fill"] = cm, fill


def make_spells(w: World, b: int, P: dict, N: int, rng) -> dict:
    start, end = w.start, w.end
    n_all = len(P["nhs"])
    warm = 60  # admissions from 60 days before the first period, so its long spells are there too
    span = (end - start + warm) / 30.4375
    rate = w.spell_c * age_rate_shape(P["age"]) * span
    rate[N:] = w.spell_c * span  # visitors: ~1% of spells (their number is ~1% of residents)
    k = rng.poisson(rate)
    pat = np.repeat(np.arange(n_all), k)
    _comorbidities(P, np.flatnonzero(k > 0), N, rng)
    admi = (start - warm + rng.integers(0, end - start + warm, len(pat))).astype(np.int32)
    age = (admi - P["dob"][pat]) / YEAR
    em = rng.random(len(pat)) < (0.3 + 0.35 * np.clip(age / 90, 0, 1))
    home = np.where(P["visitor"][pat], -1, w.prac_home_prov[np.maximum(P["prac"][pat], 0)])
    away = (rng.random(len(pat)) < 0.12) | (home < 0)
    prov = np.where(away, rng.integers(0, len(w.prov_codes), len(pat)), home)
    S = _draw_spell_details(w, P, pat, admi, em, prov, rng)
    S["readmission"] = np.zeros(len(pat), bool)
    # emergency readmissions within 30 days of a live discharge
    alive = S["death"] > S["disdate"]
    p_re = 0.04 + 0.10 * np.clip(S["age"] / 90, 0, 1) + 0.04 * S["emergency"]
    r = np.flatnonzero(alive & (rng.random(len(pat)) < p_re))
    rpat = pat[r]
    radmi = (S["disdate"][r] + 1 + rng.integers(0, 30, len(r))).astype(np.int32)
    rprov = np.where(rng.random(len(r)) < 0.8, prov[r], rng.integers(0, len(w.prov_codes), len(r)))
    rage = (radmi - P["dob"][rpat]) / YEAR
    rspec = np.where(rng.random(len(r)) < 0.4, S["spec"][r],
                     np.where(rage >= 75, C.SPEC_INDEX["430"], np.where(rage < 16, C.SPEC_INDEX["420"],
                                                                         C.SPEC_INDEX["300"])))
    R = _draw_spell_details(w, P, rpat, radmi, np.ones(len(r), bool), rprov, rng,
                            maternity=np.zeros(len(r), bool), spec=rspec)
    R["readmission"] = np.ones(len(r), bool)
    S = {key: np.concatenate([S[key], R[key]]) for key in S}
    # drop spells admitted after the window, after an earlier death, or while still in hospital
    keep = S["admi"] < end
    S = {key: v[keep] for key, v in S.items()}
    order = np.lexsort((S["admi"], S["pat"]))
    S = {key: v[order] for key, v in S.items()}
    df = pd.DataFrame({"pat": S["pat"], "death": S["death"], "dis": S["disdate"]})
    g = df.groupby("pat", sort=False)
    prev_death = g["death"].shift(1).fillna(BIG).astype(np.int64)
    prev_death = prev_death.groupby(df["pat"], sort=False).cummin().to_numpy()
    prev_dis = g["dis"].shift(1).fillna(NULL).astype(np.int64)
    prev_dis = prev_dis.groupby(df["pat"], sort=False).cummax().to_numpy()
    bg = P["death"][S["pat"]]
    keep = (S["admi"] < np.minimum(prev_death, bg)) & (S["admi"] > prev_dis)
    # patients away from their practice area before registration? keep simple: admitted after birth
    keep &= S["admi"] >= P["dob"][S["pat"]]
    S = {key: v[keep] for key, v in S.items()}
    # a background death during the spell becomes an in-hospital death
    bg = P["death"][S["pat"]]
    inside = (bg > S["admi"]) & (bg <= S["disdate"]) & (bg < S["death"])
    S["death"] = np.where(inside, bg, S["death"]).astype(np.int32)
    S["disdate"] = np.where(inside, bg, S["disdate"]).astype(np.int32)
    S["in_hosp"] = S["in_hosp"] | inside
    S["opdate"] = np.where(S["opdate"] != NULL, np.minimum(S["opdate"], S["disdate"]), NULL).astype(np.int32)
    S["id"] = np.arange(len(S["pat"]), dtype=np.int64) + b * 10_000_000
    # identity category of the hospital's record of the patient (per spell)
    n = len(S["pat"])
    lowq = w.prov_low_quality[S["prov"]]
    cat = np.where(lowq, _choice_1d(rng, ID_P_LOWQ, n), _choice_1d(rng, ID_P_NORMAL, n))
    tw = P["twin"][S["pat"]] & (rng.random(n) < 0.15)
    cat[tw] = ID_CATS.index("nhs_missing")
    S["idcat"] = cat
    return S


def _choice_1d(rng, p, n):
    return np.searchsorted(np.cumsum(p / p.sum()), rng.random(n), side="right").clip(0, len(p) - 1)


def make_episodes(w: World, b: int, P: dict, S: dict, rng) -> dict:
    n = len(S["pat"])
    los = S["disdate"] - S["admi"]
    n_epi = 1 + ((rng.random(n) < 0.18) & (los >= 1)) + ((rng.random(n) < 0.3) & (los >= 3))
    n_epi = n_epi.astype(np.int64)
    first_min = np.where(S["opdate"] != NULL, S["opdate"], S["admi"])
    cut1 = first_min + (rng.random(n) * (S["disdate"] - first_min + 1)).astype(np.int32)
    cut1 = np.minimum(cut1, S["disdate"])
    cut2 = cut1 + (rng.random(n) * (S["disdate"] - cut1 + 1)).astype(np.int32)
    cut2 = np.minimum(cut2, S["disdate"])
    si = np.repeat(np.arange(n), n_epi)
    order = np.arange(len(si)) - np.repeat(np.cumsum(n_epi) - n_epi, n_epi)  # 0-based
    last = order == n_epi[si] - 1
    starts = np.stack([S["admi"], cut1, cut2], axis=1)
    ends = np.stack([cut1, cut2, S["disdate"]], axis=1)
    epistart = starts[si, order]
    epiend = np.where(last, S["disdate"][si], ends[si, order]).astype(np.int32)
    # consultants of later episodes: another consultant of the specialty or a medical take-over
    spec = S["spec"][si].copy()
    cons = S["cons"][si].copy()
    later = order > 0
    age = S["age"][si]
    med = later & (rng.random(len(si)) < 0.5)
    spec[med] = np.where(age[med] >= 75, C.SPEC_INDEX["430"],
                         np.where(age[med] < 16, C.SPEC_INDEX["420"], C.SPEC_INDEX["300"]))
    prov = S["prov"][si]
    cons[later] = w.cons_start[prov[later], spec[later]] + (
        rng.random(int(later.sum())) * w.cons_n[prov[later], spec[later]]).astype(np.int64)
    pat = S["pat"][si]
    # diagnoses: primary then the patient's comorbidities and fillers
    cm = P["cm"][pat]
    fill = P["fill"][pat]
    conds = np.concatenate([cm, fill], axis=1)
    cond_codes = np.array([DIAG_INDEX[c] for c, _, _ in C.CHARLSON] + [DIAG_INDEX[c] for c, _ in C.FILLER_DIAG])
    prim = S["primary"][si]
    conds &= cond_codes[None, :] != prim[:, None]
    conds &= rng.random(conds.shape) < 0.85  # coding depth varies
    diag = np.full((len(si), 20), -1, dtype=np.int16)
    diag[:, 0] = prim
    pos = np.cumsum(conds, axis=1)
    r_, c_ = np.nonzero(conds & (pos < 20))
    diag[r_, pos[r_, c_]] = cond_codes[c_]
    proc = np.where(order == 0, S["proc"][si], -1)
    opdate = np.where(order == 0, S["opdate"][si], NULL).astype(np.int32)
    proc2 = np.where((proc >= 0) & (rng.random(len(si)) < 0.15), PROC_INDEX["Y532"], -1)
    dismeth = np.where(last, np.where(S["in_hosp"][si], 4, np.where(rng.random(len(si)) < 0.02, 2, 1)), 8)
    # identity as recorded by the hospital
    cat = S["idcat"][si]
    dob_true = P["dob"][pat]
    nhs_true = P["nhs"][pat]
    mover = P["mover"][pat] & (epistart >= P["move_d"][pat])
    pc_true = np.where(mover, P["new_pc"][pat], P["pc"][pat])
    sp_rng = rng_for(w.seed, 2, b)
    u = sp_rng.random(n)[si]  # spell-level randomness shared by the spell's episodes
    u2 = sp_rng.random(n)[si]
    E_nhs = nhs_true.copy()
    E_dob = dob_true.copy()
    E_sex = P["sex"][pat].astype(np.int8)
    E_pc = pc_true.copy()
    E_my_shift = np.zeros(len(si), dtype=np.int32)
    E_dob_missing = np.zeros(len(si), bool)
    c = lambda name: cat == ID_CATS.index(name)  # noqa: E731
    temp_pc = (pc_true // C.PC_PER_PRACTICE) * C.PC_PER_PRACTICE + (u2 * C.UNITS_PER_SECTOR).astype(np.int64)
    E_pc = np.where(c("postcode_differs") | c("nhs_missing_postcode_differs"),
                    np.where(u < 0.3, -1, temp_pc), E_pc)
    E_pc = np.where(P["visitor"][pat], P["pc"][pat], E_pc)
    dd = np.datetime64(0, "D") + dob_true.astype("timedelta64[D]")
    dom = (dd - dd.astype("datetime64[M]")).astype(np.int64)
    mlen = ((dd.astype("datetime64[M]") + 1).astype("datetime64[D]") - dd.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64)
    newdom = (dom + 1 + (u * (mlen - 1)).astype(np.int64)) % mlen
    E_dob = np.where(c("dob_day_differs"), dob_true - dom + newdom, E_dob).astype(np.int32)
    E_dob_missing = c("dob_missing_mydob_ok") | c("dob_missing_mydob_differs")
    E_my_shift = np.where(c("dob_missing_mydob_differs"), np.where(u < 0.5, -1, 1), 0)
    flip = c("sex_differs")
    E_sex = np.where(flip & (E_sex == 1), 2, np.where(flip & (E_sex == 2), 1, np.where(flip, 1, E_sex))).astype(np.int8)
    E_sex = np.where(flip & (u < 0.25), 9, E_sex).astype(np.int8)
    E_sex = np.where(c("sex_bad_code"), 99, E_sex).astype(np.int8)
    E_nhs = np.where(c("nhs_missing") | c("nhs_missing_postcode_differs"), 0, E_nhs)
    E_nhs = np.where(c("nhs_invalid"), invalidate(nhs_true, sp_rng), E_nhs)
    E_dob = np.where(c("dob_after_admidate"), S["admi"][si] + 10 + (u * 300).astype(np.int32), E_dob).astype(np.int32)
    nhsnoind = np.where(E_nhs == 0, np.where(u < 0.5, 3, np.where(u < 0.8, 4, 7)),
                        np.where(c("nhs_invalid") | (u2 < 0.015), 2, 1)).astype(np.int8)
    gpprac = np.full(len(si), -1, dtype=np.int64)
    # registered practice at EPISTART (true), as the hospital records it
    moved = P["mover"][pat] | P["leaver"][pat]
    end_old = np.minimum(np.where(moved, P["move_d"][pat], BIG), P["death"][pat])
    reg_old = (epistart >= P["reg0"][pat]) & (epistart <= end_old)
    reg_new = P["mover"][pat] & (epistart >= P["new_reg"][pat])
    true_prac = np.where(reg_new, P["new_prac"][pat], np.where(reg_old, P["prac"][pat], -1))
    gpprac = true_prac.copy()
    stale = P["mover"][pat] & (epistart >= P["move_d"][pat]) & (u2 < 0.3) & (true_prac >= 0)
    gpprac[stale] = P["prac"][pat][stale]
    gpprac[(gpprac >= 0) & (u2 > 0.99)] = -1
    gpprac[P["visitor"][pat]] = np.where(u[P["visitor"][pat]] < 0.7, -2, -1)
    period = np.searchsorted(w.period_start, epiend, side="right") - 1
    inwin = (epiend < w.end) & (period >= 0)
    E = dict(
        batch=np.full(len(si), b, dtype=np.int32), spell=S["id"][si], spell_local=si, epiorder=order + 1,
        last=last, prov=prov, period=period, epistart=epistart.astype(np.int32), epiend=epiend,
        admi=S["admi"][si], disdate=np.where(last, S["disdate"][si], NULL).astype(np.int32),
        admimeth=S["admimeth"][si], dismeth=dismeth.astype(np.int8), cons=cons, spec=spec,
        proc=proc, proc2=proc2, opdate=opdate, diag=diag, hesid=P["hesid"][pat],
        nhs=E_nhs, nhs_valid=mod11_valid(E_nhs), nhsnoind=nhsnoind, dob=E_dob, dob_missing=E_dob_missing,
        my_shift=E_my_shift.astype(np.int32), sex=E_sex, pc=E_pc, gpprac=gpprac, idcat=cat,
        true_nhs=nhs_true, true_prac=true_prac, person=pat, visitor=P["visitor"][pat],
        objection=P["obj"][pat], readmission=S["readmission"][si], in_hosp=S["in_hosp"][si],
        classpat=np.where((S["disdate"][si] == S["admi"][si]) & ~S["em"][si], 2, 1).astype(np.int8),
        sid=S["id"][si] * 4 + order,
    )
    return {k: v[inwin] for k, v in E.items()}
