"""The landing-zone feeds of ../shared/spec/inputs.md, declared once.

A :class:`Feed` names its file-name pattern and its columns (all read as strings: codes
keep their leading zeros). The validation suites in ``expectations/`` are built from
these declarations plus each feed's rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class InputColumn:
    name: str
    description: str
    required: bool = False  # must be in the header, else the file is rejected whole
    kind: str = "string"  # string | date | code | nhs_number | postcode | ...
    codes: tuple[str, ...] | None = None
    why_in_header: str | None = None  # set: must be in the header even where every value is empty


@dataclass(frozen=True)
class Feed:
    source: str  # gp | sus_apc | hes_apc | fft | reference
    folder: str
    name_pattern: re.Pattern
    description: str
    columns: tuple[InputColumn, ...]
    delimiters: tuple[str, ...] = (",",)
    header: bool = True
    extra_columns_kept: bool = False

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    @property
    def header_columns(self) -> list[str]:
        """Columns that may be empty but must be in the header (else the file is rejected)."""
        return [c.name for c in self.columns if c.why_in_header]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> InputColumn:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)


SEX_CODES = ("0", "1", "2", "9")
ETHNIC_CODES = tuple("ABCDEFGHJKLMNPRSZ") + ("99",)
OBJECTION_CODES = ("9Nu0", "9Nu4")
TYPE1 = "9Nu0"
TYPE2 = "9Nu4"
ADMIMETH_ELECTIVE = ("11", "12", "13")
ADMIMETH_EMERGENCY = ("21", "22", "23", "24", "25", "28", "2A", "2B", "2C", "2D")
ADMIMETH_CODES = ADMIMETH_ELECTIVE + ADMIMETH_EMERGENCY + ("31", "32", "81", "82", "83", "98", "99")
DISMETH_CODES = ("1", "2", "3", "4", "5", "8", "9")
# Patient classification (NHS Data Dictionary): 1 ordinary admission, 2 day case, 3 regular
# day attender, 4 regular night attender, 5 mothers and babies using delivery facilities
# only, 8 not applicable, 9 not known.
CLASSPAT_CODES = ("1", "2", "3", "4", "5", "8", "9")
NHSNOIND_CODES = ("01", "02", "03", "04", "05", "06", "07", "08")
EPISTAT_CODES = ("1", "3", "9")
CDS_UPDATE_TYPES = ("9", "1")
FFT_SETTINGS = (
    "IP", "AE", "MAT_ANTENATAL", "MAT_BIRTH", "MAT_POSTNATAL_WARD",
    "MAT_POSTNATAL_COMMUNITY", "OP", "COMMUNITY", "MH", "AMB", "GP",
)
FFT_RESPONSES = ("1", "2", "3", "4", "5", "6")
FFT_MODES = ("SMS", "PAPER", "ONLINE", "TABLET", "PHONE", "OTHER")

# epraccur: headerless, 27 columns; 1-based positions used by the pipeline.
EPRACCUR_COLUMNS = {
    1: "ORG_CODE", 2: "NAME", 10: "POSTCODE", 11: "OPEN_DATE", 12: "CLOSE_DATE",
    13: "STATUS", 15: "COMMISSIONER_CODE", 26: "PRESCRIBING_SETTING",
}
EPRACCUR_WIDTH = 27

GP = Feed(
    source="gp",
    folder="gp",
    name_pattern=re.compile(r"^GP_(?P<submitter>[A-Z][0-9]{5})_(?P<date>[0-9]{8})\.csv(\.gz)?$"),
    description="One GP practice's full care.data core extract on the extract date.",
    columns=(
        InputColumn("NHS_NUMBER", "10 digits, may contain spaces; Modulus 11 valid.", True, "nhs_number"),
        InputColumn("DATE_OF_BIRTH", "Date of birth.", True, "date"),
        InputColumn("SEX", "0 not known, 1 male, 2 female, 9 not specified.", True, "code", SEX_CODES),
        InputColumn("POSTCODE", "UK postcode, any spacing and case.", False, "postcode"),
        InputColumn("LSOA", "2011 LSOA, E01 + 6 digits.", False, "lsoa"),
        InputColumn("ETHNIC_CATEGORY", "NHS ethnic category.", False, "code", ETHNIC_CODES),
        InputColumn("REGISTRATION_DATE", "Date the registration started.", True, "date"),
        InputColumn("DEREGISTRATION_DATE", "Date it ended.", False, "date"),
        InputColumn("DATE_OF_DEATH", "Date of death.", False, "date"),
        InputColumn("OBJECTION", "Empty, 9Nu0 (type 1) or 9Nu4 (type 2); any other value is read as type 1.",
                    False, "code", OBJECTION_CODES,
                    why_in_header="an extract without it cannot prove that no patient objected"),
    ),
)

_sus_cols = [
    InputColumn("PROCODE3", "Provider code; must equal the file name's provider.", True, "code"),
    InputColumn("SUSRECID", "CDS unique identifier of the episode.", True),
    InputColumn("EPISTART", "Episode start date.", True, "date"),
    InputColumn("EPIEND", "Episode end date.", True, "date"),
    InputColumn("ADMIDATE", "Admission date of the spell.", True, "date"),
    InputColumn("ADMIMETH", "Admission method.", True, "code", ADMIMETH_CODES),
    InputColumn("DISMETH", "Discharge method.", True, "code", DISMETH_CODES),
    InputColumn("SEX", "Sex.", True, "code", SEX_CODES),
    InputColumn("NEWNHSNO", "NHS number.", False, "nhs_number"),
    InputColumn("NHSNOIND", "NHS number status indicator.", False, "code", NHSNOIND_CODES),
    InputColumn("DOB", "Date of birth.", False, "date"),
    InputColumn("MYDOB", "Month and year of birth, MMYYYY.", False, "mydob"),
    InputColumn("HOMEADD", "Postcode of usual address.", False, "postcode"),
    InputColumn("GPPRAC", "Registered GP practice code.", False, "code"),
    InputColumn("SUSSPELLID", "Hospital provider spell identifier.", False),
    InputColumn("EPIORDER", "Order of the episode in its spell, 01, 02, ... (98, 99).", False, "code"),
    InputColumn("EPISTAT", "Episode status.", False, "code", EPISTAT_CODES),
    InputColumn("DISDATE", "Discharge date of the spell.", False, "date"),
    InputColumn("ADMISORC", "Admission source.", False, "code"),
    InputColumn("DISDEST", "Discharge destination.", False, "code"),
    InputColumn("CLASSPAT", "Patient classification.", False, "code", CLASSPAT_CODES),
    InputColumn("CONSULT", "Consultant: C + 7-digit GMC number.", False, "consultant"),
    InputColumn("MAINSPEF", "Main specialty, 3 digits.", False, "code"),
    InputColumn("TRETSPEF", "Treatment function, 3 digits.", False, "code"),
]
_sus_cols += [InputColumn(f"DIAG_4_{n:02d}", f"ICD-10 diagnosis {n}.", False, "icd10") for n in range(1, 21)]
_sus_cols += [InputColumn(f"OPERTN_4_{n:02d}", f"OPCS-4 procedure {n}.", False, "opcs4") for n in range(1, 25)]
_sus_cols += [InputColumn(f"OPDATE_{n:02d}", f"Date of procedure {n}.", False, "date") for n in range(1, 25)]
_sus_cols += [
    InputColumn("CDS_UPDATE_TYPE", "NET files only: 9 original or replacement, 1 deletion.", False, "code", CDS_UPDATE_TYPES),
    InputColumn("PSEUDO_HESID", "Pseudonymised person key.", False),
]

SUS_APC = Feed(
    source="sus_apc",
    folder="sus_apc",
    name_pattern=re.compile(
        r"^APC_(?P<submitter>[A-Z0-9]{3})_(?P<period>[0-9]{6})_(?P<submitted>[0-9]{14})_(?P<protocol>BULK|NET)\.csv(\.gz)?$"
    ),
    description="One SUS admitted patient care submission (CDS), bulk replacement or net change.",
    columns=tuple(_sus_cols),
    delimiters=(",", "|"),
    extra_columns_kept=True,
)

HES_APC = Feed(
    source="hes_apc",
    folder="hes_apc",
    name_pattern=re.compile(r"^(?P<name>[^/]+)\.csv(\.gz)?$"),
    description="A HES APC extract: many providers and periods, applied as net change (insert or replace).",
    # SUSRECID is not required in HES (EPIKEY is used where it is absent).
    columns=tuple(
        InputColumn(c.name, c.description, c.required and c.name != "SUSRECID", c.kind, c.codes)
        for c in _sus_cols if c.name != "CDS_UPDATE_TYPE"
    ) + (InputColumn("EPIKEY", "HES episode key, used where SUSRECID is absent.", False),),
    delimiters=(",", "|"),
    extra_columns_kept=True,
)

FFT = Feed(
    source="fft",
    folder="fft",
    name_pattern=re.compile(
        r"^FFT_(?P<submitter>[A-Z0-9]{3})_(?P<period>[0-9]{6})_(?P<submitted>[0-9]{14})\.csv(\.gz)?$"
    ),
    description="One provider's Friends and Family Test responses for a month.",
    columns=(
        InputColumn("RESPONSE_ID", "Unique within the provider.", True),
        InputColumn("PROVIDER_CODE", "Must equal the provider in the file name.", True, "code"),
        InputColumn("SITE_CODE", "5 characters, a site of that provider.", True, "code"),
        InputColumn("WARD_CODE", "The provider's own ward code.", False),
        InputColumn("SETTING", "FFT setting.", True, "code", FFT_SETTINGS),
        InputColumn("RESPONSE_DATE", "Date; must fall in the file's period.", True, "date"),
        InputColumn("RESPONSE", "1 extremely likely .. 5 extremely unlikely, 6 don't know.", True, "code", FFT_RESPONSES),
        InputColumn("NHS_NUMBER", "For linkage to the hospital spell.", False, "nhs_number"),
        InputColumn("TRETSPEF", "Treatment function of the ward or clinic.", False, "code"),
        InputColumn("MODE", "Response mode.", False, "code", FFT_MODES),
    ),
)

PROVIDERS = Feed(
    source="reference",
    folder="reference",
    name_pattern=re.compile(r"^providers\.csv(\.gz)?$"),
    description="NHS trusts and other providers.",
    columns=(
        InputColumn("PROVIDER_CODE", "3-character provider code.", True, "code"),
        InputColumn("NAME", "Name.", True),
        InputColumn("COMMISSIONER_CODE", "Host CCG/ICB.", True, "code"),
    ),
)

SITES = Feed(
    source="reference",
    folder="reference",
    name_pattern=re.compile(r"^sites\.csv(\.gz)?$"),
    description="Provider sites.",
    columns=(
        InputColumn("SITE_CODE", "5-character site code.", True, "code"),
        InputColumn("PROVIDER_CODE", "Provider.", True, "code"),
        InputColumn("NAME", "Name.", True),
    ),
)

EPRACCUR = Feed(
    source="reference",
    folder="reference",
    name_pattern=re.compile(r"^epraccur\.csv(\.gz)?$"),
    description="ODS epraccur: GP practices, headerless, 27 columns.",
    columns=tuple(InputColumn(n, f"epraccur column {p}.", False) for p, n in EPRACCUR_COLUMNS.items()),
    header=False,
)

FEEDS = {"gp": GP, "sus_apc": SUS_APC, "hes_apc": HES_APC, "fft": FFT}
REFERENCE = {"epraccur": EPRACCUR, "providers": PROVIDERS, "sites": SITES}
