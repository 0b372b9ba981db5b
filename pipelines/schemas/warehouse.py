"""Internal warehouse tables: the contract between pipeline stages.

Internal tables are never published as they are. They may hold NHS numbers (the
warehouse is the data centre's own store) but never a type 1 objector's GP row.
Layout in the warehouse root (see :mod:`pipelines.warehouse`)::

    ledger/parts/<sha256[:16]>-<sha1(path)[:8]>-<stage>.parquet  ledger events (append-only)
    ledger/gp_extracts/period=YYYY-MM/<submission_id>.parquet  GP extracts and objection counts
    ledger/gp_type2/period=YYYY-MM/<part>.parquet           NHS numbers of type 2 rows (kept or quarantined)
    reference/<table>.parquet                               practices, providers, sites
    silver/<source>/period=YYYY-MM/<submission_id>.parquet  validated, typed, kept rows
    quarantine/<source>/period=YYYY-MM/<submission_id>.parquet  rejected rows + rules
    dq/rules/period=YYYY-MM/<submission_id>.parquet         per-rule counts per submission
    dq/fields/period=YYYY-MM/<submission_id>.parquet        per-field item scores
    current/<table>/period=YYYY-MM/part-00000.parquet       the current view (protocols applied)
    linked/<table>/period=YYYY-MM/part-00000.parquet        linkage results (internal)
"""

from __future__ import annotations

from pipelines.schemas import F_PERIOD, PERIOD, Dataset, b, cols, d, dates, i, register, s, strings, ts

_sub = (
    s("submission_id", "Identity of the submission: the file name without extension.", nullable=False),
    i("line", "Line number in the file (1 = header; first data row is 2).", nullable=False),
)
_warn = strings("dq_warnings", "Ids of the warn-severity rules the row broke.")

ref_practices = register(Dataset(
    name="ref_practices", zone="internal", grain="GP practice (epraccur row)", partition_by=None,
    description="GP practices from ODS epraccur.",
    columns=cols(
        s("practice_code", "epraccur column 1.", nullable=False),
        s("name", "epraccur column 2."),
        s("postcode", "epraccur column 10."),
        d("open_date", "epraccur column 11."),
        d("close_date", "epraccur column 12."),
        s("status", "epraccur column 13: A, C, D or P."),
        s("commissioner_code", "epraccur column 15."),
        s("prescribing_setting", "epraccur column 26: 4 is a GP practice."),
    ),
))

ref_providers = register(Dataset(
    name="ref_providers", zone="internal", grain="provider", partition_by=None,
    description="NHS trusts and other providers.",
    columns=cols(
        s("provider_code", "3-character code.", nullable=False),
        s("name", "Name."),
        s("commissioner_code", "Host CCG/ICB."),
    ),
))

ref_sites = register(Dataset(
    name="ref_sites", zone="internal", grain="site", partition_by=None,
    description="Provider sites.",
    columns=cols(
        s("site_code", "5-character code.", nullable=False),
        s("provider_code", "Provider."),
        s("name", "Name."),
    ),
))

ledger = register(Dataset(
    name="ledger", zone="internal", grain="file seen in the landing zone", partition_by=None,
    description="Every file seen, with its hash and outcome; the public 'submissions' dataset is derived from it. "
                "Stored as append-only event parts under ledger/parts/ (status seen, taken, held or rejected); "
                "pipelines.ingest.read_ledger reconciles them into this table.",
    columns=cols(
        s("file_name", "Path relative to the landing root.", nullable=False),
        s("submission_id", "File name without folder and extension."),
        s("source", "reference, gp, sus_apc, hes_apc or fft."),
        s("submitter_code", "Practice or provider code from the name."),
        s("reporting_period", "YYYY-MM from the name (GP: the extract date's month)."),
        ts("submitted_at", "Submission time from the name (GP: extract date midnight)."),
        s("protocol", "BULK or NET for SUS."),
        s("sha256", "SHA-256 of the bytes.", nullable=False),
        i("size_bytes", "Size of the file in bytes."),
        ts("first_seen_at", "When the pipeline first saw the file (UTC)."),
        s("status", "current, superseded, held, rejected (or pending: seen, not yet taken in); derived at read time."),
        s("reason", "Plain words; empty when current."),
        i("rows_received", "Rows read (type 1 excluded)."),
        i("rows_quarantined", "Rows quarantined."),
        i("rows_kept", "Rows kept."),
        i("type1_objections", "GP only: type 1 rows dropped on read."),
    ),
))

gp_patients = register(Dataset(
    name="gp_patients", zone="internal", grain="GP extract row (kept), per submission",
    description="Validated GP extract rows. Type 1 rows never reach this table.",
    columns=cols(
        PERIOD, *_sub,
        s("practice_code", "Practice from the file name.", nullable=False),
        d("extract_date", "Extract date from the file name.", nullable=False),
        s("nhs_number", "Canonical 10-digit NHS number; empty when invalid or missing."),
        b("nhs_number_valid", "Modulus 11 valid.", nullable=False),
        d("date_of_birth", "Date of birth."),
        s("sex", "0, 1, 2 or 9."),
        s("postcode", "Postcode, spaces removed, upper case."),
        s("lsoa", "LSOA 2011."),
        s("ethnic_category", "Ethnic category."),
        d("registration_date", "Registration start."),
        d("deregistration_date", "Registration end."),
        d("date_of_death", "Date of death."),
        b("type2_objection", "OBJECTION is 9Nu4.", nullable=False),
        _warn,
    ),
))

sus_episodes = register(Dataset(
    name="sus_episodes", zone="internal", grain="SUS/HES episode row (kept), per submission",
    description="Validated SUS APC (and HES APC) episodes, typed.",
    columns=cols(
        PERIOD, *_sub,
        s("source", "sus_apc or hes_apc.", nullable=False),
        s("provider_code", "PROCODE3.", nullable=False),
        s("susrecid", "SUSRECID (HES: EPIKEY where SUSRECID is absent).", nullable=False),
        s("cds_update_type", "9 insert/replace, 1 delete (BULK and HES rows: 9)."),
        s("spell_id", "SUSSPELLID."),
        s("epiorder", "EPIORDER."),
        s("epistat", "EPISTAT."),
        d("epistart", "EPISTART."),
        d("epiend", "EPIEND."),
        d("admidate", "ADMIDATE."),
        d("disdate", "DISDATE."),
        s("admimeth", "ADMIMETH."),
        s("dismeth", "DISMETH."),
        s("admisorc", "ADMISORC."),
        s("disdest", "DISDEST."),
        s("classpat", "CLASSPAT."),
        s("sex", "SEX."),
        s("nhs_number", "Canonical NEWNHSNO; empty when invalid or missing."),
        b("nhs_number_valid", "NEWNHSNO is a valid NHS number.", nullable=False),
        s("nhsnoind", "NHSNOIND."),
        d("dob", "DOB."),
        i("birth_year", "Year of birth (DOB, else MYDOB)."),
        i("birth_month", "Month of birth (DOB, else MYDOB)."),
        s("postcode", "HOMEADD, spaces removed, upper case."),
        s("gpprac", "GPPRAC."),
        s("consultant_code", "CONSULT."),
        s("mainspef", "MAINSPEF."),
        s("tretspef", "TRETSPEF."),
        strings("diagnoses", "DIAG_4_01..20, present ones in order."),
        strings("procedures", "OPERTN_4_01..24, present ones in order ('-' placeholders dropped)."),
        dates("procedure_dates", "OPDATE_nn aligned with procedures (empty where absent)."),
        s("pseudo_hesid", "PSEUDO_HESID."),
        _warn,
    ),
))

fft_responses = register(Dataset(
    name="fft_responses", zone="internal", grain="FFT response (kept), per submission",
    description="Validated FFT responses.",
    columns=cols(
        PERIOD, *_sub,
        s("provider_code", "PROVIDER_CODE.", nullable=False),
        s("response_id", "RESPONSE_ID.", nullable=False),
        s("site_code", "SITE_CODE."),
        s("ward_code", "WARD_CODE."),
        s("setting", "SETTING."),
        d("response_date", "RESPONSE_DATE."),
        s("response", "1..6."),
        s("nhs_number", "Canonical NHS number; empty when invalid or missing."),
        b("nhs_number_valid", "Valid NHS number.", nullable=False),
        s("tretspef", "TRETSPEF."),
        s("mode", "MODE."),
        _warn,
    ),
))

quarantine = register(Dataset(
    name="quarantine", zone="internal", grain="rejected row",
    description="Rows that broke a reject rule, with every rule they broke. Restricted; never published.",
    columns=cols(
        PERIOD, *_sub,
        s("source", "gp, sus_apc, hes_apc or fft.", nullable=False),
        s("file_name", "Path relative to the landing root.", nullable=False),
        s("submitter_code", "Practice or provider."),
        strings("rule_ids", "Every rule the row broke (reject and warn)."),
        strings("messages", "The rules' messages, in order."),
        s("raw", "The row as read, JSON (for the operator chasing the submitter)."),
    ),
))

dq_rules = register(Dataset(
    name="dq_rules", zone="internal", grain="submission, rule",
    description="Each rule's counts for each submission.",
    columns=cols(
        PERIOD,
        s("submission_id", "Submission.", nullable=False),
        s("source", "Feed."),
        s("submitter_code", "Submitter."),
        s("rule_id", "Rule id."),
        s("field", "Field."),
        s("severity", "reject or warn."),
        i("rows_checked", "Rows checked."),
        i("rows_failed", "Rows failing."),
        strings("example_lines", "Up to 5 line numbers of failing rows (never identifiers)."),
    ),
))

dq_fields = register(Dataset(
    name="dq_fields", zone="internal", grain="submission, scored field",
    description="DQMI item scores: rows whose value is present and valid, per field.",
    extra={"added_columns": ("rows_present", "rows_default")},
    columns=cols(
        PERIOD,
        s("submission_id", "Submission.", nullable=False),
        s("source", "Feed."),
        s("submitter_code", "Submitter."),
        s("field", "Scored field."),
        i("rows", "Rows scored."),
        i("rows_valid", "Rows present and valid."),
        i("rows_present", "DQMI completeness: rows where the field has a value (valid or not); empty in parts "
          "written before it was recorded."),
        i("rows_default", "DQMI default values: rows present and valid whose value is one of the field's "
          "default (\"not known\") values, declared on its ScoredField in expectations/; empty in parts "
          "written before it was recorded."),
    ),
))

submission_columns = register(Dataset(
    name="submission_columns", zone="internal", grain="column of the header of a submission taken in or held",
    description="Each submission's header as read: the column NAMES only, never a value "
                "(pipelines.drift; written at take-in with the file's other parts; a HES extract under the "
                "latest month it holds). Schema drift is read from it: columns added, missing or renamed "
                "against the declared feed and against the submitter's previous submission; DQMI coverage "
                "(pipelines.quality) too.",
    columns=cols(
        PERIOD,
        s("submission_id", "Submission.", nullable=False),
        s("source", "gp, sus_apc, hes_apc or fft.", nullable=False),
        s("submitter_code", "Practice or provider from the file name (empty for a HES extract)."),
        s("file_name", "The file as the public submissions ledger names it (a HES extract: hes_apc/extract-<12 hex>)."),
        ts("submitted_at", "Submission time from the name (a HES extract: when it was first seen): orders a "
                           "submitter's submissions."),
        i("position", "1-based position of the column in the header.", nullable=False),
        s("column_name", "The name: a declared column in its declared spelling (matched trimmed, ignoring "
                         "case), another as written (trimmed) when shaped like a field name (a letter, then "
                         "letters, digits or _, holding no identifier), else '(unnamed column N)'.",
          nullable=False),
        b("declared", "The name is a column the feed declares (pipelines.schemas.inputs).", nullable=False),
    ),
))

gp_extracts = register(Dataset(
    name="gp_extracts", zone="internal", grain="GP extract (submission)",
    description="Each GP extract taken in, with its objection counts (one part per extract; "
                "period = month of the extract date).",
    columns=cols(
        PERIOD,
        s("submission_id", "Submission.", nullable=False),
        s("practice_code", "Practice.", nullable=False),
        d("extract_date", "Extract date.", nullable=False),
        i("rows_received", "Rows (type 1 excluded)."),
        i("type1_objections", "Type 1 rows dropped on read (only their count is kept)."),
        i("type2_objections", "Type 2 rows among the rows received (kept or quarantined)."),
        b("held", "Held by the data-quality rule (more than half rows rejected)."),
    ),
))

gp_type2 = register(Dataset(
    name="gp_type2", zone="internal", grain="type 2 objection row of a GP extract taken in or held",
    description="Every valid NHS number on a 9Nu4 (type 2) row of every GP extract taken in or held, "
                "whether the row was kept or quarantined (a quarantined row is not in gp_patients, and a "
                "held extract is never current). Linkage ORs it into the type 2 flag "
                "(pipelines.current.gp_type2_numbers), so an objection is honoured whichever extract is current. "
                "Never published; type 1 rows never reach it.",
    columns=cols(
        PERIOD,
        s("submission_id", "Submission (GP extract).", nullable=False),
        s("practice_code", "Practice.", nullable=False),
        d("extract_date", "Extract date.", nullable=False),
        s("nhs_number", "Canonical 10-digit NHS number (valid ones only).", nullable=False),
    ),
))


# --------------------------------------------------------------------------- working tables
# What the relational plans (pipelines.current, pipelines.linkage, pipelines.outcomes)
# write under work/<name>/period=YYYY-MM/ (Warehouse.write_raw). Checked, not only
# documented: each plan's output goes through Dataset.check (nullable and codes).
def _with(columns, **changes):
    """``columns`` with some replaced by name (``name=Column``)."""
    return tuple(changes.pop(c.name, c) for c in columns)


_SUS_COLUMNS = _with(
    sus_episodes.columns,
    source=s("source", "sus_apc or hes_apc.", nullable=False, codes=("sus_apc", "hes_apc")),
    cds_update_type=s("cds_update_type", "9: after the protocols no deletion is left in the current view.",
                      codes=("9",)),
)

current_sus_episodes = register(Dataset(
    name="current_sus_episodes", zone="internal", grain="SUS/HES episode in force for the period",
    description="The current view of the period's SUS episodes: BULK and NET protocols applied in submission "
                "order, HES extract rows as net change (pipelines.current.current_sus; work/current_sus_episodes).",
    columns=cols(*_SUS_COLUMNS),
))

linked_episodes_working = register(Dataset(
    name="linked_episodes_working", zone="internal", grain="SUS/HES episode in force for the period",
    description="The period's current episodes with their linkage to GP registrations "
                "(pipelines.linkage.link_episodes; work/linked_episodes). Holds NHS numbers: never published "
                "as it is (the restricted linked_episodes is made from it).",
    columns=cols(
        *_SUS_COLUMNS,
        i("match_rank", "Linkage rank 1-5; empty when unlinked.", codes=("1", "2", "3", "4", "5")),
        s("linked_nhs_number", "NHS number of the linked GP patient."),
        s("registered_practice", "Practice whose registration covers EPISTART."),
        s("lsoa", "LSOA of the linked patient's covering registration, else latest."),
        d("date_of_death", "The linked patient's date of death."),
        b("type2_objection", "The linked patient, or the owner of the episode's NHS number, objected (type 2).",
          nullable=False),
        d("linked_date_of_birth", "Ranks 1-4: the linked patient's date of birth (newest extract)."),
    ),
))

spells = register(Dataset(
    name="spells", zone="internal", grain="hospital provider spell of the outcomes window",
    description="Spells of the outcomes window with index procedure and outcomes "
                "(pipelines.outcomes.window_spells; work/spells). Holds person keys: never published as it is.",
    columns=cols(
        PERIOD,
        s("provider_code", "Provider.", nullable=False),
        s("spell_id", "SUSSPELLID, else DER:/EPI: + first episode's SUSRECID.", nullable=False),
        s("person_key", "Valid NHS number, else linked patient's, else HESID:<PSEUDO_HESID>."),
        s("pseudo_hesid", "PSEUDO_HESID."),
        s("spell_period", "Month of the spell (YYYY-MM).", nullable=False, format=F_PERIOD),
        d("admidate", "Admission date."),
        d("disdate", "Discharge date (none when the last episode is unfinished)."),
        s("admimeth", "ADMIMETH of the first episode."),
        s("dismeth", "DISMETH of the last episode."),
        i("los_days", "disdate - admidate.", unit="days"),
        i("age", "Age at admission.", unit="years"),
        s("sex", "SEX."),
        b("emergency", "Emergency admission.", nullable=False),
        s("specialty", "Specialty of the index procedure, if any."),
        s("index_procedure", "OPCS-4 code of the index procedure."),
        d("index_procedure_date", "Its date."),
        s("consultant_code", "Consultant of the episode holding the index procedure."),
        s("opcs_group", "3-character OPCS-4 group of the index procedure."),
        i("charlson_index", "Charlson comorbidity index."),
        b("death_30d", "Died within 30 days of the index procedure (empty: no index procedure)."),
        b("discharged_alive", "Discharged alive.", nullable=False),
        b("emergency_readmission_30d", "Emergency readmission 1-30 days after discharge."),
        b("type2_objection", "Type 2 objector.", nullable=False),
    ),
))
