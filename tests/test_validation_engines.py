"""The two validation modes (pipelines/validation/): the rules as SQL on the engine
(pipelines/validation/compiled.py) give what Great Expectations gives on every row, and
the sample GX checks beside them stops a validation where they differ."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.validation import ValidationContext, validate

from helpers import LyingEngine
from test_validation import (
    FFT_COLUMNS,
    FFT_CONTEXT,
    FFT_GOOD,
    GP_COLUMNS,
    GP_GOOD,
    HES_SAMPLE,
    NHS_BAD,
    NHS_OK,
    SUS_COLUMNS,
    SUS_GOOD,
    TODAY,
    _same,
    frame,
)

# ------------------------------------------------------------------ the two engines
MESS = [None, "", " ", "\t", "x", "ZZ", "-", "-   ", "- x", "9", "09", "1", "2023-02-30", "2024-02-29",
        "2099-01-01", " 2024-03-05 ", "2024-3-05", "05/03/2024", "LS1 4AP", "ls1\t4ap", "LS1\u30004AP",
        "LS14AP\n", "E01000001", "E01000001\n", "C1234567", "A81001", "a81001", "V81999", "K01A", "R69X",
        "112011", "132000", NHS_OK, NHS_BAD, f"{NHS_OK[:3]} {NHS_OK[3:6]} {NHS_OK[6:]}",
        "\u0669" * 10, "1111111111", "RXX", "RXX01", "RYY01", "MAT_BIRTH"]


def _messy(base: dict, columns: list[str], n: int, seed: int) -> pd.DataFrame:
    """``n`` rows: the good row with a few cells each replaced by messy values."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = dict(base)
        for c in rng.choice(columns, size=int(rng.integers(0, 4)), replace=False):
            row[c] = MESS[int(rng.integers(len(MESS)))]
        for k in ("SUSRECID", "RESPONSE_ID"):
            if k in row and row[k] == base.get(k):
                row[k] = f"K{int(rng.integers(n))}"  # some keys repeat
        rows.append(row)
    return frame(rows, columns)


def _outcomes_equal(a, b) -> None:
    _same(a, b)
    assert a.broken.tolist() == [len(x) for x in a.rule_ids]


@pytest.mark.parametrize("source,base,columns,kw", [
    ("gp", GP_GOOD, GP_COLUMNS, {"period": "2024-04", "submitter": "A81001", "file_name": "gp/GP_A81001_20240401.csv",
                                 "context": ValidationContext(today=TODAY, practice_codes={"A81001"})}),
    ("sus_apc", SUS_GOOD, SUS_COLUMNS, {"period": "2024-03", "submitter": "RXX",
                                        "file_name": "sus_apc/APC_RXX_202403_20240405120000_NET.csv",
                                        "context": ValidationContext(today=TODAY, practice_codes={"A81001"})}),
    ("fft", FFT_GOOD, FFT_COLUMNS, {"period": "2024-03", "submitter": "RXX",
                                    "file_name": "fft/FFT_RXX_202403_20240405120000.csv", "context": FFT_CONTEXT}),
])
def test_compiled_rules_give_what_gx_gives_on_messy_rows(source, base, columns, kw):
    """Every rule of a feed, on 400 rows of messy values (blanks, Unicode spaces and
    digits, trailing newlines, impossible and future dates, repeated keys): the compiled
    engine and GX on every row agree on every verdict, count and example line."""
    df = _messy(base, columns, 400, seed=len(source))
    compiled = validate(source, df, mode="compiled", **kw)
    gx_all = validate(source, df, mode="gx", **kw)
    _outcomes_equal(compiled, gx_all)
    assert 0 < int(compiled.rejected.sum()) < len(df)
    assert int((compiled.rule_counts.rows_failed > 0).sum()) >= 10


def test_compiled_rules_give_what_gx_gives_on_the_artificial_hes_sample():
    if not HES_SAMPLE.exists():
        pytest.skip("artificial HES sample not present")
    df = pd.read_csv(HES_SAMPLE, dtype="string", keep_default_na=False, na_values=[""])
    kw = {"period": None, "submitter": None, "file_name": "hes_apc/artificial_hes_apc_0102.csv"}
    _outcomes_equal(validate("hes_apc", df, mode="compiled", **kw), validate("hes_apc", df, mode="gx", **kw))


def test_a_compiled_rule_that_disagrees_with_gx_stops_the_validation():
    """GX validates a sample beside the engine: an engine whose SQL passed rows GX fails
    stops the validation with the rule named."""
    from pipelines.validation import ValidationError

    df = frame([GP_GOOD, {**GP_GOOD, "SEX": "7"}], GP_COLUMNS)
    kw = {"period": "2024-04", "submitter": "A81001", "file_name": "gp/GP_A81001_20240401.csv",
          "context": ValidationContext(today=TODAY)}
    assert validate("gp", df, **kw).rule_ids[1] == ["SEX_CODE"]  # the honest engine
    with pytest.raises(ValidationError, match="SEX_CODE.*disagree"):
        validate("gp", df, engine=LyingEngine('"SEX" IN'), **kw)


# ------------------------------------------------------------------ typed rows from the work frame
@pytest.mark.parametrize("source,base,columns,names,period", [
    ("gp", GP_GOOD, GP_COLUMNS, ["gp/GP_A81001_20240401.csv", "gp/GP_A81002_20240402.csv"], "2024-04"),
    ("sus_apc", SUS_GOOD, SUS_COLUMNS, ["sus_apc/APC_RXX_202403_20240405120000_NET.csv",
                                        "sus_apc/APC_RXX_202403_20240406120000_BULK.csv"], "2024-03"),
])
def test_rows_typed_from_the_work_frame_equal_rows_typed_from_the_files(source, base, columns, names, period):
    """The worker types a chunk's kept rows from validation's work frame (columns
    already cleaned, dates parsed) and drops the rejected after: the typed rows must be
    exactly those typed from each file's kept rows alone."""
    from pipelines.ingest import intake, silver
    from pipelines.landing import parse_name

    ctx = ValidationContext(today=TODAY, practice_codes={"A81001", "A81002"})
    jobs = [(parse_name(name), _messy(base, columns, 300, seed=k + 7), ctx) for k, name in enumerate(names)]
    work: list = []
    outcomes = intake._validate_chunk(source, period, jobs, None, work)
    assert len(work) == 1 and len(work[0]) == 600
    rejected = [int(np.asarray(o.rejected).sum()) for o in outcomes]
    assert all(0 < r < 300 for r in rejected), rejected  # some rows of each file dropped, some kept
    from_work = silver._chunk_silvers(source, period, jobs, outcomes, work[0])
    from_files = silver._chunk_silvers(source, period, jobs, outcomes)
    assert from_work.offsets.tolist() == from_files.offsets.tolist() == [0, 300 - rejected[0], 600 - sum(rejected)]
    assert from_work.table.equals(from_files.table)
