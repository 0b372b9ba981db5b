"""Great Expectations beside the engine: the context and suites, GX validating a sample
of rows (the engine's verdicts must agree: :func:`crosscheck`) or every row (``gx``
mode, in batches), and the Data Docs site (counts only, never a value of a row).

This module is GX's pandas engine, on one machine, on every engine: the sample is read
by the expectations exactly as declared in ``expectations/`` (row conditions with the
pandas parser, regular expressions as Python's ``re`` reads them, the custom
expectations' pandas providers), so it checks the engine's SQL against the declarations'
own meaning. On the Spark engine GX's Spark execution engine validates every row as
well (:mod:`pipelines.validation.gx_spark`): there the row conditions are translated to
``condition_parser="spark"`` filters, ``\\s`` is spelled out for Java's regular
expressions, and the custom expectations (:mod:`expectations.custom`) run their Spark
providers. Sample-only on Spark: an expectation that cannot be put to GX's Spark engine
(a custom expectation without a Spark provider, a row condition the translation does not
read); with today's suites there is none, and any such rule is listed in the
validation's ``stats["gx_spark_sample_only"]``. Quarantine never comes from GX on Spark
(its failing-row indices are unreliable there in GX 1.x): it is the engine's.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logging.getLogger("great_expectations").setLevel(logging.ERROR)

import great_expectations as gx  # noqa: E402  (after the analytics switch above)
from great_expectations.execution_engine import pandas_execution_engine as _gx_pandas  # noqa: E402

from expectations.custom import CUSTOM  # noqa: E402
from expectations.rules import Rule  # noqa: E402
from pipelines.validation.plan import Jobs, ValidationError, second_bound  # noqa: E402

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

GROUP_COLUMNS = 8
ROW_CONDITION_COLUMNS = ("CDS_UPDATE_TYPE",)  # columns a row condition may read

CROSSCHECK_ROWS = int(os.environ.get("CAREDATA_CROSSCHECK_ROWS", "1000"))
CROSSCHECK_FAILING = 5
"""GX validates, beside the engine, the first ``CROSSCHECK_ROWS`` rows of the job each
rule is checked in and up to ``CROSSCHECK_FAILING`` rows each rule failed there."""

# Only counts go into Data Docs: never a value of a row (NHS numbers, postcodes, dates
# of birth would otherwise appear in the "unexpected values" of the rendered pages).
_DOCS_RESULT_KEYS = (
    "element_count", "missing_count", "missing_percent", "unexpected_count",
    "unexpected_percent", "unexpected_percent_nonmissing", "unexpected_percent_total",
)


def batch_rows(work: pd.DataFrame) -> int:
    return max(1, min(BATCH_ROWS, BATCH_CELLS // max(1, work.shape[1])))


def context(source: str):
    gctx = gx.get_context(mode="ephemeral")
    gctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    batch_def = (gctx.data_sources.add_pandas("landing").add_dataframe_asset(source)
                 .add_batch_definition_whole_dataframe("rows"))
    return gctx, batch_def


def expectation(rule: Rule, kwargs: dict, member: int = 0) -> gx.expectations.Expectation:
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
            msg = _raised(v if isinstance(v, dict) else getattr(v, "to_json_dict", dict)())
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


def run(batch_def, gctx, source: str, jobs: Jobs, job_rows: dict, work: pd.DataFrame, step: int,
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
            suite = gx.ExpectationSuite(name=name, expectations=[expectation(r, kw, m) for m, r, kw in group])
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


# ------------------------------------------------------------------ rows checked per file (gx mode)
class Conditions:
    """Row conditions evaluated once over the work frame as GX's pandas engine evaluates
    them (``DataFrame.query``), as bool masks: GX gives rows checked per job only, and in
    ``gx`` mode these masks share them out per file."""

    def __init__(self, work: pd.DataFrame):
        self.work, self.masks = work, {}

    def mask(self, kw: dict) -> np.ndarray | None:
        cond = kw.get("row_condition")
        if not cond:
            return None
        if cond not in self.masks:
            kept = self.work.query(cond, parser=kw.get("condition_parser") or "pandas").index
            self.masks[cond] = self.work.index.isin(kept)
        return self.masks[cond]


def checked_candidates(rule: Rule, kw: dict, work: pd.DataFrame, conditions: Conditions) -> list[np.ndarray]:
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


def checked_per_item(rule: Rule, kw: dict, work: pd.DataFrame, conditions: Conditions, in_job: np.ndarray,
                     gx_total: int, item_of: np.ndarray, its: tuple[int, ...], sizes: np.ndarray) -> np.ndarray:
    """Rows checked per file for GX's total over a job: the candidate mask whose total
    equals GX's; failing that, GX's total shared by file size."""
    for mask in checked_candidates(rule, kw, work, conditions):
        m = mask & in_job
        if int(m.sum()) == gx_total:
            return np.bincount(item_of[m], minlength=len(sizes))
    sh = np.zeros(len(sizes), dtype=np.float64)
    sh[list(its)] = sizes[list(its)]
    return np.floor(gx_total * sh / max(sh.sum(), 1) + 0.5).astype(np.int64)


# ------------------------------------------------------------------ the sample beside the engine
def _among(sorted_positions: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The positions of ``sample`` (sorted) that are in ``sorted_positions``."""
    if not len(sorted_positions):
        return sample[:0]
    at = np.minimum(np.searchsorted(sorted_positions, sample), len(sorted_positions) - 1)
    return sample[sorted_positions[at] == sample]


def crosscheck(batch_def, gctx, source: str, jobs: Jobs, job_rows: dict, work: pd.DataFrame,
               checked: dict, failed: dict, engine_name: str = "engine"):
    """GX validates a sample of rows for every rule, in the group of files (job) with the
    most rows among those the rule applies to with its own arguments: the job's first
    rows and some rows each of its rules failed. The engine's verdicts and counts must be
    GX's on it, or the validation stops (:class:`ValidationError`). Returns GX's suite
    results, their counts made the rule's over every row (for Data Docs), and the number
    of GX batches."""
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
    gx_checked, gx_failed, results, n_batches = run(batch_def, gctx, source, jobs, sample, work, step, only)
    for its, members in jobs.items():
        for m in only[its]:
            rule = members[m][0]
            want_failed = _among(failed[(its, m)], sample[its])
            want_checked = _among(checked[(its, m)], sample[its]).size
            if not np.array_equal(want_failed, gx_failed[(its, m)]) or want_checked != gx_checked[(its, m)]:
                raise ValidationError(
                    f"{source}: rule {rule.id}: the {engine_name} engine's SQL and Great Expectations disagree on "
                    f"{len(sample[its])} sampled rows (failing {len(want_failed)} against "
                    f"{len(gx_failed[(its, m)])}, checked {want_checked} against {gx_checked[(its, m)]})")
    totals: dict[str, list[int]] = {}  # rule id -> rows, rows checked, rows failed (every variant)
    for its, members in jobs.items():
        for m, (rule, _) in enumerate(members):
            t = totals.setdefault(rule.id, [0, 0, 0])
            if not second_bound(members, m):  # same rows as the first
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


# ------------------------------------------------------------------ Data Docs
def build_docs(gctx, results, file_name: str, folder: str) -> str:
    """A local GX Data Docs site for this validation, with counts only."""
    return build_docs_many([(gctx, results, file_name, dt.datetime.now(dt.UTC))], folder)


def build_docs_many(validations: list[tuple], folder: str) -> str:
    """One build of a local GX Data Docs site (counts only) for many validations, each
    ``(gctx, results, run name, run time)``: the validations of an ingest's chunks, whose
    pages a build per chunk rendered again each time (the site is rendered whole)."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    base = Path(folder).resolve()
    base.mkdir(parents=True, exist_ok=True)
    gctx = validations[0][0]
    gctx.add_data_docs_site(site_name="caredata", site_config={
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(base)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    for _, results, file_name, when in validations:
        run_id = RunIdentifier(run_name=Path(file_name).name, run_time=when)
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
