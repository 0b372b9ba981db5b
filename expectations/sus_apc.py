"""Suite of SUS admitted patient care submissions (``sus_apc/``) and, with the HES
differences, HES APC extracts (``hes_apc/``), inputs.md "SUS admitted patient care" and
"HES APC extracts".

HES differences: a HES extract covers many providers and periods, so the checks against
the file name's provider do not apply; the record key is ``PROCODE3`` with ``SUSRECID``,
or ``EPIKEY`` where ``SUSRECID`` is absent; ``CDS_UPDATE_TYPE`` does not exist (every row is
an insert or replacement).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from expectations.custom import parse_iso_dates
from expectations.rules import (
    BIRTH,
    CONSULTANT_DEFAULTS,
    DIAGNOSIS_DEFAULTS,
    EPIORDER_RE,
    KEY,
    NHS_NUMBER_STATUS_VERIFIED,
    NOT_KNOWN_98_99,
    POSTCODE_DEFAULT_PREFIXES,
    PRACTICE_PLACEHOLDERS,
    PRACTICE_RE,
    REPEAT,
    SEX_DEFAULTS,
    SPECIALTY_RE,
    Env,
    R,
    Rule,
    ScoredField,
    W,
    column_rules,
    date_col,
    in_set,
    nhs_number,
    not_before,
    not_null,
    regex,
)
from pipelines.schemas.inputs import CDS_UPDATE_TYPES, HES_APC, SUS_APC

FEED = SUS_APC
SOURCES = ("sus_apc", "hes_apc")
SUS = ("sus_apc",)
HES = ("hes_apc",)


def _submitter(env: Env) -> dict | None:
    """value_set = [the provider in the file name]"""
    return {"column": "PROCODE3", "value_set": [env.submitter]} if env.submitter else None


def _practices(env: Env) -> dict | None:
    """value_set = practices of reference/epraccur.csv and V81997-V81999 (only when the
    reference data is given)"""
    if not env.practice_codes:
        return None
    return {"column": "GPPRAC", "value_set": sorted(set(env.practice_codes) | set(PRACTICE_PLACEHOLDERS))}


def _net_only(env: Env) -> dict | None:
    """applies to NET submissions only"""
    return {"column": "CDS_UPDATE_TYPE"} if env.protocol == "NET" else None


# HES's placeholder dates (inputs.md): "not known". Read as empty (the row then meets the
# rules of an empty value: a required date is missing), with a warning rule per column.
PLACEHOLDER_DATES = ("1800-01-01", "1801-01-01", "1600-01-01", "1582-10-15")
EARLIEST_DATE = "1890-01-01"  # any other date before it is impossible
PLACEHOLDER_SUFFIX = "__placeholder"  # "1" where the column held a placeholder date
DATE_COLUMNS = tuple(c.name for c in FEED.columns if c.kind == "date")


def placeholder_col(name: str) -> str:
    return f"{name}{PLACEHOLDER_SUFFIX}"


def is_placeholder_date(values: pd.Series) -> pd.Series:
    """True where a (stripped) value is one of HES's placeholder dates."""
    return values.astype("string").str.strip().isin(PLACEHOLDER_DATES).fillna(False).astype(bool)


def blank_placeholder_dates(values: pd.Series) -> pd.Series:
    """The values with HES's placeholder dates as missing."""
    return values.mask(is_placeholder_date(values))


def _date_rules(n: str) -> list[Rule]:
    """A date column's HES rules: a placeholder is counted (warn, read as empty); any other
    date before 1890 is impossible (reject, like a date after the file's submission)."""
    return [
        Rule(f"{n}_PLACEHOLDER", n, W,
             f"{n} is a HES placeholder date (1800-01-01, 1801-01-01, 1600-01-01 or 1582-10-15): "
             "read as not known.",
             "ExpectColumnValuesToBeNull", {"column": placeholder_col(n)}),
        Rule(f"{n}_BEFORE_1890", n, R,
             f"{n} is before 1890 (and not a HES placeholder date): an impossible date.",
             "ExpectColumnValuesToBeIsoDatesBetween", {"column": n, "min_value": EARLIEST_DATE}),
    ]


def _rules() -> list[Rule]:
    out: list[Rule] = []
    for c in FEED.columns:
        n = c.name
        if c.kind == "date":
            out += _date_rules(n)
        if n == "NEWNHSNO":
            out += nhs_number("NEWNHSNO", missing=W)
        elif n == "PROCODE3":
            out.append(not_null("PROCODE3", R))
            out.append(Rule("PROCODE3_SUBMITTER", "PROCODE3", R,
                            "PROCODE3 is not the provider in the file name.",
                            "ExpectColumnValuesToBeInSet", _submitter, sources=SUS,
                            fix="Write the provider code of the file name in PROCODE3 on every row; send "
                                "another provider's episodes in that provider's own file."))
            out.append(regex("PROCODE3", r"^[A-Z0-9]{3}$", R, "PROCODE3 is not a 3-character provider code.",
                             sources=HES))
        elif n == "SUSRECID":
            out.append(not_null("SUSRECID", R, "SUSRECID is missing: the episode has no identifier.",
                                sources=SUS))
            out.append(Rule("SUSRECID_MISSING", "SUSRECID", R,
                            "Both SUSRECID and EPIKEY are missing: the episode has no identifier.",
                            "ExpectColumnValuesToNotBeNull", {"column": KEY}, sources=HES))
            out.append(Rule("SUSRECID_DUPLICATE", "SUSRECID", R,
                            "The episode's key (SUSRECID; in HES, PROCODE3 with SUSRECID or EPIKEY) "
                            "was already used by an earlier row of the file: the first row stands, "
                            "this repeat is quarantined.",
                            "ExpectColumnValuesToBeNull", {"column": REPEAT}))
        elif n == "CDS_UPDATE_TYPE":
            out.append(Rule("CDS_UPDATE_TYPE_MISSING", n, R,
                            "CDS_UPDATE_TYPE is missing in a NET submission: insert or delete is unknown.",
                            "ExpectColumnValuesToNotBeNull", _net_only, sources=SUS,
                            fix="In a NET submission give every row its CDS_UPDATE_TYPE: 9 (insert or "
                                "replace) or 1 (delete)."))
            out.append(in_set(n, CDS_UPDATE_TYPES, R, "CDS update type", sources=SUS))
        elif n == "GPPRAC":
            out.append(regex("GPPRAC", PRACTICE_RE, W, "GPPRAC is not a GP practice code (letter + 5 digits)."))
            out.append(Rule("GPPRAC_UNKNOWN", "GPPRAC", W,
                            "GPPRAC is not a practice in the ODS reference file (epraccur).",
                            "ExpectColumnValuesToBeInSet", _practices,
                            fix="Use the patient's registered practice code as ODS lists it (epraccur); "
                                "V81997, V81998 or V81999 when there is no registered practice or it is "
                                "not known."))
        elif n in ("MAINSPEF", "TRETSPEF"):
            out.append(regex(n, SPECIALTY_RE, W, f"{n} is not a 3-digit code: the row is kept with {n} not known."))
        elif n == "EPIORDER":
            out.append(regex(n, EPIORDER_RE, W, "EPIORDER is not a 1- or 2-digit episode order: "
                             "the row is kept with EPIORDER not known."))
        else:
            out += column_rules(FEED, c)
        if n == "EPIEND":
            out.append(not_before("EPIEND", "EPISTART", R, "EPIEND_BEFORE_EPISTART",
                                  "EPIEND is before EPISTART: the episode ends before it starts."))
        elif n == "ADMIDATE":
            out.append(not_before("EPISTART", "ADMIDATE", W, "EPISTART_BEFORE_ADMIDATE",
                                  "EPISTART is before ADMIDATE: the episode starts before its admission."))
        elif n == "DISDATE":
            out.append(not_before("DISDATE", "ADMIDATE", W, "DISDATE_BEFORE_ADMIDATE",
                                  "DISDATE is before ADMIDATE: the spell ends before it starts."))
        elif n == "MYDOB":
            out.append(not_before("ADMIDATE", "DOB", R, "DOB_AFTER_ADMIDATE",
                                  "The date of birth (DOB, else MYDOB) is after ADMIDATE.",
                                  a=date_col("ADMIDATE"), b=BIRTH))
    # The rule on DOB after ADMIDATE reads DOB: its field is DOB.
    return [dataclasses.replace(r, field="DOB") if r.id == "DOB_AFTER_ADMIDATE" else r for r in out]


RULES = _rules()

SCORED = (
    # A valid NEWNHSNO whose status (NHSNOIND) is given and is not 01 (present and
    # verified) counts as a DQMI default: the number is there, not verified.
    ScoredField("NEWNHSNO", default_column="NHSNOIND", default_unless=NHS_NUMBER_STATUS_VERIFIED),
    ScoredField("DOB", ("DOB", "MYDOB")),
    ScoredField("SEX", defaults=SEX_DEFAULTS),
    ScoredField("HOMEADD", default_prefixes=POSTCODE_DEFAULT_PREFIXES),
    ScoredField("GPPRAC", defaults=PRACTICE_PLACEHOLDERS),
    ScoredField("ADMIDATE"),
    ScoredField("EPISTART"),
    ScoredField("EPIEND"),
    ScoredField("ADMIMETH", defaults=NOT_KNOWN_98_99),
    ScoredField("DISMETH", defaults=("9",)),
    ScoredField("ADMISORC", defaults=NOT_KNOWN_98_99),
    ScoredField("DISDEST", defaults=NOT_KNOWN_98_99),
    ScoredField("MAINSPEF"),
    ScoredField("TRETSPEF"),
    ScoredField("CONSULT", defaults=CONSULTANT_DEFAULTS),
    ScoredField("DIAG_4_01", defaults=DIAGNOSIS_DEFAULTS),
)

KEY_COLUMNS = ("PROCODE3", "SUSRECID", "EPIKEY")

# In a NET submission a deletion (CDS_UPDATE_TYPE 1) names only the episode to delete:
# the content rules do not apply to it, and it is not scored.
DELETION = "1"
KEY_RULES = ("PROCODE3_MISSING", "PROCODE3_SUBMITTER", "PROCODE3_FORMAT", "SUSRECID_MISSING",
             "SUSRECID_DUPLICATE", "CDS_UPDATE_TYPE_MISSING", "CDS_UPDATE_TYPE_CODE")


def row_condition(rule: Rule, env: Env) -> str | None:
    """The GX row condition (pandas parser) limiting a rule to some rows, or None."""
    if env.protocol == "NET" and rule.id not in KEY_RULES:
        return f'CDS_UPDATE_TYPE != "{DELETION}"'
    return None


def scored_rows(frame: pd.DataFrame, env: Env) -> pd.Series | None:
    """Rows that count in the field scores (all but NET deletions)."""
    if env.protocol != "NET":
        return None
    return (frame["CDS_UPDATE_TYPE"] != DELETION).fillna(True).astype(bool)


def prepare(frame: pd.DataFrame, env: Env) -> pd.DataFrame:
    def strip(name: str) -> pd.Series:
        if name not in frame.columns:
            return pd.Series(pd.NA, index=frame.index, dtype="string")
        s = frame[name].astype("string").str.strip()
        return s.mask(s == "")

    # HES placeholder dates: flagged, then read as empty (text and parsed date).
    for name in DATE_COLUMNS:
        if name not in frame.columns:
            continue
        # the work frame's columns are already stripped strings: a plain set lookup
        flag = frame[name].isin(PLACEHOLDER_DATES).fillna(False).astype(bool)
        # categorical: one byte a row (29 such columns on every SUS row)
        frame[placeholder_col(name)] = pd.Categorical.from_codes(np.where(flag.to_numpy(), 0, -1).astype(np.int8),
                                                                 categories=["1"])
        if bool(flag.any()):
            frame[name] = frame[name].mask(flag)
            if date_col(name) in frame.columns:
                frame[date_col(name)] = frame[date_col(name)].mask(flag)
    if env.source == "hes_apc":
        ident = strip("SUSRECID").fillna(strip("EPIKEY"))
        frame[KEY] = (strip("PROCODE3").fillna("") + "|" + ident).where(ident.notna())
    else:
        frame[KEY] = strip("SUSRECID")
    frame[REPEAT] = pd.Series(pd.NA, index=frame.index, dtype="string").mask(
        frame[KEY].notna() & frame[KEY].duplicated(keep="first"), "1")
    # Birth: DOB, else the first day of the MYDOB month (MMYYYY).
    mydob = strip("MYDOB")
    ok = mydob.str.fullmatch(r"(0[1-9]|1[0-2])[0-9]{4}").fillna(False).astype(bool)
    from_mydob = parse_iso_dates((mydob.str[2:] + "-" + mydob.str[:2] + "-01").where(ok))
    dob = frame[date_col("DOB")] if date_col("DOB") in frame.columns else parse_iso_dates(strip("DOB"))
    frame[BIRTH] = dob.where(dob.notna(), from_mydob)
    return frame


HES_FEED = HES_APC
