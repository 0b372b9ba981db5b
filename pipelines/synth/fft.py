"""Friends and Family Test returns, with their planted faults and ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import codes as C
from .gp import render_nhs
from .sus import _epoch, severity, stamp
from .util import NhsAllocator, csv_bytes, dates_str, ints_str, invalidate, mod11_valid, patch, take, write_file, ymd
from .world import FFT_PER_MONTH, World, rng_for

FFT_COLUMNS = ["RESPONSE_ID", "PROVIDER_CODE", "SITE_CODE", "WARD_CODE", "SETTING", "RESPONSE_DATE", "RESPONSE",
               "NHS_NUMBER", "TRETSPEF", "MODE"]
FFT_FAULTS = [("bad_code", "SETTING"), ("bad_code", "RESPONSE"), ("response_date_outside_period", "RESPONSE_DATE"),
              ("unparseable_date", "RESPONSE_DATE"), ("provider_mismatch", "PROVIDER_CODE"),
              ("duplicate_key", "RESPONSE_ID"), ("unknown_site", "SITE_CODE"), ("invalid_nhs_number", "NHS_NUMBER"),
              ("bad_code", "MODE")]
SETTINGS = list(C.FFT_SHARES)
OP_SPECS = ["100", "101", "110", "120", "130", "300", "320", "340", "502"]


def _cells(w: World, p: int) -> list[tuple]:
    sites = np.flatnonzero(w.site_prov == p)
    shares = dict(C.FFT_SETTING_SHARE_ACUTE)
    if p % 5 == 2:
        shares = {s: v * 0.7 for s, v in shares.items()}
        shares.update({s: v * 0.3 for s, v in C.FFT_SETTING_SHARE_OTHER.items()})
    cells = []
    for setting, share in shares.items():
        group = []
        for si in sites:
            if setting in C.WARDED_SETTINGS:
                for wd in w.wards:
                    if wd["site"] == si and wd["setting"] == setting:
                        group.append((int(si), wd["code"], setting, wd["tretspef"]))
            elif setting == "OP":
                group.append((int(si), None, setting, OP_SPECS[int(si) % len(OP_SPECS)]))
            else:
                group.append((int(si), None, setting, None))
        cells += [(c, share / len(group)) for c in group]
    return cells


def write_fft(w: World, E: dict, cur: dict, out: Path, files: list, faults: list, alloc: NhsAllocator,
              n_residents_total: int, progress=None) -> dict:
    rng = rng_for(w.seed, 6)
    K, NP = len(w.periods), len(w.prov_codes)
    ok = (cur["eidx"] >= 0) & ~cur["rej"]
    e = cur["eidx"][ok]
    e = e[E["last"][e] & E["nhs_valid"][e] & ~E["epistat9"][e]]  # an unfinished spell has no discharge
    spells = pd.DataFrame({"prov": E["prov"][e], "nhs": E["nhs"][e], "disdate": E["disdate"][e],
                           "tretspef": np.array(C.SPEC_CODES)[E["spec"][e]], "alive": E["dismeth"][e] != 4})
    pool = E["true_nhs"] if len(E["true_nhs"]) else alloc.get(np.arange(100))  # people known to hospitals
    counts_rows, linked_rows = [], []
    first_done = False
    total = FFT_PER_MONTH * w.scale
    for p in range(NP):
        cells = _cells(w, p)
        cw = np.array([c[1] for c in cells])
        psp = spells[spells["prov"] == p]
        for k in range(K):
            ps, pe = int(w.period_start[k]), int(w.period_start[k + 1])
            n = max(40, int(round(total * w.prov_size[p] / w.prov_size.sum())))
            wts = cw * rng.lognormal(0, 1.0, len(cw))
            cnt = rng.multinomial(n, wts / wts.sum())
            ci = np.repeat(np.arange(len(cells)), cnt)
            nr = len(ci)
            site = np.array([cells[i][0][0] for i in ci], dtype=np.int64)
            ward = [cells[i][0][1] for i in ci]
            setting = [cells[i][0][2] for i in ci]
            tret = [cells[i][0][3] for i in ci]
            date = ps + rng.integers(0, pe - ps, nr)
            nhs = np.zeros(nr, dtype=np.int64)
            ip = np.array([s == "IP" for s in setting], dtype=bool)
            other = ip & (rng.random(nr) < 0.03)
            nhs[other] = pool[rng.integers(0, len(pool), int(other.sum()))]
            # responses from patients discharged 0-2 days earlier at this provider
            cand = psp[(psp["disdate"] >= ps - 2) & (psp["disdate"] < pe) & psp["alive"]]
            take_n = int(round(len(cand) * 0.15))
            if take_n:
                pick = cand.iloc[np.sort(rng.choice(len(cand), size=take_n, replace=False))]
                ld = pick["disdate"].to_numpy() + rng.integers(0, 3, take_n)
                keep = (ld >= ps) & (ld < pe)
                pick, ld = pick[keep], ld[keep]
                ipw = [wd for wd in w.wards if wd["setting"] == "IP" and w.site_prov[wd["site"]] == p]
                wt = np.array([wd["tretspef"] for wd in ipw])
                ptf = pick["tretspef"].to_numpy()
                wsel = np.zeros(len(pick), dtype=np.int64)
                for tf in np.unique(ptf):
                    m = ptf == tf
                    same = np.flatnonzero(wt == tf)
                    if not len(same):
                        same = np.arange(len(ipw))
                    wsel[m] = same[rng.integers(0, len(same), int(m.sum()))]
                site = np.concatenate([site, np.array([ipw[i]["site"] for i in wsel], dtype=np.int64)])
                ward += [ipw[i]["code"] for i in wsel]
                setting += ["IP"] * len(wsel)
                tret += list(ptf)
                date = np.concatenate([date, ld])
                nhs = np.concatenate([nhs, pick["nhs"].to_numpy()])
            nr = len(site)
            setting_a = np.array(setting)
            resp = np.zeros(nr, dtype=np.int64)
            for s in sorted(set(setting)):  # fixed order: str hashes vary by process
                m = setting_a == s
                resp[m] = rng.choice(6, size=int(m.sum()), p=np.array(C.FFT_SHARES[s]) / sum(C.FFT_SHARES[s]))
            mode = rng.choice(6, size=nr, p=C.FFT_MODE_P / C.FFT_MODE_P.sum())
            mode[rng.random(nr) < 0.05] = -1
            order = np.lexsort((np.arange(nr), date))
            site, date, resp, mode, nhs = site[order], date[order], resp[order], mode[order], nhs[order]
            ward = [ward[i] for i in order]
            setting = [setting[i] for i in order]
            tret = [tret[i] for i in order]
            period = w.periods[k].replace("-", "")
            ids = [f"{w.prov_codes[p]}{period}{i + 1:06d}" for i in range(nr)]
            cols = {
                "RESPONSE_ID": pa.array(ids, pa.string()),
                "PROVIDER_CODE": take([w.prov_codes[p]], np.zeros(nr, np.int64)),
                "SITE_CODE": take(w.site_codes, site),
                "WARD_CODE": pa.array(ward, pa.string()),
                "SETTING": pa.array(setting, pa.string()),
                "RESPONSE_DATE": dates_str(date),
                "RESPONSE": ints_str(resp + 1),
                "NHS_NUMBER": render_nhs(nhs),
                "TRETSPEF": pa.array(tret, pa.string()),
                "MODE": take(C.FFT_MODES, mode),
            }
            two = rng.random() < 0.2 or (p == 0 and k == 0)
            t1 = (pe + 3 + int(rng.integers(0, 8)), int(rng.integers(7 * 3600, 20 * 3600)))
            t2 = (t1[0] + 5 + int(rng.integers(0, 10)), int(rng.integers(7 * 3600, 20 * 3600)))
            fmt_bom, fmt_gz = p % 4 == 3, p % 5 == 1
            bad = np.zeros(nr, dtype=bool)
            if two:  # the older file lacks some late responses
                keep_old = np.flatnonzero(rng.random(nr) > 0.05)
                _write(w, out, files, faults, p, k, t1, {c: a.take(pa.array(keep_old)) for c, a in cols.items()},
                       [], "superseded", fmt_bom, fmt_gz)
            if not first_done:
                kinds = list(FFT_FAULTS)
                first_done = True
            else:
                kinds = [FFT_FAULTS[i] for i in rng.choice(len(FFT_FAULTS), size=int(rng.integers(0, 3)))]
            rows = rng.choice(np.arange(1, nr), size=min(len(kinds), nr - 1), replace=False) if nr > 1 else []
            frows = []
            for r, (kind, fld) in zip(rows, kinds):
                r = int(r)
                if kind == "bad_code":
                    v = {"SETTING": "INPATIENT", "RESPONSE": "7", "MODE": "EMAIL"}[fld]
                elif kind == "response_date_outside_period":
                    v = ymd(pe + 3)
                elif kind == "unparseable_date":
                    v = f"{w.periods[k][:4]}-02-30"
                elif kind == "provider_mismatch":
                    v = w.prov_codes[(p + 1) % NP]
                elif kind == "duplicate_key":
                    v = ids[r - 1]
                elif kind == "unknown_site":
                    v = f"{w.prov_codes[p]}99"
                elif kind == "invalid_nhs_number":
                    base = nhs[r] if nhs[r] else pool[r % len(pool)]
                    v = str(invalidate(np.array([base]), rng)[0])
                    nhs[r] = int(v)
                cols[fld] = patch(cols[fld], [r], [v])
                frows.append((r, kind, fld))
                if severity(kind, fld) == "reject":
                    bad[r] = True
            path = _write(w, out, files, faults, p, k, t2 if two else t1, cols, frows, "current", fmt_bom, fmt_gz)
            # ground truth: the six counts of this file's valid rows
            df = pd.DataFrame({"site": np.array(w.site_codes)[site], "ward": ward, "setting": setting,
                               "resp": resp + 1})[~bad]
            g = df.fillna({"ward": ""}).groupby(["setting", "site", "ward", "resp"]).size().unstack(fill_value=0)
            for c_ in range(1, 7):
                if c_ not in g.columns:
                    g[c_] = 0
            g = g[[1, 2, 3, 4, 5, 6]].reset_index()
            for row in g.itertuples(index=False):
                counts_rows.append(dict(period=w.periods[k], setting=row[0], provider_code=w.prov_codes[p],
                                        site_code=row[1], ward_code=row[2] or None, extremely_likely=int(row[3]),
                                        likely=int(row[4]), neither=int(row[5]), unlikely=int(row[6]),
                                        extremely_unlikely=int(row[7]), dont_know=int(row[8]), file=path))
            # ground truth: responses linked to spells
            lk = pd.DataFrame({"nhs": nhs, "date": date, "resp": resp + 1, "setting": setting})
            lk = lk[(~bad) & (lk["setting"] == "IP").to_numpy() & mod11_valid(nhs)]
            if len(lk):
                m = lk.reset_index().merge(psp, on="nhs")
                m = m[(m["disdate"] <= m["date"]) & (m["disdate"] >= m["date"] - 2)]
                m = m.sort_values(["index", "disdate"]).groupby("index").tail(1)
                for (tf, rv), nn in m.groupby(["tretspef", "resp"]).size().items():
                    linked_rows.append(dict(period=w.periods[k], provider_code=w.prov_codes[p], tretspef=tf,
                                            response=int(rv), responses=int(nn)))
        if progress is not None:
            progress.update(1)
    # a malformed FFT file (cannot be parsed): later than the current one, so rejected and ignored
    p, k = 1 % NP, K - 1
    t = (int(w.period_start[k + 1]) + 30, 3600)
    name = f"FFT_{w.prov_codes[p]}_{w.periods[k].replace('-', '')}_{stamp(*t)}.csv"
    data = (",".join(FFT_COLUMNS) + "\n").encode() + b'"X1,' + w.prov_codes[p].encode() + b',"\xff\xfe\x00\x01garbage\n"'
    write_file(out / "fft" / name, data, mtime=_epoch(t))
    files.append(dict(path=f"fft/{name}", source="fft", submitter=w.prov_codes[p], period=w.periods[k],
                      submitted_at=stamp(*t), protocol=None, rows=None, delimiter=",", gzip=False, bom=False,
                      status="rejected", reason_kind="malformed_file", newest_in_period=None))
    counts = pd.DataFrame(counts_rows)
    linked = pd.DataFrame(linked_rows)
    if len(linked):
        linked = linked.pivot_table(index=["period", "provider_code", "tretspef"], columns="response",
                                    values="responses", aggfunc="sum", fill_value=0)
        for c_ in range(1, 7):
            if c_ not in linked.columns:
                linked[c_] = 0
        linked = linked[[1, 2, 3, 4, 5, 6]].reset_index()
        linked.columns = ["period", "provider_code", "tretspef", "extremely_likely", "likely", "neither",
                          "unlikely", "extremely_unlikely", "dont_know"]
        linked["responses"] = linked.iloc[:, 3:9].sum(axis=1)
    return dict(counts=counts, linked=linked)


def _write(w, out, files, faults, p, k, t, cols, frows, status, bom, gz) -> str:
    name = f"FFT_{w.prov_codes[p]}_{w.periods[k].replace('-', '')}_{stamp(*t)}.csv" + (".gz" if gz else "")
    path = f"fft/{name}"
    write_file(out / path, csv_bytes(FFT_COLUMNS, [cols[c] for c in FFT_COLUMNS]), bom=bom, gz=gz, mtime=_epoch(t))
    files.append(dict(path=path, source="fft", submitter=w.prov_codes[p], period=w.periods[k], submitted_at=stamp(*t),
                      protocol=None, rows=len(cols["RESPONSE_ID"]), delimiter=",", gzip=gz, bom=bom, status=status,
                      reason_kind="superseded" if status == "superseded" else None, newest_in_period=None))
    for r, kind, fld in frows:
        faults.append(dict(file=path, line=r + 2, kind=kind, field=fld, severity=severity(kind, fld)))
    return path
