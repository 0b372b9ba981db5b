"""Disclosure control of published datasets (outputs.md "Disclosure control on the public zone").

Plain functions over Arrow tables (no Dagster):

* :func:`apply_small_numbers` blanks small counts and rates from few records in a public
  dataset, setting each ``<count>_suppressed`` flag. The columns it acts on come from the
  declarations (``Column.suppress`` = ``"count"`` or ``"rate"`` with its ``denominator``),
  so a stage never lists them by hand.
* :func:`scan_for_identifiers` reads every value of every string (and list-of-string)
  column after Unicode NFKC normalisation, with digits of any script read as ASCII digits,
  for NHS numbers (Modulus 11 valid, in digit groups with any short separators; in the
  public reading also touching letters), UK postcodes and (public reading) dates of birth
  inside longer values; every 10-digit integer for a valid NHS number; and column names for
  dates of birth.
* :func:`check_public` and :func:`check_restricted` verify a table that is about to be
  published and return :class:`Violation` s: in the public zone every string must be one of
  its column's declared ``codes`` or match its declared ``format``
  (:class:`pipelines.schemas.Format`), and a string column without either is refused.
  :func:`pipelines.publish.publish_dataset` refuses a table with any violation; the release
  stage (:func:`pipelines.stages.release`) blocks that dataset and period only.

Findings and violations name the dataset, the column, the rule, a count of rows and their
positions (``rows``, for naming the submissions they came from): never a value, so they
can go in logs, exceptions and run metadata.

Rules, as implemented (thresholds from ``defaults.yaml`` ``disclosure``):

* A row is *national* when ``area_level`` or ``level`` is ``national`` or ``org_code`` or
  ``area_code`` is ``ENG``. National rows are never suppressed.
* Below national level a ``suppress="count"`` value from 1 to ``small_count_max`` (7)
  becomes empty with its flag True; 0 stays 0; empty stays empty (flag False).
* A ``suppress="rate"`` value becomes empty when its denominator count is under
  ``min_denominator`` (8) *or unknown* (empty): a rate whose number of records cannot be
  shown to be at least 8 is not published. A rate that declares its ``numerator`` count is
  also empty wherever that count is blanked (1 to 7, or its flag set): the published rate
  times the published denominator would give the blanked count back.
* FFT datasets carry their own ``suppressed`` flag (methods.md, NHS England's rules);
  :func:`check_public` verifies rule 1 (1 to 4 responses blanked below national level) and
  that a suppressed row shows no counts or percentages.
"""

from __future__ import annotations

import datetime as _dt
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import nhs_number
from pipelines.schemas import Dataset

__all__ = [
    "Finding",
    "Violation",
    "DisclosureError",
    "apply_small_numbers",
    "national_mask",
    "scan_for_identifiers",
    "check_public",
    "check_restricted",
    "describe",
    "round_counts",
    "ROUNDINGS",
]

SMALL_MAX = 7
MIN_DENOMINATOR = 8
FFT_SUPPRESS_MAX = 4
# disclosure.rounding: none, or nearest_5 (HES style: docs/methods-disclosure.md "Rounding").
ROUNDINGS = ("none", "nearest_5")
# The counts of an FFT dataset (its own suppressed flag, not <count>_suppressed).
FFT_COUNT_COLUMNS = ("responses", "extremely_likely", "likely", "neither", "unlikely",
                     "extremely_unlikely", "dont_know")

# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Finding:
    """An identifier-shaped content found by :func:`scan_for_identifiers` (never the value)."""

    dataset: str | None
    column: str
    kind: str  # "nhs_number" | "postcode" | "date_of_birth"
    count: int  # rows (values) concerned; for a date-of-birth column, its non-empty values
    rows: tuple = field(default=(), compare=False, repr=False)  # their positions (never values)

    def __str__(self) -> str:
        what = {
            "nhs_number": "value(s) containing a valid NHS number (Modulus 11)",
            "postcode": "value(s) containing a full UK postcode",
            "date_of_birth": "value(s) holding a date (of birth?) or in a date-of-birth column",
        }.get(self.kind, self.kind)
        return f"{self.dataset or '?'}.{self.column}: {self.count} {what}"


@dataclass(frozen=True)
class Violation:
    """A broken disclosure rule. ``message`` says why, in words, without any value."""

    dataset: str
    rule: str
    column: str | None
    count: int
    message: str
    rows: tuple = field(default=(), compare=False, repr=False)  # positions in the table checked

    def __str__(self) -> str:
        return self.message


class DisclosureError(RuntimeError):
    """A publication refused by disclosure control; ``violations`` says why."""

    def __init__(self, dataset: str, violations: list[Violation]):
        self.dataset = dataset
        self.violations = violations
        super().__init__(describe(dataset, violations))


def describe(dataset: str, violations: Iterable[Violation]) -> str:
    lines = [f"publication of {dataset} refused by disclosure control:"]
    lines += [f"- [{v.rule}] {v.message}" for v in violations]
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _t(settings: Any, section: str, name: str, default: Any) -> Any:
    """A threshold from a Settings object, a thresholds dict, or the default."""
    if settings is None:
        return default
    try:
        if hasattr(settings, "t"):
            value = settings.t(section, name)
        else:
            value = settings[section][name]
    except (KeyError, TypeError, ValueError, LookupError):
        return default
    return default if value is None else value


def national_mask(table: pa.Table) -> np.ndarray:
    """True for national rows: ``area_level``/``level`` is ``national`` or
    ``org_code``/``area_code`` is ``ENG``."""
    out = np.zeros(table.num_rows, dtype=bool)
    for col, value in (("area_level", "national"), ("level", "national"),
                       ("org_code", "ENG"), ("area_code", "ENG")):
        if col in table.column_names:
            arr = table.column(col)
            if pa.types.is_dictionary(arr.type):
                arr = arr.cast(arr.type.value_type)
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                hit = pc.fill_null(pc.equal(arr, value), False)
                out |= hit.to_numpy(zero_copy_only=False).astype(bool)
    return out


def _ints(arr: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Values as float64 (nan for null) and a validity mask."""
    arr = arr.cast(pa.float64())
    valid = pc.is_valid(arr).to_numpy(zero_copy_only=False).astype(bool)
    values = pc.fill_null(arr, np.nan).to_numpy(zero_copy_only=False).astype(float)
    return values, valid


def _flag(table: pa.Table, name: str) -> np.ndarray:
    if name not in table.column_names:
        return np.zeros(table.num_rows, dtype=bool)
    return pc.fill_null(table.column(name).cast(pa.bool_()), False).to_numpy(
        zero_copy_only=False).astype(bool)


def _published_schema(ds: Dataset, table: pa.Table) -> pa.Schema:
    include = ds.partition_by is not None and ds.partition_by in table.column_names
    return ds.arrow_schema(include_partition=include)


# --------------------------------------------------------------------------- suppression


def apply_small_numbers(
    ds: Dataset,
    table: pa.Table,
    *,
    small_max: int = SMALL_MAX,
    min_denominator: int = MIN_DENOMINATOR,
    national_col: str | None = None,
) -> pa.Table:
    """Blank small counts and rates from few records of a public dataset.

    Returns the table with the dataset's published columns (declared order and types,
    ``<count>_suppressed`` after each suppressible count; the partition column kept when
    present). Idempotent: applied twice gives the same table (a flag already True stays
    True). ``national_col`` names the column that marks national rows (boolean True, or text
    ``national``/``ENG``), in place of the usual ``area_level``/``level``/``org_code``/
    ``area_code`` test.
    Datasets with no suppressible column, and non-public datasets, pass through conformed.
    """
    schema = _published_schema(ds, table)
    if ds.zone != "public":
        return ds.conform(table, include_partition=ds.partition_by in table.column_names)
    if national_col is not None:
        col = table.column(national_col)
        if pa.types.is_boolean(col.type):
            national = _flag(table, national_col)
        else:  # a level or code column: 'national' or 'ENG' marks a national row
            text = col.cast(pa.string())
            national = pc.fill_null(pc.is_in(text, pa.array(["national", "ENG"])), False).to_numpy(
                zero_copy_only=False).astype(bool)
    else:
        national = national_mask(table)
    below = ~national

    columns: dict[str, pa.ChunkedArray | pa.Array] = {}
    # Rates first, from the denominators as given (before the counts are blanked).
    for c in ds.columns:
        if c.suppress == "rate" and c.name in table.column_names:
            rate = table.column(c.name)
            if c.denominator is None or c.denominator not in table.column_names:
                raise ValueError(
                    f"dataset {ds.name}: rate column {c.name} needs its denominator column "
                    f"{c.denominator!r} to apply disclosure control")
            den, den_valid = _ints(table.column(c.denominator))
            den_flag = _flag(table, f"{c.denominator}_suppressed")
            few = (~den_valid) | (den < min_denominator) | den_flag
            if c.numerator is not None and c.numerator in table.column_names:
                num, num_valid = _ints(table.column(c.numerator))
                few = few | (num_valid & (num >= 1) & (num <= small_max)) | _flag(table, f"{c.numerator}_suppressed")
            blank = few & below
            columns[c.name] = pc.if_else(pa.array(blank), pa.nulls(len(blank), rate.type),
                                         rate.combine_chunks() if isinstance(rate, pa.ChunkedArray) else rate)
    for c in ds.columns:
        if c.suppress == "count" and c.name in table.column_names:
            arr = table.column(c.name)
            values, valid = _ints(arr)
            small = valid & (values >= 1) & (values <= small_max) & below
            flag = small | _flag(table, f"{c.name}_suppressed")
            dense = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
            columns[c.name] = pc.if_else(pa.array(small), pa.nulls(len(small), arr.type), dense)
            columns[f"{c.name}_suppressed"] = pa.array(flag, pa.bool_())
    missing = [n for n in schema.names if n not in columns and n not in table.column_names]
    if missing:
        raise ValueError(f"dataset {ds.name}: missing columns {missing}")
    arrays = []
    for f in schema:
        arr = columns.get(f.name)
        if arr is None:
            arr = table.column(f.name)
        arrays.append(arr.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


# --------------------------------------------------------------------------- identifier scan
#
# Every value is read after Unicode NFKC normalisation, with every decimal digit of any
# script read as its ASCII digit (NFKC maps full-width digits, not Arabic-Indic ones), so a
# number written in other digits is still a number here, though it is never a valid code.
#
# NHS numbers: the digit groups of a value (maximal runs of digits) that follow one another
# with at most 3 separator characters (anything but a letter or digit: space, '-', '.',
# '/', ...) between them form a run; any consecutive groups of a run holding exactly 10
# digits that pass Modulus 11 are an NHS number ('999 058 7116', '999.058.7116',
# '9-9-9-0-5-8-7-1-1-6'). In the public zone the number may touch letters ('W9990587116',
# 'Smith9990587116'). Both zones use this (strict) reading: the restricted zone publishes
# record keys as keyed pseudonyms, whose hex the scan does not read (Format opaque groups).
# The lenient reading (strict=False: the number must stand apart from letters, and dates
# are not looked for) is kept for callers that scan supplier keys themselves. A digit group
# of more than 10 digits is a longer number, not an NHS number.
# Postcodes: a full UK postcode standing apart from letters and digits, any case, with or
# without the space.
# Dates of birth (strict reading): a real date written YYYY-MM-DD or DD-MM-YYYY, with '-',
# '/' or '.', anywhere in a value, not touching other digits.

_MAX_GAP = 3
_DIGIT_ANY = re.compile(r"\d")  # Python: every Unicode decimal digit
_GROUP_RE = re.compile(r"[0-9]+")
# Full UK postcodes (outward code, optional space, inward code), case-insensitive,
# following the Royal Mail letter rules (first letter not Q V X; second not I J Z; inward
# letters not C I K M O V), plus GIR 0AA.
_POSTCODE_BODY = (
    r"(?:GIR ?0AA|(?:[A-PR-UWYZ][0-9][0-9]?|[A-PR-UWYZ][A-HK-Y][0-9][0-9]?"
    r"|[A-PR-UWYZ][0-9][A-HJKPSTUW]|[A-PR-UWYZ][A-HK-Y][0-9][ABEHMNPRVWXY]) ?[0-9][ABD-HJLNP-UW-Z]{2})"
)
_POSTCODE_RE = re.compile(r"(?<![0-9A-Za-z])" + _POSTCODE_BODY + r"(?![0-9A-Za-z])", re.IGNORECASE)
_DATE_RE = re.compile(
    r"(?<![0-9])(?:(?P<y1>[0-9]{4})(?P<s1>[-/.])(?P<m1>[0-9]{1,2})(?P=s1)(?P<d1>[0-9]{1,2})"
    r"|(?P<d2>[0-9]{1,2})(?P<s2>[-/.])(?P<m2>[0-9]{1,2})(?P=s2)(?P<y2>[0-9]{4}))(?![0-9])"
)
_DOB_NAME_RE = re.compile(
    r"(^|[^a-z])(dob|dateofbirth|date_of_birth|birth_?date|birth_?dt|date_?birth|birthday)([^a-z]|$)",
    re.IGNORECASE,
)
KINDS = ("nhs_number", "postcode", "date_of_birth")


def normalise(text: str) -> str:
    """``text`` after NFKC, every decimal digit of any script as its ASCII digit."""
    text = unicodedata.normalize("NFKC", text)
    if text.isascii():
        return text
    return _DIGIT_ANY.sub(lambda m: str(unicodedata.decimal(m.group(0))), text)


def _is_alnum(ch: str) -> bool:
    return ch.isalnum()


def _contains_nhs_number(text: str, *, bounded: bool = False) -> bool:
    """The NHS number rule on one value (``bounded``: the restricted zone's reading, where
    the number must not touch a letter)."""
    t = normalise(text)
    groups = [m.span() for m in _GROUP_RE.finditer(t)]
    runs: list[list[tuple[int, int]]] = []
    for g in groups:
        if runs:
            gap = t[runs[-1][-1][1]:g[0]]
            if 1 <= len(gap) <= _MAX_GAP and not any(_is_alnum(c) for c in gap):
                runs[-1].append(g)
                continue
        runs.append([g])
    for run in runs:
        for i in range(len(run)):
            total = 0
            for j in range(i, len(run)):
                total += run[j][1] - run[j][0]
                if total > 10:
                    break
                if total == 10:
                    start, end = run[i][0], run[j][1]
                    if bounded and ((start > 0 and _is_alnum(t[start - 1]))
                                    or (end < len(t) and _is_alnum(t[end]))):
                        break
                    digits = "".join(t[a:b] for a, b in run[i:j + 1])
                    if nhs_number.is_valid(digits):
                        return True
                    break
    return False


def _contains_postcode(text: str) -> bool:
    """The postcode rule on one value."""
    return _POSTCODE_RE.search(normalise(text)) is not None


def _contains_date(text: str) -> bool:
    """The date-of-birth rule on one value: a real calendar date from 1850 to 2199."""
    for m in _DATE_RE.finditer(normalise(text)):
        y, mo, d = (m.group("y1"), m.group("m1"), m.group("d1")) if m.group("y1") else (
            m.group("y2"), m.group("m2"), m.group("d2"))
        if not 1850 <= int(y) <= 2199:
            continue
        try:
            _dt.date(int(y), int(mo), int(d))
        except ValueError:
            continue
        return True
    return False


def identifiers_in(text: str, *, strict: bool = True) -> set[str]:
    """The kinds of identifier in one value (``strict``: the public zone's rules)."""
    out = set()
    if _contains_nhs_number(text, bounded=not strict):
        out.add("nhs_number")
    if _contains_postcode(text):
        out.add("postcode")
    if strict and _contains_date(text):
        out.add("date_of_birth")
    return out


# --- the same rules over whole Arrow arrays: RE2 (in pyarrow, no Python per value) picks
# the ASCII values that could hold an identifier (a superset); those and every non-ASCII
# value are decided by the Python rules above, each distinct value once.
_NOT_ALNUM = "[^0-9A-Za-z]"
_TEN_DIGITS_RE2 = f"[0-9](?:{_NOT_ALNUM}{{0,{_MAX_GAP}}}[0-9]){{9}}"  # ten digits, short gaps
_EDGE_L, _EDGE_R = f"(?:^|{_NOT_ALNUM})", f"(?:{_NOT_ALNUM}|$)"
_POSTCODE_RE2 = f"{_EDGE_L}(?i:{_POSTCODE_BODY}){_EDGE_R}"
_CANDIDATE_RE2 = {
    # public: a number may touch letters; dates count
    True: f"{_TEN_DIGITS_RE2}|[0-9]{{1,4}}[-/.][0-9]{{1,2}}[-/.][0-9]{{1,4}}|{_POSTCODE_RE2}",
    # restricted: a number stands apart from letters and digits (record keys are not looked at)
    False: f"{_EDGE_L}{_TEN_DIGITS_RE2}{_EDGE_R}|{_POSTCODE_RE2}",
}
_MIN_BYTES = 5  # the shortest value that can hold one (a postcode without its space)


def _candidates(values: pa.Array, strict: bool = True) -> np.ndarray:
    """Values that may hold an identifier: every non-ASCII value, and the ASCII values RE2
    finds a candidate shape in (a superset of what the Python rules find in them)."""
    out = np.zeros(len(values), dtype=bool)
    if len(values) == 0:
        return out
    longer = pc.fill_null(pc.greater_equal(pc.binary_length(values), _MIN_BYTES), False)
    ascii_ = pc.fill_null(pc.string_is_ascii(values), True)
    hit = pc.fill_null(pc.match_substring_regex(values, _CANDIDATE_RE2[strict]), False)
    cand = pc.and_(longer, pc.or_(pc.invert(ascii_), hit))
    return cand.to_numpy(zero_copy_only=False).astype(bool)


def _identifier_hits(values: pa.Array, *, strict: bool = True,
                     prepare=None) -> dict[str, np.ndarray]:
    """Per value and kind: :func:`identifiers_in` (``prepare`` maps a value to the text to
    scan, e.g. a declared format's opaque parts blanked)."""
    out = {k: np.zeros(len(values), dtype=bool) for k in KINDS}
    cand = _candidates(values, strict)
    if not cand.any():
        return out
    idx = np.nonzero(cand)[0]
    texts = values.take(pa.array(idx)).to_pylist()
    verdict: dict[str, set[str]] = {}
    for i, text in zip(idx, texts):
        kinds = verdict.get(text)
        if kinds is None:
            kinds = verdict[text] = identifiers_in(prepare(text) if prepare else text, strict=strict)
        for k in kinds:
            out[k][i] = True
    return out


def _string_values(arr: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray] | None:
    """Flatten a string-ish column to (strings, row index of each) or None if not text."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_large_string(t):
        arr = arr.cast(pa.string())
        t = arr.type
    if pa.types.is_string(t):
        return arr, np.arange(len(arr))
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
        or pa.types.is_dictionary(t.value_type)
    ):
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        values = pc.list_flatten(arr)
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        if pa.types.is_large_string(values.type):
            values = values.cast(pa.string())
        return values, parents
    return None


def _rows_matching(rows: np.ndarray, hit: np.ndarray) -> np.ndarray:
    """The distinct rows (``rows``: the row of each value) with a hit."""
    if not hit.any():
        return np.zeros(0, dtype=np.int64)
    return np.unique(rows[hit])


def scan_for_identifiers(
    table: pa.Table,
    *,
    dataset: str | None = None,
    skip_columns: Iterable[str] = (),
    strict: bool = True,
    prepare: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Every value of every text column, every 10-digit integer, and every column name.

    Finds, after NFKC normalisation, NHS numbers (10 digits in groups with any short
    separators, passing Modulus 11; ``strict``, the public reading, also touching
    letters), full UK postcodes (any case, with or without the space), dates of birth inside
    text (``strict`` only), 10-digit integers that pass Modulus 11, and date-of-birth
    columns. A finding counts the rows concerned (and keeps their positions, ``rows``)
    and never holds a value. ``skip_columns`` are not scanned; ``prepare`` maps a column
    to a function giving the text to scan for a value (a format's opaque parts blanked).
    """
    if dataset is None and table.schema.metadata and b"dataset" in table.schema.metadata:
        dataset = table.schema.metadata[b"dataset"].decode()
    skip = set(skip_columns)
    prepare = prepare or {}
    findings: list[Finding] = []
    for name in table.column_names:
        if name in skip:
            continue
        col = table.column(name)
        if _DOB_NAME_RE.search(name):
            findings.append(Finding(dataset, name, "date_of_birth", len(col) - col.null_count))
        text = _string_values(col)
        if text is not None:
            values, rows = text
            hits = _identifier_hits(values, strict=strict, prepare=prepare.get(name))
            for kind in KINDS:
                where = _rows_matching(rows, hits[kind])
                if len(where):
                    findings.append(Finding(dataset, name, kind, len(where), tuple(where.tolist())))
        elif pa.types.is_integer(col.type):
            arr = col.combine_chunks()
            in_range = pc.fill_null(
                pc.and_(pc.greater_equal(arr, 1_000_000_000), pc.less_equal(arr, 9_999_999_999)),
                False,
            ).to_numpy(zero_copy_only=False).astype(bool)
            if in_range.any():
                import pandas as pd

                idx = np.nonzero(in_range)[0]
                cand = arr.filter(pa.array(in_range)).cast(pa.string()).to_pandas()
                ok = nhs_number.valid_series(pd.Series(cand)).to_numpy(dtype=bool)
                if ok.any():
                    findings.append(Finding(dataset, name, "nhs_number", int(ok.sum()),
                                            tuple(idx[ok].tolist())))
    return findings


# --------------------------------------------------------------------------- checks

# Column names that must never be published in the public zone (patient identifiers,
# pseudonymised or not, and record-level keys) ...
_PUBLIC_FORBIDDEN = re.compile(
    r"^(person_id|pseudo_?hesid|hesid|nhs_?number|nhs_?no|nhsno|newnhsno|new_nhs_no|"
    r"postcode|post_code|pcode|homeadd|address|date_of_birth|dob|mydob|name|forename|"
    r"surname|given_name|family_name|patient_name|susrecid|epikey|spell_id|local_patient_id|"
    r"localpatientid)$",
    re.IGNORECASE,
)
# ... and in the restricted zone (pseudonymised ids are allowed there).
_RESTRICTED_FORBIDDEN = re.compile(
    r"^(nhs_?number|nhs_?no|nhsno|newnhsno|new_nhs_no|postcode|post_code|pcode|homeadd|"
    r"address|date_of_birth|dob|mydob|name|forename|surname|given_name|family_name|"
    r"patient_name)$",
    re.IGNORECASE,
)


def _scan_violations(ds: Dataset, table: pa.Table, *, strict: bool) -> list[Violation]:
    skip = ds.extra.get("identifier_scan_exempt", ()) if ds.extra else ()
    prepare = {c.name: c.format.scan_text for c in ds.columns
               if c.format is not None and c.format.regex.groupindex}
    out = []
    for f in scan_for_identifiers(table, dataset=ds.name, skip_columns=skip, strict=strict,
                                  prepare=prepare):
        out.append(Violation(ds.name, f"identifier:{f.kind}", f.column, f.count, str(f), f.rows))
    return out


def _format_violations(ds: Dataset, table: pa.Table, *, every_string: bool) -> list[Violation]:
    """Values of string columns that are neither a declared code nor of the declared format
    (``every_string``: a string column with neither declared is a violation too)."""
    out: list[Violation] = []
    declared = {c.name: c for c in ds.published_columns()}
    for name in table.column_names:
        c = declared.get(name)
        text = _string_values(table.column(name))
        if text is None:
            continue
        if c is None or (c.codes is None and c.format is None):
            if every_string:
                out.append(Violation(ds.name, "format_undeclared", name, table.num_rows,
                                     f"{ds.name}: string column {name} has no declared format or "
                                     f"codes, so it cannot be published in the {ds.zone} zone"))
            continue
        values, rows = text
        distinct = pc.unique(values.drop_null()).to_pylist()
        bad = [v for v in distinct if not c.conforms(v)]
        if not bad:
            continue
        hit = pc.fill_null(pc.is_in(values, pa.array(bad, values.type)), False).to_numpy(
            zero_copy_only=False).astype(bool)
        where = _rows_matching(rows, hit)
        out.append(Violation(ds.name, "format", name, len(where),
                             f"{ds.name}: {len(where)} row(s) of {name} are not "
                             f"{c.declared_format}", tuple(where.tolist())))
    return out


def round_counts(ds: Dataset, table: pa.Table, rounding: str = "none") -> pa.Table:
    """HES-style rounding, after suppression (``disclosure.rounding``): with ``nearest_5``
    every count a disclosure rule may blank (``suppress="count"``, and an FFT dataset's
    responses and six answer counts) is rounded to the nearest multiple of 5, on every row
    (national too); 0 stays 0, empty stays empty. Integers never fall half way (v mod 5 of
    0 to 2 rounds down, 3 or 4 up). Rates, organisation counts and the other columns are
    left as they are: rates stay computed from the unrounded counts. ``none`` returns the
    table unchanged."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"disclosure.rounding must be one of {', '.join(ROUNDINGS)}")
    if rounding == "none" or ds.zone != "public" or table.num_rows == 0:
        return table
    names = [c.name for c in ds.columns if c.suppress == "count" and c.name in table.column_names]
    if "suppressed" in table.column_names:
        names += [n for n in FFT_COUNT_COLUMNS if n in table.column_names and n not in names]
    for name in names:
        col = table.column(name)
        values = pc.multiply(pc.divide(pc.add(col.cast(pa.int64()), 2), 5), 5)  # integer division
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), values.cast(col.type))
    return table


def check_public(ds: Dataset, table: pa.Table, settings: Any = None) -> list[Violation]:
    """Violations of the public-zone rules in an already-suppressed table (empty = fine).

    ``settings`` is a :class:`pipelines.config.Settings`, a thresholds dict, or None for
    the defaults.
    """
    if ds.zone != "public":
        return [Violation(ds.name, "zone", None, 0,
                          f"{ds.name} is a {ds.zone} dataset and cannot be published in the public zone")]
    small_max = int(_t(settings, "disclosure", "small_count_max", SMALL_MAX))
    min_den = int(_t(settings, "disclosure", "min_denominator", MIN_DENOMINATOR))
    fft_max = int(_t(settings, "fft", "suppress_max_responses", FFT_SUPPRESS_MAX))
    out: list[Violation] = []
    names = table.column_names

    for name in names:
        if _PUBLIC_FORBIDDEN.match(name):
            out.append(Violation(ds.name, "forbidden_column", name, table.num_rows,
                                 f"{ds.name}: column {name} is a patient or record identifier "
                                 f"and may not be published in the public zone"))

    below = ~national_mask(table)
    for c in ds.columns:
        if c.suppress == "count" and c.name in names:
            flag_name = f"{c.name}_suppressed"
            if flag_name not in names:
                out.append(Violation(ds.name, "not_suppressed", c.name, table.num_rows,
                                     f"{ds.name}: {flag_name} is missing: disclosure control "
                                     f"was not applied"))
            values, valid = _ints(table.column(c.name))
            small = valid & (values >= 1) & (values <= small_max) & below
            if small.any():
                out.append(Violation(ds.name, "small_count", c.name, int(small.sum()),
                                     f"{ds.name}: {int(small.sum())} row(s) below national "
                                     f"level show {c.name} between 1 and {small_max}"))
            shown = valid & _flag(table, flag_name)
            if shown.any():
                out.append(Violation(ds.name, "flag_inconsistent", c.name, int(shown.sum()),
                                     f"{ds.name}: {int(shown.sum())} row(s) have {flag_name} "
                                     f"set but {c.name} is not empty"))
        if c.suppress == "rate" and c.name in names:
            rate_valid = pc.is_valid(table.column(c.name)).to_numpy(zero_copy_only=False).astype(bool)
            if c.denominator not in names:
                if (rate_valid & below).any():
                    out.append(Violation(ds.name, "rate_without_denominator", c.name,
                                         int((rate_valid & below).sum()),
                                         f"{ds.name}: {c.name} is published without its "
                                         f"denominator {c.denominator}"))
                continue
            den, den_valid = _ints(table.column(c.denominator))
            few = (~den_valid) | (den < min_den) | _flag(table, f"{c.denominator}_suppressed")
            bad = rate_valid & few & below
            if bad.any():
                out.append(Violation(ds.name, "rate_small_denominator", c.name, int(bad.sum()),
                                     f"{ds.name}: {int(bad.sum())} row(s) below national level "
                                     f"show {c.name} computed from fewer than {min_den} records "
                                     f"(or an unknown number: {c.denominator} empty)"))
            if c.numerator is not None and c.numerator in names:
                hidden = _flag(table, f"{c.numerator}_suppressed")
                reveals = rate_valid & hidden & below
                if reveals.any():
                    out.append(Violation(ds.name, "rate_reveals_suppressed_count", c.name, int(reveals.sum()),
                                         f"{ds.name}: {int(reveals.sum())} row(s) below national level "
                                         f"show {c.name} where {c.numerator} is suppressed"))

    # FFT datasets: NHS England's rules, applied upstream, verified here.
    if "suppressed" in names and "responses" in names:
        fft_cols = [n for n in ("responses", "extremely_likely", "likely", "neither", "unlikely",
                                "extremely_unlikely", "dont_know", "pct_recommend",
                                "pct_not_recommend", "pct_positive", "pct_negative",
                                "net_score") if n in names]
        resp, resp_valid = _ints(table.column("responses"))
        small = resp_valid & (resp >= 1) & (resp <= fft_max) & below
        if small.any():
            out.append(Violation(ds.name, "fft_small_responses", "responses", int(small.sum()),
                                 f"{ds.name}: {int(small.sum())} row(s) below national level "
                                 f"show between 1 and {fft_max} responses"))
        flagged = _flag(table, "suppressed")
        for n in fft_cols:
            shown = flagged & pc.is_valid(table.column(n)).to_numpy(zero_copy_only=False).astype(bool)
            if shown.any():
                out.append(Violation(ds.name, "fft_flag_inconsistent", n, int(shown.sum()),
                                     f"{ds.name}: {int(shown.sum())} suppressed row(s) still "
                                     f"show {n}"))

    out += _format_violations(ds, table, every_string=True)
    out += _scan_violations(ds, table, strict=True)
    return out


def check_restricted(ds: Dataset, table: pa.Table) -> list[Violation]:
    """Violations of the restricted-zone rules: no NHS number, postcode, date of birth or
    name, as a column or inside any value; every string value of its declared format or
    code set (a value outside it blocks the dataset for the period)."""
    out: list[Violation] = []
    if ds.zone != "restricted":
        out.append(Violation(ds.name, "zone", None, 0,
                             f"{ds.name} is a {ds.zone} dataset, not a restricted one"))
    for name in table.column_names:
        if _RESTRICTED_FORBIDDEN.match(name):
            out.append(Violation(ds.name, "forbidden_column", name, table.num_rows,
                                 f"{ds.name}: column {name} is a direct identifier and may not "
                                 f"be published, even in the restricted zone"))
    # As for the public zone: every string column has a declared format or code set (record
    # keys are published as keyed pseudonyms, pipelines.pseudo, whose hex the scan does not
    # read), and the scan is the strict one: an NHS number touching letters, and a date
    # inside a string, are found here too.
    out += _format_violations(ds, table, every_string=True)
    out += _scan_violations(ds, table, strict=True)
    return out


def check(ds: Dataset, table: pa.Table, settings: Any = None) -> list[Violation]:
    """The checks of the dataset's zone."""
    if ds.zone == "public":
        return check_public(ds, table, settings)
    if ds.zone == "restricted":
        return check_restricted(ds, table)
    return [Violation(ds.name, "zone", None, 0,
                      f"{ds.name} is an internal table and is never published")]


def thresholds_of(settings: Any) -> Mapping:
    """The disclosure thresholds actually used, for manifests."""
    return {
        "small_count_max": int(_t(settings, "disclosure", "small_count_max", SMALL_MAX)),
        "min_denominator": int(_t(settings, "disclosure", "min_denominator", MIN_DENOMINATOR)),
    }
