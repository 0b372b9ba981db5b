"""Row validation of landing files (inputs.md "Bad rows", methods.md "Data quality").

:func:`validate_many` checks many files of a feed at once (ingest hands it a period's new
GP extracts about 2 million rows at a time) against the feed's expectation suite
(``expectations/<feed>.py``) and returns, per file, per row whether it is rejected and
every rule it broke, per rule its counts, and per scored field its DQMI item-score
inputs: each file's outcome identical to what it gets alone (:func:`validate` is
:func:`validate_many` of one file).

One job per module: :mod:`~pipelines.validation.workframe` (the rows the rules read),
:mod:`~pipelines.validation.plan` (the rules active per file, the jobs),
:mod:`~pipelines.validation.compiled` (each rule as SQL, run by the engine on every
row), :mod:`~pipelines.validation.gx` (Great Expectations on a sample beside it, or on
every row; Data Docs), :mod:`~pipelines.validation.gx_spark` (on the Spark engine, GX's
Spark execution engine on every row, its counts the engine's),
:mod:`~pipelines.validation.assemble` (the outcomes).

Two modes (``mode=``, ``CAREDATA_VALIDATION_ENGINE``): ``compiled`` (the default) has the
engine (``engine=``, a :class:`pipelines.engine.Engine`; None: DuckDB in process) judge
every row with the rules as SQL, and GX validate a sample beside it in one ephemeral
context (the two must agree, or :class:`ValidationError`); ``gx`` has GX judge every
row, in batches of ``BATCH_ROWS`` rows.

Nothing here logs a value of a row: only rule ids, counts and line numbers.
"""

from __future__ import annotations

from pipelines.validation.assemble import ValidationOutcome
from pipelines.validation.gx import (
    BATCH_CELLS,
    BATCH_ROWS,
    CROSSCHECK_FAILING,
    CROSSCHECK_ROWS,
)
from pipelines.validation.gx import batch_rows as _batch_rows
from pipelines.validation.plan import (
    LINE,
    SUITES,
    ValidationContext,
    ValidationError,
    rules_for,
)
from pipelines.validation.run import MODE, MODES, build_docs, validate, validate_many
from pipelines.validation.workframe import work_frame as _work_frame

__all__ = [
    "BATCH_CELLS", "BATCH_ROWS", "CROSSCHECK_FAILING", "CROSSCHECK_ROWS", "LINE", "MODE", "MODES", "SUITES",
    "ValidationContext", "ValidationError", "ValidationOutcome", "_batch_rows", "_work_frame", "rules_for",
    "build_docs", "validate", "validate_many",
]
