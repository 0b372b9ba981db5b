"""Row validation of a landing file with Great Expectations (inputs.md "Bad rows",
methods.md "Data quality").

:func:`validate` runs the feed's expectation suite (``expectations/<feed>.py``) over the
file's rows in one ephemeral GX context, in row batches (``BATCH_ROWS`` rows per GX batch,
rows with the same record key always in the same batch so that uniqueness holds across
the whole file), and returns per row whether it is rejected and every rule it broke, per
rule its counts, and per scored field its DQMI item-score inputs.

:func:`validate_many` does the same for many files of a feed at once (ingest hands it a
period's new GP extracts, about 2 million rows at a time): one GX context, row batches
spanning files, and each file's outcome split back out, identical to :func:`validate`'s
for that file alone (quarantine, rule counts and example lines, field scores stay per
submission).

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
from expectations import sus_apc as sus_suite  # noqa: E402
from expectations.custom import CUSTOM, parse_iso_dates  # noqa: E402
from expectations.rules import KEY, Env, Rule, date_col  # noqa: E402

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
    rule_ids: list[list[str]]  # per input row: every rule id it broke (reject and warn), in rule order
    messages: list[list[str]]  # per input row: the matching messages
    rule_counts: pd.DataFrame  # rule_id, field, severity, rows_checked, rows_failed, example_lines
    field_scores: pd.DataFrame  # field, rows, rows_valid
    data_docs: str | None = None  # path of the Data Docs site's index.html (this validation's pages), if built
    stats: dict = field(default_factory=dict)  # rows, batches, seconds, rows_per_second


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


def _expectation(rule: Rule, kwargs: dict) -> gx.expectations.Expectation:
    cls = CUSTOM.get(rule.expectation) or getattr(gx.expectations, rule.expectation)
    return cls(
        **kwargs,
        meta={"rule_id": rule.id, "field": rule.field, "severity": rule.severity},
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


def _groups(active: list[tuple[Rule, dict]]) -> list[tuple[list[str], list[tuple[Rule, dict]]]]:
    """Consecutive rules packed into groups reading at most GROUP_COLUMNS columns."""
    groups: list[tuple[list[str], list[tuple[Rule, dict]]]] = []
    for rule, kw in active:
        need = _columns_of(kw)
        if groups:
            cols, members = groups[-1]
            merged = cols + [c for c in need if c not in cols]
            if len(merged) <= GROUP_COLUMNS:
                cols[:] = merged
                members.append((rule, kw))
                continue
        groups.append((list(dict.fromkeys(need)), [(rule, kw)]))
    return groups


def _batches(work: pd.DataFrame, batch_rows: int) -> list[np.ndarray]:
    n = len(work)
    if n <= batch_rows:
        return [np.arange(n)]
    nb = -(-n // batch_rows)
    if KEY in work.columns:
        # Rows sharing a key land in the same batch, so within-batch uniqueness is
        # uniqueness in the file.
        h = pd.util.hash_pandas_object(work[KEY].fillna(""), index=False).to_numpy()
        which = (h % np.uint64(nb)).astype(np.int64)
        parts = [np.flatnonzero(which == b) for b in range(nb)]
        return [p for p in parts if len(p)]
    return [np.arange(b * batch_rows, min(n, (b + 1) * batch_rows)) for b in range(nb)]


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
) -> ValidationOutcome:
    """Validate a file's rows against its feed's suite. See the module docstring."""
    if source not in SUITES:
        raise ValueError(f"no expectation suite for source {source!r}")
    started = time.perf_counter()
    ctx_in = context or ValidationContext()
    hes = source == "hes_apc"
    env = Env(
        source=source,
        period=None if hes else period,
        submitter=None if hes else submitter,
        file_name=file_name,
        protocol=None if hes else _protocol(source, file_name),
        site_providers=ctx_in.site_providers,
        practice_codes=frozenset(ctx_in.practice_codes) if ctx_in.practice_codes else None,
        today=ctx_in.today or dt.date.today(),
    )
    n = len(frame)
    lines = (frame[LINE].to_numpy(dtype=np.int64) if LINE in frame.columns
             else np.arange(2, n + 2, dtype=np.int64))
    work = _work_frame(source, frame, env)

    # The suite: every rule that applies to this submission.
    mod = SUITES[source]
    active = _active_rules(source, env)

    gctx = gx.get_context(mode="ephemeral")
    gctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    # One suite per group of rules reading at most GROUP_COLUMNS columns, validated on
    # those columns only: GX copies the batch's whole frame when it filters a domain, so
    # narrow batches keep the cost per row down.
    groups = _groups(active)
    suites = []
    for g, (cols, members) in enumerate(groups):
        name = f"caredata_{source}" if len(groups) == 1 else f"caredata_{source}.part{g + 1:02d}"
        suite = gx.ExpectationSuite(name=name, expectations=[_expectation(r, kw) for r, kw in members])
        suites.append((name, cols, gctx.suites.add(suite)))
    batch_def = (gctx.data_sources.add_pandas("landing").add_dataframe_asset(source)
                 .add_batch_definition_whole_dataframe("rows"))

    checked = {r.id: 0 for r, _ in active}
    failed: dict[str, list[np.ndarray]] = {r.id: [] for r, _ in active}
    results = []
    batches = _batches(work, batch_rows or _batch_rows(work))
    for b, positions in enumerate(batches):
        rows_part = work.iloc[positions]
        rows_part.index = pd.Index(positions)  # unexpected_index_list gives file positions
        for name, cols, suite in suites:
            part = rows_part[cols]
            res = _run_suite(batch_def, suite, part)
            for rid, n_checked, idx in _rule_results(res, part, file_name):
                checked[rid] += n_checked
                failed[rid].append(idx)
            results.append((name, b, res))

    # Per row: every rule broken, in rule order; per rule: counts; per field: item scores.
    fail_pos = {rule.id: (np.unique(np.concatenate(failed[rule.id])) if failed[rule.id] else np.zeros(0, np.int64))
                for rule, _ in active}
    rejected, rule_ids, messages, rule_counts, field_scores = _assemble(
        mod, env, work, active, fail_pos, {r.id: checked[r.id] for r, _ in active}, lines)

    docs = _build_docs(gctx, results, file_name, data_docs_dir) if data_docs_dir else None
    seconds = time.perf_counter() - started
    stats = {"rows": n, "batches": len(batches), "suites": len(suites), "rules": len(active), "seconds": seconds,
             "rows_per_second": n / seconds if seconds > 0 else None}
    log.info("validated %s (%s): %d rows, %d rejected, %d rules, %d batch(es), %.1fs",
             file_name, source, n, int(rejected.sum()), len(active), len(batches), seconds)
    return ValidationOutcome(rejected, rule_ids, messages, rule_counts, field_scores, docs, stats)




def _run_suite(batch_def, suite, part: pd.DataFrame):
    """Validate one batch of rows against one suite, failing rows as index values."""
    batch = batch_def.get_batch(batch_parameters={"dataframe": part})
    return batch.validate(suite, result_format={
        "result_format": "COMPLETE", "partial_unexpected_count": 0,
        "include_unexpected_rows": False, "return_unexpected_index_query": False,
    })


def _rule_results(res, part: pd.DataFrame, label: str):
    """Per expectation of a suite result: (rule id, rows checked, failing row positions).
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
        yield rid, elements - int(out.get("missing_count", 0) or 0), np.asarray(idx, dtype=np.int64)

def _assemble(mod, env, work: pd.DataFrame, active, fail_pos: dict[str, np.ndarray],
              checked: dict[str, int], lines: np.ndarray):
    """From each rule's failing row positions: per row, the rules broken (in rule order)
    and whether a reject rule failed; per rule, its counts and up to 5 example lines;
    per scored field, the DQMI item-score inputs (present, and no rule on it failed)."""
    n = len(work)
    rejected = np.zeros(n, dtype=bool)
    gc_was_on = gc.isenabled()
    gc.disable()  # millions of small lists: the collector would rescan them again and again
    try:
        rule_ids: list[list[str]] = [[] for _ in range(n)]
        messages: list[list[str]] = [[] for _ in range(n)]
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
    return rejected, rule_ids, messages, rule_counts, pd.DataFrame(scores, columns=["field", "rows", "rows_valid"])

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
    for suite_name, b, res in results:
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


def _checked_candidates(rule: Rule, kw: dict, work: pd.DataFrame) -> list[np.ndarray]:
    """Masks of the rows GX may count as checked for a rule (element_count - missing_count),
    most likely first; the one whose total equals GX's own count is used per file."""
    base = np.ones(len(work), dtype=bool)
    if kw.get("row_condition"):
        base = np.zeros(len(work), dtype=bool)
        base[work.index.get_indexer(work.query(kw["row_condition"]).index)] = True
    cols = [kw[k] for k in ("column", "column_A", "column_B") if k in kw] + list(kw.get("column_list", []))
    present = base.copy()
    for c in cols:
        present &= work[c].notna().to_numpy(dtype=bool)
    if rule.expectation in ("ExpectColumnValuesToNotBeNull", "ExpectColumnValuesToBeNull"):
        return [base, present]
    return [present, base]


def validate_many(
    source: str,
    items: list[dict],
    *,
    data_docs_dir: str | None = None,
    batch_rows: int | None = None,
) -> list[ValidationOutcome]:
    """Validate many files of one feed in one GX context. ``items``: one dict per file with
    the keyword arguments of :func:`validate` (``frame``, ``period``, ``submitter``,
    ``file_name``, ``context``). Returns one :class:`ValidationOutcome` per item, the same
    as :func:`validate` returns for that file alone (rule counts, example lines, field
    scores, per-row verdicts); ``stats`` holds this call's totals (``files``)."""
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
                                              if k in ("column", "row_condition")}, work)[0] & in_rows
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

    gctx = gx.get_context(mode="ephemeral")
    gctx.variables.progress_bars = {"globally": False, "metric_calculations": False}
    batch_def = (gctx.data_sources.add_pandas("landing").add_dataframe_asset(source)
                 .add_batch_definition_whole_dataframe("rows"))
    step = batch_rows or _batch_rows(work)
    checked_total: dict[tuple[str, tuple[int, ...]], int] = {}
    failed: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
    results = []
    n_batches = 0
    all_items = tuple(range(len(items)))
    for j, (its, members) in enumerate(jobs.items()):
        positions = (np.arange(total) if its == all_items
                     else np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in its]))
        suites = []
        groups = _groups(members)
        for g, (cols, group_members) in enumerate(groups):
            name = f"caredata_{source}.job{j + 1:03d}.part{g + 1:02d}"
            suite = gx.ExpectationSuite(name=name, expectations=[_expectation(r, kw) for r, kw in group_members])
            suites.append((name, cols, gctx.suites.add(suite)))
        for rule, _ in members:
            checked_total[(rule.id, its)] = 0
            failed[(rule.id, its)] = []
        for b in range(0, max(len(positions), 1), step):
            pos = positions[b:b + step]
            if len(pos) == 0:
                continue
            n_batches += 1
            # A run of consecutive rows is sliced (no copy), others taken.
            contiguous = int(pos[-1]) - int(pos[0]) + 1 == len(pos)
            for name, cols, suite in suites:
                part = work[cols]
                part = part.iloc[int(pos[0]):int(pos[-1]) + 1] if contiguous else part.iloc[pos]
                part = part.set_axis(pd.Index(pos), axis=0)
                res = _run_suite(batch_def, suite, part)
                for rid, n_checked, idx in _rule_results(res, part, f"{source} batch"):
                    checked_total[(rid, its)] += n_checked
                    failed[(rid, its)].append(idx)
                results.append((name, n_batches - 1, res))

    # Per rule variant: failing rows, and rows checked per file (a mask GX agrees with).
    fail_pos: dict[str, np.ndarray] = {}
    checked_per_item: dict[str, np.ndarray] = {}
    done_keys: set = set()
    for its, members in jobs.items():
        for rule, kw in members:
            key = (rule.id, its)
            if key in done_keys:
                continue
            done_keys.add(key)
            pos = np.unique(np.concatenate(failed[key])) if failed[key] else np.zeros(0, np.int64)
            prev = fail_pos.get(rule.id)
            fail_pos[rule.id] = pos if prev is None else np.union1d(prev, pos)
            in_job = np.zeros(total, dtype=bool)
            for i in its:
                in_job[offsets[i]:offsets[i + 1]] = True
            counts = None
            if key in merged:
                counts = np.bincount(item_of[merged[key]], minlength=len(items))
            for mask in ([] if counts is not None else _checked_candidates(rule, kw, work)):
                m = mask & in_job
                if int(m.sum()) == checked_total[key]:
                    counts = np.bincount(item_of[m], minlength=len(items))
                    break
            if counts is None:  # cannot split GX's count per file: share it by size
                sh = np.zeros(len(items), dtype=np.float64)
                sh[list(its)] = sizes[list(its)]
                counts = np.floor(checked_total[key] * sh / max(sh.sum(), 1) + 0.5).astype(np.int64)
            prev = checked_per_item.get(rule.id)
            checked_per_item[rule.id] = counts if prev is None else prev + counts

    seconds = time.perf_counter() - started
    # Data Docs show the suite runs that failed on some row (when every one passed, the
    # first), so the site stays small and quick to build for 6,500 files.
    shown = [r for r in results if not r[2].success] or results[:1]
    docs = (_build_docs(gctx, shown, f"{source}-{items[0].get('period') or ''}-{len(items)}-files", data_docs_dir)
            if data_docs_dir else None)
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
        rejected, rule_ids, messages, rule_counts, field_scores = _assemble(
            mod, env, w, active, item_pos, {r.id: checked_per_item[r.id][i] for r, _ in active}, lines[i])
        stats = {"rows": n, "batch_rows": total, "files": len(items), "batches": n_batches,
                 "rules": len(active), "seconds": seconds * n / max(total, 1), "batch_seconds": seconds}
        outs.append(ValidationOutcome(rejected, rule_ids, messages, rule_counts, field_scores, docs, stats))
    log.info("validated %d %s file(s) together: %d rows, %d job(s), %d batch(es), %.1fs",
             len(items), source, total, len(jobs), n_batches, seconds)
    return outs
