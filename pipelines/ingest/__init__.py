"""Landing zone to warehouse: the ledger, reference data, and each feed's submissions
validated into silver (kept rows, typed) and quarantine (rejected rows, with every rule
they broke). See ``docs/ingest.md``.

One job per module:

* :mod:`~pipelines.ingest.ledger`: events, file statuses, the public ledger, releases;
* :mod:`~pipelines.ingest.silver`: typed silver rows per feed;
* :mod:`~pipelines.ingest.quarantine`: quarantine and data-quality rows;
* :mod:`~pipelines.ingest.intake`: :func:`ingest` of a feed and period, :class:`IngestReport`;
* :mod:`~pipelines.ingest.hes`: :func:`ingest_hes`;
* :mod:`~pipelines.ingest.reference`: :func:`load_reference`, :func:`revalidate`;
* :mod:`~pipelines.ingest.scan`: :func:`scan_landing`, :func:`pending_periods`, :func:`periods_with_data`.

Public API (no Dagster here; the assets call one function per source and period)::

    scan_landing(landing, warehouse, settings=None) -> dict
    load_reference(landing, warehouse, settings=None, *, validator=None, engine=None) -> dict
    ingest(source, period, landing, warehouse, settings, *, today=None, data_docs_dir=None,
           validator=None, engine=None, batch_rows=None, batch_cells=None) -> IngestReport
    ingest_hes(landing, warehouse, settings, *, today=None, data_docs_dir=None,
               validator=None, engine=None) -> IngestReport
    read_ledger(warehouse) -> pa.Table                 # conformed to schemas.get("ledger")
    submissions_dataset(warehouse, periods=None) -> pa.Table  # conformed to "submissions"
    periods_with_data(warehouse, landing=None) -> list[str]
    pending_periods(landing, warehouse) -> dict[str, str]

``validator``: a :class:`Validator` (``pipelines.validation.validate_many``'s contract; None
is that function); :func:`one_by_one` makes one from a function validating one file.
``engine``: a :class:`pipelines.engine.Engine`, passed on to a validator that accepts it.
"""

from pipelines.ingest.hes import ingest_hes
from pipelines.ingest.intake import (
    GP_HELD_RULE,
    GP_HOLD_UNTIL,
    IngestReport,
    Validator,
    ingest,
    one_by_one,
)
from pipelines.ingest.ledger import (
    LEDGER_PARTS,
    public_file_name,
    public_reason,
    read_ledger,
    release_held,
    released_submissions,
    submissions_dataset,
)
from pipelines.ingest.reference import load_reference, revalidate
from pipelines.ingest.scan import pending_periods, periods_with_data, scan_landing
from pipelines.landing import ParsedName, parse_name

__all__ = [
    "GP_HELD_RULE", "GP_HOLD_UNTIL", "IngestReport", "LEDGER_PARTS", "ParsedName", "Validator", "ingest",
    "ingest_hes", "load_reference", "one_by_one", "parse_name", "pending_periods", "periods_with_data",
    "public_file_name", "public_reason", "read_ledger", "release_held", "released_submissions", "revalidate",
    "scan_landing", "submissions_dataset",
]
