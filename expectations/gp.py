"""Suite of the GP extract feed (``gp/``), inputs.md "GP extracts".

Type 1 objection rows never reach validation (ingest drops them on read).
"""

from __future__ import annotations

import pandas as pd

from expectations.rules import R, W, Env, Rule, ScoredField, column_rules, nhs_number, not_before
from pipelines.schemas.inputs import GP, OBJECTION_CODES

FEED = GP
SOURCES = ("gp",)


def _rules() -> list[Rule]:
    out: list[Rule] = []
    # The NHS number is the key of the care.data extract: a row without a valid one can
    # never be a patient (linkage, registered counts), so it is quarantined.
    out += nhs_number("NHS_NUMBER", missing=R, invalid=R)
    for c in FEED.columns:
        if c.name == "OBJECTION":
            # Case-insensitive, as ingest's type 1 filter (a '9NU0' row never gets here).
            out.append(Rule(
                "OBJECTION_CODE", "OBJECTION", R,
                "OBJECTION is not empty, 9Nu0 or 9Nu4: the patient's objection cannot be "
                "read, so the row is held back until the practice corrects it.",
                "ExpectColumnValuesToMatchRegex",
                {"column": "OBJECTION", "regex": "(?i)^(?:" + "|".join(OBJECTION_CODES) + ")$"}))
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
    ScoredField("SEX"),
    ScoredField("POSTCODE"),
    ScoredField("LSOA"),
    ScoredField("ETHNIC_CATEGORY"),
    ScoredField("REGISTRATION_DATE"),
)

KEY_COLUMNS: tuple[str, ...] = ()  # a GP extract has no record key to be unique


# ``prepare`` reads each row alone, so many extracts may be prepared together.
PREPARE_PER_FILE = False


def prepare(frame: pd.DataFrame, env: Env) -> pd.DataFrame:
    return frame
