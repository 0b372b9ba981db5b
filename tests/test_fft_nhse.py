"""FFT rule set ``nhse`` (fft.rule_set): NHS England's two further rules, beside the spec's.

NHS England's fft_pipeline (github.com/nhsengland/fft_pipeline, src/fft/suppression.py):
  * ``apply_second_level_suppression`` at ICB level runs with no parent group: the
    commissioners are siblings, and the one with the next fewest responses after a lone
    first-level one is suppressed;
  * ``apply_cascade_suppression``: every suppressed parent (first level, second level or
    cascade) has its children of rank 1 and 2 (fewest responses) suppressed, top down
    (ICB -> trust -> site -> ward).
Its doctest values are ported below where our tables can express them. Every code is made up.
"""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines import fft
from pipelines.config import ConfigError, Settings

from test_fft import providers, responses, row, scores, suppressed_codes


def nhse(resp, provs, **kw):
    return scores(resp, provs, rule_set="nhse", **kw)


# --------------------------------------------------------------------------- rule 1 (ported)
def test_first_level_as_nhse_doctest():
    # fft_pipeline apply_first_level_suppression: responses [0, 3, 5, 10, 2] -> [0, 1, 0, 0, 1].
    # A row with 0 responses never exists here, so the four others: providers of 3, 5, 10
    # and 2 responses under four commissioners; rule 1 under nhse is rule 1 of the spec.
    resp = responses(("RA1", "RA101", None, [1] * 3), ("RB2", "RB201", None, [1] * 5),
                     ("RC3", "RC301", None, [1] * 10), ("RD4", "RD401", None, [1] * 2))
    nodes = fft.fft_nodes(resp, None, providers({"RA1": "00A", "RB2": "00B", "RC3": "00C", "RD4": "00D"}),
                          rule_set="nhse").set_index(["level", "org_code"])
    assert [bool(nodes.loc[("provider", p), "rule1"]) for p in ("RA1", "RB2", "RC3", "RD4")] == [
        True, False, False, True]


# --------------------------------------------------------------------------- rule 2 among commissioners
def test_second_level_among_commissioners():
    # Commissioners 00A (2 responses: rule 1), 00B (10), 00C (20). The spec has no parent
    # over commissioners, so only 00A is suppressed and national - 00B - 00C = 32 - 30 = 2
    # gives it back. nhse (fft_pipeline's ICB level, group_by_col=None): rank 1 (00A) is
    # first-level suppressed, so rank 2 (00B, 10) is second-level suppressed; 00C stays.
    resp = responses(("RA1", "RA101", None, [1, 2]), ("RB2", "RB201", None, [1] * 10),
                     ("RC3", "RC301", None, [1] * 20))
    provs = providers({"RA1": "00A", "RB2": "00B", "RC3": "00C"})
    spec = scores(resp, provs)
    assert suppressed_codes(spec, "commissioner") == ["00A"]
    # the leak of docs/methods-fft.md, present under spec:
    published = spec[(spec["level"] == "commissioner") & ~spec["suppressed"]]["responses"].sum()
    assert row(spec, "national", "ENG")["responses"] - published == 2

    df = nhse(resp, provs)
    assert suppressed_codes(df, "commissioner") == ["00A", "00B"]
    assert row(df, "commissioner", "00C")["responses"] == 20
    # closed: 32 - 20 = 12 is the sum of two suppressed commissioners, neither alone.
    published = df[(df["level"] == "commissioner") & ~df["suppressed"]]["responses"].sum()
    assert row(df, "national", "ENG")["responses"] - published == 12
    # ... and the cascade runs down 00B: its only provider, that provider's only site.
    assert suppressed_codes(df, "provider") == ["RA1", "RB2"]
    assert suppressed_codes(df, "site") == ["RA101", "RB201"]


def test_second_level_among_commissioners_counts_providers_without_one():
    # National = commissioners + providers with no host commissioner. RZ9 (no commissioner,
    # 6 responses) is the next fewest after 00A (3) under national, so nhse suppresses it,
    # not 00B (50): otherwise 59 - 50 - 6 = 3 would give 00A back.
    resp = responses(("RA1", "RA101", None, [1] * 3), ("RB2", "RB201", None, [1] * 50),
                     ("RZ9", "RZ901", None, [1] * 6))
    df = nhse(resp, providers({"RA1": "00A", "RB2": "00B"}))
    assert suppressed_codes(df, "commissioner") == ["00A"]
    assert suppressed_codes(df, "provider") == ["RA1", "RZ9"]
    assert pd.isna(row(df, "provider", "RZ9")["parent_code"])


def test_two_first_level_commissioners_need_no_second():
    # fft_pipeline doctest "Rank 2 already first-level suppressed": ranks 1 and 2 both
    # first-level -> no second-level. 00A (2) and 00B (3) both rule 1; 00C (40) stays.
    resp = responses(("RA1", "RA101", None, [1, 2]), ("RB2", "RB201", None, [1] * 3),
                     ("RC3", "RC301", None, [1] * 40))
    df = nhse(resp, providers({"RA1": "00A", "RB2": "00B", "RC3": "00C"}))
    assert suppressed_codes(df, "commissioner") == ["00A", "00B"]
    assert not row(df, "commissioner", "00C")["suppressed"]


# --------------------------------------------------------------------------- cascade
CASCADE = (
    ("RA1", "RA101", None, [1] * 3),                       # 00A: 3 -> rule 1
    ("RD4", "RD401", "W1", [1] * 5), ("RD4", "RD402", "W1", [2] * 15),   # RD4: 20
    ("RE5", "RE501", "W1", [1] * 10), ("RE5", "RE501", "W2", [3] * 12),
    ("RE5", "RE501", "W3", [1] * 8),                        # RE5: 30, one site
    ("RF6", "RF601", "W1", [1] * 25), ("RF6", "RF602", "W1", [1] * 15),  # RF6: 40
    ("RG7", "RG701", None, [1] * 500),                      # 00C: 500
)
CASCADE_PROVIDERS = {"RA1": "00A", "RD4": "00B", "RE5": "00B", "RF6": "00B", "RG7": "00C"}


def test_cascade_two_smallest_children_top_down():
    # Commissioners: 00A (3, rule 1), 00B (20 + 30 + 40 = 90, next fewest: rule 2), 00C (500).
    # Cascade from 00B (fft_pipeline doctest: parent A suppressed, children ranks 1, 2, 3 ->
    # [1, 1, 0]): RD4 (20) and RE5 (30) suppressed, RF6 (40) published.
    # Then from RD4: its sites RD401 (5) and RD402 (15), ranks 1 and 2: both.
    # From RE5: its only site RE501 (doctest "only Rank 1 exists" -> [1]).
    # From RE501: wards W3 (8) and W1 (10), the two smallest; W2 (12) published.
    # RF6 is published, so its sites are not touched.
    df = nhse(responses(*CASCADE), providers(CASCADE_PROVIDERS))
    assert suppressed_codes(df, "commissioner") == ["00A", "00B"]
    assert suppressed_codes(df, "provider") == ["RA1", "RD4", "RE5"]
    assert suppressed_codes(df, "site") == ["RA101", "RD401", "RD402", "RE501"]
    assert suppressed_codes(df, "ward") == ["RD401/W1", "RD402/W1", "RE501/W1", "RE501/W3"]
    assert row(df, "ward", "RE501/W2")["responses"] == 12
    assert row(df, "provider", "RF6")["responses"] == 40
    nodes = fft.fft_nodes(responses(*CASCADE), None, providers(CASCADE_PROVIDERS),
                          rule_set="nhse").set_index(["level", "org_code"])
    assert nodes.loc[("commissioner", "00B"), "rule2"]
    assert nodes.loc[("provider", "RD4"), "rule3"] and not nodes.loc[("provider", "RD4"), "rule1"]
    assert nodes.loc[("ward", "RE501/W1"), "rule3"]

    # The spec's rules on the same table: no rule 2 among commissioners, so 00B and all
    # below it stay published.
    spec = scores(responses(*CASCADE), providers(CASCADE_PROVIDERS))
    assert suppressed_codes(spec, "commissioner") == ["00A"]
    assert suppressed_codes(spec, "provider") == ["RA1"]


def test_cascade_all_children():
    # fft.nhse_cascade all: every child of a suppressed parent, so RF6 (40) and its sites too,
    # and all three wards of RE501.
    df = nhse(responses(*CASCADE), providers(CASCADE_PROVIDERS), cascade="all")
    assert suppressed_codes(df, "provider") == ["RA1", "RD4", "RE5", "RF6"]
    assert suppressed_codes(df, "site") == ["RA101", "RD401", "RD402", "RE501", "RF601", "RF602"]
    assert "RE501/W2" in suppressed_codes(df, "ward")
    assert not row(df, "provider", "RG7")["suppressed"]


# --------------------------------------------------------------------------- the leak after rule 3
# docs/methods-fft.md: commissioner 00A (143) has RA1 (3), RB2 (40), RC3 (100); RB2 has sites
# RB201 (20), RB202 (10), RB203 (10), each with a single ward.
LEAK1 = (("RA1", "RA101", "W1", [1, 2, 3]),
         ("RB2", "RB201", "W1", [1] * 20), ("RB2", "RB202", "W1", [2] * 10), ("RB2", "RB203", "W1", [3] * 10),
         ("RC3", "RC301", "W1", [1] * 100))
LEAK1_PROVIDERS = {"RA1": "00A", "RB2": "00A", "RC3": "00A"}


def test_leak_after_rule_3_present_under_spec_closed_under_nhse():
    spec = scores(responses(*LEAK1), providers(LEAK1_PROVIDERS))
    # spec: rule 3 hides RB202 and RB203, but their wards (10 and 10) are published, so
    # RB2 = 20 + 10 + 10 = 40 and RA1 = 143 - 40 - 100 = 3.
    assert suppressed_codes(spec, "site") == ["RA101", "RB202", "RB203"]
    assert suppressed_codes(spec, "ward") == ["RA101/W1"]
    wards = spec[spec["level"] == "ward"].set_index("org_code")["responses"]
    rb2 = row(spec, "site", "RB201")["responses"] + wards["RB202/W1"] + wards["RB203/W1"]
    assert row(spec, "commissioner", "00A")["responses"] - rb2 - row(spec, "provider", "RC3")["responses"] == 3

    df = nhse(responses(*LEAK1), providers(LEAK1_PROVIDERS))
    # nhse: the cascade hides the wards of RB202 and RB203 too.
    assert suppressed_codes(df, "site") == ["RA101", "RB202", "RB203"]
    assert suppressed_codes(df, "ward") == ["RA101/W1", "RB202/W1", "RB203/W1"]
    assert pd.isna(row(df, "ward", "RB202/W1")["responses"])


# --------------------------------------------------------------------------- configuration
def test_rule_set_and_cascade_are_checked_words():
    assert Settings.load(env={}).t("fft", "rule_set") == "spec"  # the spec's rules stay the default
    assert Settings.load(env={"CAREDATA_FFT__RULE_SET": "nhse"}).t("fft", "rule_set") == "nhse"
    with pytest.raises(ConfigError, match="fft.rule_set"):
        Settings.load(env={"CAREDATA_FFT__RULE_SET": "loose"})
    with pytest.raises(ConfigError, match="fft.nhse_cascade"):
        Settings.load(env={"CAREDATA_FFT__NHSE_CASCADE": "one"})
    with pytest.raises(ValueError, match="rule set"):
        fft.fft_scores(responses(*LEAK1), None, providers(LEAK1_PROVIDERS), rule_set="loose")
