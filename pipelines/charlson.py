"""Charlson comorbidity index from ICD-10 diagnoses (methods.md "Consultant-level outcomes").

Coding: Quan H, Sundararajan V, Halfon P, et al. *Coding algorithms for defining
comorbidities in ICD-9-CM and ICD-10 administrative data.* Med Care 2005;43(11):1130-9,
Table 1 (enhanced ICD-10 column). Codes are matched by prefix on the code with its dot
and any filler removed (``I21.9``, ``I219``, ``I219-`` and ``I21X`` all start ``I21``).

Weights: Charlson's original 1987 weights (Charlson ME et al., J Chronic Dis
1987;40:373-83), the weights Quan 2005 validated its coding with. Where a milder and a
more severe form of the same condition are both present only the severe one counts
(diabetes with/without complications, mild/moderate-severe liver disease, any
malignancy/metastatic solid tumour), as in Charlson's definition and the usual software
(R ``comorbidity``, Stata ``charlson``, Python ``pycomorb``).

No maintained Python package could be used as is: ``comorbidipy`` 0.5 (the last release
for Python < 3.13) does not import under pandas 3, and ``pycomorb`` would add polars as a
runtime dependency for a 17-row table. The table below was checked code by code against
``pycomorb`` 1.20261001.1 ``CHARLSON_QUAN.csv`` (identical ICD-10 lists).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Sequence

# condition: (weight, ICD-10 prefixes)
QUAN_ICD10: dict[str, tuple[int, tuple[str, ...]]] = {
    "myocardial_infarction": (1, ("I21", "I22", "I252")),
    "congestive_heart_failure": (1, (
        "I099", "I110", "I130", "I132", "I255", "I420", "I425", "I426", "I427", "I428",
        "I429", "I43", "I50", "P290")),
    "peripheral_vascular_disease": (1, (
        "I70", "I71", "I731", "I738", "I739", "I771", "I790", "I792", "K551", "K558",
        "K559", "Z958", "Z959")),
    "cerebrovascular_disease": (1, (
        "G45", "G46", "H340", "I60", "I61", "I62", "I63", "I64", "I65", "I66", "I67",
        "I68", "I69")),
    "dementia": (1, ("F00", "F01", "F02", "F03", "F051", "G30", "G311")),
    "chronic_pulmonary_disease": (1, (
        "I278", "I279", "J40", "J41", "J42", "J43", "J44", "J45", "J46", "J47", "J60",
        "J61", "J62", "J63", "J64", "J65", "J66", "J67", "J684", "J701", "J703")),
    "rheumatic_disease": (1, ("M05", "M06", "M315", "M32", "M33", "M34", "M351", "M353", "M360")),
    "peptic_ulcer_disease": (1, ("K25", "K26", "K27", "K28")),
    "mild_liver_disease": (1, (
        "B18", "K700", "K701", "K702", "K703", "K709", "K713", "K714", "K715", "K717",
        "K73", "K74", "K760", "K762", "K763", "K764", "K768", "K769", "Z944")),
    "diabetes_without_complications": (1, (
        "E100", "E101", "E106", "E108", "E109", "E110", "E111", "E116", "E118", "E119",
        "E120", "E121", "E126", "E128", "E129", "E130", "E131", "E136", "E138", "E139",
        "E140", "E141", "E146", "E148", "E149")),
    "diabetes_with_complications": (2, (
        "E102", "E103", "E104", "E105", "E107", "E112", "E113", "E114", "E115", "E117",
        "E122", "E123", "E124", "E125", "E127", "E132", "E133", "E134", "E135", "E137",
        "E142", "E143", "E144", "E145", "E147")),
    "hemiplegia_paraplegia": (2, (
        "G041", "G114", "G801", "G802", "G81", "G82", "G830", "G831", "G832", "G833",
        "G834", "G839")),
    "renal_disease": (2, (
        "I120", "I131", "N032", "N033", "N034", "N035", "N036", "N037", "N052", "N053",
        "N054", "N055", "N056", "N057", "N18", "N19", "N250", "Z490", "Z491", "Z492",
        "Z940", "Z992")),
    "malignancy": (2, tuple(
        [f"C{n:02d}" for n in range(0, 27)]            # C00-C26
        + [f"C{n:02d}" for n in range(30, 35)]         # C30-C34
        + [f"C{n:02d}" for n in range(37, 42)]         # C37-C41
        + ["C43"]
        + [f"C{n:02d}" for n in range(45, 59)]         # C45-C58
        + [f"C{n:02d}" for n in range(60, 77)]         # C60-C76
        + [f"C{n:02d}" for n in range(81, 86)]         # C81-C85
        + ["C88"]
        + [f"C{n:02d}" for n in range(90, 98)]         # C90-C97
    )),
    "moderate_severe_liver_disease": (3, (
        "I850", "I859", "I864", "I982", "K704", "K711", "K721", "K729", "K765", "K766", "K767")),
    "metastatic_solid_tumour": (6, ("C77", "C78", "C79", "C80")),
    "aids_hiv": (6, ("B20", "B21", "B22", "B24")),
}

# (severe, mild): when both are present only the severe one is counted.
HIERARCHY: tuple[tuple[str, str], ...] = (
    ("diabetes_with_complications", "diabetes_without_complications"),
    ("moderate_severe_liver_disease", "mild_liver_disease"),
    ("metastatic_solid_tumour", "malignancy"),
)

WEIGHTS: dict[str, int] = {name: w for name, (w, _) in QUAN_ICD10.items()}
_PREFIXES: tuple[tuple[str, str], ...] = tuple(
    (prefix, name) for name, (_, prefixes) in QUAN_ICD10.items() for prefix in prefixes
)
_CLEAN = re.compile(r"[^A-Z0-9]")


def clean_code(code: object) -> str:
    """Upper case, dots, dashes and spaces removed (``i21.9`` -> ``I219``)."""
    if code is None:
        return ""
    return _CLEAN.sub("", str(code).upper())


@lru_cache(maxsize=65536)
def _conditions_of_code(code: str) -> frozenset[str]:
    return frozenset(name for prefix, name in _PREFIXES if code.startswith(prefix))


def conditions(diagnoses: Iterable[object] | None) -> set[str]:
    """The Charlson conditions present in a list of ICD-10 codes (hierarchy applied)."""
    found: set[str] = set()
    if diagnoses is None:
        return found
    for code in diagnoses:
        text = clean_code(code)
        if text:
            found |= _conditions_of_code(text)
    for severe, mild in HIERARCHY:
        if severe in found:
            found.discard(mild)
    return found


def charlson_index(diagnoses: Iterable[object] | None) -> int:
    """Charlson comorbidity index (original weights, Quan 2005 ICD-10 coding)."""
    return sum(WEIGHTS[c] for c in conditions(diagnoses))


def charlson_indices(diagnosis_lists: Sequence[Iterable[object] | None]) -> list[int]:
    """:func:`charlson_index` over many diagnosis lists (e.g. one per spell)."""
    return [charlson_index(d) for d in diagnosis_lists]
