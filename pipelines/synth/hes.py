"""A HES APC extract (``hes_apc/``) with the conventions real extracts hold, and its truth.

The extract covers two HES-only providers (:data:`HES_PROVIDERS`: they submit no SUS file,
so SUS and HES never count one episode twice). Each stay is planted from a patient of the
generated world (a clean rank-1 SUS episode: valid, verified NHS number, date of birth,
sex and postcode as the GP record has them, no objection), on the same dates as that
episode, so that what each plant must become is known exactly (TRUTH.md, ``hes_plants``):

* no ``SUSSPELLID``: spells derived by person + provider + ``ADMIDATE``; keys
  ``PROCODE3`` + ``SUSRECID``, or ``EPIKEY`` where ``SUSRECID`` is empty;
* a two-episode stay whose first episode holds a cohort procedure and whose second ends in
  death (``DISMETH`` 4): the death counts for the procedure;
* ``EPIORDER`` ``99`` on the episode that ends a stay (it sorts after every real order);
* unfinished episodes (``EPISTAT`` 1 and 9) that end a stay with a cohort procedure: the
  stay has no discharge and is no index spell;
* episodes with neither ``DOB`` nor ``MYDOB`` (age from the linked GP record, rank 4);
* ``GPPRAC`` placeholders ``V81997``, ``V81998``, ``V81999``, ``&`` (no practice's episodes);
* HES placeholder dates (``1800-01-01``, ``1801-01-01``, ``1600-01-01``, ``1582-10-15``)
  in optional date columns (read as empty, ``<COL>_PLACEHOLDER`` warnings);
* a stay without NHS number (and without postcode: unlinked) whose episodes are one
  spell through ``PSEUDO_HESID``.

:func:`write_hes_history` writes a long extract (years of activity) for the benchmark.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.schemas.inputs import SUS_APC

from .population import ID_CATS
from .sus import render
from .util import write_file, ymd
from .world import World, rng_for

HES_PROVIDERS = [("RZA", "HES ONLY NORTH HOSPITALS NHS TRUST"), ("RZB", "HES ONLY SOUTH HOSPITALS NHS TRUST")]
"""Providers present only in the HES extract ("Z" is no letter of the generated codes)."""
HES_FILE = "hes_apc/HES_APC_extract.csv"
HES_EXTRA = ["EPIKEY", "FYEAR", "STARTAGE"]
HES_COLUMNS = [c.name for c in SUS_APC.columns if c.name not in ("CDS_UPDATE_TYPE", "SUSSPELLID")] + HES_EXTRA
PRACTICE_PLACEHOLDERS = ["V81997", "V81998", "V81999", "&"]
COHORT_PROCS = {"death": "K401", "no_dob": "W371", "unfinished_9": "H071", "unfinished_1": "M021",
                "opdate_placeholder": "W381"}
HES_CONSULTANTS = ["C9100001", "C9100002", "C9200001", "C9200002"]


def _whole_years(on: int, born: int) -> int:
    a, b = np.datetime64(int(on), "D").astype(object), np.datetime64(int(born), "D").astype(object)
    return a.year - b.year - ((a.month, a.day) < (b.month, b.day))


def _sources(w: World, E: dict, cur: dict, n: int, seed: int) -> np.ndarray:
    """``n`` episodes of distinct clean, linkable adults whose episode starts and ends in one
    generated period and lasts at least a day."""
    e = cur["eidx"][(cur["eidx"] >= 0) & ~cur["rej"]]
    e = np.unique(e)
    ps = np.asarray(w.period_start)
    k = E["period"][e]
    ok = ((E["match_rank"][e] == 1) & (E["idcat"][e] == ID_CATS.index("clean")) & (E["objection"][e] == 0)
          & ~E["visitor"][e] & E["nhs_valid"][e] & E["linked_at_gpprac"][e] & (E["gpprac"][e] >= 0)
          & (E["epistart"][e] >= ps[k]) & (E["epiend"][e] < ps[k + 1]) & (E["epiend"][e] - E["epistart"][e] >= 1)
          & (E["nhsnoind"][e] == 1) & ((E["admi"][e] - E["dob"][e]) > 20 * 366) & (E["sex"][e] >= 1)
          & (E["sex"][e] <= 2))
    cand = e[ok]
    _, first = np.unique(E["true_nhs"][cand], return_index=True)
    cand = cand[np.sort(first)]
    if len(cand) < n:
        raise ValueError("too few clean episodes to plant the HES extract from: raise scale or months")
    return np.sort(rng_for(seed, 9).choice(cand, size=n, replace=False))


def write_hes_plants(w: World, E: dict, cur: dict, out: Path, files: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write :data:`HES_FILE`; return (its episodes as rows of ``linkage_episodes``, the
    plants: one row per planted episode with what it must become)."""
    plan = [  # (plant, provider, episodes of the stay)
        ("death", 0, 2), ("no_dob", 0, 1), ("epiorder_99", 0, 2), ("unfinished_9", 1, 2),
        ("unfinished_1", 1, 1), ("gpprac_V81997", 1, 1), ("gpprac_V81998", 0, 1), ("gpprac_V81999", 1, 1),
        ("gpprac_&", 0, 1), ("dob_placeholder", 1, 1), ("opdate_placeholder", 0, 1), ("pseudo_hesid", 1, 2),
    ]
    src = _sources(w, E, cur, len(plan), w.seed)
    fmt = dict(delimiter=",", gz=False, bom=False, pseudo=True, extra=False, pc_style=0)
    base = render(w, E, src, fmt)
    base = {c: base[c].to_pylist() for c in base}
    rows, lk, plants = [], [], []
    seq = 0
    for i, (plant, p, n_ep) in enumerate(plan):
        e = int(src[i])
        prov = HES_PROVIDERS[p][0]
        s_, t_ = int(E["epistart"][e]), int(E["epiend"][e])
        age = _whole_years(int(E["admi"][e]), int(E["dob"][e]))
        stay = []
        for j in range(n_ep):
            seq += 1
            r = {c: base[c][i] for c in base if c in HES_COLUMNS}
            r.update(PROCODE3=prov, SUSRECID=f"{prov}{seq:011d}", EPIKEY=f"{700000000000 + seq}",
                     FYEAR="1415", STARTAGE=str(age), ADMIDATE=ymd(s_), EPISTART=ymd(s_),
                     EPIEND=ymd(t_ if j == n_ep - 1 else s_), EPIORDER=f"{j + 1:02d}", EPISTAT="3",
                     ADMIMETH="11", DISMETH="8", DISDATE="", DISDEST="98", OPERTN_4_01="-", OPDATE_01="",
                     OPERTN_4_02="", OPDATE_02="", CONSULT=HES_CONSULTANTS[2 * p + (j % 2)],
                     MAINSPEF="100", TRETSPEF="100", PSEUDO_HESID=f"HES{900000000 + i}")
            if j == n_ep - 1:
                r.update(DISMETH="1", DISDATE=ymd(t_), DISDEST="19")
            stay.append(r)
        exp = dict(index_procedure=None, death_30d=None, disdate=ymd(t_), dismeth="1", age=age,
                   warning=None, placeholder_column=None)
        first, last = stay[0], stay[-1]
        if plant in COHORT_PROCS:
            first.update(OPERTN_4_01=COHORT_PROCS[plant], OPDATE_01=ymd(s_))
            exp["index_procedure"] = COHORT_PROCS[plant]
        if plant == "death":
            last.update(DISMETH="4", DISDEST="79")
            first.update(DISDATE="1801-01-01")  # a placeholder on the episode before the discharge
            exp.update(death_30d=True, dismeth="4", warning="DISDATE_PLACEHOLDER", placeholder_column="disdate")
        elif plant == "no_dob":
            first.update(DOB="", MYDOB="")
        elif plant == "epiorder_99":
            last.update(EPIORDER="99")
            stay.reverse()  # written before the episode it follows
        elif plant == "unfinished_9":
            last.update(EPISTAT="9")  # a discharge written on it, yet unfinished
            exp.update(index_procedure=None, disdate=None, dismeth=None)
        elif plant == "unfinished_1":
            last.update(EPISTAT="1", DISMETH="8", DISDATE="", DISDEST="98")
            exp.update(index_procedure=None, disdate=None, dismeth=None)
        elif plant.startswith("gpprac_"):
            first.update(GPPRAC=plant[len("gpprac_"):])
        elif plant == "dob_placeholder":
            first.update(DOB="1582-10-15")
            exp.update(warning="DOB_PLACEHOLDER", placeholder_column="dob", age=None)  # age from MYDOB
        elif plant == "opdate_placeholder":
            first.update(OPDATE_01="1600-01-01", OPDATE_02="1800-01-01")
            exp.update(warning="OPDATE_01_PLACEHOLDER", placeholder_column="procedure_dates")
        elif plant == "pseudo_hesid":
            for r in stay:
                r.update(NEWNHSNO="", NHSNOIND="07", HOMEADD="")
        if plant in ("gpprac_V81998", "pseudo_hesid"):
            for r in stay:
                r["SUSRECID"] = ""  # keyed by EPIKEY
        spell_first = stay[0] if plant != "epiorder_99" else stay[1]
        for r in stay:
            key = r["SUSRECID"] or r["EPIKEY"]
            no_nhs = r["NEWNHSNO"] == ""
            rank = None if no_nhs else (4 if r["DOB"] == "" and r["MYDOB"] == "" else
                                        3 if r["DOB"] == "1582-10-15" else 1)
            gp_ok = r["GPPRAC"] not in PRACTICE_PLACEHOLDERS
            lk.append(dict(
                provider_code=prov, susrecid=key, period=w.periods[int(E["period"][e])],
                file=HES_FILE, line=0, expected_quarantined=False, fault_kinds=None,
                true_nhs_number=str(int(E["true_nhs"][e])), nhs_number_valid=not no_nhs,
                nhs_number_verified=r["NHSNOIND"] == "01",
                identity_case=("nhs_missing_postcode_differs" if no_nhs else "dob_missing_mydob_ok" if rank == 3
                               else "dob_and_mydob_missing" if rank == 4 else "clean"),
                match_rank=rank, linked_nhs_number=None if no_nhs else str(int(E["true_nhs"][e])),
                gpprac=r["GPPRAC"] if gp_ok else None,
                practice_at_epistart=None if no_nhs else w.prac_codes[int(E["practice_at_epistart"][e])],
                true_practice_at_epistart=w.prac_codes[int(E["true_prac"][e])] if E["true_prac"][e] >= 0 else None,
                linked_at_gpprac=bool(gp_ok and not no_nhs), type1_patient=False, type2_patient=False,
                rank5_ambiguous=False, in_any_extract=True, source="hes_apc"))
            plants.append(dict(plant=plant, provider_code=prov, susrecid=key,
                               spell_first_susrecid=spell_first["SUSRECID"] or spell_first["EPIKEY"],
                               epiorder=r["EPIORDER"], epistat=r["EPISTAT"], gpprac=r["GPPRAC"],
                               admidate=ymd(s_), age_at_admission=exp["age"], match_rank=rank,
                               spell_index_procedure=exp["index_procedure"], spell_death_30d=exp["death_30d"],
                               spell_disdate=exp["disdate"], spell_dismeth=exp["dismeth"],
                               warning=exp["warning"] if r is first else None,
                               placeholder_column=exp["placeholder_column"] if r is first else None))
        rows += stay
    buf = io.StringIO()
    wr = csv.DictWriter(buf, fieldnames=HES_COLUMNS, lineterminator="\n", extrasaction="ignore")
    wr.writeheader()
    for line, r in enumerate(rows, start=2):
        wr.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in HES_COLUMNS})
    data = buf.getvalue().encode()
    write_file(out / HES_FILE, data, mtime=int(w.period_start[-1]) * 86400 + 86400 * 20)
    lines = {(r["PROCODE3"], r["SUSRECID"] or r["EPIKEY"]): i + 2 for i, r in enumerate(rows)}
    for x in lk:
        x["line"] = lines[(x["provider_code"], x["susrecid"])]
    files.append(dict(path=HES_FILE, source="hes_apc", submitter=None, period=None, submitted_at=None,
                      protocol=None, rows=len(rows), delimiter=",", gzip=False, bom=False, status="current",
                      reason_kind=None, newest_in_period=None))
    return pd.DataFrame(lk), pd.DataFrame(plants)


# --------------------------------------------------------------------------- history (benchmark)
HISTORY_PROVIDERS = ["RZC", "RZD", "RZE", "RZF"]
_HISTORY_PROCS = ["K401", "W371", "W381", "H071", "M021", "L191", "G011", "B081", "E191", "H331"]
_HISTORY_DIAGS = ["I219", "J189", "I500", "E119", "N189", "K802", "S720", "C509", "J449", "I639"]


def write_hes_history(out, *, years: int = 10, episodes_per_month: int = 2000, end: str = "2014-01",
                      seed: int = 0, name: str = "HES_APC_history.csv") -> dict:
    """A long HES APC extract for the benchmark (``make bench-hes``): ``years`` of activity
    ending with the month ``end``, about ``episodes_per_month`` episodes a month at the
    HES-only providers :data:`HISTORY_PROVIDERS` (no SUSSPELLID; stays of one or two
    episodes; 1% of first episodes of two carry a placeholder ``DISDATE``). Patients are
    drawn from the GP extracts already under ``out/gp/`` (so most episodes link, rank 1),
    with ``GPPRAC`` their practice. Deterministic. Returns ``rows``, ``path``, ``periods``."""
    import gzip as _gzip

    out = Path(out)
    rng = rng_for(seed, 21)
    gp = []
    for f in sorted((out / "gp").glob("GP_*")):
        raw = f.read_bytes()
        if f.name.endswith(".gz"):
            raw = _gzip.decompress(raw)
        try:
            df = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8-sig",
                             usecols=["NHS_NUMBER", "DATE_OF_BIRTH", "SEX", "POSTCODE", "OBJECTION"])
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError):
            continue  # a planted malformed or column-less extract
        df["GPPRAC"] = f.name.split("_")[1]
        gp.append(df)
    people = pd.concat(gp, ignore_index=True)
    people = people[(people.OBJECTION != "9Nu0") & people.DATE_OF_BIRTH.str.fullmatch(r"\d{4}-\d{2}-\d{2}")
                    & people.GPPRAC.str.fullmatch(r"[A-Z]\d{5}")]
    people = people.drop_duplicates("NHS_NUMBER").sort_values("NHS_NUMBER").reset_index(drop=True)
    end_m = np.datetime64(end, "M")
    months = np.arange(end_m - 12 * years + 1, end_m + 1)
    n_spells = max(1, int(episodes_per_month / 1.3))
    parts = []
    for mi, m in enumerate(months):
        ms, me = m.astype("datetime64[D]"), (m + 1).astype("datetime64[D]")
        admi = ms + rng.integers(0, int((me - ms).astype(np.int64)), n_spells).astype("timedelta64[D]")
        two = rng.random(n_spells) < 0.3
        d1 = rng.integers(0, 4, n_spells)
        d2 = rng.integers(0, 6, n_spells)
        who = rng.integers(0, len(people), n_spells)
        prov = rng.integers(0, len(HISTORY_PROVIDERS), n_spells)
        proc = np.where(rng.random(n_spells) < 0.3, rng.integers(0, len(_HISTORY_PROCS), n_spells), -1)
        diag = rng.integers(0, len(_HISTORY_DIAGS), n_spells)
        emerg = rng.random(n_spells) < 0.4
        died = rng.random(n_spells) < 0.02
        ep = np.repeat(np.arange(n_spells), 1 + two)  # episodes of each stay, in order
        order = np.concatenate([[0], (ep[1:] == ep[:-1]).astype(int)])  # 0 first episode, 1 second
        last = np.ones(len(ep), bool)
        last[:-1] = ep[1:] != ep[:-1]
        a = admi[ep]
        first_end = a + d1[ep].astype("timedelta64[D]")
        start_ = np.where(order == 0, a, first_end)
        end_ = np.where(order == 0, first_end, first_end + d2[ep].astype("timedelta64[D]"))
        p = people.iloc[who[ep]].reset_index(drop=True)
        pv = np.array(HISTORY_PROVIDERS)[prov[ep]]
        seq = mi * 10**7 + np.arange(len(ep))
        disdate = np.where(last, end_.astype(str), "")
        placeholder = ~last & (rng.random(len(ep)) < 0.01)
        disdate = np.where(placeholder, "1800-01-01", disdate)
        pr = proc[ep]
        parts.append(pd.DataFrame({
            "PROCODE3": pv, "SUSRECID": [f"{x}{s:011d}" for x, s in zip(pv, seq)],
            "EPISTART": start_.astype(str), "EPIEND": end_.astype(str), "ADMIDATE": a.astype(str),
            "ADMIMETH": np.where(emerg[ep], "21", "11"),
            "DISMETH": np.where(last, np.where(died[ep], "4", "1"), "8"),
            "SEX": p.SEX.to_numpy(), "NEWNHSNO": p.NHS_NUMBER.str.replace(" ", "").to_numpy(), "NHSNOIND": "01",
            "DOB": p.DATE_OF_BIRTH.to_numpy(), "MYDOB": (p.DATE_OF_BIRTH.str[5:7] + p.DATE_OF_BIRTH.str[:4]).to_numpy(),
            "HOMEADD": p.POSTCODE.to_numpy(), "GPPRAC": p.GPPRAC.to_numpy(),
            "EPIORDER": np.where(order == 0, "01", "02"), "EPISTAT": "3", "DISDATE": disdate,
            "DISDEST": np.where(last, np.where(died[ep], "79", "19"), "98"), "CLASSPAT": "1",
            "CONSULT": [f"C9{prov_i + 3}{c:05d}" for prov_i, c in zip(prov[ep], rng.integers(0, 40, len(ep)))],
            "MAINSPEF": "100", "TRETSPEF": "100",
            "DIAG_4_01": np.array(_HISTORY_DIAGS)[diag[ep]],
            "OPERTN_4_01": np.where((order == 0) & (pr >= 0), np.array(_HISTORY_PROCS)[np.maximum(pr, 0)], "-"),
            "OPDATE_01": np.where((order == 0) & (pr >= 0), start_.astype(str), ""),
            "PSEUDO_HESID": [f"HES{int(x):010d}" for x in who[ep]], "EPIKEY": (800000000000 + seq).astype(str),
            "FYEAR": "", "STARTAGE": "",
        }))
    df = pd.concat(parts, ignore_index=True).reindex(columns=HES_COLUMNS, fill_value="")
    path = out / "hes_apc" / name
    write_file(path, df.to_csv(index=False, lineterminator="\n").encode(), mtime=0)
    return {"rows": int(len(df)), "path": str(path), "periods": [str(m) for m in months]}
