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

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Literal

import pyarrow as pa
import pyarrow.compute as pc

# "feedback": written for one submitter, under <publish root>/feedback/ (pipelines/feedback.py),
# never in the public or restricted zones' dataset lists.
Zone = Literal["public", "restricted", "internal", "feedback"]
# How disclosure control treats a column of a public dataset:
#   "count"  a count of patients or their events: 1..7 is blanked and <col>_suppressed set
#   "rate"   a rate or mean: blanked when its denominator column is under 8
#   None     not subject to small-number suppression (codes, organisation counts, ...)
Suppress = Literal["count", "rate"] | None

SCHEMA_VERSION = "1.0.0"


@dataclass(frozen=True)
class Format:
    """The declared format of a string column: what every non-empty value must be.

    ``pattern`` is matched against the whole value (``re.fullmatch``, ASCII classes
    only: a full-width or Arabic-Indic digit is not ``[0-9]``). ``opaque`` names regex
    groups of the pattern holding text the pipeline made itself (a hash): the identifier
    scan reads the value with those groups blanked, since a digest's digits are no
    patient's and would otherwise block a publication at random.
    ``description`` is what the data dictionary shows."""

    name: str
    pattern: str
    description: str

    @property
    def regex(self) -> "re.Pattern[str]":
        return _compiled(self.pattern)

    def matches(self, value: str) -> bool:
        return self.regex.fullmatch(value) is not None

    def scan_text(self, value: str) -> str:
        """``value`` with its opaque groups blanked (unchanged when it does not match)."""
        m = self.regex.fullmatch(value)
        if m is None or not self.regex.groupindex:
            return value
        out = value
        for name in self.regex.groupindex:
            if name.startswith("opaque") and m.group(name) is not None:
                a, b = m.span(name)
                out = out[:a] + "#" * (b - a) + out[b:]
        return out


@lru_cache(maxsize=None)
def _compiled(pattern: str) -> "re.Pattern[str]":
    return re.compile(pattern, re.ASCII)


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
    # For suppress="rate": the count it divides, when that count is itself suppressible.
    # The rate is blanked wherever that count is (a published rate times its published
    # denominator would give the blanked count back).
    numerator: str | None = None
    # The declared format of a string column (schemas.outputs.FORMATS): every public
    # string column has codes or a format, checked at publication.
    format: Format | None = None

    def conforms(self, value: str) -> bool:
        """True when ``value`` is one of ``codes`` or matches ``format`` (a column with
        neither accepts anything: only restricted and internal columns may be so)."""
        if self.codes is not None and value in self.codes:
            return True
        if self.format is not None:
            return self.format.matches(value)
        return self.codes is None

    @property
    def declared_format(self) -> str | None:
        """In words, for the data dictionary."""
        parts = []
        if self.codes is not None:
            parts.append("one of " + ", ".join(f"`{c}`" for c in self.codes))
        if self.format is not None:
            parts.append(self.format.description)
        return "; or ".join(parts) if parts else None

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
    # The columns that identify a row within a partition (the grain, "one row per", less
    # the partition column): what publishing compares old and new rows by (revisions).
    key: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [k for k in self.key if k not in {c.name for c in self.columns}]
        if unknown or (self.partition_by is not None and self.partition_by in self.key):
            raise ValueError(f"dataset {self.name}: key {self.key} names columns it does not "
                             "declare, or its partition column")

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

    def check(self, table: pa.Table, *, include_partition: bool = True) -> pa.Table:
        """:meth:`conform`, then every declared constraint checked: a column declared not
        ``nullable`` has no null, and a column with ``codes`` holds only those codes (or
        values of its ``format``, where it has one as well; a list column: each element).
        Raises :class:`ConstraintError` naming the dataset, the column, the rule and how
        many rows break it, never a value. The working tables a relational plan writes
        (``current_sus_episodes``, ``linked_episodes_working``, ``spells``) go through it,
        so an engine whose plan breaks a declaration stops there."""
        out = self.conform(table, include_partition=include_partition)
        for c in self.columns:
            if c.name not in out.column_names:
                continue
            col = out.column(c.name)
            if not c.nullable and col.null_count:
                raise ConstraintError(f"dataset {self.name}, column {c.name}: {col.null_count} rows break "
                                      "rule 'not nullable' (empty where the declaration says never empty)")
            if c.codes is None and c.format is None:
                continue
            values = pc.list_flatten(col) if pa.types.is_list(col.type) else col
            values = pc.drop_null(values.cast(pa.string()))
            ok = pc.is_in(values, value_set=pa.array(list(c.codes or ()), pa.string()))
            if c.format is not None:
                ok = pc.or_(ok, pc.match_substring_regex(values, f"^(?:{c.format.pattern})$"))
            bad = len(values) - int(pc.sum(ok).as_py() or 0)
            if bad:
                rule = " or ".join(([f"one of the {len(c.codes)} declared codes"] if c.codes is not None else [])
                                   + ([f"format {c.format.name}"] if c.format is not None else []))
                raise ConstraintError(f"dataset {self.name}, column {c.name}: {bad} values break rule "
                                      f"'codes' (not {rule})")
        return out


class ConstraintError(ValueError):
    """A table broke its declaration (:meth:`Dataset.check`): the message names the
    dataset, the column and the rule, never a value."""


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
    from pipelines.schemas import (
        feedback,  # noqa: F401
        outputs,  # noqa: F401
        warehouse,  # noqa: F401
    )


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


# --------------------------------------------------------------------------- formats
# Declared once; the public datasets (schemas.outputs) and the restricted ones use them.
F_PERIOD = Format("period", r"[0-9]{4}-(?:0[1-9]|1[0-2])", "a month written YYYY-MM")
F_PRACTICE = Format("practice", r"[A-Z][0-9]{5}", "GP practice code: a letter and 5 digits (A81001)")
F_PROVIDER = Format("provider", r"[A-Z0-9]{3}", "provider code: 3 letters or digits (RGT)")
F_SITE = Format("site", r"[A-Z0-9]{5}", "site code: 5 letters or digits (RGT01)")
F_COMMISSIONER = Format("commissioner", r"[A-Z0-9]{3}", "CCG/ICB code: 3 letters or digits (00K)")
F_WARD = Format("ward", r"[A-Z0-9]{1,8}", "ward code: 1 to 8 letters or digits")
F_CONSULTANT = Format("consultant", r"C[0-9]{7}", "consultant code: C and a 7-digit GMC number")
F_SPECIALTY_CODE = Format("specialty_code", r"[0-9]{3}", "main specialty or treatment function code: 3 digits")
F_ICD10 = Format("icd10", r"[A-Z][0-9]{2}[0-9X]?", "ICD-10 code without the dot (I219, R69X)")
F_OPCS4 = Format("opcs4", r"[A-Z][0-9]{3}", "OPCS-4 code without the dot (K401)")
# Restricted record-level codes (inputs.md code sets; a malformed optional one is blanked
# at ingest under a warn rule, expectations.rules.BLANK_ON_FAIL).
F_EPIORDER = Format("epiorder", r"[0-9]{2}", "episode order: 2 digits (01, 02, ...; 98 not applicable, 99 not known)")
F_LSOA = Format("lsoa", r"E01[0-9]{6}", "2011 LSOA code: E01 and 6 digits")
# A keyed pseudonym made by pipelines.pseudo (person_id, susrecid, spell_id): its hex is a
# digest, opaque to the identifier scan.
F_PSEUDONYM = Format("pseudonym", r"(?P<opaque>[0-9a-f]{32})",
                     "keyed pseudonym: 32 lower-case hex digits (pipelines.pseudo)")
F_IDENTIFIER = Format("identifier", r"[a-z][a-z0-9_]{0,63}",
                      "a lower-case identifier of the pipeline or its configuration (letters, digits, _)")
F_RULE_ID = Format("rule_id", r"[A-Z][A-Z0-9_]{0,63}", "a rule id of expectations/ (upper case, digits, _)")
F_FIELD = Format("field", r"[A-Z][A-Z0-9_]{0,63}", "a landing-file column name declared in inputs.md")
F_SHA256 = Format("sha256", r"(?P<opaque>[0-9a-f]{64})|not-opened-(?:symbolic-link|special-file|unsafe-path|read-error)",
                  "64 lower-case hex digits; for a file never opened (a link, a special file, a path "
                  "outside the root, a read error) not-opened-<why>")
# Text the pipeline writes itself (reasons, configured measures): printable ASCII, and no
# leading = + - @ (a spreadsheet formula). Supplier text never reaches it: file names are
# replaced by their published form and header names are withheld (ingest.submissions_dataset).
F_PROSE = Format("prose", r"(?![=+\-@])[ -~]{1,2000}",
                 "plain words written by the pipeline or its configuration (printable ASCII, "
                 "no leading = + - @)")

PERIOD = s("period", "Reporting month, YYYY-MM (from the partition path).", nullable=False, format=F_PERIOD)


def all_columns(items: Iterable[Dataset]) -> dict[str, list[str]]:
    return {d.name: d.column_names for d in items}
