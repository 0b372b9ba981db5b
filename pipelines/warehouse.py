"""Reading and writing the internal warehouse (layout in :mod:`pipelines.schemas.warehouse`).

Every internal table is a :class:`~pipelines.schemas.Dataset` with ``zone="internal"``;
files go under ``<area>/<table>/period=YYYY-MM/<part>.parquet`` (or ``<area>/<table>.parquet``
for unpartitioned tables). Parts are whole files written atomically, so a stage that
rewrites a part leaves readers either the old or the new one.
"""

from __future__ import annotations

import io
import weakref

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import schemas
from pipelines.storage import Store

AREAS = {
    "ledger": "ledger",
    "gp_extracts": "ledger",
    "gp_type2": "ledger",
    "submission_columns": "ledger",
    "ref_practices": "reference",
    "ref_providers": "reference",
    "ref_sites": "reference",
    "gp_patients": "silver",
    "sus_episodes": "silver",
    "fft_responses": "silver",
    "quarantine": "quarantine",
    "dq_rules": "dq",
    "dq_fields": "dq",
}


def added_columns(ds, table: pa.Table) -> pa.Table:
    """``table`` (a part written before some of its dataset's columns were declared) with
    those columns, empty: the ones the declaration lists in ``extra["added_columns"]``
    (nullable columns added to a table after parts of it were written)."""
    for name in ds.extra.get("added_columns", ()):
        if name not in table.column_names:
            table = table.append_column(ds.column(name).arrow_field(), pa.nulls(table.num_rows, ds.column(name).type))
    return table


class Warehouse:
    def __init__(self, store: Store):
        self.store = store

    def _dir(self, table: str) -> str:
        area = AREAS.get(table)
        if area is None:
            ds = schemas.REGISTRY.get(table)
            area = "staged" if ds is not None and ds.zone != "internal" else "tables"
        return f"{area}/{table}"

    def path(self, table: str, period: str | None = None, part: str = "part-00000") -> str:
        ds = schemas.get(table) if table in schemas.REGISTRY or _known(table) else None
        if ds is not None and ds.partition_by is None:
            return f"{self._dir(table)}.parquet"
        if period is None:
            raise ValueError(f"{table} is partitioned by period: give one")
        return f"{self._dir(table)}/period={period}/{part}.parquet"

    def write(self, table: str, data: pa.Table, period: str | None = None, part: str = "part-00000") -> str:
        """Write one part, conformed to the declared schema (partition column dropped)."""
        ds = schemas.get(table)
        if ds.partition_by and ds.partition_by in data.column_names:
            data = data.drop_columns([ds.partition_by])
        data = ds.conform(data, include_partition=False)
        path = self.path(table, period, part)
        self.store.write_parquet(path, data)
        return path

    def delete_part(self, table: str, period: str, part: str) -> None:
        self.store.delete(self.path(table, period, part))

    def periods(self, table: str) -> list[str]:
        prefix = self._dir(table) + "/"
        found = set()
        for f in self.store.list(self._dir(table)):
            rest = f.path[len(prefix):]
            if rest.startswith("period="):
                found.add(rest.split("/", 1)[0][len("period="):])
        return sorted(found)

    def parts(self, table: str, periods: list[str] | None = None) -> list[str]:
        prefix = self._dir(table) + "/"
        out = []
        for f in self.store.list(self._dir(table)):
            if not f.path.endswith(".parquet"):
                continue
            rest = f.path[len(prefix):]
            period = rest.split("/", 1)[0][len("period="):] if rest.startswith("period=") else None
            if periods is None or period in periods:
                out.append(f.path)
        return out

    def read(self, table: str, periods: list[str] | None = None, parts: list[str] | None = None) -> pa.Table:
        """Read a table (all periods, some periods, or named parts), with ``period`` as a
        column for partitioned tables."""
        ds = schemas.get(table)
        if ds.partition_by is None:
            path = self.path(table)
            if not self.store.exists(path):
                return ds.arrow_schema().empty_table()
            return self.store.read_parquet(path)
        paths = parts if parts is not None else self.parts(table, periods)
        staged = ds.zone == "public"  # public datasets are staged here, unsuppressed
        full = ds.arrow_schema(include_partition=True, staged=staged)
        tables = []
        for p in paths:
            t = added_columns(ds, self.store.read_parquet(p))
            t = ds.conform(t, include_partition=False, staged=staged)
            period = p.split("period=", 1)[1].split("/", 1)[0]
            t = t.append_column(full.field("period"), pa.array([period] * t.num_rows, pa.string()))
            tables.append(t)
        if not tables:
            return full.empty_table()
        return pa.concat_tables(tables).select(full.names)

    def dataset(self, table: str, periods: list[str] | None = None, parts: list[str] | None = None,
                columns: list[str] | None = None, submission_ids: list[str] | None = None):
        """A lazy ``pyarrow.dataset.Dataset`` over a partitioned table (all periods, some
        periods, or named parts, in the order given): what :meth:`read` returns, without
        reading anything until it is scanned (local or S3). It has the declared columns
        (or just ``columns``) with their declared types, ``period`` from the part's
        folder; a declared column missing from an older part reads as null. For tables too
        big to hold (the GP extracts): a scan reads only the columns and rows it asks for.
        ``submission_ids``: only the rows of those submissions (a part may hold the rows of
        many: ``columns`` must then include ``submission_id``); an engine given the files
        themselves applies the same filter (:func:`selected_submissions`)."""
        ds = schemas.get(table)
        if ds.partition_by is None:
            raise ValueError(f"{table} is not partitioned: use read()")
        paths = parts if parts is not None else self.parts(table, periods)
        staged = ds.zone == "public"
        full = ds.arrow_schema(include_partition=True, staged=staged)
        names = full.names if columns is None else list(columns)
        unknown = [c for c in names if c not in full.names]
        if unknown:
            raise ValueError(f"{table}: no declared columns {unknown}")
        schema = pa.schema([full.field(c) for c in names])
        partition = tuple(c for c in names if c == ds.partition_by)
        data = self.store.parquet_dataset(list(paths), schema, partition_base=self._dir(table),
                                          partition_columns=partition)
        if submission_ids is None:
            return data
        if "submission_id" not in names:
            raise ValueError(f"{table}: rows chosen by submission_id need that column")
        ids = tuple(sorted(set(submission_ids)))
        data = data.filter(pc.field("submission_id").isin(pa.array(ids, pa.string())))
        _SELECTED[data] = ids
        return data

    # -- undeclared intermediates (e.g. linkage working tables) ------------------------
    def write_raw(self, name: str, data: pa.Table, period: str, part: str = "part-00000") -> str:
        if "period" in data.column_names:
            data = data.drop_columns(["period"])
        path = f"work/{name}/period={period}/{part}.parquet"
        self.store.write_parquet(path, data)
        return path

    def raw_parts(self, name: str) -> list[str]:
        """The paths of a work table's parts, every period: one listing of the store, to
        pass to :meth:`read_raw` when a stage reads the same table period by period."""
        return [f.path for f in self.store.list(f"work/{name}")]

    def read_raw(self, name: str, periods: list[str] | None = None,
                 columns: list[str] | tuple[str, ...] | None = None,
                 parts: list[str] | None = None) -> pa.Table | None:
        """A work table's parts (of ``periods``), with a ``period`` column; ``columns``:
        only those of them a part has (and ``period``); ``parts``: a listing taken before
        by :meth:`raw_parts` (else the store is listed on this call)."""
        tables = []
        for path in self.raw_parts(name) if parts is None else parts:
            period = path.split("period=", 1)[1].split("/", 1)[0]
            if periods is not None and period not in periods:
                continue
            if columns is None:
                t = self.store.read_parquet(path)
            else:
                part = pq.ParquetFile(io.BytesIO(self.store.read_bytes(path)))
                t = part.read(columns=[c for c in columns if c in part.schema_arrow.names])
            tables.append(t.append_column("period", pa.array([period] * t.num_rows, pa.string())))
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default")

    def exists(self, table: str, period: str | None = None, part: str = "part-00000") -> bool:
        return self.store.exists(self.path(table, period, part))


_SELECTED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def selected_submissions(data) -> tuple[str, ...] | None:
    """The submission ids a dataset of :meth:`Warehouse.dataset` keeps rows of (None: every
    row of its files), for an engine that reads its files itself
    (:class:`pipelines.engine.Parquet`'s ``where``)."""
    try:
        return _SELECTED.get(data)
    except TypeError:  # not weakly referenceable: not one of ours
        return None


def _known(table: str) -> bool:
    schemas._load_all()
    return table in schemas.REGISTRY
