"""From the engine's (or GX's) per-row results to each file's :class:`ValidationOutcome`:
per row, whether it is rejected and every rule it broke (in rule order, with the
messages); per rule, its rows checked and failed and up to 5 example lines; per scored
field, the DQMI item-score inputs (rows, and rows present and valid)."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from expectations.rules import Env, Rule
from pipelines.validation.plan import Plan, second_bound


@dataclass
class ValidationOutcome:
    rejected: np.ndarray  # bool per input row: True = quarantine (a reject rule failed)
    # Per input row: every rule id it broke (reject and warn), in rule order, and the
    # matching messages. Read-only: rows that broke none share one empty list.
    rule_ids: list[list[str]]
    messages: list[list[str]]
    rule_counts: pd.DataFrame  # rule_id, field, severity, rows_checked, rows_failed, example_lines
    field_scores: pd.DataFrame  # field, rows, rows_valid, rows_present, rows_default
    data_docs: str | None = None  # path of the Data Docs site's index.html (this validation's pages), if built
    stats: dict = field(default_factory=dict)  # rows, batches, seconds, rows_per_second
    broken: np.ndarray | None = None  # int32 per input row: how many rules it broke (len of its rule_ids)


_NONE: list[str] = []  # the rule ids (and messages) of every row that broke no rule


def per_rule(plan: Plan, failed: dict, counts_of) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per rule: its failing rows over its variants (sorted work frame positions) and its
    rows checked per file (``counts_of(rule, kw, its, m)`` gives a job member's)."""
    fail_pos: dict[str, np.ndarray] = {}
    checked_per_item: dict[str, np.ndarray] = {}
    for its, members in plan.jobs.items():
        for m, (rule, kw) in enumerate(members):
            pos = failed[(its, m)]
            prev = fail_pos.get(rule.id)
            fail_pos[rule.id] = pos if prev is None else np.union1d(prev, pos)
            if second_bound(members, m):
                continue  # counted with the first
            counts = counts_of(rule, kw, its, m)
            prev = checked_per_item.get(rule.id)
            checked_per_item[rule.id] = counts if prev is None else prev + counts
    return fail_pos, checked_per_item


def outcome(mod, env: Env, work: pd.DataFrame | None, active: list[tuple[Rule, dict]], fail_pos: dict[str, np.ndarray],
            checked: dict[str, int], lines: np.ndarray, present_of: dict[str, np.ndarray] | None = None,
            default_of: dict[str, np.ndarray] | None = None):
    """From each rule's failing row positions (in this file): per row, the rules broken
    (in rule order) and whether a reject rule failed; per rule, its counts and up to 5
    example lines; per scored field, the DQMI item-score inputs (present, and no rule on
    it failed). ``present_of``: per scored column, whether each of the file's rows has a
    value, if already known (else read from ``work``; ``work`` may then be None for a
    suite without ``scored_rows``); ``default_of``: likewise, per scored field, whether
    each row holds one of its DQMI default values (:meth:`ScoredField.default_rows`).
    Returns the fields of :class:`ValidationOutcome` it makes."""
    n = len(lines)
    rejected = np.zeros(n, dtype=bool)
    broken = np.zeros(n, dtype=np.int32)
    for rule, _ in active:
        broken[fail_pos[rule.id]] += 1
    gc_was_on = gc.isenabled()
    gc.disable()  # many small lists: the collector would rescan them again and again
    try:
        rule_ids: list[list[str]] = [_NONE] * n
        messages: list[list[str]] = [_NONE] * n
        for p in np.flatnonzero(broken).tolist():
            rule_ids[p], messages[p] = [], []
        rows = []
        for rule, _ in active:
            pos = fail_pos[rule.id]
            if rule.severity == "reject":
                rejected[pos] = True
            for p in pos.tolist():
                rule_ids[p].append(rule.id)
                messages[p].append(rule.message)
            rows.append({
                "rule_id": rule.id, "field": rule.field, "severity": rule.severity,
                "rows_checked": int(checked[rule.id]), "rows_failed": len(pos),
                "example_lines": [int(x) for x in np.sort(lines[pos])[:5]],
            })
    finally:
        if gc_was_on:
            gc.enable()
    rule_counts = pd.DataFrame(rows, columns=["rule_id", "field", "severity", "rows_checked",
                                              "rows_failed", "example_lines"])
    scored = mod.scored_rows(work, env) if hasattr(mod, "scored_rows") else None
    scored = np.ones(n, dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    scores = []
    for sf in mod.SCORED:
        present = np.zeros(n, dtype=bool)
        for c in sf.cols:
            present |= present_of[c] if present_of is not None else work[c].notna().to_numpy()
        invalid = np.zeros(n, dtype=bool)
        for rule, _ in active:
            if rule.field in sf.cols:
                invalid[fail_pos[rule.id]] = True
        valid = present & ~invalid & scored
        default = (default_of[sf.name] if default_of is not None
                   else sf.default_rows(lambda c: work[c]))
        scores.append({"field": sf.name, "rows": int(scored.sum()),
                       "rows_valid": int(valid.sum()),
                       "rows_present": int((present & scored).sum()),
                       "rows_default": int((valid & default).sum())})
    return (rejected, rule_ids, messages, rule_counts, pd.DataFrame(scores, columns=FIELD_SCORE_COLUMNS),
            broken)


FIELD_SCORE_COLUMNS = ["field", "rows", "rows_valid", "rows_present", "rows_default"]
"""Per scored field (DQMI item): rows scored; rows present and valid (no rule on it
failed); rows present (any of its columns has a value); rows valid holding a default value."""


def outcomes(mod, plan: Plan, envs: list[Env], actives: list, work: pd.DataFrame, lines: list[np.ndarray],
             fail_pos: dict[str, np.ndarray], checked_per_item: dict[str, np.ndarray], docs: str | None,
             stats: dict, seconds: float) -> list[ValidationOutcome]:
    """One :class:`ValidationOutcome` per file, as the file would get it alone."""
    outs: list[ValidationOutcome] = []
    total = plan.total
    # each scored column's presence read once over every file's rows, then sliced
    present_all = {c: work[c].notna().to_numpy() for sf in mod.SCORED for c in sf.cols}
    default_all = {sf.name: sf.default_rows(lambda c: work[c]) for sf in mod.SCORED}
    by_rows = hasattr(mod, "scored_rows")  # reads the file's own rows
    for i, (env, active) in enumerate(zip(envs, actives)):
        a, z = int(plan.offsets[i]), int(plan.offsets[i + 1])
        n = z - a
        w = work.iloc[a:z].reset_index(drop=True) if by_rows else None
        item_pos = {}
        for rule, _ in active:
            allpos = fail_pos.get(rule.id, np.zeros(0, np.int64))
            lo, hi = np.searchsorted(allpos, [a, z])
            item_pos[rule.id] = allpos[lo:hi] - a
        rejected, rule_ids, messages, rule_counts, field_scores, broken = outcome(
            mod, env, w, active, item_pos, {r.id: checked_per_item[r.id][i] for r, _ in active}, lines[i],
            {c: v[a:z] for c, v in present_all.items()}, {f: v[a:z] for f, v in default_all.items()})
        st = {"rows": n, "batch_rows": total, "files": len(envs), **stats,
              "rules": len(active), "seconds": seconds * n / max(total, 1), "batch_seconds": seconds}
        outs.append(ValidationOutcome(rejected, rule_ids, messages, rule_counts, field_scores, docs, st, broken))
    return outs
