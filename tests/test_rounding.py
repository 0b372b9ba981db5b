"""disclosure.rounding nearest_5 (pipelines.disclosure.round_counts): HES-style rounding of
the published counts after suppression. Worked numbers in the comments."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipelines import disclosure, schemas
from pipelines.config import ConfigError, Settings

P = "2014-01"


def coverage_provider():
    ds = schemas.get("linkage_coverage_provider")
    rows = []
    for code, episodes, valid, linked in (("RA1", 8, 8, 0), ("RB2", 12, 9, 3), ("RC3", 13, 13, 13),
                                          ("RD4", 1002, 998, 1000)):
        rows.append({"period": P, "provider_code": code, "commissioner_code": "00A", "episodes": episodes,
                     "episodes_valid_nhs_number": valid, "pct_valid_nhs_number": 100.0 * valid / episodes,
                     "episodes_verified_nhs_number": 0, "pct_verified_nhs_number": 0.0,
                     "episodes_linked": linked, "pct_linked": 100.0 * linked / episodes,
                     "linked_rank_1": linked, "linked_rank_2": 0, "linked_rank_3": 0, "linked_rank_4": 0,
                     "linked_rank_5": 0, "meets_nhs_number_standard": False})
    staged = ds.conform(pa.Table.from_pylist(rows), include_partition=True)
    return ds, disclosure.apply_small_numbers(ds, staged)


def test_nearest_5_after_suppression_worked_numbers():
    ds, public = coverage_provider()
    out = disclosure.round_counts(ds, public, "nearest_5")
    # episodes 8 -> 10, 12 -> 10, 13 -> 15, 1002 -> 1000.
    assert out.column("episodes").to_pylist() == [10, 10, 15, 1000]
    # valid 8 -> 10, 9 -> 10, 13 -> 15, 998 -> 1000.
    assert out.column("episodes_valid_nhs_number").to_pylist() == [10, 10, 15, 1000]
    # linked: 0 stays 0; 3 was blanked by the 1-to-7 rule first and stays empty (flag set);
    # 13 -> 15; 1000 stays.
    assert out.column("episodes_linked").to_pylist() == [0, None, 15, 1000]
    assert out.column("episodes_linked_suppressed").to_pylist() == [False, True, False, False]
    # rates stay computed from the unrounded counts: 100 x 9 / 12 = 75.0 (not 100 x 10/10);
    # RB2's pct_linked is empty because its count 3 is blanked.
    assert out.column("pct_valid_nhs_number").to_pylist()[1] == pytest.approx(75.0)
    assert out.column("pct_linked").to_pylist()[1] is None
    assert out.schema == public.schema
    assert disclosure.check_public(ds, out) == []
    # none: unchanged
    assert disclosure.round_counts(ds, public, "none").equals(public)


def test_fft_counts_rounded_on_every_row_national_too():
    from pipelines import fft

    from test_fft import providers, responses

    # RA1: 7 responses (5 x "1", 2 x "2"), RB2: 23 (23 x "1"); national 30.
    # Rounded: RA1 responses 7 -> 5, extremely_likely 5 -> 5, likely 2 -> 0;
    # RB2 23 -> 25; national 30 stays 30, its likely 2 -> 0. pct_recommend stays 100.
    t = fft.fft_scores(responses(("RA1", "RA101", None, [1] * 5 + [2] * 2), ("RB2", "RB201", None, [1] * 23)),
                       None, providers({"RA1": "00A", "RB2": "00B"}))
    out = disclosure.round_counts(schemas.get("fft_scores"), t, "nearest_5").to_pandas().set_index(["level", "org_code"])
    assert out.loc[("provider", "RA1"), "responses"] == 5
    assert out.loc[("provider", "RA1"), "likely"] == 0
    assert out.loc[("provider", "RB2"), "responses"] == 25
    assert out.loc[("national", "ENG"), "responses"] == 30 and out.loc[("national", "ENG"), "likely"] == 0
    assert out.loc[("provider", "RA1"), "pct_recommend"] == pytest.approx(100.0)


def test_rounding_is_a_checked_word():
    assert Settings.load(env={}).t("disclosure", "rounding") == "none"
    with pytest.raises(ConfigError, match="disclosure.rounding"):
        Settings.load(env={"CAREDATA_DISCLOSURE__ROUNDING": "nearest_10"})
    with pytest.raises(ValueError, match="rounding"):
        disclosure.round_counts(schemas.get("fft_scores"), pa.table({}), "nearest_10")


def test_rounding_closes_the_commissioner_leak_in_release(tmp_path):
    # Spec rules: national 32, 00B 10, 00C 20, so 00A = 2 exactly. Rounded, national 30
    # (28..32), 00B 10 (8..12), 00C 20 (18..22): 00A is anywhere in 0..6; the audit, which
    # reads rounded counts as intervals, finds nothing; and the published counts are multiples of 5.
    from pipelines import stages

    from test_differencing import published

    s = Settings.load(env={"CAREDATA_DISCLOSURE__ROUNDING": "nearest_5"}, landing=tmp_path / "l",
                      warehouse=tmp_path / "w", publish=tmp_path / "p")
    _, wh, _ = stages.stores(s)
    groups = (("RA1", "RA101", None, [1, 2]), ("RB2", "RB201", None, [1] * 10), ("RC3", "RC301", None, [1] * 20))
    wh.write("fft_scores", published(groups, {"RA1": "00A", "RB2": "00B", "RC3": "00C"}, "spec"), P)
    report = stages.release(s, P)
    assert report["differencing"]["recoverable"] == []
    out = wh.store.read_parquet(f"release/public/fft_scores/period={P}/part-00000.parquet")
    assert all(v % 5 == 0 for v in out.column("responses").to_pylist() if v is not None)
    assert sorted(v for v in out.column("responses").to_pylist() if v is not None) == [10, 10, 10, 20, 20, 20, 30]
