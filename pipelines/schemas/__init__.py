"""Datasets declared once, as code.

Every table the pipeline reads or writes is a :class:`Dataset`: a name, a zone, a grain,
and :class:`Column` declarations carrying a type, a one-line description and constraints.
From one declaration we derive

* the Arrow/Parquet schema, with each column's description in the field metadata
  (:meth:`Dataset.arrow_schema`),
* the data dictionary (:func:`pipelines.dictionary.render_markdown`),
* the type and code-set expectations used when validating (``expectations/``),
* the disclosure-control columns (``<column>_suppressed``) of public datasets.

Modelled on ehrQL's table declarations: a column is never written without saying what
it means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

import pyarrow as pa

Zone = Literal["public", "restricted", "internal"]
# How disclosure control treats a column of a public dataset:
#   "count"  a count of patients or their events: 1..7 is blanked and <col>_suppressed set
#   "rate"   a rate or mean: blanked when its denominator column is under 8
#   None     not subject to small-number suppression (codes, organisation counts, ...)
Suppress = Literal["count", "rate"] | None

SCHEMA_VERSION = "1.0.0"


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    unit: str | None = None
    nullable: bool = True
    codes: tuple[str, ...] | None = None  # the allowed values, for code columns
    suppress: Suppress = None
    denominator: str | None = None  # for suppress="rate": the count column it is computed from

    def arrow_field(self) -> pa.Field:
        meta = {b"description": self.description.encode()}
        if self.unit:
            meta[b"unit"] = self.unit.encode()
        return pa.field(self.name, self.type, nullable=self.nullable, metadata=meta)


@dataclass(frozen=True)
class Dataset:
    name: str
    zone: Zone
    grain: str  # "one row per ..."
    description: str
    columns: tuple[Column, ...]
    # Hive partition column written in the path (not inside the files); None = unpartitioned
    partition_by: str | None = "period"
    schema_version: str = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)

    # -- derived views -------------------------------------------------------------
    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def published_columns(self) -> list[Column]:
        """Columns as published: each suppressible count gets a ``<name>_suppressed``
        flag right after it, as outputs.md asks."""
        out: list[Column] = []
        for c in self.columns:
            out.append(c)
            if c.suppress == "count":
                out.append(
                    Column(
                        f"{c.name}_suppressed",
                        pa.bool_(),
                        f"True where {c.name} is blanked by disclosure control (1 to 7).",
                        nullable=False,
                    )
                )
        return out

    def arrow_schema(self, *, include_partition: bool = False, staged: bool = False) -> pa.Schema:
        """The Parquet schema of the files. The partition column lives in the path, so it
        is left out unless ``include_partition``. A public dataset is *staged* (computed,
        not yet disclosure-controlled) without its ``*_suppressed`` flags, and *published*
        with them."""
        published = self.zone == "public" and not staged
        cols = self.published_columns() if published else list(self.columns)
        fields = [
            c.arrow_field()
            for c in cols
            if include_partition or c.name != self.partition_by
        ]
        return pa.schema(
            fields,
            metadata={
                b"dataset": self.name.encode(),
                b"description": self.description.encode(),
                b"grain": self.grain.encode(),
                b"schema_version": self.schema_version.encode(),
            },
        )

    def suppression_flags(self) -> list[str]:
        return [f"{c.name}_suppressed" for c in self.columns if c.suppress == "count"]

    def conform(self, table: pa.Table, *, include_partition: bool = True, staged: bool | None = None) -> pa.Table:
        """Select and cast ``table`` to this declaration (column order, exact types,
        descriptions). Missing declared columns are an error, not silently added.
        ``staged=None`` decides from the table: a public table without its
        ``*_suppressed`` flags is staged."""
        if staged is None:
            flags = self.suppression_flags()
            staged = bool(flags) and not all(f in table.column_names for f in flags)
        schema = self.arrow_schema(include_partition=include_partition, staged=staged)
        missing = [n for n in schema.names if n not in table.column_names]
        if missing:
            raise ValueError(f"dataset {self.name}: missing columns {missing}")
        arrays = [table.column(n).cast(schema.field(n).type) for n in schema.names]
        return pa.Table.from_arrays(arrays, schema=schema)


# Registry of every declared dataset, filled by the modules below.
REGISTRY: dict[str, Dataset] = {}


def register(ds: Dataset) -> Dataset:
    if ds.name in REGISTRY:
        raise ValueError(f"dataset {ds.name} declared twice")
    REGISTRY[ds.name] = ds
    return ds


def datasets(zone: Zone | None = None) -> list[Dataset]:
    _load_all()
    return [d for d in REGISTRY.values() if zone is None or d.zone == zone]


def get(name: str) -> Dataset:
    _load_all()
    return REGISTRY[name]


def _load_all() -> None:
    # Import for the side effect of registering. Each module declares one area.
    from pipelines.schemas import outputs  # noqa: F401
    from pipelines.schemas import warehouse  # noqa: F401


def cols(*columns: Column) -> tuple[Column, ...]:
    names = [c.name for c in columns]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ValueError(f"duplicate columns {dupes}")
    return tuple(columns)


# Short constructors keep declarations readable.
def s(name: str, description: str, **kw) -> Column:
    return Column(name, pa.string(), description, **kw)


def d(name: str, description: str, **kw) -> Column:
    return Column(name, pa.date32(), description, **kw)


def i(name: str, description: str, **kw) -> Column:
    return Column(name, pa.int64(), description, **kw)


def f(name: str, description: str, **kw) -> Column:
    return Column(name, pa.float64(), description, **kw)


def b(name: str, description: str, **kw) -> Column:
    return Column(name, pa.bool_(), description, **kw)


def ts(name: str, description: str, **kw) -> Column:
    return Column(name, pa.timestamp("ms", tz="UTC"), description, **kw)


def strings(name: str, description: str, **kw) -> Column:
    return Column(name, pa.list_(pa.string()), description, **kw)


def dates(name: str, description: str, **kw) -> Column:
    return Column(name, pa.list_(pa.date32()), description, **kw)


PERIOD = s("period", "Reporting month, YYYY-MM (from the partition path).", nullable=False)


def all_columns(items: Iterable[Dataset]) -> dict[str, list[str]]:
    return {d.name: d.column_names for d in items}
