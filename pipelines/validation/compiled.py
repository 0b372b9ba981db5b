"""The row rules as SQL, generated from their Great Expectations declarations, evaluated
by the engine on every row.

A rule is declared once, as a GX expectation (class name and keyword arguments,
:mod:`expectations.rules`). :func:`expectation_sql` turns one into two boolean SQL
expressions over the work frame: the rows GX counts (``element_count - missing_count``)
and the rows it reports unexpected, exactly as GX's pandas engine computes them:

* a row condition (GX's pandas parser, ``DataFrame.query``) limits the rows
  (:func:`row_condition_sql`: ``==``, ``!=``, ``in``, ``not in``, ``and``/``&``,
  ``or``/``|``, ``not``/``~``; ``!=`` keeps a missing value, as pandas does);
* ``ExpectColumnValuesToNotBeNull`` / ``ToBeNull`` count every row and fail the
  missing / present ones;
* the other column map expectations judge present values only: a value set is an
  ``IN`` list, a regex is matched as GX matches it (a search, ``regexp_matches``, with
  ``\\s`` spelled out: :mod:`pipelines.text`), an NHS number is checked by Modulus 11
  on its digits as a number (:func:`nhs_number_valid_sql`), an ISO date must be
  ``YYYY-MM-DD`` and a real calendar date (:func:`iso_date_sql`), between its bounds
  when it has them;
* ``ExpectColumnPairValuesAToBeGreaterThanB`` with
  ``ignore_row_if="either_value_is_missing"`` judges rows where both values are present.

:func:`run` builds one SELECT computing, per row, a pair of boolean columns per job
member (counted, unexpected), and runs it on the engine (DuckDB SQL, which SQLGlot
carries to Spark SQL). GX validates a sample beside it (:mod:`pipelines.validation.gx`).
"""

from __future__ import annotations

import ast

import numpy as np
import pyarrow as pa

from pipelines.nhs_number import HYPHENS
from pipelines.text import SPACE_CHARS, re2_friendly
from pipelines.validation.plan import ITEM, PAIR, POS, Plan

NULL_EXPECTATIONS = ("ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeNull")
MAP_EXPECTATIONS = ("ExpectColumnValuesToBeInSet", "ExpectColumnValuesToMatchRegex",
                    "ExpectColumnValuesToBeValidNhsNumber", "ExpectColumnValuesToBeIsoDates",
                    "ExpectColumnValuesToBeIsoDatesBetween")
SUPPORTED = frozenset(NULL_EXPECTATIONS) | frozenset(MAP_EXPECTATIONS) | {PAIR}

_KNOWN_KWARGS = {"column", "column_A", "column_B", "value_set", "regex", "min_value", "max_value",
                 "or_equal", "ignore_row_if", "row_condition", "condition_parser", "mostly"}

ISO_DATE_SHAPE = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
NHS_SHAPE = "^[0-9]{10}$"
NHS_STRIP = f"[{SPACE_CHARS}{HYPHENS}]"  # what pipelines.nhs_number.canonical removes


class NotCompiled(ValueError):
    """An expectation (or an argument of it) this module does not translate."""


# ------------------------------------------------------------------ literals
def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def text(value: str) -> str:
    """A SQL string literal (quotes doubled; no backslash escapes in DuckDB's dialect)."""
    if not isinstance(value, str):
        raise NotCompiled(f"a value set or bound must hold strings, not {type(value).__name__}")
    return "'" + value.replace("'", "''") + "'"


def in_list(col: str, values) -> str:
    values = list(values)
    if not values:
        return "FALSE"
    return f"{col} IN ({', '.join(text(v) for v in values)})"


# ------------------------------------------------------------------ row conditions
_COMPARE = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def row_condition_sql(condition: str | None) -> str:
    """A GX row condition (pandas parser, as ``DataFrame.query`` reads it) as a SQL
    boolean that is never NULL: ``col == "x"`` is false where ``col`` is missing and
    ``col != "x"`` true, as pandas has it."""
    if not condition:
        return "TRUE"
    try:
        tree = ast.parse(condition.strip(), mode="eval").body
    except SyntaxError as e:
        raise NotCompiled(f"row condition not understood: {e.msg}") from None
    return _cond(tree)


def _constant(node) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    raise NotCompiled("a row condition compares a column with string constants only")


def _cond(node) -> str:
    if isinstance(node, ast.BoolOp):
        op = " AND " if isinstance(node.op, ast.And) else " OR "
        return "(" + op.join(_cond(v) for v in node.values) + ")"
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
        op = " AND " if isinstance(node.op, ast.BitAnd) else " OR "
        return f"({_cond(node.left)}{op}{_cond(node.right)})"
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.Invert)):
        return f"(NOT {_cond(node.operand)})"
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], _COMPARE):
        left, right, op = node.left, node.comparators[0], node.ops[0]
        if isinstance(left, ast.Constant) and isinstance(right, ast.Name) and isinstance(op, (ast.Eq, ast.NotEq)):
            left, right = right, left
        if not isinstance(left, ast.Name):
            raise NotCompiled("a row condition compares a column (by name) with constants")
        col = ident(left.id)
        if isinstance(op, (ast.Eq, ast.NotEq)):
            hit = f"COALESCE({col} = {text(_constant(right))}, FALSE)"
        else:
            if not isinstance(right, (ast.List, ast.Tuple, ast.Set)):
                raise NotCompiled("'in' in a row condition takes a list of constants")
            hit = f"COALESCE({in_list(col, [_constant(e) for e in right.elts])}, FALSE)"
        return hit if isinstance(op, (ast.Eq, ast.In)) else f"(NOT {hit})"
    raise NotCompiled(f"row condition element {type(node).__name__} not translated")


# ------------------------------------------------------------------ value checks
def nhs_canonical_sql(col: str) -> str:
    """The value with every whitespace character and hyphen removed
    (:func:`pipelines.nhs_number.canonical`)."""
    return f"regexp_replace({col}, {text(NHS_STRIP)}, '', 'g')"


def nhs_number_sql(canon: str) -> str:
    """A canonical NHS number (:func:`nhs_canonical_sql`) as a BIGINT where it is exactly
    10 ASCII digits, else NULL."""
    return f"CASE WHEN regexp_matches({canon}, {text(NHS_SHAPE)}) THEN TRY_CAST({canon} AS BIGINT) END"


def nhs_number_valid_sql(number: str) -> str:
    """An NHS number given as its 10 digits' BIGINT (:func:`nhs_number_sql`; NULL when not
    10 digits) is valid: not ten identical digits (a multiple of 1111111111) and Modulus
    11: with weights 10..2 on the first nine digits and 1 on the check digit the weighted
    sum is divisible by 11 (a check result of 10 matches no digit, so such numbers fail)."""
    digits = [f"(({number} // {10 ** (10 - i)}) % 10)" for i in range(1, 11)]
    weighted = " + ".join(f"{d} * {11 - i}" for i, d in enumerate(digits, start=1))
    return f"({number} IS NOT NULL AND ({weighted}) % 11 = 0 AND {number} % 1111111111 <> 0)"


def iso_date_sql(col: str) -> str:
    """The value as a DATE where it is written ``YYYY-MM-DD`` and is a real calendar date
    (``2023-02-29`` and ``2014-13-01`` are not), else NULL."""
    return f"CASE WHEN regexp_matches({col}, {text(ISO_DATE_SHAPE)}) THEN TRY_CAST({col} AS DATE) END"


def _date_literal(value: str) -> str:
    return f"CAST({text(str(value))} AS DATE)"


def expectation_sql(expectation: str, kw: dict, derived: Derived | None = None) -> tuple[str, str]:
    """``(counted, unexpected)``: SQL booleans (NULL read as false) for the rows GX counts
    as checked (element count less missing count) and the rows it reports unexpected."""
    unknown = set(kw) - _KNOWN_KWARGS
    if expectation not in SUPPORTED or unknown:
        raise NotCompiled(f"{expectation} {sorted(unknown) if unknown else ''}".strip())
    if kw.get("row_condition") and (kw.get("condition_parser") or "pandas") != "pandas":
        raise NotCompiled(f"row condition parser {kw.get('condition_parser')!r}")
    derived = derived or Derived()
    cond = row_condition_sql(kw.get("row_condition"))
    if expectation == PAIR:
        if kw.get("ignore_row_if") != "either_value_is_missing":
            raise NotCompiled(f"{expectation} with ignore_row_if={kw.get('ignore_row_if')!r}")
        a, b = ident(kw["column_A"]), ident(kw["column_B"])
        counted = f"{cond} AND {a} IS NOT NULL AND {b} IS NOT NULL"
        ok = f"{a} >= {b}" if kw.get("or_equal") else f"{a} > {b}"
        return counted, f"{counted} AND NOT COALESCE({ok}, FALSE)"
    col = ident(kw["column"])
    if expectation == "ExpectColumnValuesToNotBeNull":
        return cond, f"{cond} AND {col} IS NULL"
    if expectation == "ExpectColumnValuesToBeNull":
        return cond, f"{cond} AND {col} IS NOT NULL"
    counted = f"{cond} AND {col} IS NOT NULL"
    if expectation == "ExpectColumnValuesToBeInSet":
        ok = in_list(col, kw["value_set"])
    elif expectation == "ExpectColumnValuesToMatchRegex":
        ok = f"regexp_matches({col}, {text(re2_friendly(kw['regex']))})"
    elif expectation == "ExpectColumnValuesToBeValidNhsNumber":
        ok = nhs_number_valid_sql(derived.nhs(kw["column"]))
    elif expectation == "ExpectColumnValuesToBeIsoDates":
        ok = f"{derived.date(kw['column'])} IS NOT NULL"
    else:  # ExpectColumnValuesToBeIsoDatesBetween: a value that is not a date is not judged
        d = derived.date(kw["column"])
        parts = []
        if kw.get("min_value") is not None:
            parts.append(f"COALESCE({d} >= {_date_literal(kw['min_value'])}, TRUE)")
        if kw.get("max_value") is not None:
            parts.append(f"COALESCE({d} <= {_date_literal(kw['max_value'])}, TRUE)")
        ok = " AND ".join(parts) or "TRUE"
    return counted, f"{counted} AND NOT COALESCE({ok}, FALSE)"


class Derived:
    """Per-column values several rules read (an NHS number's canonical form and its
    digits as a number, a parsed ISO date), computed once in inner SELECTs and named
    there (``inline``: written in place instead, for a query over the raw columns)."""

    def __init__(self, inline: bool = True):
        self.inline = inline
        self.levels: list[dict[str, str]] = [{}, {}]  # alias -> expression, innermost first

    def _named(self, prefix: str, expr: str, level: int = 0) -> str:
        if self.inline:
            return f"({expr})"
        named = self.levels[level]
        for a, e in named.items():
            if e == expr:
                return ident(a)
        alias = f"__{prefix}{sum(len(x) for x in self.levels)}"
        named[alias] = expr
        return ident(alias)

    def nhs(self, column: str) -> str:
        """The NHS number's digits as a BIGINT: most values are already 10 digits; only the
        others are made canonical (every space and hyphen removed) first."""
        col = ident(column)
        return self._named("nhsn", f"CASE WHEN regexp_matches({col}, {text(NHS_SHAPE)}) THEN TRY_CAST({col} AS BIGINT)"
                                   f" ELSE {nhs_number_sql(nhs_canonical_sql(col))} END")

    def date(self, column: str) -> str:
        return self._named("date", iso_date_sql(ident(column)))

    def source(self, table: str) -> str:
        """``table`` with the named values added, level by level."""
        out = table
        for named in self.levels:
            if named:
                cols = ", ".join(["*"] + [f"{e} AS {ident(a)}" for a, e in named.items()])
                out = f"(SELECT {cols} FROM {out})"
        return out


# ------------------------------------------------------------------ the query
def columns_read(kw: dict) -> list[str]:
    """The work frame columns an expectation's SQL reads."""
    cols = [kw[k] for k in ("column", "column_A", "column_B") if k in kw]
    cond = kw.get("row_condition")
    if cond:
        try:
            names = [n.id for n in ast.walk(ast.parse(cond.strip(), mode="eval")) if isinstance(n, ast.Name)]
        except SyntaxError as e:
            raise NotCompiled(f"row condition not understood: {e.msg}") from None
        cols += names
    return cols


def plan_sql(plan: Plan, table: str = "work", items: str = "items") -> tuple[str, list[tuple], list[str]]:
    """The SELECT computing, per row of ``table``, its position and per job member a
    counted (``c<k>``) and an unexpected (``f<k>``) boolean column; per merged date rule,
    the rows it counts (``m<k>``). A job of some files only is limited to their rows by a
    boolean column ``__job<j>`` of the small ``items`` table (one row per file, joined on
    ``__item``: :func:`items_table`), not by a list of files in each expression (DuckDB
    turns long ``IN`` lists into joins, one per expression). Returns the SQL, the (job,
    member) of each ``k`` and the columns read."""
    derived = Derived(inline=False)
    guards = _job_guards(plan)
    select, keys, read = [f"{ident(POS)}"], [], []
    for its, members in plan.jobs.items():
        guard = f"{guards[its]} AND " if its in guards else ""
        for m, (rule, kw) in enumerate(members):
            k = len(keys)
            counted, unexpected = expectation_sql(rule.expectation, kw, derived)
            select.append(f"CAST(COALESCE({guard}{counted}, FALSE) AS BOOLEAN) AS c{k}")
            select.append(f"CAST(COALESCE({guard}{unexpected}, FALSE) AS BOOLEAN) AS f{k}")
            keys.append((its, m))
            read += columns_read(kw)
    for j, ((rid, its), (rule, kw)) in enumerate(plan.merged.items()):
        guard = f"{guards[its]} AND " if its in guards else ""
        counted, _ = expectation_sql("ExpectColumnValuesToBeIsoDates", kw, derived)
        select.append(f"CAST(COALESCE({guard}{counted}, FALSE) AS BOOLEAN) AS m{j}")
        read += columns_read(kw)
    source = table if not guards else f"(SELECT * FROM {table} JOIN {items} USING ({ident(ITEM)}))"
    sql = f"SELECT {', '.join(select)} FROM {derived.source(source)} AS w"
    return sql, keys, list(dict.fromkeys(read))


def _job_guards(plan: Plan) -> dict[tuple[int, ...], str]:
    everything = tuple(range(len(plan.sizes)))
    partial = [its for its in dict.fromkeys([*plan.jobs, *(its for _, its in plan.merged)]) if its != everything]
    return {its: ident(f"__job{j}") for j, its in enumerate(partial)}


def items_table(plan: Plan) -> pa.Table:
    """One row per file (``__item``) with a boolean ``__job<j>`` per job of some files."""
    n = len(plan.sizes)
    cols = {ITEM: pa.array(np.arange(n, dtype=np.int32))}
    for its, name in _job_guards(plan).items():
        member = np.zeros(n, dtype=bool)
        member[list(its)] = True
        cols[name.strip('"')] = pa.array(member)
    return pa.table(cols)


def _bools(table: pa.Table, name: str, order: np.ndarray | None) -> np.ndarray:
    arr = table.column(name).to_numpy(zero_copy_only=False).astype(bool, copy=False)
    if order is None:
        return arr
    out = np.zeros(len(arr), dtype=bool)
    out[order] = arr
    return out


def run(plan: Plan, work, engine) -> tuple[dict, dict, dict, str]:
    """Every job member evaluated by ``engine`` on every row of the work frame: per
    ``(job, member)``, the positions of the rows counted and of the rows failing; per
    merged date rule, its counted mask; and the SQL that ran."""
    from pipelines.validation.workframe import to_arrow

    sql, keys, read = plan_sql(plan)
    table = to_arrow(work, [c for c in dict.fromkeys(read) if c in work.columns], plan.item_of)
    missing = [c for c in read if c not in work.columns]
    if missing:
        raise NotCompiled(f"rules read columns the work frame lacks: {missing}")
    result = engine.query(sql, {"work": table, "items": items_table(plan)})
    pos = result.column(POS).to_numpy()
    order = None if len(pos) == plan.total and (len(pos) == 0 or np.array_equal(pos, np.arange(plan.total))) else pos
    if len(pos) != plan.total:
        raise NotCompiled(f"the engine returned {len(pos)} rows for {plan.total}")
    checked, failed = {}, {}
    every = np.arange(plan.total, dtype=np.int64)  # shared by the members that count every row
    for k, key in enumerate(keys):
        counted = _bools(result, f"c{k}", order)
        checked[key] = every if counted.all() else np.flatnonzero(counted)
        failed[key] = np.flatnonzero(_bools(result, f"f{k}", order))
    merged = {key: _bools(result, f"m{j}", order) for j, key in enumerate(plan.merged)}
    return checked, failed, merged, sql
