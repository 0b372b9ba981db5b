"""The Rule declaration: one data-quality rule, the GX expectation that implements it.

Every rule has an id, the field it reads, a severity (``reject``: the row is unusable
and goes to quarantine; ``warn``: the row is kept and the failure counted), a message a
person understands, and the Great Expectations expectation (class name and arguments)
that implements it. The feed modules (:mod:`expectations.gp`, :mod:`expectations.sus_apc`,
:mod:`expectations.fft`) declare their rules with the helpers below, mostly generated from
the feed declarations of :mod:`pipelines.schemas.inputs`.

A rule's arguments may depend on the submission (its submitter, period, protocol) and on
reference data; they are then a function of :class:`Env` returning the expectation's
keyword arguments, or ``None`` when the rule does not apply to this submission (for
example the provider check in a HES extract, which holds many providers).
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pipelines.schemas.inputs import CLASSPAT_CODES, Feed, InputColumn

Severity = Literal["reject", "warn"]

# Derived columns added before validation (see each feed's ``prepare``).
DATE_SUFFIX = "__as_date"  # "EPISTART__as_date": the parsed date, NaT when missing/invalid
KEY = "__key"  # the record key whose uniqueness is checked (also used to batch rows)
REPEAT = "__key_repeated"  # "1" on the second and later rows with a key already seen in the file
BIRTH = "__birth_month_start"  # DOB, else the first day of the MYDOB month

# ODS pseudo practice codes for "no registered practice / not known" (valid GPPRAC values;
# DQMI defaults).
PRACTICE_PLACEHOLDERS = ("V81997", "V81998", "V81999")

# DQMI default values ("not known" codes that are valid but say nothing), declared once
# here and attached to the scored fields of each feed (ScoredField.defaults...). The
# choices are written in docs/data-quality.md ("DQMI").
SEX_DEFAULTS = ("0", "9")  # not known, not specified
ETHNIC_DEFAULTS = ("Z", "99")  # not stated, not known
POSTCODE_DEFAULT_PREFIXES = ("ZZ99",)  # NHS pseudo postcodes (no fixed abode, not known, ...)
NOT_KNOWN_98_99 = ("98", "99")  # ADMIMETH, ADMISORC, DISDEST: not applicable / not known
CONSULTANT_DEFAULTS = ("C9999998",)  # HES dummy consultant code: not known
DIAGNOSIS_DEFAULTS = ("R69X", "R69")  # ICD-10 R69: unknown and unspecified causes of morbidity
NHS_NUMBER_STATUS_VERIFIED = ("01",)  # NHSNOIND: any other status makes the NHS number a default
SITE_DEFAULTS = ("R9998", "R9999", "89997", "89999")  # ODS default site codes (not a site, not known)

# The NHS number field of each feed, and the feeds whose NHS number rate is a sanction
# measure (FFT respondents give their NHS number only if they wish).
NHS_NUMBER_FIELD = {"gp": "NHS_NUMBER", "sus_apc": "NEWNHSNO", "hes_apc": "NEWNHSNO", "fft": "NHS_NUMBER"}
NHS_NUMBER_SANCTIONED = ("gp", "sus_apc", "hes_apc")


def date_col(name: str) -> str:
    return f"{name}{DATE_SUFFIX}"


@dataclass(frozen=True)
class Env:
    """What a rule may know about the submission being validated."""

    source: str
    period: str | None = None  # YYYY-MM
    submitter: str | None = None
    file_name: str = ""
    protocol: str | None = None  # BULK or NET (SUS)
    site_providers: dict[str, str] | None = None
    practice_codes: frozenset[str] | None = None
    today: dt.date = field(default_factory=dt.date.today)

    @property
    def period_bounds(self) -> tuple[dt.date, dt.date] | None:
        if not self.period:
            return None
        year, month = int(self.period[:4]), int(self.period[5:7])
        return dt.date(year, month, 1), dt.date(year, month, calendar.monthrange(year, month)[1])


Args = dict[str, Any] | Callable[[Env], dict[str, Any] | None]


@dataclass(frozen=True)
class Rule:
    id: str
    field: str
    severity: Severity
    message: str
    expectation: str  # class name in gx.expectations or expectations.custom
    args: Args
    sources: tuple[str, ...] = ()  # empty: every source the module serves
    # What the submitter should do about a failure, in plain words (the feedback packs,
    # pipelines/feedback.py). Empty: derived from the expectation (:attr:`how_to_fix`).
    fix: str = ""

    @property
    def how_to_fix(self) -> str:
        """The fix in plain words: :attr:`fix` when the declaration gives one, else what
        the expectation implies (fill it in, use an allowed code, a real date, ...). Never
        quotes a value of a row: the text is the same for every row the rule fails."""
        return self.fix or _derived_fix(self)

    def applies_to(self, source: str) -> bool:
        return not self.sources or source in self.sources

    def kwargs(self, env: Env) -> dict[str, Any] | None:
        if not self.applies_to(env.source):
            return None
        return self.args(env) if callable(self.args) else dict(self.args)

    def describe_args(self) -> str:
        """The expectation's arguments for the docs (callables described by their doc)."""
        if callable(self.args):
            return " ".join((self.args.__doc__ or "depends on the submission").split())
        return ", ".join(f"{k}={v!r}" for k, v in self.args.items())


@dataclass(frozen=True)
class ScoredField:
    """A DQMI item: rows whose value is present (any of ``columns`` non-empty) and valid
    (no rule on any of ``columns`` failed).

    Its DQMI **default values** (NHS Digital's Data Quality Maturity Index: a valid value
    that only says "not known", counted apart), declared here once for the item:

    * ``defaults``: codes that are defaults (compared after trimming, exactly);
    * ``default_prefixes``: a value starting with one of these is a default (the
      ``ZZ99`` pseudo postcodes);
    * ``default_column`` with ``default_unless``: the row is a default when that column
      (another column of the row, e.g. the NHS number status ``NHSNOIND``) has a value
      that is not one of ``default_unless`` (a status other than ``01``, verified);
    * ``default_threshold``: the share of the item's rows that may be defaults before they
      count against the item score (DQMI "threshold for proportion of defaults": 0.0 means
      every default counts, 1.0 none does).

    An item with none of these has no default values (DQMI "-": not applicable)."""

    name: str
    columns: tuple[str, ...] = ()
    defaults: tuple[str, ...] = ()
    default_prefixes: tuple[str, ...] = ()
    default_column: str | None = None
    default_unless: tuple[str, ...] = ()
    default_threshold: float = 0.0

    @property
    def cols(self) -> tuple[str, ...]:
        return self.columns or (self.name,)

    @property
    def has_defaults(self) -> bool:
        return bool(self.defaults or self.default_prefixes or self.default_unless)

    def default_rows(self, column) -> "Any":
        """Per row, True where the item holds a default value. ``column(name)`` gives a
        column of the work frame (strings, trimmed, missing as NA). Validity is not
        looked at here: the caller counts defaults among the valid rows only."""
        import numpy as np

        first = column(self.cols[0])
        n = len(first)
        out = np.zeros(n, dtype=bool)
        if not self.has_defaults:
            return out
        for c in self.cols:
            s = column(c)
            if self.defaults:
                out |= s.isin(list(self.defaults)).fillna(False).to_numpy(dtype=bool)
            for p in self.default_prefixes:
                out |= s.str.upper().str.replace(" ", "", regex=False).str.startswith(p).fillna(False).to_numpy(dtype=bool)
        if self.default_unless:
            other = column(self.default_column or self.cols[0])
            out |= (other.notna() & ~other.isin(list(self.default_unless))).fillna(False).to_numpy(dtype=bool)
        return out


def _derived_fix(rule: "Rule") -> str:
    """The fix a rule's expectation implies (see :attr:`Rule.how_to_fix`)."""
    f, e = rule.field, rule.expectation
    args = rule.args if isinstance(rule.args, dict) else {}
    column = args.get("column")
    if e == "ExpectColumnValuesToNotBeNull":
        if column == KEY:
            return f"Give every row its identifier ({f}, or EPIKEY where there is no {f})."
        return f"Fill in {f} on every row listed: it must not be empty."
    if e == "ExpectColumnValuesToBeNull" and column == REPEAT:
        return (f"Send each record once: the key ({f}) must be unique in the file. The first row with "
                "the key was kept; remove the repeats or give them their own key.")
    if e == "ExpectColumnValuesToBeNull":
        return f"Give the real {f} where it is known; a placeholder date is read as not known."
    if e == "ExpectColumnValuesToBeInSet" and "value_set" in args and len(args["value_set"]) <= 20:
        return f"Write {f} as one of the allowed codes ({', '.join(args['value_set'])}), exactly as written there."
    if e == "ExpectColumnValuesToBeInSet":
        return f"Write {f} as a code the rule allows (see the message), or correct it at source."
    if e == "ExpectColumnValuesToMatchRegex":
        return (f"Write {f} in the format the message describes"
                + (" (leave it empty when not known)." if rule.severity == W else "."))
    if e == "ExpectColumnValuesToBeIsoDates":
        return f"Write {f} as a real calendar date in the form YYYY-MM-DD."
    if e == "ExpectColumnValuesToBeIsoDatesBetween" and rule.id.endswith("_FUTURE"):
        return (f"Correct {f}: a date after the file was submitted is impossible (check the year, and "
                "the order of day and month).")
    if e == "ExpectColumnValuesToBeIsoDatesBetween" and rule.id.endswith("_BEFORE_1890"):
        return (f"Correct {f}: give the real date, or leave it empty when it is not known "
                "(do not use a made-up early date).")
    if e == "ExpectColumnValuesToBeIsoDatesBetween":
        return f"Correct {f} so that it falls within the dates the message gives."
    if e == "ExpectColumnPairValuesAToBeGreaterThanB":
        return "Check both dates the message names against the record and correct the one that is wrong."
    if e == "ExpectColumnValuesToBeValidNhsNumber":
        return (f"Check {f} against the patient's record (the Personal Demographics Service): a valid NHS "
                "number has 10 digits and a correct Modulus 11 check digit; leave it empty rather than guess.")
    return f"Correct {f} on the lines listed (see the message)."


# ------------------------------------------------------------------ helpers
R = "reject"
W = "warn"


def not_null(col: str, sev: Severity, msg: str | None = None, rid: str | None = None, **kw) -> Rule:
    return Rule(rid or f"{col}_MISSING", col, sev, msg or f"{col} is missing; it is required.",
                "ExpectColumnValuesToNotBeNull", {"column": col}, **kw)


def in_set(col: str, codes: tuple[str, ...], sev: Severity, what: str | None = None, **kw) -> Rule:
    return Rule(f"{col}_CODE", col, sev,
                f"{col} is not a valid {what or 'code'} (allowed: {', '.join(codes)}).",
                "ExpectColumnValuesToBeInSet", {"column": col, "value_set": list(codes)}, **kw)


def regex(col: str, pattern: str, sev: Severity, msg: str, rid: str | None = None, **kw) -> Rule:
    return Rule(rid or f"{col}_FORMAT", col, sev, msg, "ExpectColumnValuesToMatchRegex",
                {"column": col, "regex": pattern}, **kw)


def iso_date(col: str, sev: Severity, **kw) -> Rule:
    return Rule(f"{col}_DATE", col, sev, f"{col} is not a real date written YYYY-MM-DD.",
                "ExpectColumnValuesToBeIsoDates", {"column": col}, **kw)


def not_future(col: str, sev: Severity, **kw) -> Rule:
    def args(env: Env) -> dict:
        """max_value = today (ValidationContext.today)"""
        return {"column": col, "max_value": env.today.isoformat()}

    return Rule(f"{col}_FUTURE", col, sev, f"{col} is in the future.",
                "ExpectColumnValuesToBeIsoDatesBetween", args, **kw)


def not_before(later: str, earlier: str, sev: Severity, rid: str, msg: str, *,
               a: str | None = None, b: str | None = None, **kw) -> Rule:
    """``later`` must be on or after ``earlier`` (rows where either is missing or invalid
    are not checked: their own date rules catch them)."""
    return Rule(rid, later, sev, msg, "ExpectColumnPairValuesAToBeGreaterThanB",
                {"column_A": a or date_col(later), "column_B": b or date_col(earlier),
                 "or_equal": True, "ignore_row_if": "either_value_is_missing"}, **kw)


def nhs_number(col: str, *, missing: Severity | None, invalid: Severity = W, **kw) -> list[Rule]:
    out = []
    if missing:
        out.append(not_null(col, missing, f"{col} is missing: the record cannot be linked by NHS number.", **kw))
    out.append(Rule(f"{col}_INVALID", col, invalid,
                    f"{col} is not a valid NHS number (10 digits, Modulus 11 check digit): "
                    "the record cannot be linked by NHS number.",
                    "ExpectColumnValuesToBeValidNhsNumber", {"column": col}, **kw))
    return out


# Any spacing and case (inputs.md): both cases spelled out, not (?i). A case-insensitive
# [A-Z] also takes the Kelvin sign and the long s in Python's re and DuckDB's RE2 but not
# in Java's (Spark): the engines would disagree on such a value.
POSTCODE_RE = r"^\s*[A-Za-z]{1,2}[0-9][A-Za-z0-9]?\s*[0-9][A-Za-z]{2}\s*$"
LSOA_RE = r"^E01[0-9]{6}$"
PRACTICE_RE = r"^[A-Z][0-9]{5}$"
CONSULTANT_RE = r"^C[0-9]{7}$"
MYDOB_RE = r"^(?:0[1-9]|1[0-2])[0-9]{4}$"
# ICD-10 without the dot: letter, 2 digits, optional 4th character (digit or X, as in
# HES 'R69X'); '-' is HES's "no diagnosis in this position".
ICD10_RE = r"^(?:[A-Z][0-9]{2}[0-9X]?|-)$"
# OPCS-4: letter + 3 digits; '-' (padded '-   ') means no procedure.
OPCS4_RE = r"^(?:[A-Z][0-9]{3}|-\s*)$"
SPECIALTY_RE = r"^[0-9]{3}$"
# FFT WARD_CODE (inputs.md): 1 to 8 characters A-Z, 0-9 after trimming and upper-casing.
# Spelled with both cases, not (?i): a case-insensitive class also takes the Kelvin sign and
# the long s, which upper-case to K and S.
WARD_CODE_RE = r"^[A-Za-z0-9]{1,8}$"

# Warn rules whose failing value is blanked in the typed (silver) row: the row is kept and
# counted in the data-quality outputs, and the value, which would reach the restricted
# zone (and, through consultant outcomes or FFT by specialty, the public one), is read as
# not known. (Rule id -> the column's format.)
# EPIORDER: 1 or 2 digits (HES writes 1 for 01); ingest writes a 1-digit order with its
# leading 0, so the restricted zone holds 2 digits (98 and 99 included).
EPIORDER_RE = r"^[0-9]{1,2}$"


def codes_re(codes: tuple[str, ...]) -> str:
    """A regex matching exactly one of ``codes``."""
    import re

    return "^(?:" + "|".join(re.escape(c) for c in codes) + ")$"


BLANK_ON_FAIL = {
    "CONSULT_FORMAT": CONSULTANT_RE,
    "MAINSPEF_FORMAT": SPECIALTY_RE,
    "TRETSPEF_FORMAT": SPECIALTY_RE,
    "EPIORDER_FORMAT": EPIORDER_RE,
    "CLASSPAT_CODE": codes_re(CLASSPAT_CODES),
    "LSOA_FORMAT": LSOA_RE,  # GP extracts: the lsoa of linked_episodes
}


def column_rules(feed: Feed, c: InputColumn, *, skip: tuple[str, ...] = ()) -> list[Rule]:
    """The rules a column's declaration implies: required -> not null (reject), code set ->
    in set (reject when required, else warn), date -> real date and not in the future,
    and the format of postcodes, LSOAs, MYDOB, consultant, ICD-10 and OPCS-4 codes."""
    sev: Severity = R if c.required else W
    out: list[Rule] = []
    if c.kind == "nhs_number":
        return out  # declared by the feed (missing/invalid are warn)
    if c.required and "missing" not in skip:
        out.append(not_null(c.name, R))
    if c.codes and "codes" not in skip:
        out.append(in_set(c.name, c.codes, sev))
    if c.kind == "date":
        out.append(iso_date(c.name, sev))
        # A date in the future is impossible, not merely poor: the row is unusable.
        out.append(not_future(c.name, R))
    elif c.kind == "postcode":
        out.append(regex(c.name, POSTCODE_RE, W, f"{c.name} is not shaped like a UK postcode."))
    elif c.kind == "lsoa":
        out.append(regex(c.name, LSOA_RE, W, f"{c.name} is not a 2011 LSOA code (E01 + 6 digits): "
                                          "the row is kept with the LSOA not known."))
    elif c.kind == "mydob":
        out.append(regex(c.name, MYDOB_RE, W, f"{c.name} is not a month and year of birth written MMYYYY."))
    elif c.kind == "consultant":
        out.append(regex(c.name, CONSULTANT_RE, W, f"{c.name} is not a consultant code (C + 7-digit GMC "
                                                  "number): the row is kept with the consultant not known."))
    elif c.kind == "icd10":
        out.append(regex(c.name, ICD10_RE, W,
                         f"{c.name} is not an ICD-10 code (letter, 2 digits, optional 4th character, no dot)."))
    elif c.kind == "opcs4":
        out.append(regex(c.name, OPCS4_RE, W, f"{c.name} is not an OPCS-4 code (letter + 3 digits, no dot)."))
    return out
