"""Reference tables of the synthetic data generator: population, specialties, codes.

Everything here is static data; the generator draws from it with a seeded numpy RNG.
"""

from __future__ import annotations

import numpy as np

# England, mid-2014 (ONS, rounded): share of the population in each 5-year band, 0-4 .. 90+.
AGE_BANDS = np.arange(0, 95, 5)
AGE_SHARES = np.array([
    6.3, 5.9, 5.4, 6.0, 6.7, 6.9, 6.7, 6.3, 6.9, 7.2,
    6.7, 5.8, 5.7, 5.5, 4.0, 3.3, 2.5, 1.5, 0.8,
], dtype=float)
AGE_SHARES = AGE_SHARES / AGE_SHARES.sum()

# Postcode areas (real area letters; districts and units are synthetic).
AREAS = (
    "LS M B S NE L BD HU NG LE CV BS SO PO BN CT ME TN RH GU RG OX MK LU AL SG CB IP NR PE "
    "LN DN WF HD HX OL BL WN PR BB LA CA DL TS SR DH YO HG DE ST WS WV DY WR HR GL SN BA TA "
    "EX PL TR TQ DT BH SP WA CH CW SK SY TF NN HP SL KT SM CR BR DA RM IG EN HA UB TW E N W "
    "SE SW NW CO CM SS"
).split()
UNIT_LETTERS = list("ABDEFGHJLNPQRSTUWXYZ")  # 20 letters used in postcode units
UNITS_PER_SECTOR = len(UNIT_LETTERS) ** 2  # 400
PC_PER_PRACTICE = 10 * UNITS_PER_SECTOR  # sectors 0..9; sector 0 is never a GP address

ETHNIC = ["A", "B", "C", "D", "E", "F", "G", "H", "J", "K", "L", "M", "N", "P", "R", "S", "Z", "99"]
ETHNIC_P = np.array([76, 1.5, 4, 0.8, 0.5, 1.0, 0.8, 2.6, 1.9, 0.8, 1.4, 1.2, 1.7, 0.6, 0.7, 1.0, 2.5, 1.0])
ETHNIC_P = ETHNIC_P / ETHNIC_P.sum()

# Charlson conditions as one ICD-10 code each: (code, Charlson weight, prevalence at age 75).
CHARLSON = [
    ("I252", 1, 0.08),   # myocardial infarction (old)
    ("I500", 1, 0.07),   # congestive heart failure
    ("I739", 1, 0.04),   # peripheral vascular disease
    ("I639", 1, 0.05),   # cerebrovascular disease
    ("F03X", 1, 0.05),   # dementia
    ("J449", 1, 0.10),   # chronic pulmonary disease
    ("M069", 1, 0.02),   # rheumatic disease
    ("K259", 1, 0.01),   # peptic ulcer
    ("K703", 1, 0.01),   # mild liver disease
    ("E119", 1, 0.13),   # diabetes without complications
    ("E112", 2, 0.03),   # diabetes with complications
    ("G819", 2, 0.01),   # hemiplegia
    ("N189", 2, 0.08),   # renal disease
    ("C509", 2, 0.04),   # malignancy
    ("C787", 6, 0.01),   # metastatic solid tumour
    ("B24X", 6, 0.002),  # HIV/AIDS
]
FILLER_DIAG = [("I10X", 0.40), ("E785", 0.20), ("Z921", 0.10), ("Z864", 0.05)]

# Specialties: code, name, elective weight, emergency weight, age rule, sex rule,
# procedures [(OPCS-4, weight)], probability of a procedure (elective, emergency),
# primary diagnoses, mean length of stay (elective, emergency).
SPECIALTIES = [
    dict(code="100", name="general surgery", w_el=8, w_em=10, age="any", sex=None,
         procs=[("B081", 2), ("B091", 1), ("B141", 0.5), ("H011", 3), ("G451", 3), ("T202", 2)],
         p_proc=(0.85, 0.5), diag=["K358", "K802", "E041", "E050", "K409"], los=(1.5, 4)),
    dict(code="101", name="urology", w_el=6, w_em=2, age="adult", sex=None,
         procs=[("M021", 1), ("M611", 1.5), ("M341", 1), ("M031", 0.5), ("M451", 4)],
         p_proc=(0.9, 0.4), diag=["C61X", "N400", "N200", "C64X", "C679"], los=(2, 4)),
    dict(code="104", name="colorectal surgery", w_el=3, w_em=2, age="adult", sex=None,
         procs=[("H071", 1.5), ("H061", 1), ("H331", 1), ("H291", 0.5), ("H221", 5)],
         p_proc=(0.9, 0.5), diag=["C189", "C20X", "K573", "K509"], los=(3, 7)),
    dict(code="106", name="upper gastrointestinal surgery", w_el=2, w_em=1, age="adult", sex=None,
         procs=[("G011", 0.5), ("G281", 1), ("G271", 0.5), ("G021", 0.5), ("G301", 1), ("G331", 0.7), ("G451", 3)],
         p_proc=(0.9, 0.5), diag=["C159", "C169", "K210", "K259"], los=(3, 6)),
    dict(code="107", name="vascular surgery", w_el=1.5, w_em=1, age="adult", sex=None,
         procs=[("L191", 1), ("L281", 0.7), ("L271", 0.5), ("L291", 0.5), ("X091", 0.5), ("X101", 0.5)],
         p_proc=(0.9, 0.6), diag=["I702", "I714", "I739", "I652"], los=(4, 9)),
    dict(code="110", name="trauma and orthopaedics", w_el=10, w_em=8, age="any", sex=None,
         procs=[("W371", 2), ("W381", 1.5), ("W401", 2), ("W931", 1), ("W191", 2), ("W241", 1.5)],
         p_proc=(0.9, 0.7), diag=["M161", "M171", "S720", "S525", "S822"], los=(3, 8)),
    dict(code="120", name="ENT", w_el=4, w_em=2, age="any", sex=None,
         procs=[("E191", 0.3), ("E291", 0.3), ("F221", 0.3), ("F341", 3), ("D151", 2)],
         p_proc=(0.85, 0.3), diag=["C329", "C01X", "J350", "J342"], los=(1, 2)),
    dict(code="130", name="ophthalmology", w_el=8, w_em=0.5, age="any", sex=None,
         procs=[("C751", 5), ("C712", 1)], p_proc=(0.95, 0.3), diag=["H259", "H401"], los=(0.2, 1)),
    dict(code="170", name="cardiothoracic surgery", w_el=1.5, w_em=0.5, age="adult", sex=None,
         procs=[("K401", 1.5), ("K451", 1), ("K261", 0.8), ("K252", 0.4), ("K341", 0.3)],
         p_proc=(0.95, 0.7), diag=["I251", "I350", "I340", "I219"], los=(7, 10)),
    dict(code="300", name="general medicine", w_el=4, w_em=30, age="adult", sex=None,
         procs=[("G451", 2), ("H221", 1), ("X292", 1)],
         p_proc=(0.3, 0.08), diag=["J189", "N390", "R296", "R69X", "A099", "E871"], los=(1, 5)),
    dict(code="320", name="cardiology", w_el=4, w_em=8, age="adult", sex=None,
         procs=[("K491", 1.5), ("K751", 3), ("K571", 1), ("K601", 0.7)],
         p_proc=(0.8, 0.35), diag=["I219", "I214", "I200", "I48X", "I500"], los=(1, 5)),
    dict(code="340", name="respiratory medicine", w_el=2, w_em=8, age="adult", sex=None,
         procs=[("E481", 1)], p_proc=(0.3, 0.05), diag=["J449", "J189", "C349", "J45X"], los=(1, 6)),
    dict(code="430", name="geriatric medicine", w_el=0.5, w_em=12, age="old", sex=None,
         procs=[("X292", 1)], p_proc=(0.1, 0.03), diag=["R296", "F03X", "N390", "J189", "S720"], los=(3, 11)),
    dict(code="420", name="paediatrics", w_el=2, w_em=10, age="child", sex=None,
         procs=[("X292", 1)], p_proc=(0.1, 0.03), diag=["J210", "R509", "A099", "J069"], los=(0.5, 1.5)),
    dict(code="502", name="gynaecology", w_el=5, w_em=2, age="adult", sex="2",
         procs=[("Q073", 1), ("Q181", 3), ("Q101", 1)], p_proc=(0.9, 0.4), diag=["N920", "D259", "N809"], los=(1, 2)),
    dict(code="501", name="obstetrics", w_el=0, w_em=0, age="maternity", sex="2",
         procs=[("R171", 1), ("R241", 2)], p_proc=(0.6, 0.6), diag=["O800", "O821", "O342", "O479"], los=(2, 2)),
]
SPEC_CODES = [s["code"] for s in SPECIALTIES]
SPEC_INDEX = {c: i for i, c in enumerate(SPEC_CODES)}

# Procedure effect on 30-day death (log-odds), by OPCS-4 3-character group.
PROC_EFFECT = {
    "K40": 0.6, "K45": 0.6, "K26": 0.7, "K25": 0.8, "K34": 0.6, "K49": 0.0, "K75": 0.1,
    "L19": 0.5, "L28": 0.6, "L27": 0.9, "L29": 0.3, "X09": 1.0, "X10": 0.7,
    "G01": 0.9, "G02": 0.8, "G28": 0.6, "G27": 0.7, "G30": -0.5, "G33": -0.5,
    "H06": 0.6, "H07": 0.5, "H33": 0.6, "H29": 0.5, "W37": -0.4, "W38": -0.4,
    "W40": -0.6, "W93": -0.4, "M02": 0.1, "M61": -0.6, "M34": 0.2, "M03": 0.0,
    "E19": 0.4, "E29": 0.3, "F22": 0.2, "B08": -1.0, "B09": -0.8, "B14": -0.8,
}
# The true 30-day death risk model (log-odds) the generator draws from.
RISK_MODEL = {
    "intercept": -5.0,
    "per_10_years_over_65": 0.45,
    "emergency": 1.3,
    "male": 0.2,
    "per_charlson_point": 0.25,
    "procedure_group": PROC_EFFECT,
    "outlier_consultant": "log(relative_risk)",
}
COHORT_SPECIALTY = [  # OPCS-4 3-char prefix -> methods.md specialty (bariatric needs E66)
    ("adult_cardiac_surgery", ["K25", "K26", "K27", "K28", "K29", "K30", "K31", "K32", "K33", "K34", "K35",
                               "K36", "K37", "K38", "K40", "K41", "K42", "K43", "K44", "K45", "K46"]),
    ("interventional_cardiology", ["K49", "K75"]),
    ("vascular_surgery", ["L18", "L19", "L27", "L28", "L29", "X09", "X10"]),
    ("upper_gi_surgery", ["G01", "G02", "G03", "G27", "G28"]),
    ("colorectal_surgery", ["H04", "H05", "H06", "H07", "H08", "H09", "H10", "H11", "H29", "H33"]),
    ("orthopaedic_surgery", ["W37", "W38", "W39", "W40", "W41", "W42", "W93", "W94", "W95"]),
    ("bariatric_surgery", ["G28", "G30", "G31", "G32", "G33"]),
    ("urological_surgery", ["M02", "M03", "M34", "M61"]),
    ("head_and_neck_surgery", ["E19", "E29", "F22"]),
    ("thyroid_endocrine_surgery", ["B08", "B09", "B14", "B22"]),
]
OUTLIER_SPECIALTIES = ["170", "320", "107", "104", "110", "101", "100"]

# FFT: answer shares (1..6) per setting.
FFT_SHARES = {
    "IP": [0.75, 0.21, 0.02, 0.01, 0.006, 0.004],
    "AE": [0.58, 0.28, 0.06, 0.03, 0.03, 0.02],
    "MAT_ANTENATAL": [0.70, 0.25, 0.025, 0.01, 0.005, 0.01],
    "MAT_BIRTH": [0.80, 0.17, 0.015, 0.006, 0.004, 0.005],
    "MAT_POSTNATAL_WARD": [0.66, 0.28, 0.03, 0.015, 0.01, 0.005],
    "MAT_POSTNATAL_COMMUNITY": [0.76, 0.21, 0.015, 0.005, 0.004, 0.006],
    "OP": [0.70, 0.24, 0.03, 0.012, 0.008, 0.01],
    "COMMUNITY": [0.74, 0.21, 0.025, 0.01, 0.005, 0.01],
    "MH": [0.55, 0.32, 0.06, 0.03, 0.02, 0.02],
    "AMB": [0.75, 0.19, 0.03, 0.01, 0.01, 0.01],
}
FFT_SETTING_SHARE_ACUTE = {"IP": 0.30, "AE": 0.33, "MAT_ANTENATAL": 0.03, "MAT_BIRTH": 0.04,
                           "MAT_POSTNATAL_WARD": 0.04, "MAT_POSTNATAL_COMMUNITY": 0.02, "OP": 0.24}
FFT_SETTING_SHARE_OTHER = {"COMMUNITY": 0.6, "MH": 0.3, "AMB": 0.1}
FFT_MODES = ["SMS", "PAPER", "ONLINE", "TABLET", "PHONE", "OTHER"]
FFT_MODE_P = np.array([0.35, 0.35, 0.08, 0.15, 0.04, 0.03])
WARDED_SETTINGS = ("IP", "MAT_BIRTH", "MAT_POSTNATAL_WARD")
