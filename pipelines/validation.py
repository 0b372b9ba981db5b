"""Row validation of a landing file with Great Expectations (inputs.md "Bad rows",
methods.md "Data quality").

:func:`validate_many` checks many files of a feed at once (ingest hands it a period's new
GP extracts about 2 million rows at a time) against the feed's expectation suite
(``expectations/<feed>.py``) and returns, per file, per row whether it is rejected and
every rule it broke, per rule its counts, and per scored field its DQMI item-score
inputs: each file's outcome identical to what it gets alone (:func:`validate` is
:func:`validate_many` of one file).

Two engines (``ENGINE``, ``CAREDATA_VALIDATION_ENGINE``): ``compiled`` (the default)
judges every row with :mod:`expectations.compiled`, the same expectations evaluated
column-wise, and has GX validate a sample beside it in one ephemeral context (the two
must agree, or :class:`ValidationError`); ``gx`` has GX judge every row, in batches of
``BATCH_ROWS`` rows.

Nothing here logs a value of a row: only rule ids, counts and line numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logging.getLogger("great_expectations").setLevel(logging.ERROR)

import great_expectations as gx  # noqa: E402
from great_expectations.execution_engine import pandas_execution_engine as _gx_pandas  # noqa: E402

from expectations import fft as fft_suite  # noqa: E402
from expectations import gp as gp_suite  # noqa: E402
from expectations import compiled  # noqa: E402
from expectations import sus_apc as sus_suite  # noqa: E402
from expectations.custom import CUSTOM, parse_iso_dates  # noqa: E402
from expectations.rules import Env, Rule, date_col  # noqa: E402

log = logging.getLogger(__name__)

# GX fingerprints every pandas batch below this size (an MD5 over a hash of every value):
# a batch marker this pipeline never reads (contexts are ephemeral, batches are never
# looked up again), and a tenth of the validation time. GX itself skips it above 1 GB.
_gx_pandas.HASH_THRESHOLD = 0

BATCH_ROWS = 1_000_000
BATCH_CELLS = 16_000_000
"""A GX batch holds at most ``BATCH_ROWS`` rows and about ``BATCH_CELLS`` values (rows x
columns of the work frame): a GP extract's narrow rows 1 million at a time, a SUS file's
wide ones (about 100 columns) some 160,000, so that memory follows the values, not the
rows."""


ENGINE = os.environ.get("CAREDATA_VALIDATION_ENGINE", "compiled")
"""``compiled``: every row is judged by :mod:`expectations.compiled` and a sample by GX
too (the two must agree); ``gx``: GX judges every row, in batches."""


def _batch_rows(work: pd.DataFrame) -> int:
    return max(1, min(BATCH_ROWS, BATCH_CELLS // max(1, work.shape[1])))


GROUP_COLUMNS = 8
ROW_CONDITION_COLUMNS = ("CDS_UPDATE_TYPE",)  # columns a row condition may read
LINE = "_line"

SUITES: dict[str, ModuleType] = {"gp": gp_suite, "sus_apc": sus_suite, "hes_apc": sus_suite, "fft": fft_suite}

# Only counts go into Data Docs: never a value of a row (NHS numbers, postcodes, dates
# of birth would otherwise appear in the "unexpected values" of the rendered pages).
_DOCS_RESULT_KEYS = (
    "element_count", "missing_count", "missing_percent", "unexpected_count",
    "unexpected_percent", "unexpected_percent_nonmissing", "unexpected_percent_total",
)


@dataclass
class ValidationContext:
    """Reference data the rules may use."""

    site_providers: dict[str, str] | None = None  # site_code -> provider_code
    practice_codes: set[str] | None = None
    today: dt.date | None = None  # "no future dates" reference; default date.today()


@dataclass
class ValidationOutcome:
    rejected: np.ndarray  # bool per input row: True = quarantine (a reject rule failed)
    # Per input row: every rule id it broke (reject and warn), in rule order, and the
    # matching messages. Read-only: rows that broke none share one empty list.
    rule_ids: list[list[str]]
    messages: list[list[str]]
    rule_counts: pd.DataFrame  # rule_id, field, severity, rows_checked, rows_failed, example_lines
    field_scores: pd.DataFrame  # field, rows, rows_valid
    data_docs: str | None = None  # path of the Data Docs site's index.html (this validation's pages), if built
    stats: dict = field(default_factory=dict)  # rows, batches, seconds, rows_per_second
    broken: np.ndarray | None = None  # int32 per input row: how many rules it broke (len of its rule_ids)


class ValidationError(RuntimeError):
    """An expectation could not be evaluated (a bug or an unusable frame), never a bad row."""


def rules_for(source: str) -> list[Rule]:
    """Every rule declared for a source, in rule order (applicable or not)."""
    return [r for r in SUITES[source].RULES if r.applies_to(source)]


def _feed_columns(source: str) -> list[str]:
    mod = SUITES[source]
    names = list(mod.FEED.column_names)
    if source == "hes_apc":
        names += [c for c in mod.HES_FEED.column_names if c not in names]
    return names


def _protocol(source: str, file_name: str) -> str | None:
    m = SUITES[source].FEED.name_pattern.match(Path(file_name).name)
    return m.groupdict().get("protocol") if m else None


def _work_frame(source: str, frame: pd.DataFrame, env: Env | None) -> pd.DataFrame:
    """The declared columns as strings, surrounding spaces trimmed (absent columns all
    missing; blank means missing), plus the derived columns the rules read (``env``
    None: without the suite's ``prepare``)."""
    mod = SUITES[source]
    n = len(frame)
    cols: dict[str, pd.Series] = {}
    index = pd.RangeIndex(n)
    for name in _feed_columns(source):
        if name in frame.columns:
            s = frame[name].astype("string").reset_index(drop=True).str.strip()
            blank = s == ""
            cols[name] = s.mask(blank) if bool(blank.any()) else s
        else:
            cols[name] = pd.Series(pd.NA, index=index, dtype="string")
    work = pd.DataFrame(cols, index=index)
    for c in mod.FEED.columns:
        if c.kind == "date":
            work[date_col(c.name)] = parse_iso_dates(work[c.name])
    return work if env is None else mod.prepare(work, env)


def _work_frame_many(source: str, frames: list[pd.DataFrame], envs: list[Env], offsets: np.ndarray) -> pd.DataFrame:
    """:func:`_work_frame` of each frame, concatenated: the column work is done once over
    all the rows; a suite whose ``prepare`` looks across rows (repeated keys are per
    file) has it applied file by file (``PREPARE_PER_FILE``, default true)."""
    if len(frames) == 1:
        return _work_frame(source, frames[0], envs[0])
    mod = SUITES[source]
    per_file = getattr(mod, "PREPARE_PER_FILE", True)
    declared = set(_feed_columns(source))
    rows = pd.concat([f[[c for c in f.columns if c in declared]] for f in frames], ignore_index=True)
    if not per_file:
        return _work_frame(source, rows, envs[0])
    work = _work_frame(source, rows, None)
    pieces = [mod.prepare(work.iloc[int(a):int(z)].reset_index(drop=True), env)
              for a, z, env in zip(offsets[:-1], offsets[1:], envs)]
    return pd.concat(pieces, ignore_index=True)


def _expectation(rule: Rule, kwargs: dict, member: int = 0) -> gx.expectations.Expectation:
    cls = CUSTOM.get(rule.expectation) or getattr(gx.expectations, rule.expectation)
    return cls(
        **kwargs,
        meta={"rule_id": rule.id, "field": rule.field, "severity": rule.severity, "member": member},
        notes=f"{rule.id} ({rule.severity}): {rule.message}",
    )


def _raised(info) -> str | None:
    if not info:
        return None
    if isinstance(info, dict) and "raised_exception" in info:
        return info.get("exception_message") if info.get("raised_exception") else None
    if isinstance(info, dict):
        for v in info.values():
            msg = _raised(v if isinstance(v, dict) else getattr(v, "to_json_dict", lambda: {})())
            if msg:
                return msg
    return None


def _columns_of(kwargs: dict) -> list[str]:
    cols = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    cols += list(kwargs.get("column_list", []))
    if kwargs.get("row_condition"):
        cols += [c for c in ROW_CONDITION_COLUMNS if c in kwargs["row_condition"]]
    return cols


def _groups(members: list[tuple[Rule, dict]], only: set[int] | None = None,
            ) -> list[tuple[list[str], list[tuple[int, Rule, dict]]]]:
    """Consecutive rules (with their place ``m`` in ``members``; those in ``only``, if
    given) packed into groups reading at most GROUP_COLUMNS columns."""
    groups: list[tuple[list[str], list[tuple[int, Rule, dict]]]] = []
    for m, (rule, kw) in enumerate(members):
        if only is not None and m not in only:
            continue
        need = _columns_of(kw)
        if groups:
            cols, group = groups[-1]
            merged = cols + [c for c in need if c not in cols]
            if len(merged) <= GROUP_COLUMNS:
                cols[:] = merged
                group.append((m, rule, kw))
                continue
        groups.append((list(dict.fromkeys(need)), [(m, rule, kw)]))
    return groups


def validate(
    source: str,
    frame: pd.DataFrame,
    *,
    period: str | None,
    submitter: str | None,
    file_name: str,
    context: ValidationContext | None = None,
    data_docs_dir: str | None = None,
    batch_rows: int | None = None,
    engine: str | None = None,
) -> ValidationOutcome:
    """Validate a file's rows against its feed's suite: :func:`validate_many` of the one
    file. See the module docstring."""
    item = {"frame": frame, "period": period, "submitter": submitter, "file_name": file_name, "context": context}
    return validate_many(source, [item], data_docs_dir=data_docs_dir, batch_rows=batch_rows, engine=engine)[0]


def _run_suite(batch_def, suite, part: pd.DataFrame):
    """Validate one batch of rows against one suite, failing rows as index values."""
    batch = batch_def.get_batch(batch_parameters={"dataframe": part})
    return batch.validate(suite, result_format={
        "result_format": "COMPLETE", "partial_unexpected_count": 0,
        "include_unexpected_rows": False, "return_unexpected_index_query": False,
    })


def _rule_results(res, part: pd.DataFrame, label: str):
    """Per expectation of a suite result: (its place in the job's members, rows checked,
    failing row positions).
    A rule that raised, or whose failing rows cannot be located, is an error: a broken
    rule never passes silently."""
    for r in res.results:
        rid = r.expectation_config.meta["rule_id"]
        err = _raised(r.exception_info)
        if err:
            raise ValidationError(f"{label}: rule {rid} could not be evaluated: {str(err)[:200]}")
        out = r.result or {}
        elements = int(out.get("element_count", len(part)))
        idx = out.get("unexpected_index_list") or []
        if idx and isinstance(idx[0], dict):  # defensive: index given as columns
            idx = [next(iter(d.values())) for d in idx]
        if len(idx) != int(out.get("unexpected_count", 0) or 0):
            raise ValidationError(f"{label}: rule {rid}: failing rows could not be located")
        yield (r.expectation_config.meta["member"], elements - int(out.get("missing_count", 0) or 0),
               np.asarray(idx, dtype=np.int64))

_NONE: list[str] = []  # the rule ids (and messages) of every row that broke no rule


def _assemble(mod, env, work: pd.DataFrame, active, fail_pos: dict[str, np.ndarray],
              checked: dict[str, int], lines: np.ndarray):
    """From each rule's failing row positions: per row, the rules broken (in rule order)
    and whether a reject rule failed; per rule, its counts and up to 5 example lines;
    per scored field, the DQMI item-score inputs (present, and no rule on it failed)."""
    n = len(work)
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
                "rows_checked": int(checked[rule.id]), "rows_failed": int(len(pos)),
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
            present |= work[c].notna().to_numpy()
        invalid = np.zeros(n, dtype=bool)
        for rule, _ in active:
            if rule.field in sf.cols:
                invalid[fail_pos[rule.id]] = True
        scores.append({"field": sf.name, "rows": int(scored.sum()),
                       "rows_valid": int((present & ~invalid & scored).sum())})
    return (rejected, rule_ids, messages, rule_counts, pd.DataFrame(scores, columns=["field", "rows", "rows_valid"]),
            broken)

def _build_docs(gctx, results, file_name: str, folder: str) -> str:
    """A local GX Data Docs site for this validation, with counts only."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier, ValidationResultIdentifier,
    )

    base = Path(folder).resolve()
    base.mkdir(parents=True, exist_ok=True)
    gctx.add_data_docs_site(site_name="caredata", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(base)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    run_id = RunIdentifier(run_name=Path(file_name).name,
                           run_time=dt.datetime.now(dt.timezone.utc))
    for suite_name, b, res, _ in results:
        for r in res.results:
            r.result = {k: v for k, v in (r.result or {}).items() if k in _DOCS_RESULT_KEYS}
        key = ValidationResultIdentifier(
            expectation_suite_identifier=ExpectationSuiteIdentifier(name=suite_name),
            run_id=run_id, batch_identifier=f"rows-batch-{b + 1:03d}")
        gctx.validation_results_store.set(key, res)
    gctx.build_data_docs(site_names=["caredata"])
    index = base / "index.html"
    return str(index)


# =========================================================================== many files
# Many small files (6,500 GP extracts a month) validated together: one GX context per
# call, their rows concatenated into row batches of up to ``batch_rows`` rows, and the
# outcome split back per file, exactly as :func:`validate` would have given it file by
# file. Every rule is row-wise (a file's repeated keys are marked per file by the suite's
# ``prepare`` before the rows are concatenated), so concatenation changes no verdict.
# A rule whose arguments differ between files (the "no future dates" ceiling is each
# file's submission date; a provider's sites) runs once per distinct set of arguments,
# on the rows of the files sharing it.


def _env_for(source: str, period, submitter, file_name: str, context: ValidationContext | None) -> Env:
    ctx_in = context or ValidationContext()
    hes = source == "hes_apc"
    return Env(
        source=source,
        period=None if hes else period,
        submitter=None if hes else submitter,
        file_name=file_name,
        protocol=None if hes else _protocol(source, file_name),
        site_providers=ctx_in.site_providers,
        practice_codes=frozenset(ctx_in.practice_codes) if ctx_in.practice_codes else None,
        today=ctx_in.today or dt.date.today(),
    )


def _active_rules(source: str, env: Env) -> list[tuple[Rule, dict]]:
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


class _Conditions:
    """Row conditions evaluated once over the work frame (as GX's pandas engine evaluates
    them), as bool masks: a SUS NET file puts one on some 120 rules."""

    def __init__(self, work: pd.DataFrame):
        self.work, self.masks = work, {}

    def mask(self, kw: dict) -> np.ndarray | None:
        cond = kw.get("row_condition")
        if not cond:
            return None
        if cond not in self.masks:
            self.masks[cond] = compiled.rows_in_condition(self.work, kw)
        return self.masks[cond]


def _checked_candidates(rule: Rule, kw: dict, work: pd.DataFrame, conditions: _Conditions) -> list[np.ndarray]:
    """Masks of the rows GX may count as checked for a rule (element_count - missing_count),
    most likely first; the one whose total equals GX's own count is used per file."""
    base = conditions.mask(kw)
    base = np.ones(len(work), dtype=bool) if base is None else base
    cols = [kw[k] for k in ("column", "column_A", "column_B") if k in kw] + list(kw.get("column_list", []))
    present = base.copy()
    for c in cols:
        present &= work[c].notna().to_numpy(dtype=bool)
    if rule.expectation in ("ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeNull"):
        return [base, present]
    return [present, base]


def _gx_checked_per_item(rule: Rule, kw: dict, work: pd.DataFrame, conditions: _Conditions, in_job: np.ndarray,
                         gx_total: int, item_of: np.ndarray, its: tuple[int, ...], sizes: np.ndarray) -> np.ndarray:
    """Rows checked per file for GX's total over a job: the candidate mask whose total
    equals GX's; failing that, GX's total shared by file size."""
    for mask in _checked_candidates(rule, kw, work, conditions):
        m = mask & in_job
        if int(m.sum()) == gx_total:
            return np.bincount(item_of[m], minlength=len(sizes))
    sh = np.zeros(len(sizes), dtype=np.float64)
    sh[list(its)] = sizes[list(its)]
    return np.floor(gx_total * sh / max(sh.sum(), 1) + 0.5).astype(np.int64)


def _gx_context(source: str):
    gctx = gx.get_context(mode="ephemeral")
    gctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    batch_def = (gctx.data_sources.add_pandas("landing").add_dataframe_asset(source)
                 .add_batch_definition_whole_dataframe("rows"))
    return gctx, batch_def


Jobs = dict[tuple[int, ...], list[tuple[Rule, dict]]]


def _run_gx(batch_def, gctx, source: str, jobs: Jobs, job_rows: dict, work: pd.DataFrame, step: int,
            only: dict[tuple, set[int]] | None = None):
    """GX validates each job's rows (``job_rows``) in batches of ``step`` rows (only the
    members ``only[its]``, if given). Returns per job member ``(its, m)``: rows checked
    (GX's count) and failing row positions; the suite results (name, batch number,
    result, its) for Data Docs; the number of batches."""
    checked: dict[tuple, int] = {}
    failed: dict[tuple, list[np.ndarray]] = {}
    results = []
    n_batches = 0
    for j, (its, members) in enumerate(jobs.items()):
        positions = job_rows[its]
        chosen = None if only is None else only.get(its, set())
        if chosen is not None and not chosen:
            continue
        suites = []
        for g, (cols, group) in enumerate(_groups(members, chosen)):
            name = f"caredata_{source}.job{j + 1:03d}.part{g + 1:02d}"
            suite = gx.ExpectationSuite(name=name, expectations=[_expectation(r, kw, m) for m, r, kw in group])
            suites.append((name, cols, gctx.suites.add(suite)))
        for m in (range(len(members)) if chosen is None else chosen):
            checked[(its, m)] = 0
            failed[(its, m)] = []
        for b in range(0, len(positions), step):
            pos = positions[b:b + step]
            n_batches += 1
            # A run of consecutive rows is sliced (no copy), others taken.
            contiguous = int(pos[-1]) - int(pos[0]) + 1 == len(pos)
            for name, cols, suite in suites:
                part = work[cols]
                part = part.iloc[int(pos[0]):int(pos[-1]) + 1] if contiguous else part.iloc[pos]
                part = part.set_axis(pd.Index(pos), axis=0)
                res = _run_suite(batch_def, suite, part)
                for m, n_checked, idx in _rule_results(res, part, f"{source} batch"):
                    checked[(its, m)] += n_checked
                    failed[(its, m)].append(idx)
                results.append((name, n_batches - 1, res, its))
    failing = {k: (np.unique(np.concatenate(v)) if v else np.zeros(0, np.int64)) for k, v in failed.items()}
    return checked, failing, results, n_batches


def _run_compiled(jobs: Jobs, job_rows: dict, work: pd.DataFrame, conditions: _Conditions):
    """Each job's rules evaluated column-wise over its rows (:mod:`expectations.compiled`).
    Returns per job member ``(its, m)``: the positions of the rows checked and failing."""
    checked: dict[tuple, np.ndarray] = {}
    failed: dict[tuple, np.ndarray] = {}
    for its, members in jobs.items():
        positions = job_rows[its]
        cols = list(dict.fromkeys(c for _, kw in members for c in _columns_of(kw)))
        whole = len(positions) == len(work)
        rows = work[cols] if whole else work[cols].iloc[positions]
        for m, (rule, kw) in enumerate(members):
            base = conditions.mask(kw)
            c, f = compiled.evaluate(rule.expectation, kw, rows, base if base is None or whole else base[positions])
            checked[(its, m)], failed[(its, m)] = positions[c], positions[f]
    return checked, failed


CROSSCHECK_ROWS = int(os.environ.get("CAREDATA_CROSSCHECK_ROWS", "1000"))
CROSSCHECK_FAILING = 5
"""GX validates, beside the compiled rules, the first ``CROSSCHECK_ROWS`` rows of the job
each rule is checked in and up to ``CROSSCHECK_FAILING`` rows each rule failed there."""


def _second_bound(members: list[tuple[Rule, dict]], m: int) -> bool:
    """Whether job member ``m`` is a merged date rule's second bound (the rule's maximum
    after its minimum): it judges the same rows as the first."""
    return m > 0 and members[m - 1][0].id == members[m][0].id


def _among(sorted_positions: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The positions of ``sample`` (sorted) that are in ``sorted_positions``."""
    if not len(sorted_positions):
        return sample[:0]
    at = np.minimum(np.searchsorted(sorted_positions, sample), len(sorted_positions) - 1)
    return sample[sorted_positions[at] == sample]


def _crosscheck(batch_def, gctx, source: str, jobs: Jobs, job_rows: dict, work: pd.DataFrame,
                checked: dict, failed: dict):
    """GX validates a sample of rows for every rule, in the group of files (job) with the
    most rows among those the rule applies to with its own arguments: the job's first
    rows and some rows each of its rules failed. The compiled rules must give the same
    verdicts and counts on it, or the validation stops (:class:`ValidationError`).
    Returns GX's suite results, their counts made the rule's over every row (for Data
    Docs), and the number of GX batches."""
    where: dict[str, tuple] = {}  # rule id -> the job it is checked in
    for its, members in jobs.items():
        for rule, _ in members:
            if rule.id not in where or len(job_rows[its]) > len(job_rows[where[rule.id]]):
                where[rule.id] = its
    only = {its: {m for m, (rule, _) in enumerate(members) if where[rule.id] == its} for its, members in jobs.items()}
    sample = {}
    for its, chosen in only.items():
        picks = [job_rows[its][:CROSSCHECK_ROWS]] + [failed[(its, m)][:CROSSCHECK_FAILING] for m in chosen]
        sample[its] = np.unique(np.concatenate(picks)) if chosen else job_rows[its][:0]
    step = max([len(v) for v in sample.values()] + [1])
    gx_checked, gx_failed, results, n_batches = _run_gx(batch_def, gctx, source, jobs, sample, work, step, only)
    for its, members in jobs.items():
        for m in only[its]:
            rule = members[m][0]
            want_failed = _among(failed[(its, m)], sample[its])
            want_checked = _among(checked[(its, m)], sample[its]).size
            if not np.array_equal(want_failed, gx_failed[(its, m)]) or want_checked != gx_checked[(its, m)]:
                raise ValidationError(
                    f"{source}: rule {rule.id}: the compiled rule and Great Expectations disagree on "
                    f"{len(sample[its])} sampled rows (failing {len(want_failed)} against "
                    f"{len(gx_failed[(its, m)])}, checked {want_checked} against {gx_checked[(its, m)]})")
    totals: dict[str, list[int]] = {}  # rule id -> rows, rows checked, rows failed (every variant)
    for its, members in jobs.items():
        for m, (rule, _) in enumerate(members):
            t = totals.setdefault(rule.id, [0, 0, 0])
            if not _second_bound(members, m):  # same rows as the first
                t[0] += len(job_rows[its])
                t[1] += len(checked[(its, m)])
            t[2] += len(failed[(its, m)])
    for _, _, res, its in results:
        for r in res.results:
            n_rows, n_checked, n_failed = totals[r.expectation_config.meta["rule_id"]]
            r.success = n_failed == 0
            r.result = {"element_count": n_rows, "missing_count": n_rows - n_checked,
                        "unexpected_count": n_failed,
                        "unexpected_percent": 100.0 * n_failed / n_checked if n_checked else 0.0}
        res.success = all(r.success for r in res.results)
    return results, n_batches


def validate_many(
    source: str,
    items: list[dict],
    *,
    data_docs_dir: str | None = None,
    batch_rows: int | None = None,
    engine: str | None = None,
    work_out: list | None = None,
) -> list[ValidationOutcome]:
    """Validate many files of one feed in one GX context. ``items``: one dict per file with
    the keyword arguments of :func:`validate` (``frame``, ``period``, ``submitter``,
    ``file_name``, ``context``). Returns one :class:`ValidationOutcome` per item, the same
    as :func:`validate` returns for that file alone (rule counts, example lines, field
    scores, per-row verdicts); ``stats`` holds this call's totals (``files``). Given a
    list ``work_out``, the work frame of all the items' rows, one after another (the
    declared columns stripped, blank as missing, dates parsed: :func:`_work_frame`), is
    appended to it, for the caller to type the rows without that work again."""
    if source not in SUITES:
        raise ValueError(f"no expectation suite for source {source!r}")
    if not items:
        return []
    started = time.perf_counter()
    mod = SUITES[source]
    envs, actives, lines = [], [], []
    for it in items:
        env = _env_for(source, it.get("period"), it.get("submitter"), it["file_name"], it.get("context"))
        frame = it["frame"]
        n = len(frame)
        envs.append(env)
        actives.append(_active_rules(source, env))
        lines.append(frame[LINE].to_numpy(dtype=np.int64) if LINE in frame.columns
                     else np.arange(2, n + 2, dtype=np.int64))
    sizes = np.array([len(it["frame"]) for it in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    work = _work_frame_many(source, [it["frame"] for it in items], envs, offsets)
    conditions = _Conditions(work)
    item_of = np.repeat(np.arange(len(items)), sizes)

    # Each rule's distinct argument sets, and the files using each.
    variants: dict[str, dict[str, tuple[Rule, dict, list[int]]]] = {}
    for i, active in enumerate(actives):
        for rule, kw in active:
            sig = repr(sorted(kw.items(), key=lambda kv: kv[0]))
            v = variants.setdefault(rule.id, {})
            if sig in v:
                v[sig][2].append(i)
            else:
                v[sig] = (rule, kw, [i])
    # A date-bound rule (ExpectColumnValuesToBeIsoDatesBetween) whose bounds differ per
    # file (the "no future dates" ceiling is each file's submission date) would need one
    # GX call per distinct bound: its bounds go instead into per-row columns, and GX
    # compares the parsed date with them (ExpectColumnPairValuesAToBeGreaterThanB, rows
    # without a real date or without a bound not judged, as the rule judges no missing or
    # invalid date). Its rows checked per file are counted as the rule counts them (the
    # value present, under the rule's row condition).
    merged: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
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
            in_rows = np.zeros(total, dtype=bool)
            for i in all_its:
                in_rows[offsets[i]:offsets[i + 1]] = True
            mask = _checked_candidates(rule, {k: v for k, v in kw0.items()
                                              if k in ("column", "row_condition")}, work, conditions)[0] & in_rows
            merged[(rule.id, tuple(all_its))] = mask
            out_v[f"merged{g}"] = (dataclasses.replace(rule, expectation="ExpectColumnPairValuesAToBeGreaterThanB"),
                                   kws, all_its)
        variants[rid] = out_v
    # Jobs: the files (rows) a set of rules runs on. Rules with one argument set used by
    # every file run on all rows; the others on the rows of the files sharing each set.
    jobs: dict[tuple[int, ...], list[tuple[Rule, dict]]] = {}
    order = {r.id: k for k, r in enumerate(mod.RULES)}
    for rid in sorted(variants, key=order.get):
        for rule, kw, its in variants[rid].values():
            for one in (kw if isinstance(kw, list) else [kw]):
                jobs.setdefault(tuple(its), []).append((rule, one))

    all_items = tuple(range(len(items)))
    job_rows = {its: (np.arange(total) if its == all_items
                      else np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in its]))
                for its in jobs}
    engine = engine or ENGINE
    gctx, batch_def = _gx_context(source)
    if engine == "gx":
        step = batch_rows or _batch_rows(work)
        gx_checked, failed, results, n_batches = _run_gx(batch_def, gctx, source, jobs, job_rows, work, step)
        checked = None
    elif engine == "compiled":
        checked, failed = _run_compiled(jobs, job_rows, work, conditions)
        results, n_batches = _crosscheck(batch_def, gctx, source, jobs, job_rows, work, checked, failed)
    else:
        raise ValueError(f"unknown validation engine {engine!r} (compiled or gx)")

    # Per rule: failing rows (over its variants), and rows checked per file.
    fail_pos: dict[str, np.ndarray] = {}
    checked_per_item: dict[str, np.ndarray] = {}
    for its, members in jobs.items():
        in_job = np.zeros(total, dtype=bool)
        in_job[job_rows[its]] = True
        for m, (rule, kw) in enumerate(members):
            pos = failed[(its, m)]
            prev = fail_pos.get(rule.id)
            fail_pos[rule.id] = pos if prev is None else np.union1d(prev, pos)
            if _second_bound(members, m):
                continue  # counted with the first
            if (rule.id, its) in merged:
                counts = np.bincount(item_of[merged[(rule.id, its)]], minlength=len(items))
            elif checked is not None:
                counts = np.bincount(item_of[checked[(its, m)]], minlength=len(items))
            else:
                counts = _gx_checked_per_item(rule, kw, work, conditions, in_job, gx_checked[(its, m)], item_of,
                                              its, sizes)
            prev = checked_per_item.get(rule.id)
            checked_per_item[rule.id] = counts if prev is None else prev + counts

    seconds = time.perf_counter() - started
    # Data Docs show the suite runs that failed on some row (when every one passed, the
    # first), so the site stays small and quick to build for 6,500 files.
    shown = [r for r in results if not r[2].success] or results[:1]
    run_name = items[0]["file_name"] if len(items) == 1 else f"{source}-{items[0].get('period') or ''}-{len(items)}-files"
    docs = _build_docs(gctx, shown, run_name, data_docs_dir) if data_docs_dir and shown else None
    outs: list[ValidationOutcome] = []
    for i, (env, active) in enumerate(zip(envs, actives)):
        a, z = int(offsets[i]), int(offsets[i + 1])
        n = z - a
        w = work.iloc[a:z].reset_index(drop=True)
        item_pos = {}
        for rule, _ in active:
            allpos = fail_pos.get(rule.id, np.zeros(0, np.int64))
            lo, hi = np.searchsorted(allpos, [a, z])
            item_pos[rule.id] = allpos[lo:hi] - a
        rejected, rule_ids, messages, rule_counts, field_scores, broken = _assemble(
            mod, env, w, active, item_pos, {r.id: checked_per_item[r.id][i] for r, _ in active}, lines[i])
        stats = {"rows": n, "batch_rows": total, "files": len(items), "batches": n_batches,
                 "rules": len(active), "seconds": seconds * n / max(total, 1), "batch_seconds": seconds}
        outs.append(ValidationOutcome(rejected, rule_ids, messages, rule_counts, field_scores, docs, stats, broken))
    log.info("validated %d %s file(s) together: %d rows, %d job(s), %d batch(es), %.1fs",
             len(items), source, total, len(jobs), n_batches, seconds)
    if work_out is not None:
        work_out.append(work)
    return outs
