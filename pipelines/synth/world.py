"""The synthetic world: commissioners, practices, providers, sites, wards, consultants, periods."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import codes as C
from .util import day, month_start

BATCH_PRACTICES = 200
MEAN_LIST_SIZE = 9230  # 60 million patients / 6,500 practices
SPELLS_PER_PATIENT_MONTH = 0.022  # with readmissions and ~1.2 episodes a spell: ~1.7 million episodes a month nationally
FFT_PER_MONTH = 1_200_000

PRACTICE_WORDS = ["CASTLE", "PARK", "VALLEY", "RIVERSIDE", "HIGH STREET", "STATION ROAD", "ABBEY", "BRIDGE",
                  "MILL", "CHURCH VIEW", "ORCHARD", "GROVE", "MARKET", "NORTHGATE", "SOUTHFIELD", "WESTWAY",
                  "EASTLEIGH", "BEECHWOOD", "OAKLANDS", "HILLSIDE", "MEADOW", "KINGS", "QUEENS", "VICTORIA"]
PRACTICE_KINDS = ["SURGERY", "MEDICAL CENTRE", "HEALTH CENTRE", "MEDICAL PRACTICE", "FAMILY PRACTICE"]
TOWNS = ["NORTHSHIRE", "SOUTHVALE", "EASTMOOR", "WESTBRIDGE", "MIDFORD", "KINGSPORT", "OAKHAM", "RIVERTON",
         "HILLBURY", "LAKESIDE", "STONEHAM", "ASHFIELD", "BROOKLEY", "MARSHGATE", "FENWICK", "HARTLEY"]


def rng_for(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(s) for s in stream]]))


def spell_rate_scale() -> float:
    """Constant c so that the age-weighted monthly spell rate c*g(age) averages SPELLS_PER_PATIENT_MONTH."""
    ages = np.concatenate([np.arange(b, b + 5) + 0.5 for b in C.AGE_BANDS])
    w = np.repeat(C.AGE_SHARES / 5, 5)
    return SPELLS_PER_PATIENT_MONTH / float((age_rate_shape(ages) * w).sum())


def age_rate_shape(age: np.ndarray) -> np.ndarray:
    age = np.asarray(age, dtype=float)
    return 0.35 + 2.2 * (age / 80.0) ** 2 + 0.6 * (age < 1)


@dataclass
class World:
    seed: int
    scale: float
    periods: list[str]  # YYYY-MM
    period_start: np.ndarray  # days, len(periods)+1 (last = end, exclusive)
    comm_codes: list[str]
    prac_codes: list[str]
    prac_names: list[str]
    prac_comm: np.ndarray
    prac_size: np.ndarray
    prac_open: np.ndarray
    prac_home_prov: np.ndarray
    prac_type1_rate: np.ndarray
    prac_pc_style: np.ndarray
    low_linkage_practices: list[int]
    extra_epraccur: list[dict]
    prov_codes: list[str]
    prov_names: list[str]
    prov_comm: np.ndarray
    prov_size: np.ndarray
    prov_low_quality: np.ndarray
    site_codes: list[str]
    site_prov: np.ndarray
    site_names: list[str]
    wards: list[dict]  # code, site index, setting, tretspef
    cons_codes: list[str]
    cons_prov: np.ndarray
    cons_spec: np.ndarray
    cons_rr: np.ndarray
    cons_start: np.ndarray  # [prov, spec] first consultant index
    cons_n: np.ndarray  # [prov, spec]
    batches: list[np.ndarray]
    patient_offset: np.ndarray  # per practice, global patient index offset
    visitor_offset: np.ndarray  # per batch
    visitor_n: np.ndarray  # per batch
    extracts: dict = field(default_factory=dict)  # practice idx -> list of (period idx, date days, second)
    spell_c: float = 0.0

    @property
    def start(self) -> int:
        return int(self.period_start[0])

    @property
    def end(self) -> int:
        return int(self.period_start[-1])


def _unique_codes(rng, n, make, space):
    picks = rng.choice(space, size=n, replace=False)
    return sorted(make(int(p)) for p in picks)


def build_world(seed: int, scale: float, months: int, start: str) -> World:
    rng = rng_for(seed, 0)
    y, m = (int(x) for x in start.split("-"))
    periods, starts = [], []
    for k in range(months + 1):
        yy, mm = y + (m - 1 + k) // 12, (m - 1 + k) % 12 + 1
        starts.append(month_start(yy, mm))
        if k < months:
            periods.append(f"{yy:04d}-{mm:02d}")
    n_prac = max(8, int(round(6500 * scale)))
    n_prov = max(3, int(round(150 * scale)))
    n_comm = max(2, int(round(42 * scale)))
    if n_prac > 99 * len(C.AREAS):
        raise ValueError("scale too large for the synthetic postcode districts")

    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    comm_codes = _unique_codes(rng, n_comm, lambda p: f"{p // 24:02d}{letters[p % 24]}", 100 * 24)
    prac_letters = "ABCDEFGHJKLMNP"
    prac_codes = _unique_codes(rng, n_prac + 6, lambda p: f"{prac_letters[p // 90000]}{10000 + p % 90000:05d}",
                               len(prac_letters) * 90000)
    extra_codes = prac_codes[n_prac:]
    prac_codes = prac_codes[:n_prac]
    name_w = rng.integers(0, len(PRACTICE_WORDS), n_prac + 6)
    name_k = rng.integers(0, len(PRACTICE_KINDS), n_prac + 6)
    prac_names = [f"{PRACTICE_WORDS[a]} {PRACTICE_KINDS[b]}" for a, b in zip(name_w, name_k)]
    size = np.clip(rng.lognormal(np.log(MEAN_LIST_SIZE) - 0.5 ** 2 / 2, 0.5, n_prac), 1200, 45000).astype(np.int64)
    prac_comm = rng.permutation(np.arange(n_prac) % n_comm)
    prac_open = np.array([day("1974-04-01") + int(x) for x in rng.integers(0, 12000, n_prac)])

    prov_letters = "ABCDEFGHJKLMNPQRTVWXY"
    prov_codes = _unique_codes(rng, n_prov, lambda p: "R" + prov_letters[p // 21] + prov_letters[p % 21],
                               21 * 21)
    prov_comm = rng.permutation(np.arange(n_prov) % n_comm)
    towns = [TOWNS[i % len(TOWNS)] + ("" if i < len(TOWNS) else f" {i // len(TOWNS) + 1}") for i in
             rng.permutation(max(n_prov, len(TOWNS)))[:n_prov]]
    prov_names = [f"{t} HOSPITALS NHS TRUST" for t in towns]
    home = np.zeros(n_prac, dtype=np.int64)
    for p in range(n_prac):
        cands = np.flatnonzero(prov_comm == prac_comm[p])
        home[p] = rng.choice(cands) if len(cands) else rng.integers(0, n_prov)
    prov_size = np.bincount(home, weights=size, minlength=n_prov) + size.mean()
    low_q = np.zeros(n_prov, dtype=bool)
    low_q[n_prov - 1] = True
    if n_prov >= 10:
        low_q[n_prov // 2] = True

    type1 = rng.uniform(0.008, 0.022, n_prac)
    low_link = [n_prac - 1, n_prac - 3]
    type1[low_link] = 0.14
    pc_style = np.zeros(n_prac, dtype=np.int8)
    pc_style[3] = 1
    pc_style[4] = 2

    # Sites and wards.
    site_codes, site_prov, site_names, wards = [], [], [], []
    ip_specs = ["100", "101", "110", "300", "320", "340", "430", "104", "502", "420"]
    for p, code in enumerate(prov_codes):
        for s in range(2 + int(rng.integers(0, 4))):
            si = len(site_codes)
            site_codes.append(f"{code}{s + 1:02d}")
            site_prov.append(p)
            site_names.append(f"{towns[p]} {['GENERAL', 'COMMUNITY', 'DISTRICT', 'ROYAL', 'MEMORIAL', 'CITY'][s]} HOSPITAL")
            for w in range(3 + int(rng.integers(0, 6))):
                wards.append(dict(code=f"W{s + 1}{w + 1:02d}", site=si, setting="IP",
                                  tretspef=ip_specs[int(rng.integers(0, len(ip_specs)))]))
            if s == 0:
                wards.append(dict(code="LAB1", site=si, setting="MAT_BIRTH", tretspef="501"))
                wards.append(dict(code="MLU", site=si, setting="MAT_BIRTH", tretspef="501"))
                wards.append(dict(code="PNW1", site=si, setting="MAT_POSTNATAL_WARD", tretspef="501"))

    # Consultants per provider and specialty, sized by expected volume.
    n_spec = len(C.SPECIALTIES)
    spec_w = np.array([s["w_el"] * 0.35 + s["w_em"] * 0.65 for s in C.SPECIALTIES], dtype=float)
    spec_w[C.SPEC_INDEX["501"]] = 6
    spec_w = spec_w / spec_w.sum()
    monthly_spells = np.outer(prov_size, spec_w) * SPELLS_PER_PATIENT_MONTH
    cons_n = np.clip(np.round(monthly_spells / 25), 1, 60).astype(np.int64)
    cons_n = np.maximum(cons_n, 2)
    cons_start = (np.cumsum(cons_n.ravel()) - cons_n.ravel()).reshape(cons_n.shape)
    total = int(cons_n.sum())
    gmc = rng.choice(9_000_000, size=total, replace=False) + 1_000_000
    cons_codes = [f"C{g:07d}" for g in gmc]
    cons_prov = np.repeat(np.repeat(np.arange(n_prov), n_spec), cons_n.ravel())
    cons_spec = np.repeat(np.tile(np.arange(n_spec), n_prov), cons_n.ravel())
    cons_rr = np.ones(total)
    for sc in C.OUTLIER_SPECIALTIES:
        si = C.SPEC_INDEX[sc]
        p = int(np.argmax(cons_n[:, si] + rng.random(n_prov) * 0.1))
        c = cons_start[p, si] + int(rng.integers(0, cons_n[p, si]))
        cons_rr[c] = float(np.round(rng.uniform(3.0, 4.0), 2))

    # epraccur rows that are not active GP practices (never send extracts).
    extra = [
        dict(code=extra_codes[0], name="OLD " + prac_names[n_prac], status="C", setting="4", close="20120331"),
        dict(code=extra_codes[1], name="DORMANT " + prac_names[n_prac + 1], status="D", setting="4", close=""),
        dict(code=extra_codes[2], name="PROPOSED " + prac_names[n_prac + 2], status="P", setting="4", close=""),
        dict(code=extra_codes[3], name="WALK IN CENTRE " + towns[0], status="A", setting="1", close=""),
        dict(code=extra_codes[4], name="OUT OF HOURS " + towns[0], status="A", setting="2", close=""),
        dict(code=extra_codes[5], name="PRISON HEALTHCARE " + towns[-1], status="A", setting="10", close=""),
    ]
    for i, e in enumerate(extra):
        e["comm"] = comm_codes[i % n_comm]

    batches = [np.arange(a, min(a + BATCH_PRACTICES, n_prac)) for a in range(0, n_prac, BATCH_PRACTICES)]
    offset = np.cumsum(size) - size
    n_res = int(size.sum())
    vis_n = np.array([max(10, int(np.ceil(0.01 * size[b].sum()))) for b in batches])
    vis_off = n_res + np.cumsum(vis_n) - vis_n

    w = World(seed=seed, scale=scale, periods=periods, period_start=np.array(starts), comm_codes=comm_codes,
              prac_codes=prac_codes, prac_names=prac_names[:n_prac], prac_comm=prac_comm, prac_size=size,
              prac_open=prac_open, prac_home_prov=home, prac_type1_rate=type1, prac_pc_style=pc_style,
              low_linkage_practices=low_link, extra_epraccur=extra, prov_codes=prov_codes, prov_names=prov_names,
              prov_comm=prov_comm, prov_size=prov_size, prov_low_quality=low_q, site_codes=site_codes,
              site_prov=np.array(site_prov), site_names=site_names, wards=wards, cons_codes=cons_codes,
              cons_prov=cons_prov, cons_spec=cons_spec, cons_rr=cons_rr, cons_start=cons_start, cons_n=cons_n,
              batches=batches, patient_offset=offset, visitor_offset=vis_off, visitor_n=vis_n,
              spell_c=spell_rate_scale())
    w.extracts = plan_extracts(w, rng)
    return w


def plan_extracts(w: World, rng: np.random.Generator) -> dict:
    """Per practice: list of (period index, extract date, is_second_in_month)."""
    n_prac, K = len(w.prac_codes), len(w.periods)
    base_day = rng.integers(1, 5, n_prac)
    plan = {}
    for p in range(n_prac):
        out = []
        for k in range(K):
            miss = rng.random() < 0.06
            second = rng.random() < 0.04
            if p == 1 and k == K - 1:
                miss = True
            if p == 2 and k == 0:
                miss, second = False, True
            if miss:
                continue
            d = int(w.period_start[k]) + int(min(4, base_day[p] + rng.integers(0, 2))) - 1
            out.append((k, d, False))
            if second:
                out.append((k, int(w.period_start[k]) + int(rng.integers(14, 25)), True))
        plan[p] = out
    return plan
