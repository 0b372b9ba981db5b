"""GP extracts of one batch (files + truth) and the expected record linkage of its episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import codes as C
from .util import BIG, csv_bytes, dates_str, ints_str, invalidate, join, patch, take, write_file, ymd
from .world import World, rng_for

GP_COLUMNS = ["NHS_NUMBER", "DATE_OF_BIRTH", "SEX", "POSTCODE", "LSOA", "ETHNIC_CATEGORY", "REGISTRATION_DATE",
              "DEREGISTRATION_DATE", "DATE_OF_DEATH", "OBJECTION"]
GP_FAULTS = [("invalid_nhs_number", "NHS_NUMBER"), ("missing_nhs_number", "NHS_NUMBER"), ("bad_code", "SEX"),
             ("unparseable_date", "REGISTRATION_DATE"), ("future_date", "DATE_OF_BIRTH")]
LETTERS = pa.array(C.UNIT_LETTERS)
AREAS = pa.array(C.AREAS)


def render_postcode(pc_id: np.ndarray, style: np.ndarray | int = 0) -> pa.Array:
    pc_id = np.asarray(pc_id, dtype=np.int64)
    miss = pc_id < 0
    p = np.where(miss, 0, pc_id)
    prac, code = p // C.PC_PER_PRACTICE, p % C.PC_PER_PRACTICE
    sector, unit = code // C.UNITS_PER_SECTOR, code % C.UNITS_PER_SECTOR
    outward = join(take(AREAS, prac // 99 % len(C.AREAS)), ints_str(prac % 99 + 1))
    inward = join(ints_str(sector), take(LETTERS, unit // 20), take(LETTERS, unit % 20))
    style = np.broadcast_to(np.asarray(style), pc_id.shape)
    spaced = join(outward, inward, sep=" ")
    out = spaced
    if (style == 1).any():
        out = pc.if_else(pa.array(style == 1), pc.utf8_lower(spaced), out)
    if (style == 2).any():
        out = pc.if_else(pa.array(style == 2), join(outward, inward), out)
    return pc.if_else(pa.array(miss), pa.scalar(None, pa.string()), out)


def render_nhs(nums: np.ndarray, spaced: np.ndarray | bool = False) -> pa.Array:
    nums = np.asarray(nums, dtype=np.int64)
    s = ints_str(nums, mask=nums == 0)
    sp = np.broadcast_to(np.asarray(spaced), nums.shape)
    if sp.any():
        spaced_s = join(pc.utf8_slice_codeunits(s, 0, 3), pc.utf8_slice_codeunits(s, 3, 6),
                        pc.utf8_slice_codeunits(s, 6, 10), sep=" ")
        s = pc.if_else(pa.array(sp), spaced_s, s)
    return s


def write_batch_gp(w: World, b: int, B: dict, out: Path, files: list, faults: list, gp_truth: list,
                   objectors: list) -> dict:
    """Write the batch's GP extracts; return the linkage patient table (newest extracts)."""
    rng = rng_for(w.seed, 3, b)
    P, R = B["persons"], B["rows"]
    person = R["person"]
    nrow = len(person)
    nhs = P["nhs"][person]
    style = w.prac_pc_style[R["prac"]].copy()
    style[(style == 0) & (rng.random(nrow) < 0.01)] = 1
    spaced = (R["prac"] % 7 == 5) | (rng.random(nrow) < 0.002)
    eth = P["eth"][person]
    static = {
        "NHS_NUMBER": render_nhs(nhs, spaced),
        "DATE_OF_BIRTH": dates_str(P["dob"][person]),
        "SEX": ints_str(P["sex"][person]),
        "POSTCODE": render_postcode(R["pc"], style),
        "LSOA": join(take(["E01"], np.zeros(nrow, dtype=np.int64)),
                     ints_str(100000 + (R["pc"] // 100) % 900000)),
        "ETHNIC_CATEGORY": take(C.ETHNIC, eth),
        "REGISTRATION_DATE": dates_str(R["reg"]),
        "OBJECTION": take(["", "9Nu0", "9Nu4"], np.where(P["obj"][person] == 0, -1, P["obj"][person])),
    }
    sex = P["sex"][person]
    obj = P["obj"][person]
    pr = w.batches[b]
    bounds = np.searchsorted(R["prac"], np.concatenate([pr, [pr[-1] + 1]]))
    link_rows = []
    for i, p in enumerate(pr):
        lo, hi = bounds[i], bounds[i + 1]
        plan = w.extracts.get(int(p), [])
        newest = max((d for _, d, _ in plan), default=None)
        for k, D, second in plan:
            sel = lo + np.flatnonzero((R["reg"][lo:hi] <= D) & (R["dereg"][lo:hi] >= D - 365))
            dereg = np.where(R["dereg"][sel] <= D, R["dereg"][sel], BIG)
            dod = np.where(R["death_rec"][sel] <= D, R["death"][sel], BIG)
            idx = pa.array(sel)
            cols = {c: static[c].take(idx) for c in static}
            cols["DEREGISTRATION_DATE"] = dates_str(dereg)
            cols["DATE_OF_DEATH"] = dates_str(dod)
            name = f"GP_{w.prac_codes[p]}_{ymd(D).replace('-', '')}.csv"
            n = len(sel)
            bad = np.zeros(n, bool)
            frows = []
            if n and (rng.random() < 0.25 or (p == pr[0] and k == 0 and not second)):
                kinds = rng.choice(len(GP_FAULTS), size=min(n, 1 + int(rng.integers(0, 3))), replace=True)
                if p == pr[0] and k == 0 and not second:
                    kinds = np.arange(len(GP_FAULTS))
                rows = rng.choice(n, size=len(kinds), replace=False)
                for r, kk in zip(rows, kinds):
                    kind, fld = GP_FAULTS[kk]
                    if kind == "invalid_nhs_number":
                        v = str(invalidate(np.array([nhs[sel[r]]]), rng)[0])
                    elif kind == "missing_nhs_number":
                        v = None
                    elif kind == "bad_code":
                        v = "M"
                    elif kind == "unparseable_date":
                        v = f"{ymd(D)[:4]}-02-30"
                    else:
                        v = f"{int(ymd(D)[:4]) + 17}-{ymd(D)[5:10]}"
                    cols[fld] = patch(cols[fld], [r], [v])
                    bad[r] = True
                    frows.append(dict(file=f"gp/{name}", line=int(r) + 2, kind=kind, field=fld, severity="reject"))
            data = csv_bytes(GP_COLUMNS, [cols[c] for c in GP_COLUMNS])
            gz = bool(p == pr[min(5, len(pr) - 1)] and b == 0)
            bom = bool(p == pr[min(6, len(pr) - 1)] and b == 0)
            name_w = name + (".gz" if gz else "")
            write_file(out / "gp" / name_w, data, bom=bom, gz=gz, mtime=(D + 1) * 86400)
            faults.extend(dict(f, file=f"gp/{name_w}") for f in frows)
            later_same_month = any(kk == k and dd > D for kk, dd, _ in plan)
            files.append(dict(path=f"gp/{name_w}", source="gp", submitter=w.prac_codes[p], period=w.periods[k],
                              submitted_at=ymd(D), protocol=None, rows=n, delimiter=",", gzip=gz, bom=bom,
                              status="superseded" if D != newest else "current",
                              reason_kind=None, newest_in_period=not later_same_month))
            s_obj = obj[sel]
            registered = (dereg == BIG) & (dod == BIG) & (s_obj != 1) & ~bad
            gp_truth.append(dict(file=f"gp/{name_w}", practice_code=w.prac_codes[p],
                                 commissioner_code=w.comm_codes[w.prac_comm[p]], period=w.periods[k],
                                 extract_date=ymd(D), rows=n, rows_faulty=int(bad.sum()),
                                 registered_patients=int(registered.sum()),
                                 type1_objections=int((s_obj == 1).sum()), type2_objections=int((s_obj == 2).sum()),
                                 type1_registered=int(((s_obj == 1) & (dereg == BIG) & (dod == BIG)).sum()),
                                 type2_registered=int(registered[s_obj == 2].sum()),
                                 newest_in_period=not later_same_month, newest_overall=D == newest))
            if D == newest:
                keep = (s_obj != 1) & ~bad
                ks = sel[keep]
                link_rows.append(dict(nhs=nhs[ks], dob=P["dob"][person[ks]], sex=sex[ks], pc=R["pc"][ks],
                                      prac=R["prac"][ks], reg=R["reg"][ks], dereg=dereg[keep]))
                o = sel[s_obj != 0]
                objectors.append(dict(nhs_number=nhs[o], objection=obj[o], practice=np.full(len(o), p),
                                      extract_date=np.full(len(o), D)))
    # one misnamed and one column-missing GP file per run (batch 0)
    with_plan = [i for i, p_ in enumerate(pr) if w.extracts.get(int(p_))]
    if b == 0 and with_plan:
        i0 = with_plan[0]
        p = int(pr[i0])
        plan = w.extracts[p]
        k, D, _ = plan[-1]
        lo, hi = bounds[i0], bounds[i0 + 1]
        sel = lo + np.flatnonzero((R["reg"][lo:hi] <= D) & (R["dereg"][lo:hi] >= D - 365))
        cols = {c: static[c].take(pa.array(sel)) for c in static}
        cols["DEREGISTRATION_DATE"] = dates_str(np.where(R["dereg"][sel] <= D, R["dereg"][sel], BIG))
        cols["DATE_OF_DEATH"] = dates_str(np.where(R["death_rec"][sel] <= D, R["death"][sel], BIG))
        bad_name = f"GP_{w.prac_codes[p]}_{ymd(D)}.csv"
        write_file(out / "gp" / bad_name, csv_bytes(GP_COLUMNS, [cols[c] for c in GP_COLUMNS]),
                   mtime=(D + 1) * 86400)
        files.append(dict(path=f"gp/{bad_name}", source="gp", submitter=None, period=None, submitted_at=None,
                          protocol=None, rows=len(sel), delimiter=",", gzip=False, bom=False, status="rejected",
                          reason_kind="misnamed_file", newest_in_period=None))
        D2 = D + 20
        miss_name = f"GP_{w.prac_codes[p]}_{ymd(D2).replace('-', '')}.csv"
        names = [c for c in GP_COLUMNS if c != "REGISTRATION_DATE"]
        write_file(out / "gp" / miss_name, csv_bytes(names, [cols[c] for c in names]), mtime=(D2 + 1) * 86400)
        files.append(dict(path=f"gp/{miss_name}", source="gp", submitter=w.prac_codes[p], period=w.periods[k],
                          submitted_at=ymd(D2), protocol=None, rows=len(sel), delimiter=",", gzip=False, bom=False,
                          status="rejected", reason_kind="missing_required_column", newest_in_period=None))
    if link_rows:
        return {k: np.concatenate([r[k] for r in link_rows]) for k in link_rows[0]}
    return dict(nhs=np.zeros(0, np.int64), dob=np.zeros(0, np.int32), sex=np.zeros(0, np.int8),
                pc=np.zeros(0, np.int64), prac=np.zeros(0, np.int64), reg=np.zeros(0, np.int32),
                dereg=np.zeros(0, np.int32))


def expected_linkage(G: dict, E: dict) -> dict:
    """Apply methods.md's rank rules to the episodes as written and the GP rows of newest extracts.

    Returns per episode: match_rank (0 = unlinked), linked_nhs, practice_at_epistart (of the linked
    patient's registration covering EPISTART, -1 none), linked_at_gpprac.
    """
    n = len(E["nhs"])
    order = np.argsort(G["nhs"], kind="stable")
    g = {k: v[order] for k, v in G.items()}
    rank = np.zeros(n, dtype=np.int8)
    linked = np.zeros(n, dtype=np.int64)
    valid = E["nhs_valid"]
    e_dob_ok = ~E["dob_missing"]
    e_sex = E["sex"]
    dd = np.datetime64(0, "D") + E["dob"].astype("timedelta64[D]")
    e_my = dd.astype("datetime64[M]").astype(np.int64) + E["my_shift"]
    g_my = (np.datetime64(0, "D") + g["dob"].astype("timedelta64[D]")).astype("datetime64[M]").astype(np.int64)
    lo = np.searchsorted(g["nhs"], E["nhs"], "left")
    hi = np.searchsorted(g["nhs"], E["nhs"], "right")
    best = np.full(n, 9, dtype=np.int8)
    kmax = int((hi - lo).max()) if n else 0
    for k in range(kmax):
        j = lo + k
        ok = valid & (j < hi)
        jj = np.where(ok, j, 0)
        sex_ok = np.isin(e_sex, (1, 2)) & (e_sex == g["sex"][jj])
        dob_eq = e_dob_ok & (E["dob"] == g["dob"][jj])
        pc_eq = (E["pc"] >= 0) & (E["pc"] == g["pc"][jj])
        my_eq = e_my == g_my[jj]
        lvl = np.where(dob_eq & sex_ok & pc_eq, 1, np.where(dob_eq & sex_ok, 2, np.where(my_eq & sex_ok, 3, 4)))
        best = np.where(ok, np.minimum(best, lvl), best)
    has = best < 9
    rank[has] = best[has]
    linked[has] = E["nhs"][has]
    # rank 5: no valid NHS number; DOB, sex and postcode agree with exactly one patient
    g_ok = np.isin(g["sex"], (1, 2))
    gkey = ((g["pc"] * 65536 + (g["dob"].astype(np.int64) + 40000)) * 2 + (g["sex"] - 1))[g_ok]
    gn = g["nhs"][g_ok]
    o = np.lexsort((gn, gkey))
    gkey, gn = gkey[o], gn[o]
    dup = np.zeros(len(gkey), bool)
    dup[1:] = (gkey[1:] == gkey[:-1]) & (gn[1:] == gn[:-1])
    pairs = np.stack([gkey[~dup], gn[~dup]], axis=1)
    ukey, first, cnt = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    cand = (~valid) & e_dob_ok & np.isin(e_sex, (1, 2)) & (E["pc"] >= 0)
    ekey = (E["pc"] * 65536 + (E["dob"].astype(np.int64) + 40000)) * 2 + (e_sex.astype(np.int64) - 1)
    pos = np.searchsorted(ukey, ekey)
    posc = np.minimum(pos, max(len(ukey) - 1, 0))
    hit = cand & (len(ukey) > 0) & (ukey[posc] == ekey) if len(ukey) else np.zeros(n, bool)
    uniq = hit & (cnt[posc] == 1) if len(ukey) else hit
    rank[uniq] = 5
    linked[uniq] = pairs[first[posc[uniq]], 1]
    # practice whose registration covers EPISTART (of the linked patient)
    prac_cov = np.full(n, -1, dtype=np.int64)
    at_gp = np.zeros(n, bool)
    lo = np.searchsorted(g["nhs"], linked, "left")
    hi = np.searchsorted(g["nhs"], linked, "right")
    for k in range(int((hi - lo).max()) if n else 0):
        j = lo + k
        ok = (rank > 0) & (j < hi)
        jj = np.where(ok, j, 0)
        # A registration covers EPISTART when it started on or before it and did not end on
        # or before it (methods.md: registered = "no deregistration date on or before" the day).
        cov = ok & (g["reg"][jj] <= E["epistart"]) & (E["epistart"] < g["dereg"][jj])
        prac_cov = np.where(cov & (prac_cov < 0), g["prac"][jj], prac_cov)
        at_gp |= cov & (g["prac"][jj] == E["gpprac"])
    return dict(match_rank=rank, linked_nhs=linked, practice_at_epistart=prac_cov, linked_at_gpprac=at_gp,
                rank5_ambiguous=hit & ~uniq)
