"""Which rules are active for a submission, and the jobs they run in.

A rule is declared once (:mod:`expectations`); its keyword arguments may depend on the
submission (:class:`~expectations.rules.Env`: submitter, period, protocol, reference
data). Many files of a feed are validated together: each rule's distinct argument sets
(variants) and the files using each make *jobs* (the files, as a tuple of item numbers,
and the ``(rule, kwargs)`` members checked on their rows). A date-bound rule whose bounds
differ per file (the "no future dates" ceiling is each file's submission date) is not
split into one job per file: its bounds go into per-row columns of the work frame and the
rule becomes a comparison of the parsed date with them (``merged``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

from expectations import fft as fft_suite
from expectations import gp as gp_suite
from expectations import sus_apc as sus_suite
from expectations.custom import parse_iso_dates
from expectations.rules import Env, Rule, date_col

SUITES: dict[str, ModuleType] = {"gp": gp_suite, "sus_apc": sus_suite, "hes_apc": sus_suite, "fft": fft_suite}

LINE = "_line"
ITEM = "__item"  # work frame column (added for the engine): the file (item) a row belongs to
POS = "__pos"  # the row's position in the work frame

PAIR = "ExpectColumnPairValuesAToBeGreaterThanB"


@dataclass
class ValidationContext:
    """Reference data the rules may use."""

    site_providers: dict[str, str] | None = None  # site_code -> provider_code
    practice_codes: set[str] | None = None
    today: dt.date | None = None  # "no future dates" reference; default date.today()


class ValidationError(RuntimeError):
    """An expectation could not be evaluated (a bug or an unusable frame), never a bad row."""


def rules_for(source: str) -> list[Rule]:
    """Every rule declared for a source, in rule order (applicable or not)."""
    return [r for r in SUITES[source].RULES if r.applies_to(source)]


def protocol(source: str, file_name: str) -> str | None:
    m = SUITES[source].FEED.name_pattern.match(Path(file_name).name)
    return m.groupdict().get("protocol") if m else None


def env_for(source: str, period, submitter, file_name: str, context: ValidationContext | None) -> Env:
    ctx_in = context or ValidationContext()
    hes = source == "hes_apc"
    return Env(
        source=source,
        period=None if hes else period,
        submitter=None if hes else submitter,
        file_name=file_name,
        protocol=None if hes else protocol(source, file_name),
        site_providers=ctx_in.site_providers,
        practice_codes=frozenset(ctx_in.practice_codes) if ctx_in.practice_codes else None,
        today=ctx_in.today or dt.date.today(),
    )


def active_rules(source: str, env: Env) -> list[tuple[Rule, dict]]:
    """The rules that apply to a submission, with their keyword arguments (a suite's row
    condition, pandas parser, added as GX's ``row_condition``)."""
    mod = SUITES[source]
    active: list[tuple[Rule, dict]] = []
    for rule in mod.RULES:
        kw = rule.kwargs(env)
        if kw is not None:
            condition = mod.row_condition(rule, env) if hasattr(mod, "row_condition") else None
            if condition:
                kw = {**kw, "row_condition": condition, "condition_parser": "pandas"}
            active.append((rule, kw))
    return active


Jobs = dict[tuple[int, ...], list[tuple[Rule, dict]]]


def second_bound(members: list[tuple[Rule, dict]], m: int) -> bool:
    """Whether job member ``m`` is a merged date rule's second bound (the rule's maximum
    after its minimum): it judges the same rows as the first."""
    return m > 0 and members[m - 1][0].id == members[m][0].id


@dataclass
class Plan:
    """The jobs of one validation of many files (see the module docstring)."""

    jobs: Jobs
    job_rows: dict[tuple[int, ...], np.ndarray]  # the work frame positions of each job's rows
    # (rule id, job) of a merged date rule -> (rule, the kwargs whose counted rows are the
    # rule's rows checked: its column and row condition)
    merged: dict[tuple[str, tuple[int, ...]], tuple[Rule, dict]]
    offsets: np.ndarray  # item i holds rows offsets[i]:offsets[i + 1]
    sizes: np.ndarray
    item_of: np.ndarray  # int per row: its item

    @property
    def total(self) -> int:
        return int(self.offsets[-1])


def make_plan(source: str, actives: list[list[tuple[Rule, dict]]], work: pd.DataFrame,
              sizes: np.ndarray) -> Plan:
    """Each rule's variants, merged date bounds (their per-row bound columns added to
    ``work``) and the jobs, in rule order."""
    mod = SUITES[source]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(offsets[-1])
    variants: dict[str, dict[str, tuple[Rule, object, list[int]]]] = {}
    for i, active in enumerate(actives):
        for rule, kw in active:
            sig = repr(sorted(kw.items(), key=lambda kv: kv[0]))
            v = variants.setdefault(rule.id, {})
            if sig in v:
                v[sig][2].append(i)
            else:
                v[sig] = (rule, kw, [i])
    # A date-bound rule (ExpectColumnValuesToBeIsoDatesBetween) whose bounds differ per
    # file: its bounds go into per-row columns, and the parsed date is compared with them
    # (ExpectColumnPairValuesAToBeGreaterThanB, rows without a real date or without a
    # bound not judged, as the rule judges no missing or invalid date). Its rows checked
    # per file are counted as the rule counts them (the value present, under the rule's
    # row condition).
    merged: dict[tuple[str, tuple[int, ...]], tuple[Rule, dict]] = {}
    for rid in list(variants):
        vs = list(variants[rid].values())
        if len(vs) < 2 or vs[0][0].expectation != "ExpectColumnValuesToBeIsoDatesBetween":
            continue
        by_rest: dict[str, list[tuple[Rule, dict, list[int]]]] = {}
        for rule, kw, its in vs:
            rest = {k: v for k, v in kw.items() if k not in ("min_value", "max_value")}
            by_rest.setdefault(repr(sorted(rest.items())), []).append((rule, kw, its))
        out_v: dict[str, tuple] = {}
        for g, group in enumerate(by_rest.values()):
            if len(group) < 2:
                rule, kw, its = group[0]
                out_v[repr(sorted(kw.items()))] = group[0]
                continue
            rule, kw0 = group[0][0], group[0][1]
            col = kw0["column"]
            dcol = date_col(col)
            if dcol not in work.columns:
                work[dcol] = parse_iso_dates(work[col])
            all_its = sorted(i for _, _, its in group for i in its)
            kws = []
            for bound in ("min_value", "max_value"):
                if not any(kw.get(bound) is not None for _, kw, _ in group):
                    continue
                bcol = f"__{bound}__{rule.id}__{g}"
                arr = np.full(total, np.datetime64("NaT"), dtype="datetime64[s]")
                for _, kw, its in group:
                    if kw.get(bound) is not None:
                        for i in its:
                            arr[offsets[i]:offsets[i + 1]] = np.datetime64(kw[bound], "s")
                work[bcol] = arr
                a, b = (dcol, bcol) if bound == "min_value" else (bcol, dcol)
                pair = {k: v for k, v in kw0.items() if k not in ("column", "min_value", "max_value", "mostly")}
                pair.update(column_A=a, column_B=b, or_equal=True, ignore_row_if="either_value_is_missing")
                kws.append(pair)
            merged[(rule.id, tuple(all_its))] = (rule, {k: v for k, v in kw0.items()
                                                        if k in ("column", "row_condition", "condition_parser")})
            out_v[f"merged{g}"] = (dataclasses.replace(rule, expectation=PAIR), kws, all_its)
        variants[rid] = out_v
    # Jobs: the files (rows) a set of rules runs on. Rules with one argument set used by
    # every file run on all rows; the others on the rows of the files sharing each set.
    jobs: Jobs = {}
    order = {r.id: k for k, r in enumerate(mod.RULES)}
    for rid in sorted(variants, key=order.get):
        for rule, kw, its in variants[rid].values():
            for one in (kw if isinstance(kw, list) else [kw]):
                jobs.setdefault(tuple(its), []).append((rule, one))
    all_items = tuple(range(len(actives)))
    job_rows = {its: (np.arange(total) if its == all_items
                      else np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in its]))
                for its in jobs}
    item_of = np.repeat(np.arange(len(actives)), sizes)
    return Plan(jobs, job_rows, merged, offsets, np.asarray(sizes, dtype=np.int64), item_of)
