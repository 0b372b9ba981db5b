"""FFT responses by mode of collection (pipelines/fft.py ``fft_mode``, dataset ``fft_mode``):
the MODE breakdown NHS England publishes per trust and for England, under the FFT
suppression (docs/methods-fft.md "Mode of collection"). Hand-made tables; every
organisation code is made up."""

from __future__ import annotations

import datetime as dt
import random

import pandas as pd
import pyarrow as pa
import pytest

from pipelines import disclosure, fft, schemas

P = "2014-01"


def _responses(cells, period=P, setting="IP"):
    """cells: (provider, mode, answers) -> fft_responses rows (one site per provider,
    <provider>01, no ward), conformed."""
    rows, n = [], 0
    for provider, mode, answers in cells:
        for a in answers:
            n += 1
            rows.append(dict(period=period, submission_id="FFT_X", line=n + 1, provider_code=provider,
                             response_id=f"R{n}", site_code=f"{provider}01", ward_code=None, setting=setting,
                             response_date=dt.date(int(period[:4]), int(period[5:]), 15), response=str(a),
                             nhs_number=None, nhs_number_valid=False, tretspef=None, mode=mode, dq_warnings=None))
    return schemas.get("fft_responses").conform(pa.Table.from_pylist(rows))


def _providers(mapping):
    return pa.table({"provider_code": list(mapping), "name": [f"Trust {p}" for p in mapping],
                     "commissioner_code": list(mapping.values())})


def _cells(table):
    df = table.to_pandas()
    return {(r.level, r.org_code, r.mode): r for r in df.itertuples()}


def test_complements_close_subtraction_from_the_trust_total_and_the_national_cell():
    # Commissioner 00A, three trusts (one site each, so fft_scores suppresses none of them):
    #   RA1: SMS 10, PAPER 3            (13)
    #   RB2: SMS 20, PAPER 8            (28)
    #   RC3: SMS 30, PAPER 9, ONLINE 6  (45)
    # Rule 1: RA1 PAPER (3).
    # Pass 1, a trust's modes: RA1 has one suppressed cell -> its other cell, SMS (10), too.
    #         a mode's trusts: SMS has one (RA1) -> the next smallest SMS, RB2 (20);
    #                          PAPER has one (RA1) -> the next smallest PAPER, RB2 (8).
    # Pass 2: RA1 2 of 2, RB2 2 of 2, RC3 0; SMS 2, PAPER 2, ONLINE 0: nothing more.
    # RC3 and England are published whole.
    resp = _responses([("RA1", "SMS", [1] * 10), ("RA1", "PAPER", [1, 4, 5]),
                       ("RB2", "SMS", [1] * 20), ("RB2", "PAPER", [2] * 8),
                       ("RC3", "SMS", [1] * 30), ("RC3", "PAPER", [1] * 9), ("RC3", "ONLINE", [4] * 6)])
    out = fft.fft_mode(resp, _providers({"RA1": "00A", "RB2": "00A", "RC3": "00A"}))
    c = _cells(out)
    suppressed = {k for k, r in c.items() if r.suppressed}
    assert suppressed == {("provider", "RA1", "SMS"), ("provider", "RA1", "PAPER"),
                          ("provider", "RB2", "SMS"), ("provider", "RB2", "PAPER")}
    for k in suppressed:
        assert pd.isna(c[k].responses) and pd.isna(c[k].pct_positive) and pd.isna(c[k].pct_negative)
    # RC3 ONLINE: 6 responses, all answer 4: 0% positive, 100% negative
    r = c[("provider", "RC3", "ONLINE")]
    assert (r.responses, r.pct_positive, r.pct_negative) == (6, 0.0, 100.0)
    # England: never suppressed; PAPER 3 + 8 + 9 = 20, of which answers 1-2: 1 + 8 + 9 = 18 (90%),
    # answers 4-5: 2 (10%)
    e = c[("national", "ENG", "PAPER")]
    assert (e.responses, e.pct_positive, e.pct_negative, e.suppressed) == (20, 90.0, 10.0, False)
    assert c[("national", "ENG", "SMS")].responses == 60
    assert not disclosure.check_public(schemas.get("fft_mode"), out)


def test_a_trust_suppressed_in_fft_scores_has_every_mode_suppressed():
    # Commissioner 00B: RD4 SMS 6, PAPER 6 (12); RE5 SMS 3 (3); RF6 SMS 50, PAPER 50 (100).
    # fft_scores: RE5 rule 1, so RD4 (the next fewest) rule 2: both rows suppressed.
    # fft_mode: RD4 SMS and PAPER (6 each, not small) and RE5 SMS go with their trust.
    # A mode's trusts: PAPER has one suppressed (RD4) -> RF6 PAPER; then RF6's modes have
    # one -> RF6 SMS. Without them, England PAPER (56) - RF6 PAPER (50) = RD4 PAPER (6).
    resp = _responses([("RD4", "SMS", [1] * 6), ("RD4", "PAPER", [1] * 6), ("RE5", "SMS", [1] * 3),
                       ("RF6", "SMS", [1] * 50), ("RF6", "PAPER", [2] * 50)])
    prov = _providers({"RD4": "00B", "RE5": "00B", "RF6": "00B"})
    scores = fft.fft_scores(resp, None, prov).to_pandas()
    sup_trusts = set(scores[(scores.level == "provider") & scores.suppressed].org_code)
    assert sup_trusts == {"RD4", "RE5"}
    c = _cells(fft.fft_mode(resp, prov))
    assert all(r.suppressed for k, r in c.items() if k[0] == "provider")
    assert not any(r.suppressed for k, r in c.items() if k[0] == "national")
    assert c[("national", "ENG", "PAPER")].responses == 56


def test_the_only_mode_of_a_published_trust_is_never_the_complement():
    # RA1: SMS 6 only (its fft_scores total, 6, is published, so its SMS cell is known);
    # RB2: SMS 3, PAPER 20; RC3: SMS 8, PAPER 9. Rule 1: RB2 SMS.
    # Pass 1, trusts: RB2 has one -> RB2 PAPER. Modes: SMS has one (RB2); the smallest other
    # SMS cell is RA1's (6), but it equals RA1's published total and would hide nothing, so
    # RC3 SMS (8); PAPER has one (RB2) -> RC3 PAPER (9). Pass 2: nothing more.
    resp = _responses([("RA1", "SMS", [1] * 6), ("RB2", "SMS", [1] * 3), ("RB2", "PAPER", [1] * 20),
                       ("RC3", "SMS", [1] * 8), ("RC3", "PAPER", [1] * 9)])
    c = _cells(fft.fft_mode(resp, _providers({"RA1": "00A", "RB2": "00A", "RC3": "00A"})))
    assert {k for k, r in c.items() if r.suppressed} == {
        ("provider", "RB2", "SMS"), ("provider", "RB2", "PAPER"),
        ("provider", "RC3", "SMS"), ("provider", "RC3", "PAPER")}
    assert c[("provider", "RA1", "SMS")].responses == 6


def test_mode_codes_and_not_known():
    # A MODE outside inputs.md's codes (kept with a warning at ingest) or empty is
    # NOT_KNOWN: supplier text never reaches the public zone. Codes are read upper-cased.
    resp = _responses([("RA1", "sms", [1] * 5), ("RA1", "EMAIL", [1] * 3), ("RA1", None, [2] * 4),
                       ("RA1", " Tablet ", [3] * 6)])
    out = fft.fft_mode(resp, _providers({"RA1": "00A"}))
    nat = {r.mode: r.responses for r in out.to_pandas().itertuples() if r.level == "national"}
    assert nat == {"NOT_KNOWN": 7, "SMS": 5, "TABLET": 6}
    assert set(out.column("mode").to_pylist()) <= set(schemas.get("fft_mode").column("mode").codes)


def test_question_follows_the_period_and_empty_input_gives_the_declared_schema():
    resp = _responses([("RA1", "SMS", [1] * 5)], period="2020-04")
    assert set(fft.fft_mode(resp, None).column("question").to_pylist()) == {"experience"}
    empty = schemas.get("fft_responses").arrow_schema(include_partition=True).empty_table()
    out = fft.fft_mode(empty, None)
    assert out.num_rows == 0 and out.schema.names == schemas.get("fft_mode").arrow_schema(include_partition=True).names


@pytest.mark.parametrize("seed", range(25))
def test_no_lone_suppressed_cell_in_any_trust_or_mode(seed):
    """Random trusts and modes: after suppression, no published trust has exactly one
    suppressed mode with another published beside it, and no mode has exactly one suppressed
    trust with another published (England is published whole), so subtraction from a
    published total never isolates a suppressed cell; no cell below England shows 1 to 4."""
    rnd = random.Random(seed)
    trusts = [f"R{chr(65 + k)}{k}" for k in range(rnd.randint(2, 6))]
    modes = ["SMS", "PAPER", "ONLINE", "TABLET", "PHONE", "OTHER"]
    cells = [(t, m, [rnd.choice("123456") for _ in range(n)])
             for t in trusts for m in rnd.sample(modes, rnd.randint(1, 4))
             if (n := rnd.choice([1, 2, 3, 4, 5, 7, 12, 40]))]
    resp = _responses(cells)
    ref = _providers({t: "00A" for t in trusts})
    out = fft.fft_mode(resp, ref).to_pandas()
    scores = fft.fft_scores(resp, None, ref).to_pandas()
    published = set(scores[(scores.level == "provider") & ~scores.suppressed].org_code)
    prov = out[out.level == "provider"]
    # a published trust's total is in fft_scores: never exactly one of its modes suppressed
    for org, g in prov.groupby("org_code"):
        assert org not in published or int(g.suppressed.sum()) != 1, g
    # a mode's England cell is published: exactly one suppressed trust only where every other
    # trust with that mode has it as its only mode and is published (the documented residual)
    n_modes = prov.groupby("org_code").size()
    for _, g in prov.groupby("mode"):
        if int(g.suppressed.sum()) == 1:
            others = g[~g.suppressed].org_code
            assert all(n_modes[o] == 1 and o in published for o in others), g
    small = prov.responses.notna() & prov.responses.between(1, 4)
    assert not small.any()
    assert not out[out.level == "national"].suppressed.any()
    assert not disclosure.check_public(schemas.get("fft_mode"), pa.Table.from_pandas(out, preserve_index=False))


def test_a_provider_suppressed_by_the_nhse_cascade_has_every_mode_cell_suppressed():
    # Commissioners 00A (RA1: 2 responses, rule 1), 00B (RB2: 10), 00C (RC3: 20). Under nhse
    # 00B is second-level suppressed and the cascade takes RB2 (docs/methods-fft.md). RB2's
    # ten responses are all SMS: a published RB2 SMS cell of 10 would give RB2's fft_scores
    # row back. Under spec RB2 is published, and so is its cell.
    resp = _responses([("RA1", "SMS", [1, 2]), ("RB2", "SMS", [1] * 10), ("RC3", "SMS", [1] * 20)])
    provs = _providers({"RA1": "00A", "RB2": "00B", "RC3": "00C"})
    for rule_set, rb2_published in (("spec", True), ("nhse", False)):
        scores = fft.fft_scores(resp, None, provs, rule_set=rule_set).to_pandas()
        rb2 = scores[(scores["level"] == "provider") & (scores["org_code"] == "RB2")].iloc[0]
        assert bool(rb2["suppressed"]) is not rb2_published, rule_set
        cells = fft.fft_mode(resp, provs, rule_set=rule_set).to_pandas()
        cell = cells[(cells["level"] == "provider") & (cells["org_code"] == "RB2")].iloc[0]
        assert bool(cell["suppressed"]) is not rb2_published, rule_set
        assert pd.isna(cell["responses"]) is not rb2_published, rule_set
