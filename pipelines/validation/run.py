"""validate / validate_many: the plan, the engine's SQL on every row, GX beside it, the
outcomes. See the package docstring."""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines.validation import assemble, compiled
from pipelines.validation import gx as gxv
from pipelines.validation.assemble import ValidationOutcome
from pipelines.validation.plan import (
    LINE,
    SUITES,
    ValidationContext,
    ValidationError,
    active_rules,
    env_for,
    make_plan,
)
from pipelines.validation.workframe import work_frame_many

if TYPE_CHECKING:
    from pipelines.engine import Engine

log = logging.getLogger("pipelines.validation")

MODES = ("compiled", "gx")
MODE = os.environ.get("CAREDATA_VALIDATION_ENGINE", "compiled")
"""``compiled``: every row is judged by the engine (the rules as SQL,
:mod:`pipelines.validation.compiled`) and a sample by GX too (the two must agree);
``gx``: GX judges every row, in batches (tests, and a second opinion)."""


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
    mode: str | None = None,
    engine: Engine | None = None,
    gx_validate=None,
) -> ValidationOutcome:
    """Validate a file's rows against its feed's suite: :func:`validate_many` of the one
    file."""
    item = {"frame": frame, "period": period, "submitter": submitter, "file_name": file_name, "context": context}
    return validate_many(source, [item], data_docs_dir=data_docs_dir, batch_rows=batch_rows, mode=mode,
                         engine=engine, gx_validate=gx_validate)[0]


def validate_many(
    source: str,
    items: list[dict],
    *,
    data_docs_dir: str | None = None,
    batch_rows: int | None = None,
    mode: str | None = None,
    engine: Engine | None = None,
    work_out: list | None = None,
    gx_validate=None,
    docs_out: list | None = None,
) -> list[ValidationOutcome]:
    """Validate many files of one feed together. ``items``: one dict per file with the
    keyword arguments of :func:`validate` (``frame``, ``period``, ``submitter``,
    ``file_name``, ``context``). Returns one :class:`ValidationOutcome` per item, the same
    as :func:`validate` returns for that file alone (rule counts, example lines, field
    scores, per-row verdicts); ``stats`` holds this call's totals (``files``).

    ``mode``: ``compiled`` (default, ``CAREDATA_VALIDATION_ENGINE``) or ``gx``.
    ``engine``: the :class:`pipelines.engine.Engine` that runs the rules' SQL (None: the
    process's default DuckDB engine). Given a list ``work_out``, the work frame of all the
    items' rows, one after another (the declared columns stripped, blank as missing, dates
    parsed: :func:`pipelines.validation.workframe.work_frame`), is appended to it, for the
    caller to type the rows without that work again. Given a list ``docs_out`` (and a
    ``data_docs_dir``), the Data Docs pages are not built here: what they show is
    appended to it, for the caller to build the site once for many calls
    (:func:`build_docs`), and the outcomes name the site's index as if built.

    On the Spark engine GX's Spark execution engine also validates every row
    (:mod:`pipelines.validation.gx_spark`; ``gx_validate(batch, suite)``, if given, is how
    it validates a batch: tests pass one in), and its counts per rule must be the engine's;
    ``stats`` then holds ``gx_spark_seconds``, ``gx_spark_counts`` (per rule id) and
    ``gx_spark_sample_only`` (rules GX checks on the sample only)."""
    if source not in SUITES:
        raise ValueError(f"no expectation suite for source {source!r}")
    mode = mode or MODE
    if mode not in MODES:
        raise ValueError(f"unknown validation mode {mode!r} ({' or '.join(MODES)})")
    if engine is not None and not hasattr(engine, "query"):
        raise TypeError(f"engine must be a pipelines.engine.Engine, not {type(engine).__name__} "
                        "(the validation mode is mode=)")
    if not items:
        return []
    started = time.perf_counter()
    mod = SUITES[source]
    envs, actives, lines = [], [], []
    for it in items:
        env = env_for(source, it.get("period"), it.get("submitter"), it["file_name"], it.get("context"))
        frame = it["frame"]
        n = len(frame)
        envs.append(env)
        actives.append(active_rules(source, env))
        lines.append(frame[LINE].to_numpy(dtype=np.int64) if LINE in frame.columns
                     else np.arange(2, n + 2, dtype=np.int64))
    sizes = np.array([len(it["frame"]) for it in items], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    work = work_frame_many(source, [it["frame"] for it in items], envs, offsets)
    plan = make_plan(source, actives, work, sizes)
    gctx, batch_def = gxv.context(source)
    timing: dict[str, float] = {}

    if mode == "gx":
        step = batch_rows or gxv.batch_rows(work)
        gx_checked, failed, results, n_batches = gxv.run(batch_def, gctx, source, plan.jobs, plan.job_rows,
                                                         work, step)
        conditions = gxv.Conditions(work)
        engine_name = "gx"

        def counts_of(rule, kw, its, m):
            key = (rule.id, its)
            if key in plan.merged:
                r0, kw0 = plan.merged[key]
                mask = gxv.checked_candidates(r0, kw0, work, conditions)[0] & _in_rows(plan, its)
                return np.bincount(plan.item_of[mask], minlength=len(items))
            return gxv.checked_per_item(rule, kw, work, conditions, _in_rows(plan, its), gx_checked[(its, m)],
                                        plan.item_of, its, plan.sizes)
    else:
        if engine is None:
            from pipelines.engine import default_engine

            engine = default_engine()
        engine_name = getattr(engine, "name", "engine")
        t0 = time.perf_counter()
        checked, failed, merged_masks, _ = compiled.run(plan, work, engine)
        timing["engine_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        results, n_batches = gxv.crosscheck(batch_def, gctx, source, plan.jobs, plan.job_rows, work,
                                            checked, failed, engine_name)
        timing["gx_sample_seconds"] = time.perf_counter() - t0
        from pipelines.validation import gx_spark

        session = gx_spark.session_of(engine)
        if session is not None:  # the Spark engine: GX's Spark engine validates every row too
            t0 = time.perf_counter()
            spark_results, spark_batches, sample_only, gx_counts = gx_spark.validate(
                session, source, plan, work, checked, failed, [it["file_name"] for it in items], engine_name,
                validate_batch=gx_validate)
            timing["gx_spark_seconds"] = time.perf_counter() - t0
            timing["gx_spark_sample_only"] = sample_only
            timing["gx_spark_counts"] = gx_counts
            results = spark_results or results  # Data Docs: GX's own counts over every row
            n_batches += spark_batches

        def counts_of(rule, kw, its, m):
            if (rule.id, its) in plan.merged:
                return np.bincount(plan.item_of[merged_masks[(rule.id, its)]], minlength=len(items))
            return np.bincount(plan.item_of[checked[(its, m)]], minlength=len(items))

    fail_pos, checked_per_item = assemble.per_rule(plan, failed, counts_of)
    seconds = time.perf_counter() - started
    # Data Docs show the suite runs that failed on some row (when every one passed, the
    # first), so the site stays small and quick to build for 6,500 files.
    shown = [r for r in results if not r[2].success] or results[:1]
    run_name = items[0]["file_name"] if len(items) == 1 else f"{source}-{items[0].get('period') or ''}-{len(items)}-files"
    docs = None
    if data_docs_dir and shown and docs_out is not None:
        # the first call's context builds the site: later ones need only their results
        docs_out.append((None if docs_out else gctx, shown, run_name, dt.datetime.now(dt.UTC)))
        docs = str(Path(data_docs_dir).resolve() / "index.html")
    elif data_docs_dir and shown:
        docs = gxv.build_docs(gctx, shown, run_name, data_docs_dir)
    stats = {"batches": n_batches, "mode": mode, "engine": engine_name, **timing}
    outs = assemble.outcomes(mod, plan, envs, actives, work, lines, fail_pos, checked_per_item, docs, stats, seconds)
    log.info("validated %d %s file(s) together: %d rows, %d job(s), %d GX batch(es), %s, %.1fs",
             len(items), source, plan.total, len(plan.jobs), n_batches, engine_name, seconds)
    if work_out is not None:
        work_out.append(work)
    return outs


def build_docs(docs: list, data_docs_dir: str) -> str | None:
    """The Data Docs site of the validations whose pages :func:`validate_many` appended to
    ``docs`` (its ``docs_out``), built once; the path of its index (None: nothing to show)."""
    return gxv.build_docs_many(docs, data_docs_dir) if docs and data_docs_dir else None


def _in_rows(plan, its) -> np.ndarray:
    mask = np.zeros(plan.total, dtype=bool)
    mask[plan.job_rows[its]] = True
    return mask


__all__ = ["MODE", "MODES", "ValidationError", "build_docs", "validate", "validate_many"]
