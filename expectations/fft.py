"""Suite of the Friends and Family Test feed (``fft/``), inputs.md "Friends and Family Test"."""

from __future__ import annotations

import pandas as pd

from expectations.rules import (
    KEY,
    REPEAT,
    SITE_DEFAULTS,
    WARD_CODE_RE,
    Env,
    R,
    Rule,
    ScoredField,
    W,
    column_rules,
    nhs_number,
)
from pipelines.schemas.inputs import FFT

FEED = FFT
SOURCES = ("fft",)


def _submitter(env: Env) -> dict | None:
    """value_set = [the provider in the file name]"""
    return {"column": "PROVIDER_CODE", "value_set": [env.submitter]} if env.submitter else None


def _sites(env: Env) -> dict | None:
    """value_set = the provider's sites in reference/sites.csv (not applied when the
    reference data is not given or lists no site for the provider)"""
    if not env.site_providers or not env.submitter:
        return None
    sites = sorted(s for s, p in env.site_providers.items() if p == env.submitter)
    return {"column": "SITE_CODE", "value_set": sites} if sites else None


def _in_period(env: Env) -> dict | None:
    """between the first and last day of the file's period"""
    bounds = env.period_bounds
    if bounds is None:
        return None
    return {"column": "RESPONSE_DATE", "min_value": bounds[0].isoformat(), "max_value": bounds[1].isoformat()}


def _rules() -> list[Rule]:
    out: list[Rule] = []
    for c in FEED.columns:
        if c.name == "NHS_NUMBER":
            out += nhs_number("NHS_NUMBER", missing=None)  # optional: given if the patient wishes
            continue
        out += column_rules(FEED, c)
        if c.name == "RESPONSE_ID":
            out.append(Rule("RESPONSE_ID_DUPLICATE", "RESPONSE_ID", R,
                            "RESPONSE_ID was already used by an earlier row of the file: the first "
                            "row stands, this repeat is quarantined.",
                            "ExpectColumnValuesToBeNull", {"column": REPEAT}))
        elif c.name == "PROVIDER_CODE":
            out.append(Rule("PROVIDER_CODE_SUBMITTER", "PROVIDER_CODE", R,
                            "PROVIDER_CODE is not the provider in the file name.",
                            "ExpectColumnValuesToBeInSet", _submitter,
                            fix="Write the provider code of the file name in PROVIDER_CODE on every row; "
                                "send another provider's responses in that provider's own file."))
        elif c.name == "SITE_CODE":
            out.append(Rule("SITE_CODE_FORMAT", "SITE_CODE", R, "SITE_CODE is not 5 letters or digits.",
                            "ExpectColumnValuesToMatchRegex", {"column": "SITE_CODE", "regex": r"^[A-Z0-9]{5}$"}))
            out.append(Rule("SITE_CODE_PROVIDER", "SITE_CODE", R,
                            "SITE_CODE is not a site of the provider (reference/sites.csv).",
                            "ExpectColumnValuesToBeInSet", _sites,
                            fix="Use one of your own site codes as ODS lists them; if the site is new, "
                                "tell the data team so that the reference data can be updated."))
        elif c.name == "RESPONSE_DATE":
            out.append(Rule("RESPONSE_DATE_PERIOD", "RESPONSE_DATE", R,
                            "RESPONSE_DATE is not in the file's reporting month.",
                            "ExpectColumnValuesToBeIsoDatesBetween", _in_period,
                            fix="Send each response in the file of the month it was given (the month "
                                "in the file name), or correct RESPONSE_DATE."))
        elif c.name == "WARD_CODE":
            # inputs.md: 1 to 8 characters A-Z, 0-9 after trimming and upper-casing; anything
            # else quarantines the row (a ward code is published in fft_scores.org_code).
            out.append(Rule("WARD_CODE_FORMAT", "WARD_CODE", R,
                            "WARD_CODE is not 1 to 8 letters A-Z or digits 0-9.",
                            "ExpectColumnValuesToMatchRegex", {"column": "WARD_CODE", "regex": WARD_CODE_RE}))
        elif c.name == "TRETSPEF":
            out.append(Rule("TRETSPEF_FORMAT", "TRETSPEF", W, "TRETSPEF is not a 3-digit treatment function code.",
                            "ExpectColumnValuesToMatchRegex", {"column": "TRETSPEF", "regex": r"^[0-9]{3}$"}))
    return out


RULES = _rules()

SCORED = (
    ScoredField("PROVIDER_CODE"),
    ScoredField("SITE_CODE", defaults=SITE_DEFAULTS),
    ScoredField("SETTING"),
    ScoredField("RESPONSE_DATE"),
    ScoredField("RESPONSE"),
    ScoredField("NHS_NUMBER"),  # reported (pct_valid_nhs_number), not in the FFT dq_score
)

KEY_COLUMNS = ("RESPONSE_ID",)


def prepare(frame: pd.DataFrame, env: Env) -> pd.DataFrame:
    frame[KEY] = frame["RESPONSE_ID"].astype("string").str.strip()
    frame[REPEAT] = pd.Series(pd.NA, index=frame.index, dtype="string").mask(
        frame[KEY].notna() & frame[KEY].duplicated(keep="first"), "1")
    return frame
