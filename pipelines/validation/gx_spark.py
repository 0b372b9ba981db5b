"""Great Expectations on Spark: on the Spark engine, GX's Spark execution engine validates
every row of each validation (the whole chunk, every job's rows) with the same
expectations, declared once in ``expectations/``, and its per-expectation counts must be
the engine's own (:func:`validate`).

How it runs: the columns the rules read go to the engine's session as one Spark
DataFrame (``__pos`` and ``__item`` beside them), persisted while GX reads it; GX's Spark
datasource (``context.data_sources.add_spark``, a dataframe asset, a whole-dataframe
batch definition) gets, per job, that DataFrame limited to the job's files
(``batch_parameters={"dataframe": ...}``) and validates one suite of the job's
expectations on it, result format ``BASIC`` with no unexpected values asked for (GX on
Spark would otherwise collect failing values to the driver). Per expectation, GX's
``unexpected_count`` must equal the number of rows the engine's SQL failed, and
``element_count - missing_count`` the rows it counted; a difference, or an expectation GX
could not evaluate, is a :class:`~pipelines.validation.plan.ValidationError` naming the
rule and the file(s) and giving counts only, never a value of a row (a Spark error's
message can quote a value: only its error class is kept).

Quarantine is never taken from GX here: GX 1.x's failing-row indices are unreliable on
Spark (``unexpected_index_list`` is not returned, or only with index columns whose values
it collects), so the rows quarantined are the engine's (:mod:`pipelines.validation.compiled`).

The expectations as GX's Spark engine reads them (:func:`spark_kwargs`):

* row conditions are declared for GX's pandas parser (``DataFrame.query``; the SUS suite's
  ``CDS_UPDATE_TYPE != "1"`` for NET submissions). They are given to the Spark engine
  with ``condition_parser="spark"`` as a Spark SQL filter that keeps pandas's meaning
  (``!=`` keeps a missing value): the translation of
  :func:`pipelines.validation.compiled.row_condition_sql`, carried by SQLGlot;
* regular expressions are read by Python's ``re`` in the declarations (GX's pandas
  engine); Java's (Spark's ``rlike``) ``\\s`` misses Unicode spaces, so ``\\s`` is
  spelled out (:func:`pipelines.text.re2_friendly`), as the engine's SQL does;
* the custom expectations (:mod:`expectations.custom`: NHS number, ISO dates) have a
  Spark provider beside the pandas one, written as pyspark column expressions apart
  from the engine's SQL.

An expectation that cannot be put to GX's Spark engine (a custom expectation without a
Spark provider, a row condition the translation does not read) is checked by the GX
sample only (:func:`pipelines.validation.gx.crosscheck`, which runs on every engine) and
listed in the validation's ``stats["gx_spark_sample_only"]``. With the suites of today
there is none.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import great_expectations as gx

from expectations.custom import CUSTOM
from expectations.rules import Rule
from pipelines.text import re2_friendly
from pipelines.validation.gx import expectation
from pipelines.validation.plan import ITEM, Plan, ValidationError, second_bound

log = logging.getLogger("pipelines.validation")

RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0,
                 "include_unexpected_rows": False, "return_unexpected_index_query": False}


class NotOnSpark(ValueError):
    """An expectation GX's Spark execution engine cannot run as declared."""


def session_of(engine):
    """The Spark session of a Spark engine (``name == "spark"`` with a ``spark`` session),
    else None: GX on Spark runs only when the engine is Spark."""
    if engine is None or getattr(engine, "name", None) != "spark":
        return None
    return getattr(engine, "spark", None)


def spark_condition(condition: str) -> str:
    """A row condition for GX's pandas parser as a Spark SQL filter with pandas's meaning."""
    import sqlglot

    from pipelines.validation.compiled import NotCompiled, row_condition_sql

    try:
        duck = row_condition_sql(condition)
    except NotCompiled as e:
        raise NotOnSpark(f"row condition: {e}") from None
    return sqlglot.transpile(duck, read="duckdb", write="spark")[0]


def _has_spark_provider(cls) -> bool:
    from great_expectations.expectations import registry

    metric = getattr(cls, "map_metric", None)
    if not metric:
        return False
    providers = registry._registered_metrics.get(f"{metric}.condition", {}).get("providers", {})
    return "SparkDFExecutionEngine" in providers


def spark_kwargs(rule: Rule, kw: dict) -> dict:
    """A job member's expectation arguments as GX's Spark engine reads them (see the module
    docstring); :class:`NotOnSpark` when it cannot."""
    out = dict(kw)
    cls = CUSTOM.get(rule.expectation)
    if cls is not None and not _has_spark_provider(cls):
        raise NotOnSpark(f"{rule.expectation} has no Spark provider")
    if cls is None and not hasattr(gx.expectations, rule.expectation):
        raise NotOnSpark(f"{rule.expectation} is not a GX expectation")
    if out.get("row_condition"):
        parser = out.get("condition_parser") or "pandas"
        if parser == "pandas":
            out["row_condition"] = spark_condition(out["row_condition"])
            out["condition_parser"] = "spark"
        elif parser != "spark":
            raise NotOnSpark(f"row condition parser {parser!r}")
    if "regex" in out:
        out["regex"] = re2_friendly(out["regex"])
    return out


def _columns(kw: dict) -> list[str]:
    from pipelines.validation.compiled import columns_read

    return columns_read(kw)


def _files(names: list[str], its: tuple[int, ...]) -> str:
    shown = [Path(names[i]).name for i in its[:5]]
    more = f" and {len(its) - 5} more" if len(its) > 5 else ""
    return ", ".join(shown) + more


_ERROR_CLASS = re.compile(r"\[([A-Z][A-Z0-9_.]+)\]")


def _error_class(info) -> str | None:
    """The error class of an expectation GX could not evaluate (``CAST_INVALID_INPUT``),
    or its exception's type: never the message, which may quote a value of a row."""
    from pipelines.validation.gx import _raised

    msg = _raised(info)
    if not msg:
        return None
    m = _ERROR_CLASS.search(str(msg))
    return m.group(1) if m else "an error (message withheld: it may quote a value)"


def validate(session, source: str, plan: Plan, work, checked: dict, failed: dict, names: list[str],
             engine_name: str = "spark", *, validate_batch=None):
    """GX's Spark execution engine validates every job's rows; its counts per expectation
    must be the engine's (``checked``/``failed``: per job member, the positions of the rows
    the engine's SQL counted and failed). Returns the suite results (name, job number,
    result, job) for Data Docs, the number of GX batches, the rule ids checked by the
    sample only, and GX's counts per rule id ({"checked": n, "failed": n}, over its
    variants; a date rule merged across files, checked as a comparison with per-row
    bounds, gives "failed" only: its rule's rows checked are the date's).

    ``validate_batch(batch, suite)``: how a batch is validated (default
    ``batch.validate(suite, result_format=RESULT_FORMAT)``), passed in by tests."""
    from pipelines.validation.workframe import to_arrow

    validate_batch = validate_batch or (lambda batch, suite: batch.validate(suite, result_format=RESULT_FORMAT))
    gctx = gx.get_context(mode="ephemeral")
    gctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    # persist=False: the one DataFrame is persisted here, once, not each job's slice of it
    batch_def = (gctx.data_sources.add_spark("engine", persist=False).add_dataframe_asset(source)
                 .add_batch_definition_whole_dataframe("rows"))
    jobs_kw: dict[tuple, list[tuple[int, Rule, dict]]] = {}
    sample_only: list[str] = []
    read: list[str] = []
    for its, members in plan.jobs.items():
        for m, (rule, kw) in enumerate(members):
            try:
                skw = spark_kwargs(rule, kw)
            except NotOnSpark:
                if rule.id not in sample_only:
                    sample_only.append(rule.id)
                continue
            jobs_kw.setdefault(its, []).append((m, rule, skw))
            read += _columns(kw)
    results, counts = [], {}
    if not jobs_kw or plan.total == 0:  # no row: nothing for GX to count
        return results, 0, sample_only, counts
    read = [c for c in dict.fromkeys(read) if c in work.columns]
    frame = session.createDataFrame(to_arrow(work, read, plan.item_of)).persist()
    everything = tuple(range(len(plan.sizes)))
    n_batches = 0
    try:
        for j, (its, chosen) in enumerate(jobs_kw.items()):
            members = plan.jobs[its]
            if its == everything:
                part = frame
            else:
                from pyspark.sql import functions as F

                part = frame.filter(F.col(ITEM).isin([int(i) for i in its]))
            name = f"caredata_{source}.spark.job{j + 1:03d}"
            suite = gctx.suites.add(gx.ExpectationSuite(
                name=name, expectations=[expectation(rule, skw, m) for m, rule, skw in chosen]))
            res = validate_batch(batch_def.get_batch(batch_parameters={"dataframe": part}), suite)
            n_batches += 1
            files = _files(names, its)
            for r in res.results:
                meta = r.expectation_config.meta
                rid, m = meta["rule_id"], int(meta["member"])
                err = _error_class(r.exception_info)
                if err:
                    raise ValidationError(f"{source}: rule {rid} could not be evaluated by Great Expectations on "
                                          f"Spark (file(s) {files}): {err}")
                out = r.result or {}
                gx_failed = int(out.get("unexpected_count") or 0)
                gx_checked = int(out.get("element_count") or 0) - int(out.get("missing_count") or 0)
                want_failed, want_checked = len(failed[(its, m)]), len(checked[(its, m)])
                if gx_failed != want_failed or gx_checked != want_checked:
                    raise ValidationError(
                        f"{source}: rule {rid}, file(s) {files}: the {engine_name} engine's SQL and Great "
                        f"Expectations on Spark disagree over every row (failing {want_failed} against "
                        f"{gx_failed}, checked {want_checked} against {gx_checked})")
                if (rid, its) in plan.merged:
                    # a date rule whose bounds differ per file, checked as a comparison with
                    # per-row bounds: its rows checked are the date's, not the comparison's
                    c = counts.setdefault(rid, {"failed": 0})
                else:
                    c = counts.setdefault(rid, {"checked": 0, "failed": 0})
                c["failed"] += gx_failed
                if "checked" in c and not second_bound(members, m):
                    c["checked"] += gx_checked
            results.append((name, j, res, its))
    finally:
        frame.unpersist()
    log.info("GX on Spark validated %d %s row(s) in %d batch(es), %d expectation(s): its counts are the engine's%s",
             plan.total, source, n_batches, sum(len(r[2].results) for r in results),
             f"; sample only: {', '.join(sample_only)}" if sample_only else "")
    return results, n_batches, sample_only, counts
