"""Suite of the GP extract feed (``gp/``), inputs.md "GP extracts".

Type 1 objection rows, and rows whose objection cannot be read (read as type 1), never
reach validation: the reader drops them (pipelines/landing.py).
"""

from __future__ import annotations

import pandas as pd

from expectations.rules import (
    ETHNIC_DEFAULTS,
    POSTCODE_DEFAULT_PREFIXES,
    SEX_DEFAULTS,
    Env,
    R,
    Rule,
    ScoredField,
    W,
    column_rules,
    nhs_number,
    not_before,
)
from pipelines.schemas.inputs import GP

FEED = GP
SOURCES = ("gp",)


def _rules() -> list[Rule]:
    out: list[Rule] = []
    # The NHS number is the key of the care.data extract: a row without a valid one can
    # never be a patient (linkage, registered counts), so it is quarantined.
    out += nhs_number("NHS_NUMBER", missing=R, invalid=R)
    for c in FEED.columns:
        if c.name == "OBJECTION":
            # No rule: the reader (pipelines.landing.objection_kind) has already made every
            # value empty or 9Nu4; type 1 rows, and any value it cannot read (read as type 1,
            # inputs.md), never reach validation, so no objector is ever quarantined.
            continue
        out += column_rules(FEED, c)
    out += [
        not_before("REGISTRATION_DATE", "DATE_OF_BIRTH", W, "REGISTRATION_BEFORE_BIRTH",
                   "REGISTRATION_DATE is before DATE_OF_BIRTH."),
        not_before("DEREGISTRATION_DATE", "REGISTRATION_DATE", W, "DEREGISTRATION_BEFORE_REGISTRATION",
                   "DEREGISTRATION_DATE is before REGISTRATION_DATE."),
        not_before("DATE_OF_DEATH", "DATE_OF_BIRTH", W, "DEATH_BEFORE_BIRTH",
                   "DATE_OF_DEATH is before DATE_OF_BIRTH."),
    ]
    return out


RULES = _rules()

SCORED = (
    ScoredField("NHS_NUMBER"),
    ScoredField("DATE_OF_BIRTH"),
    ScoredField("SEX", defaults=SEX_DEFAULTS),
    ScoredField("POSTCODE", default_prefixes=POSTCODE_DEFAULT_PREFIXES),
    ScoredField("LSOA"),
    ScoredField("ETHNIC_CATEGORY", defaults=ETHNIC_DEFAULTS),
    ScoredField("REGISTRATION_DATE"),
)

KEY_COLUMNS: tuple[str, ...] = ()  # a GP extract has no record key to be unique


# ``prepare`` reads each row alone, so many extracts may be prepared together.
PREPARE_PER_FILE = False


def prepare(frame: pd.DataFrame, env: Env) -> pd.DataFrame:
    return frame
