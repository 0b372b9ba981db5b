"""SUS APC submissions: BULK, resubmissions, NET changes, planted faults, and the current view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.schemas.inputs import SUS_APC

from . import codes as C
from .gp import render_nhs, render_postcode
from .population import ADMIMETH, ALL_DIAG, ALL_PROC, ID_CATS
from .util import NULL, csv_bytes, dates_str, ints_str, join, patch, take, write_file, ymd
from .world import World, rng_for

BASE_COLUMNS = [c.name for c in SUS_APC.columns if c.name not in ("CDS_UPDATE_TYPE", "PSEUDO_HESID")]
SEVERITY = {
    "invalid_nhs_number": "warn", "missing_nhs_number": "warn", "bad_code": "reject",
    "malformed_consultant": "warn", "bad_icd10": "warn", "bad_opcs4": "warn",
    "epiend_before_epistart": "reject", "dob_after_admidate": "reject", "future_date": "reject",
    "unparseable_date": "reject", "provider_mismatch": "reject", "duplicate_key": "reject",
    "response_date_outside_period": "reject", "unknown_site": "reject",
}
FILE_FAULTS = [("bad_code", "ADMIMETH"), ("malformed_consultant", "CONSULT"), ("bad_icd10", "DIAG_4_01"),
               ("bad_opcs4", "OPERTN_4_01"), ("epiend_before_epistart", "EPISTART"), ("future_date", "DISDATE"),
               ("unparseable_date", "EPISTART"), ("provider_mismatch", "PROCODE3"), ("duplicate_key", "SUSRECID"),
               ("bad_code", "DISMETH")]
ID_FAULTS = {"nhs_invalid": ("invalid_nhs_number", "NEWNHSNO"),
             "nhs_missing": ("missing_nhs_number", "NEWNHSNO"),
             "nhs_missing_postcode_differs": ("missing_nhs_number", "NEWNHSNO"),
             "dob_after_admidate": ("dob_after_admidate", "DOB"),
             "sex_bad_code": ("bad_code", "SEX")}
SEX_CODES = ["0", "1", "2", "", "", "", "", "", "", "9", "X"]


def severity(kind: str, field: str) -> str:
    if kind == "bad_code" and field == "MODE":
        return "warn"
    return SEVERITY.get(kind, "reject")


def provider_format(i: int) -> dict:
    return dict(delimiter="|" if i % 4 == 0 else ",", gz=i % 4 == 1, bom=i % 5 == 2,
                pseudo=i % 3 == 1, extra=i % 2 == 0, pc_style=2 if i % 6 == 1 else 0)


def stamp(day_: int, secs: int) -> str:
    return ymd(day_).replace("-", "") + f"{secs // 3600:02d}{secs // 60 % 60:02d}{secs % 60:02d}"


PRACTICE_PLACEHOLDER_CODES = {-2: "V81999", -3: "V81997", -4: "V81998", -5: "&"}
"""``E["gpprac"]`` below 0: no registered practice / not known (inputs.md); -1 is empty."""


def plant_sus_conventions(E: dict) -> None:
    """HES conventions in the SUS files too (TRUTH.md "Landing-zone choices"): picked by
    ``SUSRECID`` number (no random draw, so nothing else changes). Adds ``E["epistat9"]``
    (the last episode of a spell without a procedure is derived unfinished, ``EPISTAT``
    ``9``, its discharge still written: the spell has none), ``E["epiorder99"]`` (the last
    episode of a multi-episode spell has ``EPIORDER`` ``99``), ``E["no_mydob"]`` (a
    ``dob_missing_mydob_ok`` episode without ``MYDOB`` either: rank 4, age from the GP
    record); sets ``GPPRAC`` placeholders on a few episodes (in no practice's expected
    episodes)."""
    sid = E["sid"].astype(np.int64)
    spell_has_proc = pd.Series(E["proc"] >= 0).groupby(E["spell"]).transform("any").to_numpy()
    multi = E["last"] & (E["epiorder"] >= 2)
    E["epistat9"] = multi & ~spell_has_proc & (E["dismeth"] != 4) & (sid % 41 == 0)
    E["epiorder99"] = multi & ~E["epistat9"] & (sid % 41 == 1)
    E["no_mydob"] = (E["idcat"] == ID_CATS.index("dob_missing_mydob_ok")) & (sid % 2 == 0)
    E["match_rank"] = np.where(E["no_mydob"] & (E["match_rank"] >= 1) & (E["match_rank"] <= 3), 4,
                               E["match_rank"]).astype(E["match_rank"].dtype)
    ph = (E["gpprac"] >= 0) & (sid % 291 < 3)
    E["gpprac"] = np.where(ph, -3 - sid % 291, E["gpprac"]).astype(E["gpprac"].dtype)
    E["linked_at_gpprac"] = E["linked_at_gpprac"] & ~ph


def render(w: World, E: dict, ix: np.ndarray, fmt: dict) -> dict:
    n = len(ix)
    g = lambda k: E[k][ix]  # noqa: E731
    prov = take(w.prov_codes, g("prov"))
    cols = {
        "PROCODE3": prov,
        "SUSRECID": join(prov, pc.utf8_lpad(ints_str(g("sid")), 11, "0")),
        "EPISTART": dates_str(g("epistart")), "EPIEND": dates_str(g("epiend")), "ADMIDATE": dates_str(g("admi")),
        "ADMIMETH": take(ADMIMETH, g("admimeth")), "DISMETH": ints_str(g("dismeth")),
        "SEX": take(SEX_CODES, np.where(g("sex") == 99, 10, g("sex"))),
        "NEWNHSNO": render_nhs(g("nhs")),
        "NHSNOIND": pc.utf8_lpad(ints_str(g("nhsnoind")), 2, "0"),
        "DOB": dates_str(np.where(g("dob_missing"), NULL, g("dob"))),
    }
    dd = np.datetime64(0, "D") + g("dob").astype("timedelta64[D]")
    my = dd.astype("datetime64[M]").astype(np.int64) + g("my_shift")
    cols["MYDOB"] = join(pc.utf8_lpad(ints_str(my % 12 + 1, mask=g("no_mydob")), 2, "0"), ints_str(1970 + my // 12))
    cols["HOMEADD"] = render_postcode(g("pc"), fmt["pc_style"])
    gp = g("gpprac")
    npr = len(w.prac_codes)
    cols["GPPRAC"] = take(list(w.prac_codes) + ["V81999", "V81997", "V81998", "&"],
                          np.where(gp <= -2, npr - 2 - gp, gp))
    cols["SUSSPELLID"] = join(prov, pc.utf8_lpad(ints_str(g("spell")), 10, "0"))
    cols["EPIORDER"] = pc.utf8_lpad(ints_str(np.where(g("epiorder99"), 99, g("epiorder"))), 2, "0")
    cols["EPISTAT"] = take(["3", "9"], g("epistat9").astype(np.int64))
    cols["DISDATE"] = dates_str(g("disdate"))
    cols["ADMISORC"] = take(["19", "51"], (g("readmission") & (g("sid") % 7 == 0)).astype(np.int64))
    last = g("last")
    cols["DISDEST"] = take(["19", "79", "98"], np.where(~last, 2, np.where(g("dismeth") == 4, 1, 0)))
    cols["CLASSPAT"] = ints_str(g("classpat"))
    cols["CONSULT"] = take(w.cons_codes, g("cons"))
    spec = take(C.SPEC_CODES, g("spec"))
    cols["MAINSPEF"] = spec
    cols["TRETSPEF"] = spec
    diag = g("diag")
    for j in range(20):
        cols[f"DIAG_4_{j + 1:02d}"] = take(ALL_DIAG, diag[:, j]) if (diag[:, j] >= 0).any() else pa.nulls(n, pa.string())
    proc = g("proc")
    cols["OPERTN_4_01"] = take(ALL_PROC + ["-"], np.where(proc < 0, len(ALL_PROC), proc))
    cols["OPERTN_4_02"] = take(ALL_PROC, g("proc2"))
    cols["OPDATE_01"] = dates_str(g("opdate"))
    cols["OPDATE_02"] = dates_str(np.where(g("proc2") >= 0, g("opdate"), NULL))
    nulls = pa.nulls(n, pa.string())
    for j in range(3, 25):
        cols[f"OPERTN_4_{j:02d}"] = nulls
    for j in range(3, 25):
        cols[f"OPDATE_{j:02d}"] = nulls
    if fmt["pseudo"]:
        cols["PSEUDO_HESID"] = join(take(["HES"], np.zeros(n, np.int64)), ints_str(g("hesid")))
    if fmt["extra"]:
        age = ((g("admi") - g("dob")) / 365.25).astype(np.int64)
        cols["STARTAGE"] = ints_str(np.clip(age, 0, 120))
    return cols


def column_order(fmt: dict, net: bool) -> list[str]:
    names = list(BASE_COLUMNS)
    if net:
        names.append("CDS_UPDATE_TYPE")
    if fmt["pseudo"]:
        names.append("PSEUDO_HESID")
    if fmt["extra"]:
        names.append("STARTAGE")
    return names


def _plant(cols: dict, n_rows: int, kinds: list[tuple[str, str]], avoid: set, rng, w: World, p: int) -> tuple:
    """Plant row faults; returns (cols, faults [(row, kind, field)], duplicate source rows)."""
    out, dup = [], []
    free = np.setdiff1d(np.arange(n_rows, dtype=np.int64), np.fromiter(avoid, dtype=np.int64, count=len(avoid)))
    if not len(free):
        return cols, out, dup
    rows = rng.choice(free, size=min(len(kinds), len(free)), replace=False)
    has_dis = np.asarray(cols["DISDATE"].is_valid())
    for i, (kind, _) in enumerate(kinds[:len(rows)]):
        if kind == "future_date" and not has_dis[rows[i]]:  # only on a last episode (DISDATE present)
            cand = np.setdiff1d(free[has_dis[free]], rows)
            if len(cand):
                rows[i] = cand[int(rng.integers(0, len(cand)))]
    epiend = cols["EPIEND"].take(pa.array(rows)).to_pylist() if len(rows) else []
    pending: dict = {}
    for r, (kind, fld), end_ in zip(rows, kinds, epiend):
        r = int(r)
        if kind == "bad_code":
            v = {"ADMIMETH": "77", "DISMETH": "6", "SEX": "X"}[fld]
        elif kind == "malformed_consultant":
            v = "C12345"
        elif kind == "bad_icd10":
            v = "12I9"
        elif kind == "bad_opcs4":
            v = "K4O1"
        elif kind == "epiend_before_epistart":
            v = ymd(int(np.datetime64(end_, "D").astype(np.int64)) + 3)
        elif kind == "future_date":
            v = f"{int(end_[:4]) + 6}{end_[4:]}"
        elif kind == "unparseable_date":
            v = f"{end_[:4]}-02-30"
        elif kind == "provider_mismatch":
            v = w.prov_codes[(p + 1) % len(w.prov_codes)]
        elif kind == "duplicate_key":
            dup.append(r)
            continue
        pending.setdefault(fld, ([], []))
        pending[fld][0].append(r)
        pending[fld][1].append(v)
        out.append((r, kind, fld))
    for fld, (rs, vs) in pending.items():
        cols[fld] = patch(cols[fld], rs, vs)
    return cols, out, dup


class SusWriter:
    def __init__(self, w: World, E: dict, out: Path, files: list, faults: list):
        self.w, self.E, self.out, self.files, self.faults = w, E, out, files, faults
        self.rng = rng_for(w.seed, 5)
        self.fault_files = 0
        self.state_rows = []  # rows applied to the current view, per file

    def write(self, p: int, k: int, ix: np.ndarray, protocol: str, t: tuple[int, int], *, update=None,
              extra_ids=None, changed=None, fault_kinds=None, status="current", reason=None, mtime=None,
              drop_column=None, name=None, garbage=False) -> dict:
        w, E = self.w, self.E
        fmt = provider_format(p)
        cols = render(w, E, ix, fmt)
        n = len(ix)
        special = set()
        if extra_ids:
            for r, newid in extra_ids.items():
                cols["SUSRECID"] = patch(cols["SUSRECID"], [r], [newid])
                special.add(r)
        if changed:
            for r in changed:
                cols["DIAG_4_01"] = patch(cols["DIAG_4_01"], [r], ["R69X"])
                special.add(r)
        if update is not None:
            cols["CDS_UPDATE_TYPE"] = take(["9", "1"], update)
        frows = []
        cat = E["idcat"][ix]
        for cname, (kind, fld) in ID_FAULTS.items():
            for r in np.flatnonzero(cat == ID_CATS.index(cname)):
                frows.append((int(r), kind, fld))
                special.add(int(r))
        dup = []
        if fault_kinds:
            cols, planted, dup = _plant(cols, n, fault_kinds, special, self.rng, w, p)
            frows += planted
        names = column_order(fmt, update is not None)
        if drop_column:
            names = [c for c in names if c != drop_column]
        arrays = [cols[c] for c in names]
        if dup:
            tk = pa.array(np.concatenate([np.arange(n), dup]))
            arrays = [a.take(tk) for a in arrays]
            for i, r in enumerate(dup):
                frows.append((n + i, "duplicate_key", "SUSRECID"))
        period = w.periods[k].replace("-", "")
        if name is None:
            name = f"APC_{w.prov_codes[p]}_{period}_{stamp(*t)}_{protocol}.csv" + (".gz" if fmt["gz"] else "")
        path = f"sus_apc/{name}"
        if garbage:
            data = bytes(self.rng.integers(0, 256, 4096, dtype=np.uint8))
            write_file(self.out / path, data, mtime=mtime)
        else:
            data = csv_bytes(names, arrays, fmt["delimiter"])
            write_file(self.out / path, data, bom=fmt["bom"], gz=name.endswith(".gz"), mtime=mtime)
        rec = dict(path=path, source="sus_apc", submitter=w.prov_codes[p], period=w.periods[k],
                   submitted_at=stamp(*t), protocol=protocol, rows=0 if garbage else n + len(dup),
                   delimiter=fmt["delimiter"], gzip=name.endswith(".gz"), bom=fmt["bom"] and not garbage,
                   status=status, reason_kind=reason, newest_in_period=None)
        self.files.append(rec)
        if status in ("current", "superseded"):  # rejected and held files carry no row truth
            for r, kind, fld in frows:
                self.faults.append(dict(file=path, line=r + 2, kind=kind, field=fld, severity=severity(kind, fld)))
        elif status == "held":
            for r, kind, fld in frows:
                self.faults.append(dict(file=path, line=r + 2, kind=kind, field=fld, severity=severity(kind, fld)))
        if status in ("current", "superseded"):
            keys = pc.cast(arrays[names.index("SUSRECID")], pa.string()).to_pylist()
            rej = np.zeros(len(keys), bool)
            for r, kind, fld in frows:
                if severity(kind, fld) == "reject":
                    rej[r] = True
            eidx = np.concatenate([ix, ix[dup]]) if dup else ix
            if extra_ids:
                eidx = eidx.copy()
                for r in extra_ids:
                    eidx[r] = -1
            upd = (np.concatenate([update, update[dup]]) if dup else update) if update is not None else None
            self.state_rows.append(dict(p=p, k=k, t=stamp(*t), protocol=protocol, path=path, keys=keys,
                                        eidx=eidx, rej=rej, update=upd))
        return rec


def write_sus(w: World, E: dict, out: Path, files: list, faults: list, progress=None) -> dict:
    rng = rng_for(w.seed, 4)
    S = SusWriter(w, E, out, files, faults)
    K, NP = len(w.periods), len(w.prov_codes)
    order = np.lexsort((E["sid"], E["epiend"], E["period"], E["prov"]))
    key = E["prov"][order] * 1000 + E["period"][order]
    bounds = np.searchsorted(key, np.arange(NP * 1000 + 1000))
    all_fault_kinds_done = False
    base_time = {}
    for p in range(NP):
        for k in range(K):
            base_time[(p, k)] = (int(w.period_start[k + 1]) + 7 + int(rng.integers(0, 10)),
                                 int(rng.integers(6 * 3600, 22 * 3600)))
    for p in range(NP):
        for k in range(K):
            ix = order[bounds[p * 1000 + k]:bounds[p * 1000 + k + 1]]
            t1 = base_time[(p, k)]
            u = rng.random()
            scen = "resub" if u < 0.15 else "net" if u < 0.3 else "simple"
            if k == 0 and p in (0, 1):
                scen = "resub" if p == 0 else "net"
            if len(ix) < 8:
                scen = "simple"
            if not all_fault_kinds_done:
                fk = list(FILE_FAULTS)
                all_fault_kinds_done = True
            else:
                fk = [FILE_FAULTS[i] for i in rng.choice(len(FILE_FAULTS), size=int(rng.integers(0, 3)))]
            if scen == "simple":
                S.write(p, k, ix, "BULK", t1, fault_kinds=fk, mtime=_epoch(t1))
                continue
            pick = rng.choice(len(ix), size=6, replace=False)
            late, extra_src, changed_ = pick[:2], pick[2:3], pick[3:5]
            removed = pick[5:6]
            keep1 = np.setdiff1d(np.arange(len(ix)), late)
            rows1 = np.concatenate([ix[keep1], ix[extra_src]])
            # positions in BULK1
            pos_changed = [int(np.flatnonzero(keep1 == c)[0]) for c in changed_ if c in keep1]
            extra_ids = {len(keep1): f"{w.prov_codes[p]}9{k:02d}{int(rng.integers(0, 10**8)):08d}"}
            if scen == "resub":
                t2 = (t1[0] + 10 + int(rng.integers(0, 15)), int(rng.integers(6 * 3600, 22 * 3600)))
                if p == 0 and k == 0 and K > 1:  # resubmission after the next period's BULK
                    t2 = (base_time[(0, 1)][0] + 2, t2[1])
                m1 = _epoch(t1)
                m2 = _epoch(t2) if not (p == 0 and k == 0) else m1 - 86400  # arrives before BULK1
                S.write(p, k, rows1, "BULK", t1, extra_ids=extra_ids, changed=pos_changed, fault_kinds=fk,
                        status="superseded", reason="superseded", mtime=m1)
                final = np.setdiff1d(np.arange(len(ix)), removed)
                S.write(p, k, ix[final], "BULK", t2, mtime=m2)
            else:
                t2 = (t1[0] + 3 + int(rng.integers(0, 10)), int(rng.integers(6 * 3600, 22 * 3600)))
                S.write(p, k, rows1, "BULK", t1, extra_ids=extra_ids, changed=pos_changed, fault_kinds=fk,
                        mtime=_epoch(t1))
                net_rows = np.concatenate([ix[late], ix[changed_], ix[extra_src]])
                upd = np.array([0] * (len(late) + len(changed_)) + [1])
                S.write(p, k, net_rows, "NET", t2, update=upd,
                        extra_ids={len(net_rows) - 1: extra_ids[len(keep1)]}, mtime=_epoch(t2))
        if progress is not None:
            progress.update(1)
    # whole-file faults: held, missing column, malformed, misnamed
    last = K - 1
    late_t = lambda p, k, d: (base_time[(p, k)][0] + 40 + d, 43200)  # noqa: E731
    p_held = NP - 1
    ix = order[bounds[p_held * 1000 + last]:bounds[p_held * 1000 + last + 1]]
    if len(ix):
        kinds = [("epiend_before_epistart", "EPISTART")] * int(np.ceil(len(ix) * 0.6))
        S.write(p_held, last, ix, "BULK", late_t(p_held, last, 0), fault_kinds=kinds, status="held",
                reason="majority_rows_rejected", mtime=_epoch(late_t(p_held, last, 0)))
    ix0 = order[bounds[0 * 1000 + last]:bounds[0 * 1000 + last + 1]]
    S.write(0, last, ix0, "BULK", late_t(0, last, 1), status="rejected", reason="missing_required_column",
            drop_column="ADMIMETH", mtime=_epoch(late_t(0, last, 1)))
    S.write(1, 0, ix0[:10], "NET", late_t(1, 0, 2), status="rejected", reason="malformed_file", garbage=True,
            name=f"APC_{w.prov_codes[1]}_{w.periods[0].replace('-', '')}_{stamp(*late_t(1, 0, 2))}_NET.csv.gz",
            mtime=_epoch(late_t(1, 0, 2)))
    misnamed = f"apc_{w.prov_codes[0].lower()}_{w.periods[0][:4]}.csv"
    rec = S.write(0, 0, ix0[:50], "BULK", late_t(0, 0, 3), status="rejected", reason="misnamed_file",
                  name=misnamed, mtime=_epoch(late_t(0, 0, 3)))
    rec.update(submitter=None, period=None, submitted_at=None, protocol=None)
    return current_view(S.state_rows, w, files)


def _epoch(t: tuple[int, int]) -> int:
    return int(t[0]) * 86400 + int(t[1])


def current_view(state_rows: list, w: World, files: list) -> dict:
    """Apply the accepted submissions of each provider and period in submission-time order."""
    groups: dict = {}
    for s in state_rows:
        groups.setdefault((s["p"], s["k"]), []).append(s)
    cur = {"prov": [], "key": [], "eidx": [], "path": [], "line": [], "rej": []}
    status = {}
    for (p, k), subs in sorted(groups.items()):
        subs.sort(key=lambda s: s["t"])
        state: dict = {}
        for i, s in enumerate(subs):
            if s["protocol"] == "BULK":
                state = {}
                for j in range(i):
                    status[subs[j]["path"]] = "superseded"
            for r, key in enumerate(s["keys"]):
                if s["protocol"] == "BULK":
                    if key not in state:
                        state[key] = (s["eidx"][r], s["path"], r + 2, bool(s["rej"][r]))
                elif not s["rej"][r]:
                    if s["update"][r] == 1:
                        state.pop(key, None)
                    else:
                        state[key] = (s["eidx"][r], s["path"], r + 2, False)
            status.setdefault(s["path"], "current")
        for key, (e, path, line, rej) in state.items():
            cur["prov"].append(p)
            cur["key"].append(key)
            cur["eidx"].append(e)
            cur["path"].append(path)
            cur["line"].append(line)
            cur["rej"].append(rej)
    for f in files:
        if f["source"] == "sus_apc" and f["path"] in status:
            f["status"] = status[f["path"]]
            f["reason_kind"] = None if status[f["path"]] == "current" else "superseded"
    return {k: np.array(v) for k, v in cur.items()}
