"""Differencing audit: which suppressed cells of the public tables can be recovered from
the published margins (docs/methods-disclosure.md "Differencing audit").

Plain functions over the public tables as published (Arrow tables or pandas frames), no
Dagster. The audit writes every published margin as an equation ``total = sum(parts)``
over *cells* (one count of one row: dataset, period, level, key, column) and then, until
nothing changes, solves every equation with exactly one unknown cell (a parent total minus
its published children; a parent rebuilt from its children; a row's total minus its other
columns; a cumulative minus its periods). A suppressed cell solved exactly is a finding.

Hierarchies (``audit``):

* ``fft_scores``, per period and setting, for ``responses`` and each of the six counts:
  a site is the sum of its wards, a provider of its sites, a commissioner of its
  providers, national of the commissioners and the providers without one, and national of
  all providers. A parent named in ``incomplete`` (responses without a ward or site code:
  part of it is in no published child) gets an unpublished remainder, so its equation
  does not isolate anything;
* ``linkage_coverage_practice`` -> ``linkage_coverage_summary`` (commissioner, national):
  any count column both publish (none today: the summary counts organisations);
* ``linkage_coverage_provider``: ``episodes_linked`` = ``linked_rank_1`` + ... +
  ``linked_rank_5`` in each row; with ``linkage_quality``, each characteristic's
  categories add up to the provider's ``episodes`` and ``episodes_linked``, match rank
  k's episodes are ``linked_rank_k`` and NHS number status valid's are
  ``episodes_valid_nhs_number``;
* ``consultant_outcomes`` -> ``specialty_outcomes``, per window and specialty:
  ``deaths_30d`` of the specialty is the sum over its consultants, where the consultants'
  ``procedures`` add up to the specialty's (else an unpublished remainder);
* across periods: ``period_totals`` declares a period of a dataset that is the sum of
  other periods (a cumulative), key by key.

Rounded counts (``rounding`` ``nearest_5``) are known to within 2 either way: the audit
carries intervals, and reports a cell only when its interval closes to one value.

A finding names the dataset, the period, the level, the cell's organisation codes, the
columns and how (e.g. ``provider RB2 total minus 2 published sites``): never the
recovered value, which is itself disclosive, and never a patient's value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import pyarrow as pa

__all__ = ["Recoverable", "Cell", "Equation", "solve", "solve_linear", "audit", "fft_incomplete_parents", "SEVERITIES"]

SEVERITIES = ("warn", "error")
FFT_COUNTS = ("responses", "extremely_likely", "likely", "neither", "unlikely", "extremely_unlikely", "dont_know")
_FFT_CHILD = {"site": "ward", "provider": "site", "commissioner": "provider"}
_PLURAL = {"ward": "wards", "site": "sites", "provider": "providers", "commissioner": "commissioners",
           "consultant": "consultants", "category": "categories", "column": "columns", "period": "periods"}
ROUNDING_HALF_WIDTH = {"none": 0, "nearest_5": 2}
# solve_linear: a connected group of more unknowns than this is not examined (reported).
MAX_LINEAR_UNKNOWNS = 1500


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Recoverable:
    """A suppressed cell that the published tables give back exactly (never its value)."""

    dataset: str
    period: str
    level: str
    key: str  # organisation codes only, e.g. "setting=IP org_code=RA1"
    columns: tuple[str, ...]
    how: str
    datasets: tuple[str, ...] = field(default=(), compare=False)  # every dataset the recovery reads

    def __str__(self) -> str:
        return (f"{self.dataset} {self.period} {self.level} {self.key}: {', '.join(self.columns)} "
                f"recoverable ({self.how})")

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "period": self.period, "level": self.level, "key": self.key,
                "columns": list(self.columns), "how": self.how, "datasets": list(self.datasets)}


@dataclass
class Cell:
    """One published count: ``lo``..``hi`` its known interval (None: not published),
    ``suppressed`` whether disclosure control blanked it."""

    dataset: str
    period: str
    level: str
    key: str
    column: str
    lo: int | None = None
    hi: int | None = None
    suppressed: bool = False
    label: str = ""  # how it is named in a "how" text, e.g. "provider RB2"

    @property
    def known(self) -> bool:
        return self.lo is not None


@dataclass(frozen=True)
class Equation:
    """``total`` = sum of ``parts`` (cell ids); ``what`` names the parts (e.g. "site")."""

    total: Any
    parts: tuple
    what: str
    label: str = ""  # how the total is named, if not by its cell's label


# --------------------------------------------------------------------------- solver
def solve(cells: dict, equations: Sequence[Equation], sources: dict | None = None) -> dict:
    """Peel the equations until nothing changes; returns {cell id: how} for each cell that
    was not published and is now known exactly. ``cells`` is updated in place (intervals);
    ``sources``, if given, receives {cell id: set of the datasets its recovery read}.

    An equation with exactly one unknown cell gives it an interval; an equation whose cells
    are all known narrows each not-published cell's interval to what the others allow
    (interval propagation: with rounded counts, two loose equations can pin a cell)."""
    how: dict = {}
    return_sources = sources if sources is not None else {}
    by_cell: dict = {}
    for i, eq in enumerate(equations):
        for c in (eq.total, *eq.parts):
            by_cell.setdefault(c, []).append(i)
    queue = list(range(len(equations)))
    queued = set(queue)
    derived: set = set()

    def implied(eq: Equation, target) -> tuple[int, int, list, str]:
        parts = [c for c in eq.parts if c != target]
        if target == eq.total:
            return (sum(cells[c].lo for c in parts), sum(cells[c].hi for c in parts), parts,
                    f"sum of {_n(len(parts), eq.what, parts, derived)}")
        t = cells[eq.total]
        name = eq.label or t.label
        text = (f"{name} total minus {_n(len(parts), eq.what, parts, derived)}" if parts else f"equal to {name}")
        if eq.total in derived:
            text += f" ({name} itself recovered)"
        return (max(0, t.lo - sum(cells[c].hi for c in parts)), t.hi - sum(cells[c].lo for c in parts),
                [eq.total, *parts], text)

    while queue:
        i = queue.pop()
        queued.discard(i)
        eq = equations[i]
        ids = (eq.total, *eq.parts)
        unknown = [c for c in ids if not cells[c].known]
        if len(unknown) > 1:
            continue
        targets = unknown or [c for c in ids if c in derived and cells[c].lo != cells[c].hi]
        for target in targets:
            lo, hi, used, text = implied(eq, target)
            cell = cells[target]
            if cell.known:
                lo, hi = max(lo, cell.lo), min(hi, cell.hi)
                if lo > hi or (lo, hi) == (cell.lo, cell.hi):
                    continue  # no news (or margins that do not add up: nothing to learn)
            cell.lo, cell.hi = lo, max(lo, hi)
            derived.add(target)
            if cell.lo == cell.hi:
                how[target] = text
            src = {cells[c].dataset for c in ids} - {""}
            for c in used:
                src |= return_sources.get(c, set())
            return_sources[target] = return_sources.get(target, set()) | src
            for j in by_cell.get(target, ()):
                if j not in queued:
                    queue.append(j)
                    queued.add(j)
    return how


def solve_linear(cells: dict, equations: Sequence[Equation], sources: dict | None = None, *,
                 max_unknowns: int = MAX_LINEAR_UNKNOWNS) -> tuple[dict, int]:
    """After :func:`solve`: the cells still not known exactly that the equations *taken
    together* fix (a combination no single subtraction finds). Every cell not known exactly
    is an unknown; a cell is fixed iff it lies outside the null space of the equations'
    coefficients over the unknowns (one SVD per connected group of unknowns). Returns
    ({cell id: how}, unknowns left unexamined in groups over ``max_unknowns``)."""
    import numpy as np

    exact = {c for c, cell in cells.items() if cell.known and cell.lo == cell.hi}
    rows = []
    for eq in equations:
        coef: dict = {}
        for c, k in ((eq.total, 1), *((p, -1) for p in eq.parts)):
            if c not in exact:
                coef[c] = coef.get(c, 0) + k
        coef = {c: k for c, k in coef.items() if k}
        if coef:
            rows.append((eq, coef))
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for _, coef in rows:
        first, *rest = coef
        for c in rest:
            parent[find(c)] = find(first)
    groups: dict = {}
    for i, (_, coef) in enumerate(rows):
        groups.setdefault(find(next(iter(coef))), []).append(i)
    how: dict = {}
    skipped = 0
    for members in groups.values():
        unknowns = list(dict.fromkeys(c for i in members for c in rows[i][1]))
        if not any(cells[c].suppressed for c in unknowns):
            continue
        if len(unknowns) > max_unknowns:
            skipped += len(unknowns)
            continue
        col = {c: j for j, c in enumerate(unknowns)}
        a = np.zeros((len(members), len(unknowns)))
        for r, i in enumerate(members):
            for c, k in rows[i][1].items():
                a[r, col[c]] = k
        _, sv, vh = np.linalg.svd(a)
        rank = int((sv > 1e-9 * max(1.0, sv.max(initial=0))).sum())
        null = vh[rank:]
        fixed = np.linalg.norm(null, axis=0) < 1e-7 if len(null) else np.ones(len(unknowns), dtype=bool)
        src = {cells[c].dataset for i in members for c in (rows[i][0].total, *rows[i][0].parts)} - {""}
        for c, ok in zip(unknowns, fixed):
            if ok and cells[c].suppressed:
                how[c] = f"{len(members)} published margins solved together (no single subtraction)"
                if sources is not None:
                    sources[c] = src
    return how, skipped


def _n(n: int, what: str, parts, derived) -> str:
    rec = sum(1 for c in parts if c in derived)
    noun = what if n == 1 else _PLURAL.get(what, what + "s")
    if rec:
        return f"{n - rec} published and {rec} recovered {noun}"
    return f"{n} published {noun}"


# --------------------------------------------------------------------------- building
def _frame(table) -> pd.DataFrame:
    if table is None:
        return pd.DataFrame()
    if isinstance(table, pa.Table):
        return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}.get)
    return table.copy()


def _truthy(value: Any) -> bool:
    """A flag value: True only when it is true (empty, NA and missing are False)."""
    return value is not None and not pd.isna(value) and bool(value)


def _flag(df: pd.DataFrame, column: str) -> pd.Series:
    for name in (f"{column}_suppressed", "suppressed"):
        if name in df.columns:
            return df[name].fillna(False).astype(bool)
    return pd.Series(False, index=df.index)


class _Builder:
    def __init__(self, half_width: int):
        self.cells: dict = {}
        self.equations: list[Equation] = []
        self.half = half_width
        self.remainders = 0

    def cell(self, dataset, period, level, key, column, value, suppressed, label, exact=False,
             zero_exact=True) -> tuple:
        """``exact``: never rounded; ``zero_exact``: a published 0 is exactly 0 (a count
        whose 1 to 7 are blanked before rounding; not so an FFT answer count)."""
        cid = (dataset, str(period), level, key, column)
        if cid in self.cells:
            return cid
        if value is None or pd.isna(value):
            lo = hi = None
        else:
            v = int(value)
            h = 0 if exact or (zero_exact and v == 0) else self.half
            lo, hi = max(0, v - h), v + h
        self.cells[cid] = Cell(dataset, str(period), level, key, column, lo, hi, bool(suppressed), label)
        return cid

    def remainder(self, what: str) -> tuple:
        """An unpublished cell (e.g. responses in no published child)."""
        self.remainders += 1
        cid = ("", "", "remainder", f"{what}#{self.remainders}", "")
        self.cells[cid] = Cell("", "", "remainder", what, "", None, None, False, what)
        return cid

    def equation(self, total, parts, what, label: str = "") -> None:
        if total is None:
            return
        self.equations.append(Equation(total, tuple(parts), what, label))


def _fft(b: _Builder, table, incomplete: set, exact_national: bool) -> None:
    df = _frame(table)
    if df.empty:
        return
    parent_of_level = {v: k for k, v in _FFT_CHILD.items()}
    for (period, setting), g in df.groupby(["period", "setting"], sort=True):
        rows = [(i, lvl, org, (par if isinstance(par, str) and par else None))
                for i, lvl, org, par in zip(g.index, g["level"], g["org_code"], g["parent_code"])]
        # the parent of each row, as (level, org_code): national for commissioners and for
        # providers without a commissioner
        groups: dict = {}
        for i, lvl, org, par in rows:
            if lvl == "commissioner" or (lvl == "provider" and par is None):
                groups.setdefault(("national", "ENG"), []).append(i)
            elif par is not None and lvl in parent_of_level:
                groups.setdefault((parent_of_level[lvl], par), []).append(i)
        where = {(lvl, org): i for i, lvl, org, _ in rows}
        for col in FFT_COUNTS:
            if col not in g.columns:
                continue
            flag = _flag(g, col)
            ids = {i: b.cell("fft_scores", period, lvl, f"setting={setting} org_code={org}", col, g.at[i, col],
                             flag[i], f"{lvl} {org}", exact=exact_national and lvl == "national",
                             zero_exact=False)
                   for i, lvl, org, _ in rows}
            for (plevel, porg), members in groups.items():
                if (plevel, porg) not in where:
                    continue
                parts = [ids[i] for i in members]
                if (plevel, porg) in incomplete:
                    parts.append(b.remainder(f"{plevel} {porg} responses in no published child"))
                if plevel == "national":
                    what = "commissioner" if all(c[2] == "commissioner" for c in parts) else "organisation"
                else:
                    what = _FFT_CHILD[plevel]
                b.equation(ids[where[(plevel, porg)]], parts, what)
            # national is also the sum of every provider
            provs = [ids[i] for i, lvl, _, _ in rows if lvl == "provider"]
            if ("national", "ENG") in where and provs:
                b.equation(ids[where[("national", "ENG")]], provs, "provider")


def fft_incomplete_parents(responses) -> set:
    """(level, org_code) of the sites with responses without a ward code and the providers
    with responses without a site code: their children do not add up to them."""
    df = _frame(responses)
    out: set = set()
    if df.empty:
        return out
    site = df["site_code"].astype(object).map(lambda v: (str(v).strip() or None) if v is not None and not pd.isna(v) else None)
    ward = df["ward_code"].astype(object).map(lambda v: (str(v).strip() or None) if v is not None and not pd.isna(v) else None)
    prov = df["provider_code"].astype(object).map(lambda v: str(v).strip() if v is not None and not pd.isna(v) else None)
    out.update(("site", s) for s in set(site[site.notna() & ward.isna()]))
    out.update(("provider", p) for p in set(prov[site.isna() & prov.notna()]))
    return out


def _coverage(b: _Builder, practice, summary, provider, quality) -> None:
    pr, sm = _frame(practice), _frame(summary)
    if not pr.empty and not sm.empty:
        counts = [c for c in pr.columns if f"{c}_suppressed" in pr.columns and c in sm.columns]
        for period, g in pr.groupby("period"):
            s = sm[sm["period"] == period]
            for col in counts:
                flag = _flag(g, col)
                ids = {r["practice_code"]: b.cell("linkage_coverage_practice", period, "practice",
                                                  f"practice_code={r['practice_code']}", col, r[col], flag[i],
                                                  f"practice {r['practice_code']}") for i, r in g.iterrows()}
                sflag = _flag(s, col)
                for i, r in s.iterrows():
                    area = r["area_code"]
                    total = b.cell("linkage_coverage_summary", period, r["area_level"], f"area_code={area}", col,
                                   r[col], sflag[i], f"{r['area_level']} {area}",
                                   exact=r["area_level"] == "national")
                    members = g if r["area_level"] == "national" else g[g["commissioner_code"] == area]
                    b.equation(total, [ids[p] for p in members["practice_code"]], "practice")
    pv, lq = _frame(provider), _frame(quality)
    if pv.empty:
        return
    ranks = [f"linked_rank_{k}" for k in range(1, 6)]
    for i, r in pv.iterrows():
        period, code = r["period"], r["provider_code"]

        def cell(col, _r=r, _i=i, _p=period, _c=code):
            return b.cell("linkage_coverage_provider", _p, "provider", f"provider_code={_c}", col, _r.get(col),
                          _truthy(_r.get(f"{col}_suppressed")), f"provider {_c} {col}")
        if all(c in pv.columns for c in ranks + ["episodes_linked"]):
            b.equation(cell("episodes_linked"), [cell(c) for c in ranks], "match-rank column")
        if lq.empty:
            continue
        mine = lq[(lq["period"] == period) & (lq["provider_code"] == code)]
        for charac, g in mine.groupby("characteristic"):
            for col in ("episodes", "episodes_linked"):
                if col not in g.columns or col not in pv.columns:
                    continue
                parts = []
                for j, q in g.iterrows():
                    cid = b.cell("linkage_quality", period, "category",
                                 f"provider_code={code} characteristic={charac} category={q['category']}", col,
                                 q[col], _truthy(q.get(f"{col}_suppressed")),
                                 f"provider {code} {charac} {q['category']}")
                    parts.append(cid)
                    if charac == "match_rank" and col == "episodes" and q["category"] in "12345":
                        b.equation(cell(f"linked_rank_{q['category']}"), [cid], "category")
                    if (charac == "nhs_number_status" and col == "episodes" and q["category"] == "valid"
                            and "episodes_valid_nhs_number" in pv.columns):
                        b.equation(cell("episodes_valid_nhs_number"), [cid], "category")
                b.equation(cell(col), parts, "category")


def _outcomes(b: _Builder, consultant, specialty) -> None:
    co, so = _frame(consultant), _frame(specialty)
    if co.empty or so.empty or "deaths_30d" not in so.columns:
        return
    for _, s in so.iterrows():
        key = (s["window_start"], s["window_end"], s["specialty"])
        g = co[(co["window_start"] == key[0]) & (co["window_end"] == key[1]) & (co["specialty"] == key[2])]
        period = s.get("period", s["window_end"])
        total = b.cell("specialty_outcomes", period, "specialty", f"window={key[0]}..{key[1]} specialty={key[2]}",
                       "deaths_30d", s["deaths_30d"], False, f"specialty {key[2]}", exact=True)
        flag = _flag(g, "deaths_30d")
        parts = [b.cell("consultant_outcomes", period, "consultant",
                        f"window={key[0]}..{key[1]} specialty={key[2]} provider_code={r['provider_code']} "
                        f"consultant_code={r['consultant_code']}", "deaths_30d", r["deaths_30d"], flag[i],
                        f"consultant {r['consultant_code']}") for i, r in g.iterrows()]
        covered = ("procedures" in g.columns and "procedures" in so.columns and pd.notna(s["procedures"])
                   and int(g["procedures"].fillna(0).sum()) == int(s["procedures"]))
        if not covered:
            parts.append(b.remainder(f"specialty {key[2]} procedures of no published consultant"))
        b.equation(total, parts, "consultant")


def _cumulative(b: _Builder, tables: Mapping[str, Any], period_totals: Mapping[str, Mapping[str, Sequence[str]]]) -> None:
    """A period of a dataset that is the sum of other periods, cell by cell (same key and
    column): an equation per cell the audit already holds."""
    by: dict = {}
    for cid in b.cells:
        ds, period, level, key, col = cid
        by[(ds, level, key, col, period)] = cid
    for ds, totals in (period_totals or {}).items():
        for total_period, parts in totals.items():
            for (d, level, key, col, period), cid in list(by.items()):
                if d != ds or period != total_period:
                    continue
                part_ids = [by.get((d, level, key, col, p)) for p in parts]
                part_ids = [p if p is not None else b.cell(d, pp, level, key, col, None, False, f"{level} {key} {pp}")
                            for p, pp in zip(part_ids, parts)]
                b.equation(cid, part_ids, "period", f"{b.cells[cid].label} in {total_period}")


# --------------------------------------------------------------------------- entry point
def audit(tables: Mapping[str, Any], *, rounding: str = "none", incomplete: Iterable = (),
          period_totals: Mapping[str, Mapping[str, Sequence[str]]] | None = None, linear: bool = True,
          unexamined: list | None = None) -> list[Recoverable]:
    """Every suppressed cell of the public ``tables`` ({dataset: table as published}) that
    the published margins give back exactly; one :class:`Recoverable` per row (its
    recoverable columns listed), sorted. ``rounding`` is the ``disclosure.rounding`` the
    tables were published with (national rows are exact); ``incomplete`` the FFT parents
    whose children do not add up to them (:func:`fft_incomplete_parents`);
    ``period_totals`` {dataset: {period: [periods it is the sum of]}}. ``linear``: also the
    cells only the equations taken together fix (:func:`solve_linear`); the number of
    unknowns in groups too large to examine is appended to ``unexamined``."""
    if rounding not in ROUNDING_HALF_WIDTH:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDING_HALF_WIDTH)}")
    b = _Builder(ROUNDING_HALF_WIDTH[rounding])
    _fft(b, tables.get("fft_scores"), set(incomplete), exact_national=rounding == "none")
    _coverage(b, tables.get("linkage_coverage_practice"), tables.get("linkage_coverage_summary"),
              tables.get("linkage_coverage_provider"), tables.get("linkage_quality"))
    _outcomes(b, tables.get("consultant_outcomes"), tables.get("specialty_outcomes"))
    _cumulative(b, tables, period_totals or {})
    sources: dict = {}
    how = solve(b.cells, b.equations, sources)
    if linear:
        more, skipped = solve_linear(b.cells, b.equations, sources)
        how.update({c: t for c, t in more.items() if c not in how})
        if skipped and unexamined is not None:
            unexamined.append(skipped)
    rows: dict = {}
    for cid, text in how.items():
        c = b.cells[cid]
        if not c.suppressed:
            continue
        k = (c.dataset, c.period, c.level, c.key)
        row = rows.setdefault(k, {"columns": [], "how": text, "datasets": set()})
        row["columns"].append(c.column)
        row["datasets"] |= sources.get(cid, {c.dataset})
    order = {col: i for i, col in enumerate(dict.fromkeys(cid[4] for cid in b.cells))}
    return [Recoverable(ds, period, level, key, tuple(sorted(v["columns"], key=order.get)), v["how"],
                        tuple(sorted(v["datasets"])))
            for (ds, period, level, key), v in sorted(rows.items())]
