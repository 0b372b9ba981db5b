"""Disclosure control of published datasets (outputs.md "Disclosure control on the public zone").

Three things, all plain functions over Arrow tables (no Dagster):

* :func:`apply_small_numbers` blanks small counts and rates from few records in a public
  dataset, setting each ``<count>_suppressed`` flag. The columns it acts on come from the
  declarations (``Column.suppress`` = ``"count"`` or ``"rate"`` with its ``denominator``),
  so a stage never lists them by hand.
* :func:`scan_for_identifiers` looks at every value of every string (and list-of-string)
  column for NHS-number-shaped strings that pass Modulus 11 and for UK postcodes, at every
  10-digit integer for a valid NHS number, and at column names for dates of birth.
* :func:`check_public` and :func:`check_restricted` verify a table that is about to be
  published and return :class:`Violation` s. A publication with any violation is refused
  (:func:`pipelines.publish.publish_dataset` calls them; the Dagster asset check does too).

Findings and violations name the dataset, the column, the rule and a count of rows: never
a value, so they can go in logs, exceptions and run metadata.

Rules, as implemented (thresholds from ``defaults.yaml`` ``disclosure``):

* A row is *national* when ``area_level`` or ``level`` is ``national`` or ``org_code`` or
  ``area_code`` is ``ENG``. National rows are never suppressed.
* Below national level a ``suppress="count"`` value from 1 to ``small_count_max`` (7)
  becomes empty with its flag True; 0 stays 0; empty stays empty (flag False).
* A ``suppress="rate"`` value becomes empty when its denominator count is under
  ``min_denominator`` (8) *or unknown* (empty): a rate whose number of records cannot be
  shown to be at least 8 is not published.
* FFT datasets carry their own ``suppressed`` flag (methods.md, NHS England's rules);
  :func:`check_public` verifies rule 1 (1 to 4 responses blanked below national level) and
  that a suppressed row shows no counts or percentages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
]

SMALL_MAX = 7
MIN_DENOMINATOR = 8
FFT_SUPPRESS_MAX = 4

# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Finding:
    """An identifier-shaped content found by :func:`scan_for_identifiers` (never the value)."""

    dataset: str | None
    column: str
    kind: str  # "nhs_number" | "postcode" | "date_of_birth"
    count: int  # rows (values) concerned; for a date-of-birth column, its non-empty values

    def __str__(self) -> str:
        what = {
            "nhs_number": "value(s) containing a valid NHS number (Modulus 11)",
            "postcode": "value(s) containing a full UK postcode",
            "date_of_birth": "value(s) in a date-of-birth column",
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

# Ten digits, optionally 3-3-4 with spaces or hyphens, not part of a longer alphanumeric
# token (so a run of digits inside a hex digest or a longer number is not a candidate).
_NHS_RE = re.compile(r"(?<![0-9A-Za-z])(\d{3})[ -]?(\d{3})[ -]?(\d{4})(?![0-9A-Za-z])")
# Full UK postcodes (outward code, optional space, inward code), case-insensitive,
# following the Royal Mail letter rules (first letter not Q V X; second not I J Z; inward
# letters not C I K M O V), plus GIR 0AA.
_POSTCODE_BODY = (
    r"(?:GIR ?0AA|(?:[A-PR-UWYZ][0-9][0-9]?|[A-PR-UWYZ][A-HK-Y][0-9][0-9]?"
    r"|[A-PR-UWYZ][0-9][A-HJKPSTUW]|[A-PR-UWYZ][A-HK-Y][0-9][ABEHMNPRVWXY]) ?[0-9][ABD-HJLNP-UW-Z]{2})"
)
_POSTCODE_RE = re.compile(r"(?<![0-9A-Za-z])" + _POSTCODE_BODY + r"(?![0-9A-Za-z])", re.IGNORECASE)
_DOB_NAME_RE = re.compile(
    r"(^|[^a-z])(dob|dateofbirth|date_of_birth|birth_?date|birth_?dt|date_?birth|birthday)([^a-z]|$)",
    re.IGNORECASE,
)


def _contains_nhs_number(text: str) -> bool:
    """The rule, value by value (the reference :func:`_nhs_number_hits` keeps to)."""
    for m in _NHS_RE.finditer(text):
        if nhs_number.is_valid("".join(m.groups())):
            return True
    return False


def _contains_postcode(text: str) -> bool:
    """The rule, value by value (the reference :func:`_postcode_hits` keeps to)."""
    return _POSTCODE_RE.search(text) is not None


# --- the same rules over whole Arrow arrays (RE2 in pyarrow, no Python per value)
#
# RE2 has no lookaround: "not preceded/followed by [0-9A-Za-z]" becomes a consumed
# "(^|[^0-9A-Za-z])" / "([^0-9A-Za-z]|$)", which gives the same yes/no for a search.
# Python's \d is any Unicode digit, RE2's only 0-9; and Python's IGNORECASE also folds
# U+0130 and U+0131 to I, U+017F to S and U+212A (Kelvin) to K, which RE2's (?i) does not
# all do: so the RE2 patterns spell out every class, and a value the RE2 pattern selects
# is still decided by the Python rule unless the verdict is certain without it.

_FOLD_CANDIDATES = (
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz\u0130\u0131\u017f\u212a"
)


def _spell_out_ignorecase(pattern: str) -> str:
    """``pattern`` (classes, literal letters, no escapes) with each class and letter
    replaced by the explicit class of the characters Python's ``re.IGNORECASE`` matches
    with it (tests/test_disclosure.py checks no other code point matches)."""

    def explicit(m: re.Match) -> str:
        token = m.group(0)
        negated = token.startswith("[^")
        positive = "[" + token[2:] if negated else token
        chars = "".join(c for c in _FOLD_CANDIDATES if re.fullmatch(positive, c, re.IGNORECASE))
        return ("[^" if negated else "[") + chars + "]"

    return re.sub(r"\[[^\]]*\]|[A-Za-z]", explicit, pattern)


_NOT_ALNUM = "[^0-9A-Za-z]"
_NHS_SHAPE = "[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}"
# every value holding a match of _NHS_RE made of ASCII digits (the only ones is_valid takes)
_NHS_RE2 = f"(?:^|{_NOT_ALNUM}){_NHS_SHAPE}(?:{_NOT_ALNUM}|$)"
# a value that is one such number and nothing else: _NHS_RE's only match is all of it
_NHS_WHOLE_RE2 = f"^{_NHS_SHAPE}$"
# exactly the values _POSTCODE_RE.search finds something in
_POSTCODE_RE2 = _spell_out_ignorecase(f"(?:^|{_NOT_ALNUM}){_POSTCODE_BODY}(?:{_NOT_ALNUM}|$)")


# The fewest bytes a value holding a match can have (10 digits; a 5-character postcode):
# shorter values (most codes) are not handed to RE2 at all.
_NHS_MIN_BYTES = 10
_POSTCODE_MIN_BYTES = 5


def _regex_mask(values: pa.Array, pattern: str, min_bytes: int = 0) -> np.ndarray:
    """Per value: RE2 ``pattern`` found in it (False for null and shorter values)."""
    out = np.zeros(len(values), dtype=bool)
    if len(values) == 0:
        return out
    longer = pc.fill_null(pc.greater_equal(pc.binary_length(values), min_bytes), False).to_numpy(
        zero_copy_only=False).astype(bool)
    if not longer.any():
        return out
    if longer.all():
        return pc.fill_null(pc.match_substring_regex(values, pattern), False).to_numpy(
            zero_copy_only=False).astype(bool)
    found = pc.fill_null(pc.match_substring_regex(values.filter(pa.array(longer)), pattern), False)
    out[longer] = found.to_numpy(zero_copy_only=False).astype(bool)
    return out


def _confirm(values: pa.Array, mask: np.ndarray, test) -> np.ndarray:
    """``mask`` narrowed by the Python rule ``test``, run on the selected values only."""
    idx = np.nonzero(mask)[0]
    if len(idx):
        texts = values.take(pa.array(idx)).to_pylist()
        mask = mask.copy()
        mask[idx] = [bool(test(text)) for text in texts]
    return mask


def _nhs_number_hits(values: pa.Array) -> np.ndarray:
    """Per value: :func:`_contains_nhs_number`."""
    cand = _regex_mask(values, _NHS_RE2, _NHS_MIN_BYTES)
    if not cand.any():
        return cand
    idx = np.nonzero(cand)[0]
    sub = values.take(pa.array(idx))
    whole = _regex_mask(sub, _NHS_WHOLE_RE2)
    out = np.zeros(len(values), dtype=bool)
    if whole.any():
        import pandas as pd

        numbers = sub.filter(pa.array(whole)).cast(pa.string()).to_pandas()
        out[idx[whole]] = nhs_number.valid_series(pd.Series(numbers)).to_numpy(dtype=bool)
    rest = np.zeros(len(values), dtype=bool)
    rest[idx[~whole]] = True
    return out | _confirm(values, rest, _contains_nhs_number)


def _postcode_hits(values: pa.Array) -> np.ndarray:
    """Per value: :func:`_contains_postcode`."""
    return _confirm(values, _regex_mask(values, _POSTCODE_RE2, _POSTCODE_MIN_BYTES), _contains_postcode)


def _string_values(arr: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray] | None:
    """Flatten a string-ish column to (strings, row index of each) or None if not text."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.cast(t.value_type)
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr, np.arange(len(arr))
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)
        or pa.types.is_dictionary(t.value_type)
    ):
        parents = pc.list_parent_indices(arr).to_numpy(zero_copy_only=False)
        values = pc.list_flatten(arr)
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        return values, parents
    return None


# either pattern, to look at each value once: values holding neither (nearly all) are done
_EITHER_RE2 = f"(?:{_NHS_RE2})|(?:{_POSTCODE_RE2})"


def _identifier_hits(values: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Per value: (:func:`_contains_nhs_number`, :func:`_contains_postcode`)."""
    nhs = np.zeros(len(values), dtype=bool)
    postcode = np.zeros(len(values), dtype=bool)
    either = _regex_mask(values, _EITHER_RE2, min(_NHS_MIN_BYTES, _POSTCODE_MIN_BYTES))
    if either.any():
        idx = np.nonzero(either)[0]
        sub = values.take(pa.array(idx))
        nhs[idx] = _nhs_number_hits(sub)
        postcode[idx] = _postcode_hits(sub)
    return nhs, postcode


def _rows_matching(rows: np.ndarray, hit: np.ndarray) -> int:
    """The number of distinct rows (``rows``: the row of each value) with a hit."""
    if not hit.any():
        return 0
    return int(np.unique(rows[hit]).size)


def scan_for_identifiers(
    table: pa.Table,
    *,
    dataset: str | None = None,
    skip_columns: Iterable[str] = (),
) -> list[Finding]:
    """Every value of every text column, every 10-digit integer, and every column name.

    Finds NHS numbers (10 digits, optionally spaced or hyphenated 3-3-4, passing Modulus
    11) anywhere inside text, full UK postcodes (with or without the space, any case),
    10-digit integers that pass Modulus 11, and date-of-birth columns. A finding counts the
    rows concerned and never holds a value. ``skip_columns`` are not scanned (for a code
    column known to hold 10-digit identifiers that are not NHS numbers).
    """
    if dataset is None and table.schema.metadata and b"dataset" in table.schema.metadata:
        dataset = table.schema.metadata[b"dataset"].decode()
    skip = set(skip_columns)
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
            nhs_hit, postcode_hit = _identifier_hits(values)
            n = _rows_matching(rows, nhs_hit)
            if n:
                findings.append(Finding(dataset, name, "nhs_number", n))
            n = _rows_matching(rows, postcode_hit)
            if n:
                findings.append(Finding(dataset, name, "postcode", n))
        elif pa.types.is_integer(col.type):
            arr = col.combine_chunks()
            in_range = pc.fill_null(
                pc.and_(pc.greater_equal(arr, 1_000_000_000), pc.less_equal(arr, 9_999_999_999)),
                False,
            ).to_numpy(zero_copy_only=False).astype(bool)
            if in_range.any():
                import pandas as pd

                cand = arr.filter(pa.array(in_range)).cast(pa.string()).to_pandas()
                n = int(nhs_number.valid_series(pd.Series(cand)).sum())
                if n:
                    findings.append(Finding(dataset, name, "nhs_number", n))
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


def _scan_violations(ds: Dataset, table: pa.Table) -> list[Violation]:
    skip = ds.extra.get("identifier_scan_exempt", ()) if ds.extra else ()
    out = []
    for f in scan_for_identifiers(table, dataset=ds.name, skip_columns=skip):
        out.append(Violation(ds.name, f"identifier:{f.kind}", f.column, f.count, str(f)))
    return out


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

    # FFT datasets: NHS England's rules, applied upstream, verified here.
    if "suppressed" in names and "responses" in names:
        fft_cols = [n for n in ("responses", "extremely_likely", "likely", "neither", "unlikely",
                                "extremely_unlikely", "dont_know", "pct_recommend",
                                "pct_not_recommend", "net_score") if n in names]
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

    out += _scan_violations(ds, table)
    return out


def check_restricted(ds: Dataset, table: pa.Table) -> list[Violation]:
    """Violations of the restricted-zone rules: no NHS number, postcode, date of birth or
    name, as a column or inside any value."""
    out: list[Violation] = []
    if ds.zone != "restricted":
        out.append(Violation(ds.name, "zone", None, 0,
                             f"{ds.name} is a {ds.zone} dataset, not a restricted one"))
    for name in table.column_names:
        if _RESTRICTED_FORBIDDEN.match(name):
            out.append(Violation(ds.name, "forbidden_column", name, table.num_rows,
                                 f"{ds.name}: column {name} is a direct identifier and may not "
                                 f"be published, even in the restricted zone"))
    out += _scan_violations(ds, table)
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
