"""Differencing audit (pipelines.differencing): suppressed cells recoverable from the
published margins. Hand-made public tables; every organisation code is made up."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import differencing, fft

from test_fft import hierarchies, hierarchy_spec, providers, responses
from test_fft_nhse import CASCADE, CASCADE_PROVIDERS, LEAK1, LEAK1_PROVIDERS

P = "2014-01"


def fft_table(rows, period=P, setting="IP"):
    """rows: (level, org_code, parent_code, responses or None for suppressed)."""
    return pd.DataFrame({
        "period": period, "setting": setting,
        "level": [r[0] for r in rows], "org_code": [r[1] for r in rows], "parent_code": [r[2] for r in rows],
        "responses": pd.array([r[3] for r in rows], dtype="Int64"),
        "suppressed": [r[3] is None for r in rows],
    })


def keys(found):
    return sorted((f.dataset, f.level, f.key) for f in found)


# --------------------------------------------------------------------------- one and none
ONE = [("national", "ENG", None, 137), ("commissioner", "00A", "ENG", 137), ("provider", "RA1", "00A", 137),
       ("site", "RA101", "RA1", 100), ("site", "RA102", "RA1", None)]


def test_exactly_one_cell_recoverable():
    # RA1 (137) - RA101 (100) = 37 = RA102: the lone suppressed site of a published provider.
    found = differencing.audit({"fft_scores": fft_table(ONE)})
    assert keys(found) == [("fft_scores", "site", "setting=IP org_code=RA102")]
    f = found[0]
    assert f.period == P and f.columns == ("responses",)
    assert f.how == "provider RA1 total minus 1 published site"
    assert f.datasets == ("fft_scores",)
    # the recovered value (37) is in no message
    for text in (str(f), json.dumps(f.as_dict())):
        assert "37" not in text


def test_none_recoverable_with_two_suppressed_siblings():
    # RA1 - RA101 = 37 = RA102 + RA103: two unknowns, neither alone.
    rows = ONE[:4] + [("site", "RA102", "RA1", None), ("site", "RA103", "RA1", None)]
    assert differencing.audit({"fft_scores": fft_table(rows)}) == []


def test_parent_with_responses_in_no_child_is_not_a_finding():
    # Same as ONE, but RA1 has responses without a site code: RA1 - RA101 is RA102 plus
    # those, so nothing is isolated.
    found = differencing.audit({"fft_scores": fft_table(ONE)}, incomplete={("provider", "RA1")})
    assert found == []


def test_rounded_margins_do_not_isolate_a_cell():
    # Rounded to the nearest 5, RA1 137 -> 135 (133..137) and RA101 100 (98..102): RA102 is
    # somewhere in 31..39, not one value.
    rows = [("national", "ENG", None, 135), ("commissioner", "00A", "ENG", 135), ("provider", "RA1", "00A", 135),
            ("site", "RA101", "RA1", 100), ("site", "RA102", "RA1", None)]
    assert differencing.audit({"fft_scores": fft_table(rows)}, rounding="nearest_5") == []
    assert len(differencing.audit({"fft_scores": fft_table(rows)})) == 1


# --------------------------------------------------------------------------- the two leaks of docs/methods-fft.md
def published(groups, provs, rule_set):
    return fft.fft_scores(responses(*groups), None, providers(provs), rule_set=rule_set)


def test_leak_commissioners_under_national_found_under_spec_not_nhse():
    groups = (("RA1", "RA101", None, [1, 2]), ("RB2", "RB201", None, [1] * 10), ("RC3", "RC301", None, [1] * 20))
    provs = {"RA1": "00A", "RB2": "00B", "RC3": "00C"}
    inc = differencing.fft_incomplete_parents(responses(*groups))
    assert inc == {("site", "RA101"), ("site", "RB201"), ("site", "RC301")}  # no ward codes
    found = differencing.audit({"fft_scores": published(groups, provs, "spec")}, incomplete=inc)
    by = {(f.level, f.key): f for f in found}
    # national 32 - 00B 10 - 00C 20 gives 00A; national - RB2 - RC3 gives RA1; RA1's only
    # site is RA101, so RA101 = RA1 (recovered).
    assert set(by) == {("commissioner", "setting=IP org_code=00A"), ("provider", "setting=IP org_code=RA1"),
                       ("site", "setting=IP org_code=RA101")}
    assert by[("commissioner", "setting=IP org_code=00A")].how == "national ENG total minus 2 published commissioners"
    assert set(by[("commissioner", "setting=IP org_code=00A")].columns) == set(differencing.FFT_COUNTS)
    assert "itself recovered" in by[("site", "setting=IP org_code=RA101")].how
    assert differencing.audit({"fft_scores": published(groups, provs, "nhse")}, incomplete=inc) == []


def test_leak_after_rule_3_found_under_spec_not_nhse():
    inc = differencing.fft_incomplete_parents(responses(*LEAK1))
    assert inc == set()  # every response has a site and a ward
    found = differencing.audit({"fft_scores": published(LEAK1, LEAK1_PROVIDERS, "spec")}, incomplete=inc)
    by = {(f.level, f.key.split("=")[-1]): f for f in found}
    # RB202 and RB203 from their single published wards; RB2 as the sum of its sites; RA1 as
    # 00A minus RB2 (recovered) and RC3; RA1's site and ward as RA1 itself.
    assert {("site", "RB202"), ("site", "RB203"), ("provider", "RB2"), ("provider", "RA1")} <= set(by)
    assert by[("site", "RB202")].how == "sum of 1 published ward"
    assert by[("provider", "RB2")].how == "sum of 1 published and 2 recovered sites"
    assert differencing.audit({"fft_scores": published(LEAK1, LEAK1_PROVIDERS, "nhse")}, incomplete=inc) == []
    assert differencing.audit({"fft_scores": published(CASCADE, CASCADE_PROVIDERS, "nhse")},
                              incomplete=differencing.fft_incomplete_parents(responses(*CASCADE))) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hierarchies(), st.integers(4, 5))
def test_property_nothing_recoverable_under_nhse(h, suppress_max):
    groups, mapping, answers = h
    if not groups:
        return
    spec, i = hierarchy_spec(groups, answers)
    if i <= suppress_max:
        return  # national is never suppressed: a lone commissioner of 1 to 4 responses equals it
    resp = responses(*spec)
    table = fft.fft_scores(resp, None, providers(mapping), suppress_max=suppress_max, rule_set="nhse")
    found = differencing.audit({"fft_scores": table}, incomplete=differencing.fft_incomplete_parents(resp))
    assert found == [], [str(f) for f in found]


# --------------------------------------------------------------------------- coverage
def provider_row(**kw):
    row = {"period": P, "provider_code": "RA1", "commissioner_code": "00A", "episodes": 200,
           "episodes_valid_nhs_number": 190, "episodes_linked": 40,
           **{f"linked_rank_{k}": v for k, v in zip(range(1, 6), (20, 10, 5, 0, 5))}}
    row.update(kw)
    for c in ["episodes", "episodes_valid_nhs_number", "episodes_linked"] + [f"linked_rank_{k}" for k in range(1, 6)]:
        row[f"{c}_suppressed"] = row[c] is None
    return row


def test_match_rank_columns_add_up_to_episodes_linked():
    # 40 - 20 - 10 - 0 - 5 = 5: rank 3 blanked alone is given back by its row.
    t = pa.Table.from_pylist([provider_row(linked_rank_3=None), provider_row(provider_code="RB2")])
    found = differencing.audit({"linkage_coverage_provider": t})
    assert keys(found) == [("linkage_coverage_provider", "provider", "provider_code=RA1")]
    assert found[0].columns == ("linked_rank_3",)
    assert found[0].how == "provider RA1 episodes_linked total minus 4 published match-rank columns"
    # two ranks blanked: neither can be told
    t = pa.Table.from_pylist([provider_row(linked_rank_3=None, linked_rank_5=None)])
    assert differencing.audit({"linkage_coverage_provider": t}) == []


def test_linkage_quality_categories_against_the_provider_total():
    # linkage_quality's sex categories of RA1 add up to its 200 episodes: 1 = 120, 2 = 75,
    # and 9 blanked alone (5) with 0 and unknown absent: 200 - 120 - 75 gives it.
    pv = pa.Table.from_pylist([provider_row()])
    lq = pd.DataFrame({"period": P, "provider_code": "RA1", "characteristic": "sex", "category": ["1", "2", "9"],
                       "episodes": pd.array([120, 75, None], dtype="Int64"),
                       "episodes_suppressed": [False, False, True],
                       "episodes_linked": pd.array([20, 20, 0], dtype="Int64"),
                       "episodes_linked_suppressed": [False, False, False]})
    found = differencing.audit({"linkage_coverage_provider": pv, "linkage_quality": lq})
    assert keys(found) == [("linkage_quality", "category", "provider_code=RA1 characteristic=sex category=9")]
    assert found[0].datasets == ("linkage_coverage_provider", "linkage_quality")


# --------------------------------------------------------------------------- outcomes
def outcomes(procedures_b=40):
    co = pd.DataFrame({"period": "2016-12", "window_start": "2014-01", "window_end": "2016-12", "specialty": "cardiac",
                       "provider_code": ["RA1", "RB2"], "consultant_code": ["C1234567", "C7654321"],
                       "procedures": [60, procedures_b], "deaths_30d": pd.array([15, None], dtype="Int64"),
                       "deaths_30d_suppressed": [False, True]})
    so = pd.DataFrame({"period": ["2016-12"], "window_start": ["2014-01"], "window_end": ["2016-12"],
                       "specialty": ["cardiac"], "procedures": [100], "deaths_30d": [20]})
    return {"consultant_outcomes": co, "specialty_outcomes": so}


def test_consultant_deaths_from_the_specialty_total():
    # 20 - 15 = 5 deaths for C7654321, since the two consultants' 60 + 40 procedures are
    # all the specialty's 100.
    found = differencing.audit(outcomes())
    assert [(f.dataset, f.key) for f in found] == [
        ("consultant_outcomes", "window=2014-01..2016-12 specialty=cardiac provider_code=RB2 consultant_code=C7654321")]
    assert found[0].how == "specialty cardiac total minus 1 published consultant"
    # 60 + 30 procedures are not the specialty's 100: some deaths are under no published
    # consultant, so the difference isolates nothing.
    assert differencing.audit(outcomes(procedures_b=30)) == []


# --------------------------------------------------------------------------- across periods
def test_cumulative_period_gives_back_a_month():
    # 2014-03 declared as the total of 2014-01 and 2014-02 (a cumulative): RA1's January
    # (suppressed) = 33 - 30.
    t = pd.concat([
        fft_table([("provider", "RA1", None, None), ("provider", "RB2", None, None)], period="2014-01"),
        fft_table([("provider", "RA1", None, 30), ("provider", "RB2", None, 12)], period="2014-02"),
        fft_table([("provider", "RA1", None, 33), ("provider", "RB2", None, None)], period="2014-03"),
    ], ignore_index=True)
    found = differencing.audit({"fft_scores": t}, period_totals={"fft_scores": {"2014-03": ["2014-01", "2014-02"]}})
    assert [(f.period, f.key) for f in found] == [("2014-01", "setting=IP org_code=RA1")]
    assert found[0].how == "provider RA1 in 2014-03 total minus 1 published period"
    assert differencing.audit({"fft_scores": t}) == []


# --------------------------------------------------------------------------- before publication
def _release(tmp_path, severity):
    from pipelines import stages
    from pipelines.config import Settings

    s = Settings.load(env={"CAREDATA_DISCLOSURE__DIFFERENCING_SEVERITY": severity}, landing=tmp_path / "l",
                      warehouse=tmp_path / f"w{severity}", publish=tmp_path / f"p{severity}")
    _, wh, _ = stages.stores(s)
    groups = (("RA1", "RA101", None, [1, 2]), ("RB2", "RB201", None, [1] * 10), ("RC3", "RC301", None, [1] * 20))
    wh.write("fft_scores", published(groups, {"RA1": "00A", "RB2": "00B", "RC3": "00C"}, "spec"), P)
    return stages.release(s, P), wh


def test_release_warns_by_default_and_publishes(tmp_path):
    # Commissioner 00A (2 responses) is national minus 00B and 00C under the spec's rules.
    report, wh = _release(tmp_path, "warn")
    diff = report["differencing"]
    assert diff["severity"] == "warn"
    assert {(r["level"], r["key"]) for r in diff["recoverable"]} >= {("commissioner", "setting=IP org_code=00A")}
    assert report["blocked"] == [] and report["metadata"]["fft_scores"] == 10
    assert wh.store.exists(f"release/public/fft_scores/period={P}/part-00000.parquet")


def test_release_blocks_the_datasets_involved_on_error(tmp_path):
    report, wh = _release(tmp_path, "error")
    assert [b["dataset"] for b in report["blocked"]] == ["fft_scores"]
    assert report["blocked"][0]["rules"] == ["differencing"]
    assert report["blocked"][0]["columns"] == [", ".join(sorted(differencing.FFT_COUNTS))]
    assert "national ENG total minus 2 published commissioners" in report["violations"][0]
    assert not wh.store.exists(f"release/public/fft_scores/period={P}/part-00000.parquet")


def test_dagster_check_on_release_candidate(tmp_path):
    """The asset check ``release_candidate/differencing`` runs with the release, not blocking,
    WARN by default, and names the cells (never their values)."""
    import dagster as dg

    from assets.publish import release_candidate
    from pipelines import stages
    from pipelines.config import Settings
    from pipelines.partitions import period_partitions
    from pipelines.resources import CareDataConfig

    roots = {"landing": str(tmp_path / "l"), "warehouse": str(tmp_path / "w"), "publish": str(tmp_path / "p")}
    _, wh, _ = stages.stores(Settings.load(env={}, **roots))
    groups = (("RA1", "RA101", None, [1, 2]), ("RB2", "RB201", None, [1] * 10), ("RC3", "RC301", None, [1] * 20))
    wh.write("fft_scores", published(groups, {"RA1": "00A", "RB2": "00B", "RC3": "00C"}, "spec"), P)
    assert not [s for s in release_candidate.check_specs if s.name == "differencing"][0].blocking
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(period_partitions.name, [P])
    result = dg.materialize([release_candidate], partition_key=P, instance=instance,
                            resources={"caredata": CareDataConfig(**roots)})
    check = {e.check_name: e for e in result.get_asset_check_evaluations()}["differencing"]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "org_code=00A" in check.description and "national ENG total minus 2 published commissioners" in check.description
    assert check.metadata["recoverable"].value == 3


def test_solver_narrows_an_interval_with_a_second_equation():
    # T1 (8..12) = X + A (8): X in 0..4. T2 (3) = X + B (0): X = 3. Whichever equation is
    # read first, X ends exact (a cell already given an interval is narrowed, not frozen).
    from pipelines.differencing import Cell, Equation, solve

    for order in (0, 1):
        cells = {k: Cell("d", P, "l", k, "n", lo, hi, suppressed=k == "X", label=k)
                 for k, lo, hi in (("T1", 8, 12), ("A", 8, 8), ("T2", 3, 3), ("B", 0, 0), ("X", None, None))}
        eqs = [Equation("T1", ("X", "A"), "part"), Equation("T2", ("X", "B"), "part")]
        how = solve(cells, eqs if order else eqs[::-1])
        assert (cells["X"].lo, cells["X"].hi) == (3, 3)
        assert how == {"X": "T2 total minus 1 published part"}


def test_valid_nhs_number_category_against_the_provider_column():
    # linkage_quality's nhs_number_status valid equals linkage_coverage_provider's
    # episodes_valid_nhs_number (190 in provider_row), so the blanked valid cell is given
    # back by the provider column; then missing, the only other blanked category, is
    # 200 - 190 (recovered) - 6 (invalid, published) = 4.
    pv = pa.Table.from_pylist([provider_row()])
    lq = pd.DataFrame({"period": P, "provider_code": "RA1", "characteristic": "nhs_number_status",
                       "category": ["valid", "invalid", "missing"],
                       "episodes": pd.array([None, 6, None], dtype="Int64"),
                       "episodes_suppressed": [True, False, True]})
    found = differencing.audit({"linkage_coverage_provider": pv, "linkage_quality": lq})
    assert [f.key for f in found] == ["provider_code=RA1 characteristic=nhs_number_status category=missing",
                                      "provider_code=RA1 characteristic=nhs_number_status category=valid"]
    by = {f.key.rsplit("=", 1)[1]: f.how for f in found}
    assert by["valid"] == "equal to provider RA1 episodes_valid_nhs_number"
    assert by["missing"] == "provider RA1 episodes total minus 1 published and 1 recovered categories"


def test_linear_solver_finds_what_no_single_subtraction_does():
    # x + y = 10, x + z = 12, y + z = 14: every equation has two unknowns, so peeling finds
    # nothing; together they fix x = (A + B - C) / 2 = 4, y = 6, z = 8. With only the
    # first two equations, nothing is fixed (one degree of freedom left).
    from pipelines.differencing import Cell, Equation, solve, solve_linear

    def run(eqs):
        cells = {k: Cell("d", P, "l", k, "n", v, v, suppressed=v is None, label=k)
                 for k, v in (("A", 10), ("B", 12), ("C", 14), ("x", None), ("y", None), ("z", None))}
        assert solve(cells, eqs) == {}
        return solve_linear(cells, eqs)

    tri = [Equation("A", ("x", "y"), "part"), Equation("B", ("x", "z"), "part"), Equation("C", ("y", "z"), "part")]
    how, skipped = run(tri)
    assert sorted(how) == ["x", "y", "z"] and skipped == 0
    assert how["x"] == "3 published margins solved together (no single subtraction)"
    assert run(tri[:2]) == ({}, 0)
    # a group too large to examine is counted, not silently passed
    how, skipped = (lambda cells: solve_linear(cells, tri, max_unknowns=2))(
        {k: Cell("d", P, "l", k, "n", v, v, suppressed=v is None, label=k)
         for k, v in (("A", 10), ("B", 12), ("C", 14), ("x", None), ("y", None), ("z", None))})
    assert how == {} and skipped == 3


def test_run_summary_lists_warned_findings():
    import io

    from pipelines.config import Settings
    from pipelines.runner import RunSummary, print_summary

    line = "[2014-01] release_candidate.differencing: fft_scores commissioner setting=IP org_code=00A: responses (...)"
    out = io.StringIO()
    summary = RunSummary(periods=["2014-01"], warned_checks=[line])
    print_summary(summary, Settings(landing="l", warehouse="w", publish="p"), out=out)
    assert "Suppressed cells recoverable from published margins (published anyway" in out.getvalue()
    assert f"  {line}\n" in out.getvalue()
    assert summary.ok  # a warning does not fail the run
