"""The published datasets of ../shared/spec/outputs.md, declared once.

Column names are exact. Counts that disclosure control may blank are ``suppress="count"``
(publishing adds ``<column>_suppressed``); rates computed from fewer than 8 records are
``suppress="rate"`` with the ``denominator`` count they come from.
"""

from __future__ import annotations

from pipelines.schemas import (
    F_COMMISSIONER,
    F_CONSULTANT,
    F_EPIORDER,
    F_FIELD,
    F_ICD10,
    F_IDENTIFIER,
    F_LSOA,
    F_OPCS4,
    F_PERIOD,
    F_PRACTICE,
    F_PROSE,
    F_PROVIDER,
    F_PSEUDONYM,
    F_RULE_ID,
    F_SHA256,
    F_SPECIALTY_CODE,
    PERIOD,
    Dataset,
    Format,
    b,
    cols,
    d,
    dates,
    f,
    i,
    register,
    s,
    strings,
    ts,
)
from pipelines.schemas.inputs import ADMIMETH_CODES, CLASSPAT_CODES, DISMETH_CODES, FFT_MODES, SEX_CODES

SETTINGS = (
    "IP", "AE", "MAT_ANTENATAL", "MAT_BIRTH", "MAT_POSTNATAL_WARD",
    "MAT_POSTNATAL_COMMUNITY", "OP", "COMMUNITY", "MH", "AMB", "GP",
)
SOURCES = ("gp", "sus_apc", "hes_apc", "fft")
# Formats of public columns that combine several kinds of code.
F_ORG = Format("fft_org", r"[A-Z0-9]{3}|[A-Z0-9]{5}|[A-Z0-9]{5}/[A-Z0-9]{1,8}",
               "commissioner or provider code (3 letters or digits), site code (5), or a ward "
               "written <site>/<ward> (ward: 1 to 8 letters or digits)")
F_PARENT = Format("fft_parent", r"[A-Z0-9]{3}|[A-Z0-9]{5}", "commissioner, provider (3) or site (5) code")
F_SUBMITTER = Format("submitter", r"[A-Z][0-9]{5}|[A-Z0-9]{3}", "GP practice code (A81001) or provider code (RGT)")
# A landing file name as published (inputs.md names; anything else is replaced by
# <folder>/unrecognised-<12 hex of its SHA-256>, and a HES extract's free name by
# hes_apc/extract-<12 hex>: ingest.public_file_name).
F_LANDING_NAME = Format(
    "landing_name",
    r"reference/(?:epraccur|providers|sites)\.csv(?:\.gz)?"
    r"|gp/GP_[A-Z][0-9]{5}_[0-9]{8}\.csv(?:\.gz)?"
    r"|sus_apc/APC_[A-Z0-9]{3}_[0-9]{6}_[0-9]{14}_(?:BULK|NET)\.csv(?:\.gz)?"
    r"|fft/FFT_[A-Z0-9]{3}_[0-9]{6}_[0-9]{14}\.csv(?:\.gz)?",
    "a landing file name that follows inputs.md (codes and dates only)")
F_FILE_NAME = Format(
    "file_name",
    F_LANDING_NAME.pattern
    + r"|(?:(?:reference|gp|sus_apc|fft|hes_apc)/)?unrecognised-(?:(?P<opaque1>[0-9a-f]{12})|not-opened)"
    + r"|hes_apc/extract-(?:(?P<opaque2>[0-9a-f]{12})|not-opened)",
    "a landing file name that follows inputs.md; else <folder>/unrecognised-<first 12 hex of its "
    "SHA-256> (no folder when it is not a landing folder), and hes_apc/extract-<12 hex> for a HES "
    "extract, whose name is free text; -not-opened in place of the digest for a file never opened")
NATIONAL = ("ENG",)
UNKNOWN_CONSULTANT = ("&",)

OUTLIER_STATUS = ("alarm_high", "alert_high", "as_expected", "alert_low", "alarm_low", "insufficient_data")

# --------------------------------------------------------------------------- linkage
linkage_coverage_practice = register(Dataset(
    name="linkage_coverage_practice",
    zone="public",
    key=("practice_code",),
    grain="period, GP practice",
    description="care.data linkage coverage of each active GP practice in a month.",
    columns=cols(
        PERIOD,
        s("practice_code", "ODS code of the GP practice (epraccur).", nullable=False, format=F_PRACTICE),
        s("commissioner_code", "CCG/ICB the practice belongs to (epraccur column 15).", format=F_COMMISSIONER),
        b("extract_received", "True where the practice provided an extract dated in the period.", nullable=False),
        d("extract_date", "Date of the practice's newest extract dated in the period; empty where none."),
        i("registered_patients", "Patients registered on the extract date (type 1 rows never counted, type 2 counted); empty without an extract.", suppress="count"),
        i("type1_objections", "Type 1 objections (9Nu0) in the practice's newest extract of the period; empty without an extract.", suppress="count"),
        i("type2_objections", "Type 2 objections (9Nu4) in the practice's newest extract of the period; empty without an extract.", suppress="count"),
        i("episodes_expected", "SUS episodes ending in the period whose GPPRAC is this practice.", suppress="count"),
        i("episodes_linked", "Of episodes_expected, those linked (any rank) to a patient whose registration here covers the episode start.", suppress="count"),
        f("pct_linked", "100 x episodes_linked / episodes_expected.", unit="percent", suppress="rate", denominator="episodes_expected",
          numerator="episodes_linked"),
        b("linked_to_hospital_data", "Provides an extract and pct_linked is at least the configured threshold (90%).", nullable=False),
    ),
))

linkage_coverage_provider = register(Dataset(
    name="linkage_coverage_provider",
    zone="public",
    key=("provider_code",),
    grain="period, provider",
    description="NHS number completeness and linkage of each provider's SUS episodes in a month.",
    columns=cols(
        PERIOD,
        s("provider_code", "ODS code of the provider (PROCODE3).", nullable=False, format=F_PROVIDER),
        s("commissioner_code", "Host CCG/ICB of the provider (providers.csv).", format=F_COMMISSIONER),
        i("episodes", "Episodes in the current view ending in the period.", suppress="count"),
        i("episodes_valid_nhs_number", "Episodes with a valid NHS number (Modulus 11).", suppress="count"),
        f("pct_valid_nhs_number", "100 x episodes_valid_nhs_number / episodes.", unit="percent", suppress="rate", denominator="episodes",
          numerator="episodes_valid_nhs_number"),
        i("episodes_verified_nhs_number", "Episodes with NHSNOIND 01 (present and verified).", suppress="count"),
        f("pct_verified_nhs_number", "100 x episodes_verified_nhs_number / episodes.", unit="percent", suppress="rate", denominator="episodes",
          numerator="episodes_verified_nhs_number"),
        i("episodes_linked", "Episodes linked to a GP-registered patient, any rank.", suppress="count"),
        f("pct_linked", "100 x episodes_linked / episodes.", unit="percent", suppress="rate", denominator="episodes",
          numerator="episodes_linked"),
        i("linked_rank_1", "Episodes linked at rank 1 (NHS number, date of birth, sex, postcode).", suppress="count"),
        i("linked_rank_2", "Episodes linked at rank 2 (NHS number, date of birth, sex).", suppress="count"),
        i("linked_rank_3", "Episodes linked at rank 3 (NHS number, month and year of birth, sex).", suppress="count"),
        i("linked_rank_4", "Episodes linked at rank 4 (NHS number only).", suppress="count"),
        i("linked_rank_5", "Episodes linked at rank 5 (no valid NHS number; date of birth, sex, postcode unique).", suppress="count"),
        b("meets_nhs_number_standard", "pct_valid_nhs_number is at least the configured standard (99%).", nullable=False),
    ),
))

linkage_coverage_summary = register(Dataset(
    name="linkage_coverage_summary",
    zone="public",
    key=("area_level", "area_code"),
    grain="period, area (national or commissioner)",
    description="Practices providing extracts and linked, and providers meeting the NHS number standard, nationally and per commissioner.",
    columns=cols(
        PERIOD,
        s("area_level", "national or commissioner.", nullable=False, codes=("national", "commissioner")),
        s("area_code", "ENG for national, else the CCG/ICB code.", nullable=False, codes=NATIONAL, format=F_COMMISSIONER),
        i("practices", "Active GP practices (status A, prescribing setting 4)."),
        i("practices_providing_extract", "Of those, practices with an extract dated in the period."),
        f("pct_practices_providing_extract", "100 x practices_providing_extract / practices.", unit="percent"),
        i("practices_linked", "Practices linked to hospital data (extract and linkage rate at least 90%)."),
        f("pct_practices_linked", "100 x practices_linked / practices.", unit="percent"),
        i("providers", "Providers with episodes in the period."),
        i("providers_meeting_nhs_number_standard", "Providers whose valid NHS number rate is at least 99%."),
        f("pct_providers_meeting_nhs_number_standard", "100 x providers_meeting_nhs_number_standard / providers.", unit="percent"),
    ),
))

# linkage_quality: who is linked and who is not. Categories of each characteristic
# (pipelines.linkage.linkage_quality computes them; "unknown" where the field is empty or
# not a code of inputs.md).
LQ_CHARACTERISTICS = ("age_band", "sex", "admission_method", "match_rank", "nhs_number_status")
LQ_AGE_BANDS = ("0-17", "18-44", "45-64", "65-74", "75-84", "85+", "unknown")
LQ_SEX = ("0", "1", "2", "9", "unknown")
LQ_ADMISSION_METHODS = ("elective", "emergency", "other", "unknown")
LQ_MATCH_RANKS = ("1", "2", "3", "4", "5", "unlinked")
LQ_NHS_NUMBER_STATUS = ("valid", "invalid", "missing")
LQ_CATEGORIES = tuple(dict.fromkeys(
    LQ_AGE_BANDS + LQ_SEX + LQ_ADMISSION_METHODS + LQ_MATCH_RANKS + LQ_NHS_NUMBER_STATUS))

linkage_quality = register(Dataset(
    name="linkage_quality",
    zone="public",
    grain="period, provider, characteristic, category",
    description="Who is linked and who is not: each provider's SUS episodes ending in the month, and "
                "those linked to a GP-registered patient (any rank), by age band, sex, admission method, "
                "match rank and NHS number status. Every characteristic splits the same episodes, so its "
                "categories add up to linkage_coverage_provider.episodes; a category with no episode has no row. "
                "Beyond the 1-to-7 rule, where one cell of a count is blanked in a provider's characteristic "
                "the next smallest is blanked too, and pct_linked is empty wherever either count is.",
    columns=cols(
        PERIOD,
        s("provider_code", "ODS code of the provider (PROCODE3).", nullable=False, format=F_PROVIDER),
        s("characteristic", "age_band, sex, admission_method, match_rank or nhs_number_status.",
          nullable=False, codes=LQ_CHARACTERISTICS),
        s("category",
          "The episodes' category of the characteristic. age_band: age in whole years at admission "
          "(as linked_episodes.age_at_admission: from DOB, else month and year of birth, else the linked "
          "GP record's date of birth) in 0-17, 18-44, 45-64, 65-74, 75-84, 85+, or unknown; sex: the SEX "
          "code 0 (not known), 1 (male), 2 (female), 9 (not specified), or unknown (empty or not a code); "
          "admission_method: elective (ADMIMETH 11, 12, 13), emergency (21-28, 2A-2D), other (31, 32, "
          "81-83, 98, 99), or unknown (empty or not a code); match_rank: 1 to 5 (the rank the episode "
          "linked at), or unlinked; nhs_number_status: valid (passes Modulus 11), invalid (present, fails "
          "it), or missing.",
          nullable=False, codes=LQ_CATEGORIES),
        i("episodes", "Episodes of the provider ending in the period in this category.", suppress="count"),
        i("episodes_linked", "Of those, episodes linked to a GP-registered patient, any rank (0 for match_rank unlinked).",
          suppress="count"),
        f("pct_linked", "100 x episodes_linked / episodes.", unit="percent", suppress="rate", denominator="episodes",
          numerator="episodes_linked"),
    ),
    key=("provider_code", "characteristic", "category"),
))

programme_targets = register(Dataset(
    name="programme_targets",
    zone="public",
    key=("area_level", "area_code", "target_id"),
    grain="period, area, target",
    description="The care.data programme targets of the planning documents, measured month by month.",
    columns=cols(
        PERIOD,
        s("area_level", "national or commissioner.", nullable=False, codes=("national", "commissioner")),
        s("area_code", "ENG for national, else the CCG/ICB code.", nullable=False, codes=NATIONAL, format=F_COMMISSIONER),
        s("target_id", "Identifier of the target (configuration).", nullable=False, format=F_IDENTIFIER),
        s("measure", "What is measured, in words.", format=F_PROSE),
        f("target_pct", "The target level.", unit="percent"),
        d("due_date", "Date the target falls due; empty where not set in configuration."),
        f("actual_pct", "The measured level in the period.", unit="percent"),
        s("status", "met, not_met, or not_yet_due (period ends before the due date).", codes=("met", "not_met", "not_yet_due")),
    ),
))

# --------------------------------------------------------------------------- outcomes
_window = (
    s("window_start", "First month of the window, YYYY-MM.", nullable=False, format=F_PERIOD),
    s("window_end", "Last month of the window, YYYY-MM (the partition).", nullable=False, format=F_PERIOD),
)

consultant_outcomes = register(Dataset(
    name="consultant_outcomes",
    zone="public",
    key=("window_start", "window_end", "specialty", "provider_code", "consultant_code"),
    grain="window, specialty, provider, consultant",
    description="Activity and risk-adjusted outcomes of each consultant in the ten specialties.",
    partition_by="period",
    columns=cols(
        PERIOD,
        *_window,
        s("specialty", "One of the ten specialties (methods.md).", nullable=False, format=F_IDENTIFIER),
        s("provider_code", "Provider of the episode holding the index procedure.", nullable=False, format=F_PROVIDER),
        s("consultant_code", "CONSULT of that episode: C + 7-digit GMC number.", nullable=False, codes=UNKNOWN_CONSULTANT, format=F_CONSULTANT),
        i("procedures", "Index procedures in the window (published for every consultant)."),
        i("deaths_30d", "Deaths within 30 days of the procedure.", suppress="count"),
        f("crude_mortality_pct", "100 x deaths_30d / procedures (published: the consultant-level exception).", unit="percent"),
        f("expected_deaths", "Sum of the risk model's probabilities over the consultant's procedures."),
        f("smr", "Standardised mortality ratio: observed / expected deaths."),
        f("risk_adjusted_mortality_pct", "SMR x the specialty's crude national rate.", unit="percent"),
        f("smr_lower_95", "Lower 95% exact Poisson limit for O given E, on the SMR scale."),
        f("smr_upper_95", "Upper 95% exact Poisson limit, on the SMR scale."),
        f("smr_lower_998", "Lower 99.8% exact Poisson limit, on the SMR scale."),
        f("smr_upper_998", "Upper 99.8% exact Poisson limit, on the SMR scale."),
        s("outlier_status", "alarm_high, alert_high, as_expected, alert_low, alarm_low or insufficient_data.", codes=OUTLIER_STATUS),
        i("readmissions_30d", "Emergency readmissions 1 to 30 days after discharge, any provider.", suppress="count"),
        f("readmission_pct", "100 x readmissions_30d / index spells discharged alive.", unit="percent"),
        f("median_los_days", "Median length of stay of the index spells.", unit="days"),
        f("od_lower_95", "Lower 95% overdispersion-adjusted limit on the SMR scale (method in outcomes.overdispersion: "
          "shmi = exp(-1.96 sqrt(1/E + tau2)), cqc = (1 - 1.96 sqrt(1/(4E) + tau2))^2); empty when the method is none."),
        f("od_upper_95", "Upper 95% overdispersion-adjusted limit on the SMR scale (as od_lower_95, + for -)."),
        f("od_lower_998", "Lower 99.8% overdispersion-adjusted limit on the SMR scale (z = 3.09)."),
        f("od_upper_998", "Upper 99.8% overdispersion-adjusted limit on the SMR scale (z = 3.09)."),
        s("od_status", "outlier_status against the overdispersion-adjusted limits (same codes); empty when the method is none.",
          codes=OUTLIER_STATUS),
        f("power_smr_2", "Probability of alarm_high (above the 99.8% exact Poisson limit) if the true SMR were 2, "
          "given expected_deaths (Walker et al., Lancet 2013); empty when expected_deaths is 0.", unit="probability"),
        f("min_detectable_smr", "Smallest true SMR that would be flagged alarm_high with 80% power at 99.8%, "
          "given expected_deaths; empty when expected_deaths is 0."),
    ),
))

specialty_outcomes = register(Dataset(
    name="specialty_outcomes",
    zone="public",
    key=("window_start", "window_end", "specialty"),
    grain="window, specialty",
    description="National outcomes and risk-model discrimination of each specialty.",
    columns=cols(
        PERIOD,
        *_window,
        s("specialty", "One of the ten specialties.", nullable=False, format=F_IDENTIFIER),
        i("procedures", "Index procedures in the window."),
        i("consultants", "Consultants with at least one index procedure."),
        i("deaths_30d", "Deaths within 30 days (national: not suppressed)."),
        f("crude_mortality_pct", "100 x deaths_30d / procedures.", unit="percent"),
        f("readmission_pct", "30-day emergency readmissions over index spells discharged alive.", unit="percent"),
        f("median_los_days", "Median length of stay.", unit="days"),
        f("c_statistic", "Area under the ROC curve of the specialty's risk model."),
        f("overdispersion_phi", "Dispersion ratio phi of the consultants' z-scores (mean square after 10% "
          "truncation (shmi) or winsorisation (cqc)); above 1 means more spread than chance; empty when the "
          "method is none or fewer than 2 consultants have 10 procedures."),
        f("overdispersion_tau2", "Between-consultant variance tau2 (DerSimonian-Laird) added to the adjusted limits, "
          "on the method's scale (log SMR for shmi, square-root SMR for cqc); 0 when phi <= 1."),
    ),
))

specialty_calibration = register(Dataset(
    name="specialty_calibration",
    zone="public",
    key=("window_start", "window_end", "specialty", "risk_decile"),
    grain="window, specialty, decile of risk",
    description="Calibration of each specialty's risk model: observed and expected deaths by decile of predicted risk.",
    columns=cols(
        PERIOD,
        *_window,
        s("specialty", "One of the ten specialties.", nullable=False, format=F_IDENTIFIER),
        i("risk_decile", "1 (lowest predicted risk) to 10.", nullable=False),
        i("procedures", "Index procedures in the decile."),
        i("observed_deaths", "Observed 30-day deaths (national: not suppressed)."),
        f("expected_deaths", "Sum of predicted probabilities."),
    ),
))

# --------------------------------------------------------------------------- FFT
_fft_counts = (
    s("question", "The question in force in the period: recommend (before 2020-04: how likely to recommend; "
      "answers 1 extremely likely to 5 extremely unlikely, 6 don't know) or experience (from 2020-04: "
      "\"Overall, how was your experience of our service?\"; answers 1 very good, 2 good, 3 neither good "
      "nor poor, 4 poor, 5 very poor, 6 don't know). The count columns keep the recommend names for both.",
      nullable=False, codes=("recommend", "experience")),
    i("responses", "Responses T (the sum of the six counts).", nullable=True),
    i("extremely_likely", "Answer 1 (extremely likely; from 2020-04 very good)."),
    i("likely", "Answer 2 (likely; from 2020-04 good)."),
    i("neither", "Answer 3 (neither likely nor unlikely; from 2020-04 neither good nor poor)."),
    i("unlikely", "Answer 4 (unlikely; from 2020-04 poor)."),
    i("extremely_unlikely", "Answer 5 (extremely unlikely; from 2020-04 very poor)."),
    i("dont_know", "Answer 6 (don't know)."),
    f("pct_recommend", "100 x (extremely_likely + likely) / responses (2014 method).", unit="percent"),
    f("pct_not_recommend", "100 x (unlikely + extremely_unlikely) / responses.", unit="percent"),
    f("pct_positive", "100 x (answers 1 + 2) / responses: % positive as NHS England publishes it since "
      "2020 (very good or good); equal to pct_recommend, every period.", unit="percent"),
    f("pct_negative", "100 x (answers 4 + 5) / responses: % negative as NHS England publishes it since "
      "2020 (poor or very poor); equal to pct_not_recommend, every period.", unit="percent"),
    f("net_score", "100 x (c1 - (c3 + c4 + c5)) / (T - c6), -100 to +100 (2013 scorecard); empty where T - c6 is 0."),
    b("suppressed", "True where counts and percentages are suppressed by NHS England's FFT rules.", nullable=False),
)

fft_scores = register(Dataset(
    name="fft_scores",
    zone="public",
    key=("setting", "level", "org_code"),
    grain="period, setting, level, organisation",
    description="Friends and Family Test results at ward, site, provider, commissioner and national level.",
    columns=cols(
        PERIOD,
        s("setting", "FFT setting (IP, AE, MAT_*, OP, COMMUNITY, MH, AMB, GP).", nullable=False, codes=SETTINGS),
        s("level", "ward, site, provider, commissioner or national.", nullable=False,
          codes=("ward", "site", "provider", "commissioner", "national")),
        s("org_code", "Organisation code; a ward is <site>/<ward>; national is ENG.", nullable=False, codes=NATIONAL, format=F_ORG),
        s("parent_code", "Code of the parent organisation (empty for national).", codes=NATIONAL, format=F_PARENT),
        *_fft_counts,
    ),
))

fft_by_specialty = register(Dataset(
    name="fft_by_specialty",
    zone="public",
    key=("provider_code", "tretspef"),
    grain="period, provider, treatment function",
    description="Inpatient FFT responses linked to the spell discharged 0 to 2 days before, by the treatment function of its last episode.",
    columns=cols(
        PERIOD,
        s("provider_code", "Provider of the response and the spell.", nullable=False, format=F_PROVIDER),
        s("tretspef", "Treatment function of the spell's last episode; & where not known.", nullable=False,
          codes=("&",), format=F_SPECIALTY_CODE),
        *_fft_counts,
    ),
))

# --------------------------------------------------------------------------- data quality
data_quality = register(Dataset(
    name="data_quality",
    zone="public",
    key=("source", "submitter_code", "rule_id"),
    grain="period, source, submitter, rule",
    description="Each validation rule's result for each submitter's current or held submissions of the month.",
    columns=cols(
        PERIOD,
        s("source", "gp, sus_apc, hes_apc or fft.", nullable=False, codes=SOURCES),
        s("submitter_code", "Practice or provider code.", nullable=False, format=F_SUBMITTER),
        s("rule_id", "Identifier of the rule (expectations/).", nullable=False, format=F_RULE_ID),
        s("field", "The field the rule reads.", format=F_FIELD),
        s("severity", "reject (row quarantined) or warn (row kept, flagged).", codes=("reject", "warn")),
        i("rows_checked", "Rows the rule was applied to."),
        i("rows_failed", "Rows that broke the rule."),
        f("pct_passed", "100 x (rows_checked - rows_failed) / rows_checked.", unit="percent"),
    ),
))

DQMI_COLUMNS = ("dqmi_coverage", "dqmi_completeness", "dqmi_validity", "dqmi_default_share", "dqmi_score")

data_quality_summary = register(Dataset(
    name="data_quality_summary",
    zone="public",
    key=("source", "submitter_code"),
    grain="period, source, submitter",
    description="Data-quality score (DQMI-style), sanction flag and hold status of each submitter's month, "
                "with NHS Digital's Data Quality Maturity Index (DQMI) measures beside dq_score "
                "(docs/data-quality.md, DQMI).",
    extra={"added_columns": DQMI_COLUMNS},
    columns=cols(
        PERIOD,
        s("source", "gp, sus_apc, hes_apc or fft.", nullable=False, codes=SOURCES),
        s("submitter_code", "Practice or provider code.", nullable=False, format=F_SUBMITTER),
        i("rows_received", "Rows received (type 1 objections never counted)."),
        i("rows_quarantined", "Rows rejected to quarantine."),
        i("rows_kept", "Rows kept (rows_received - rows_quarantined)."),
        f("dq_score", "100 x mean item score over the scored fields.", unit="score"),
        f("pct_valid_nhs_number", "Share of rows with a valid NHS number.", unit="percent"),
        b("below_sanction_threshold", "True when dq_score is under 95 (data_quality.sanction_score) or, for gp, "
          "sus_apc and hes_apc submitters, pct_valid_nhs_number is under 99% "
          "(data_quality.sanction_nhs_number_pct). FFT's NHS number is optional: an fft submitter's "
          "pct_valid_nhs_number is reported, neither scored nor sanctioned, so its flag follows dq_score alone. "
          "False where dq_score is empty (no scored field).", nullable=False),
        b("held", "True when any current-or-held submission of the month is held.", nullable=False),
        s("held_reason", "Why it was held, in plain words.", format=F_PROSE),
        f("dqmi_coverage", "DQMI coverage: 100 x the mean, over the feed's DQMI items (its scored fields), of "
          "the share of the month's submissions whose header carried the item (an item no submission "
          "sent counts 0). Empty where no submission's header was recorded.", unit="percent"),
        f("dqmi_completeness", "DQMI completeness: 100 x the mean, over the items sent, of the share of rows "
          "where the item has a value.", unit="percent"),
        f("dqmi_validity", "DQMI validity: 100 x the mean, over the items sent, of the share of the item's "
          "values that are valid (no rule on it failed).", unit="percent"),
        f("dqmi_default_share", "DQMI default values: 100 x the mean, over the items sent that have default "
          "codes, of the share of the item's valid values that are a default (\"not known\") code "
          "(sex 0 or 9, ethnic category Z or 99, ZZ99 postcodes, NHS number status other than 01, ...). "
          "Empty where no such item was sent.", unit="percent"),
        f("dqmi_score", "DQMI score as NHS Digital computes it: the mean item score over the items sent "
          "(item score = 100 x (valid values - defaults in excess of the item's threshold) / rows) "
          "times dqmi_coverage / 100. dq_score is unchanged beside it.", unit="score"),
    ),
))

submissions = register(Dataset(
    name="submissions",
    zone="public",
    key=("file_name", "sha256"),
    grain="file seen in the landing zone; period is the month (UTC) it was first seen",
    description="The ledger of every file seen in the landing zone and what became of it.",
    columns=cols(
        PERIOD,
        s("file_name", "Path relative to the landing root.", nullable=False, format=F_FILE_NAME),
        s("source", "reference, gp, sus_apc, hes_apc or fft.", codes=("reference",) + SOURCES),
        s("submitter_code", "Practice or provider code from the file name.", format=F_SUBMITTER),
        s("reporting_period", "Reporting month from the file name, YYYY-MM.", format=F_PERIOD),
        ts("submitted_at", "Submission time from the file name (UTC)."),
        s("protocol", "BULK or NET for SUS; empty otherwise.", codes=("BULK", "NET")),
        s("sha256", "SHA-256 of the file's bytes as stored; not-opened-<why> for a file never opened (a symbolic link, a special file, a path outside the landing root, a read error).", nullable=False, format=F_SHA256),
        s("status", "current, superseded, held or rejected.", codes=("current", "superseded", "held", "rejected")),
        s("reason", "Plain words; empty when current.", format=F_PROSE),
        i("rows_received", "Rows read (type 1 never counted); empty for a rejected file."),
        i("rows_quarantined", "Rows quarantined; empty for a rejected file."),
        i("rows_kept", "Rows kept; empty for a rejected file."),
    ),
))

# --------------------------------------------------------------------------- revisions
FFT_MODE_CODES = FFT_MODES + ("NOT_KNOWN",)
fft_mode = register(Dataset(
    name="fft_mode",
    zone="public",
    key=("setting", "level", "org_code", "mode"),
    grain="period, setting, level, organisation, mode of collection",
    description="Friends and Family Test responses by mode of collection (MODE), per provider and "
                "nationally, as NHS England publishes the mode breakdown, under the FFT suppression "
                "(docs/methods-fft.md, \"Mode of collection\").",
    columns=cols(
        PERIOD,
        s("setting", "FFT setting (IP, AE, MAT_*, OP, COMMUNITY, MH, AMB, GP).", nullable=False, codes=SETTINGS),
        s("level", "provider or national.", nullable=False, codes=("provider", "national")),
        s("org_code", "Provider code; national is ENG.", nullable=False, codes=NATIONAL, format=F_PROVIDER),
        s("mode", "Mode of collection (inputs.md MODE): SMS, PAPER, ONLINE, TABLET, PHONE, OTHER; NOT_KNOWN "
          "where the response gives none or a value not among them.", nullable=False, codes=FFT_MODE_CODES),
        *(c for c in _fft_counts if c.name in ("question", "responses", "pct_positive", "pct_negative")),
        b("suppressed", "True where responses and percentages are suppressed: the provider's fft_scores row "
          "is suppressed, the cell has 1 to 4 responses, or it is the complement of such a cell among the "
          "provider's modes or the mode's providers.", nullable=False),
    ),
))

# A run id as published (revisions): a Dagster run id (a UUID, whose hex the identifier
# scan does not read), or a short lower-case name (cli, bench); any other run id is
# published as run-<first 12 hex of its SHA-256> (pipelines.publish.public_run_id).
F_RUN_ID = Format(
    "run_id",
    r"(?P<opaque1>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"|run-(?P<opaque2>[0-9a-f]{12})|[a-z][a-z0-9_-]{0,63}",
    "the id of the pipeline run (a Dagster run id, 8-4-4-4-12 lower-case hex; or a short "
    "lower-case name such as cli; any other id as run-<first 12 hex of its SHA-256>), as in the "
    "dataset's _manifest.json")
# The public datasets whose revisions are recorded: those published per reporting period
# by a release (the ledger `submissions` is partitioned by the month a file was first seen,
# and `revisions` itself is append-only).
REVISED_DATASETS = (
    "linkage_coverage_practice", "linkage_coverage_provider", "linkage_coverage_summary",
    "programme_targets", "linkage_quality", "consultant_outcomes", "specialty_outcomes",
    "specialty_calibration", "fft_scores", "fft_by_specialty", "fft_mode", "data_quality", "data_quality_summary",
)

revisions = register(Dataset(
    name="revisions",
    zone="public",
    grain="dataset, period, release",
    description="What each release changed in a period already published: rows added, removed "
                "and changed, compared by the dataset's key, and the submissions taken in since the "
                "period's previous release. A first publication of a period is not a revision (no "
                "row), and a re-publication that changes nothing writes no row. Rows are only ever "
                "added: each release appends its rows to the period's partition.",
    key=("dataset", "release_run_id", "released_at"),
    columns=cols(
        PERIOD,
        s("dataset", "The public dataset revised.", nullable=False, codes=REVISED_DATASETS),
        s("release_run_id", "Run id of the release that revised the period.", nullable=False, format=F_RUN_ID),
        s("previous_run_id", "Run id of the period's previous publication (its manifest entry's run_id).", format=F_RUN_ID),
        i("rows_added", "Rows whose key was not in the previous publication of the period.", nullable=False),
        i("rows_removed", "Rows of the previous publication whose key is no longer published.", nullable=False),
        i("rows_changed", "Rows with the same key and any other value different (floats compared "
          "exactly as stored; an empty value differs from any value).", nullable=False),
        strings("submissions", "The landing files taken in (current or held) since the period's previous "
                "release, of the sources the dataset is computed from, named as the public "
                "`submissions` ledger names them; empty when the revision came from a file withdrawn "
                "or superseded, from reference data or from a change of method.", format=F_FILE_NAME),
        ts("released_at", "When the revised partition was published (UTC, whole seconds; the written_at of its manifest entry)."),
        ts("previous_released_at", "When the previous publication was written (UTC)."),
    ),
))

# --------------------------------------------------------------------------- restricted
linked_episodes = register(Dataset(
    name="linked_episodes",
    zone="restricted",
    grain="SUS episode",
    description="Pseudonymised SUS episodes linked to GP registrations. No type 2 patients.",
    columns=cols(
        PERIOD,
        s("person_id", "Keyed pseudonym: first 32 hex of HMAC-SHA256(key, NHS number or HESID:...).", format=F_PSEUDONYM),
        s("provider_code", "PROCODE3.", nullable=False, format=F_PROVIDER),
        s("susrecid", "Keyed pseudonym of the episode's record key: first 32 hex of HMAC-SHA256(key, "
          "SUSRECID:<provider>:<SUSRECID, or EPIKEY in HES>); the supplier's key is never published.",
          nullable=False, format=F_PSEUDONYM),
        s("spell_id", "Keyed pseudonym of the hospital provider spell (SUSSPELLID): first 32 hex of "
          "HMAC-SHA256(key, SPELL:<provider>:<spell id>), as linked_spells.spell_id; empty where the "
          "file gives no SUSSPELLID.", format=F_PSEUDONYM),
        s("epiorder", "Order of the episode in its spell (EPIORDER; a 1-digit order is written with "
          "a leading 0, anything else not an order is blanked at ingest, rule EPIORDER_FORMAT).", format=F_EPIORDER),
        d("admidate", "Admission date of the spell."),
        d("epistart", "Episode start."),
        d("epiend", "Episode end."),
        d("disdate", "Discharge date of the spell."),
        s("admimeth", "Admission method (ADMIMETH, inputs.md codes).", codes=ADMIMETH_CODES),
        s("dismeth", "Discharge method (DISMETH, inputs.md codes).", codes=DISMETH_CODES),
        s("classpat", "Patient classification (CLASSPAT; one not in the NHS Data Dictionary's codes "
          "is blanked at ingest, rule CLASSPAT_CODE).", codes=CLASSPAT_CODES),
        s("mainspef", "Main specialty (MAINSPEF; a malformed one is blanked at ingest, rule MAINSPEF_FORMAT).", format=F_SPECIALTY_CODE),
        s("tretspef", "Treatment function (TRETSPEF; a malformed one is blanked at ingest, rule TRETSPEF_FORMAT).", format=F_SPECIALTY_CODE),
        s("consultant_code", "CONSULT (a malformed one is blanked at ingest, rule CONSULT_FORMAT).", format=F_CONSULTANT),
        strings("diagnoses", "ICD-10 codes in order (malformed ones left out at ingest, rules DIAG_4_nn_FORMAT).", format=F_ICD10),
        strings("procedures", "OPCS-4 codes in order (malformed ones left out at ingest, rules OPERTN_4_nn_FORMAT).", format=F_OPCS4),
        i("age_at_admission", "Age in whole years at admission.", unit="years"),
        s("sex", "1 male, 2 female, 0/9 not known/specified.", codes=SEX_CODES),
        s("lsoa", "LSOA 2011 of the linked patient's GP record (a malformed one is blanked at ingest, rule LSOA_FORMAT).", format=F_LSOA),
        s("registered_practice", "Practice whose registration covers the episode start.", format=F_PRACTICE),
        i("match_rank", "Linkage rank 1-5; empty when unlinked."),
        d("date_of_death", "Date of death from the linked GP record."),
    ),
))

linked_spells = register(Dataset(
    name="linked_spells",
    zone="restricted",
    grain="hospital spell",
    description="Pseudonymised hospital spells built from linked episodes, with their index procedure and outcomes. No type 2 patients.",
    columns=cols(
        PERIOD,
        s("person_id", "Keyed pseudonym (methods.md).", format=F_PSEUDONYM),
        s("provider_code", "Provider.", nullable=False, format=F_PROVIDER),
        s("spell_id", "Keyed pseudonym of the spell: first 32 hex of HMAC-SHA256(key, SPELL:<provider>:<spell id>), "
          "where the spell id is SUSSPELLID (joins linked_episodes.spell_id), else DER: or EPI: and the "
          "first episode's SUSRECID for a derived spell.", nullable=False, format=F_PSEUDONYM),
        d("admidate", "Admission date."),
        d("disdate", "Discharge date."),
        s("admimeth", "Admission method of the first episode.", codes=ADMIMETH_CODES),
        s("dismeth", "Discharge method of the last episode.", codes=DISMETH_CODES),
        i("los_days", "disdate - admidate.", unit="days"),
        s("specialty", "Specialty of the index procedure, if any.", format=F_IDENTIFIER),
        s("index_procedure", "OPCS-4 code of the index procedure.", format=F_OPCS4),
        d("index_procedure_date", "Its date."),
        s("consultant_code", "Consultant of the episode holding the index procedure.", format=F_CONSULTANT),
        i("charlson_index", "Charlson comorbidity index (Quan ICD-10) from the spell's diagnoses."),
        b("death_30d", "Died within 30 days of the index procedure."),
        b("emergency_readmission_30d", "Emergency admission 1-30 days after discharge, any provider."),
    ),
))

PUBLIC = [d for d in (
    linkage_coverage_practice, linkage_coverage_provider, linkage_coverage_summary,
    programme_targets, linkage_quality, consultant_outcomes, specialty_outcomes, specialty_calibration,
    fft_scores, fft_by_specialty, fft_mode, data_quality, data_quality_summary, submissions, revisions,
)]
RESTRICTED = [linked_episodes, linked_spells]
_ = (dates,)  # available for declarations that need a list of dates
