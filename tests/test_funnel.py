"""Funnel limits, outlier status and the funnel plot."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines import funnel


@pytest.mark.parametrize("observed, lower, upper", [
    # Garwood (1936) exact 95% limits for a Poisson count, as tabulated (e.g. Ulm 1990)
    (0, 0.0, 3.689),
    (1, 0.0253, 5.572),
    (2, 0.242, 7.225),
    (5, 1.623, 11.668),
    (10, 4.795, 18.390),
])
def test_garwood_exact_interval(observed, lower, upper):
    lo, hi = funnel.exact_ci(observed, 0.95)
    assert lo == pytest.approx(lower, abs=5e-4)
    assert hi == pytest.approx(upper, abs=5e-4)
    slo, shi = funnel.poisson_limits(observed, 2.0, 0.95)   # on the SMR scale: divided by E
    assert slo == pytest.approx(lo / 2) and shi == pytest.approx(hi / 2)


def _interpolated_quantile(p: float, mean: float) -> float:
    """Spiegelhalter (2005) A.1.1 written out with a plain loop over the Poisson pmf."""
    cdf_prev, cdf, r, term = 0.0, math.exp(-mean), 0, math.exp(-mean)
    while cdf < p:
        r += 1
        term *= mean / r
        cdf_prev, cdf = cdf, cdf + term
    alpha = (cdf - p) / (cdf - cdf_prev)
    return max(r - alpha, 0.0)


@pytest.mark.parametrize("expected", [0.5, 1.0, 2.5, 4.0, 10.0, 37.3, 150.0])
@pytest.mark.parametrize("level", [0.95, 0.998])
def test_control_limits_are_interpolated_poisson_quantiles(expected, level):
    tail = (1 - level) / 2
    lo, hi = funnel.control_limits(expected, level)
    assert lo == pytest.approx(_interpolated_quantile(tail, expected) / expected, abs=1e-9)
    assert hi == pytest.approx(_interpolated_quantile(1 - tail, expected) / expected, abs=1e-9)


def test_control_limits_known_values_and_shape():
    # E = 1: P(Y<=2) = 0.9197, P(Y<=3) = 0.9810 -> 97.5% quantile 3 - (0.9810-0.975)/(0.9810-0.9197)
    lo, hi = funnel.control_limits(1.0, 0.95)
    assert lo == 0.0 and hi == pytest.approx(2.9019, abs=1e-4)
    e = np.array([1.0, 5.0, 20.0, 100.0, 1000.0])
    lo, hi = funnel.control_limits(e, 0.998)
    assert np.all(np.diff(hi) < 0) and np.all(np.diff(lo) >= 0)   # the funnel narrows
    assert lo[0] == 0.0 and np.all(np.diff(lo[1:]) > 0)            # floored at 0 for small E
    assert np.all(lo < 1) and np.all(hi > 1)
    # large E: close to the normal approximation 1 +- z sqrt(1/E)
    assert hi[-1] == pytest.approx(1 + 3.0902 / math.sqrt(1000), abs=0.01)
    assert math.isnan(funnel.control_limits(0.0, 0.95)[0])


@pytest.mark.parametrize("observed, expected, procedures, status", [
    (12, 3.0, 50, "alarm_high"),     # 99.8% upper at E=3 is about 9.2/3
    (7, 3.0, 50, "alert_high"),      # 95% upper about 6.4/3, 99.8% about 9.2/3
    (6, 3.0, 50, "as_expected"),
    (0, 3.0, 50, "as_expected"),     # E=3: P(Y=0) = 0.0498 > 0.025, so the lower limit is floored at 0
    (0, 8.0, 50, "alarm_low"),
    (2, 8.0, 50, "alert_low"),
    (12, 3.0, 9, "insufficient_data"),
    (0, 0.0, 40, "as_expected"),
])
def test_outlier_status(observed, expected, procedures, status):
    assert funnel.outlier_status(observed, expected, procedures) == status


def test_outlier_status_matches_limits():
    e = 3.0
    lo95, hi95 = funnel.control_limits(e, 0.95)
    lo998, hi998 = funnel.control_limits(e, 0.998)
    for o in range(0, 20):
        smr = o / e
        got = funnel.outlier_status(o, e, 100)
        want = ("alarm_high" if smr > hi998 else "alert_high" if smr > hi95 else
                "alarm_low" if smr < lo998 else "alert_low" if smr < lo95 else "as_expected")
        assert got == want


def test_outlier_statuses_of_many_consultants_equal_each_alone():
    """The vectorised statuses (what consultant_outcomes uses) row by row against the
    rule applied to one consultant, with exact limits, no expected deaths and too few
    procedures mixed in one batch."""
    rng = np.random.default_rng(7)
    e = np.concatenate([rng.gamma(2.0, 3.0, 300), [0.0, np.nan, 3.0, 8.0, 8.0]])
    o = np.concatenate([rng.poisson(e[:300] * rng.choice([0.3, 1.0, 2.5], 300)), [4, 1, 12, 0, 2]]).astype(float)
    n = np.concatenate([rng.integers(0, 60, 300), [50, 50, 9, 50, np.nan]]).astype(float)
    got = funnel.outlier_statuses(o, e, n, levels=(0.998, 0.95), min_procedures=10)
    want = []
    for oi, ei, ni in zip(o, e, n):
        if not ni >= 10:
            want.append("insufficient_data")
        elif not ei > 0:
            want.append("as_expected")
        else:
            lo95, hi95 = funnel.control_limits(ei, 0.95)
            lo998, hi998 = funnel.control_limits(ei, 0.998)
            smr = oi / ei
            want.append("alarm_high" if smr > hi998 else "alert_high" if smr > hi95 else
                        "alarm_low" if smr < lo998 else "alert_low" if smr < lo95 else "as_expected")
    assert list(got) == want
    assert set(want) == set(funnel.STATUSES)  # every status occurs in the batch
    assert funnel.outlier_status(0, None, 40) == "as_expected"
    assert funnel.outlier_status(12, 3.0, None) == "insufficient_data"


def test_funnel_plot_is_png():
    rows = pd.DataFrame({
        "specialty": ["vascular_surgery"] * 4 + ["other"],
        "consultant_code": ["C1000001", "C1000002", "C1000003", "C1000004", "C9"],
        "expected_deaths": [2.0, 5.0, 8.0, 1.0, 3.0],
        "smr": [0.5, 1.1, 2.5, 2.0, 1.0],
        "outlier_status": ["as_expected", "as_expected", "alarm_high", "insufficient_data", "as_expected"],
    })
    png = funnel.funnel_plot(rows, "vascular_surgery", "2024-03")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 5000
    # an empty specialty still draws the limits
    assert funnel.funnel_plot(rows.iloc[:0], "vascular_surgery", "2024-03")[:4] == b"\x89PNG"


# --------------------------------------------------------------------------- overdispersion
# FunnelPlotR (github.com/nhs-r-community/FunnelPlotR, 0.6.0, commit 9020d49): the data of
# tests/testthat/test-classes_methods.R and test-funnel_plot.R (numerator = observed,
# denominator = expected), one unit per group a..f.
FPR_O = [100, 150, 180, 80, 120, 225]
FPR_E = [108, 112, 165, 95, 100, 220]


def test_shmi_phi_and_tau2_as_funnelplotr():
    # tests/testthat/test-classes_methods.R: expect_equal(round(phi.funnelplot(a), 6), 2.948033)
    # (funnel_plot defaults: data_type "SR", sr_method "SHMI", trim_by 0.1).
    phi, tau2 = funnel.overdispersion(FPR_O, FPR_E, "shmi")
    assert round(phi, 6) == 2.948033
    # R/od_adjustment.R tau_func, by hand: truncation of 6 units, group = floor(rank * 10 / 7)
    # = 1, 2, 4, 5, 7, 8: all inside 1..8, so n = 6 and s = 1/sqrt(E), w = 1/s^2 = E:
    # sum w = 800, sum w^2 = 108^2+112^2+165^2+95^2+100^2+220^2 = 118858,
    # tau2 = (6 * 2.948033 - 5) / (800 - 118858 / 800) = 12.688199 / 651.4275 = 0.0194775
    assert tau2 == pytest.approx(0.0194775, abs=1e-7)


def test_cqc_phi_and_tau2_by_hand():
    # R/od_adjustment.R, sr_method "CQC": z = (sqrt(O/E) - 1) / (1 / (2 sqrt(E))) = 2 (sqrt O - sqrt E)
    # sorted: -1.605045, -0.784610, 0.335206, 1.142351, 1.908902, 3.328887; winsorised at R's
    # type-7 10% and 90% quantiles (positions 1.5 and 5.5): -1.194827 and 2.618895, so
    # phi = mean(1.427612, 0.615613, 0.112363, 1.304965, 3.643907, 6.858610) = 2.327178
    phi, tau2 = funnel.overdispersion(FPR_O, FPR_E, "cqc")
    assert phi == pytest.approx(2.327178, abs=1e-6)
    # w = 1/s^2 = 4E: sum 3200, sum w^2 = 16 * 118858 = 1901728
    # tau2 = (6 * 2.327178 - 5) / (3200 - 1901728 / 3200) = 8.963069 / 2605.71 = 0.00343978
    assert tau2 == pytest.approx(0.00343978, abs=1e-8)


def test_adjusted_limits_against_funnelplotr_formulae():
    # tests/testthat/test-funnel_plot.R: expect_lt(b$OD95LCL[5], c$OD95LCL[5]), rows by group,
    # so row 5 is group e, E = 100. b: draw_adjusted = FALSE, so tau2 = 0 and the SHMI limit
    # is exp(-1.959964 * sqrt(1/100)) = 0.822015 (x multiplier 100).
    lo_b, hi_b = funnel.od_limits(100.0, 0.95, "shmi", 0.0)
    assert lo_b == pytest.approx(0.822015, abs=1e-6) and hi_b == pytest.approx(1.216523, abs=1e-6)
    # c: sr_method "CQC", trim_by 0.05: tau2 = 0.00440598 (phi 2.746783 from the winsorised z);
    # FunnelPlotR draws 1 - 1.959964 sqrt(1/400 + tau2) = 0.837128 (> 0.822015: its expect_lt).
    # That is the square-root scale's limit; on the SMR scale it is its square (FunnelPlotR
    # issue #33, open), 0.700783: we publish the square.
    phi, tau2 = funnel.overdispersion(FPR_O, FPR_E, "cqc", trim_by=0.05)
    assert phi == pytest.approx(2.746783, abs=1e-6) and tau2 == pytest.approx(0.00440598, abs=1e-8)
    fpr_lcl = 1 - 1.959964 * math.sqrt(1 / 400 + tau2)
    assert fpr_lcl > lo_b
    lo_c, hi_c = funnel.od_limits(100.0, 0.95, "cqc", tau2)
    assert lo_c == pytest.approx(fpr_lcl ** 2, rel=1e-6)
    assert hi_c == pytest.approx((1 + 1.959964 * math.sqrt(1 / 400 + tau2)) ** 2, rel=1e-6)


@pytest.mark.parametrize("e, ll95, ul95, ll998, ul998", [
    # tests/testthat/test-poisson_limits.R: FunnelPlotR's unadjusted limits at denominators 15,
    # 20, 30 are the exact (Garwood) interval of O = E, divided by E: poisson_limits here.
    (15, 0.5596924, 1.649348, 0.3862650, 2.082907),
    (20, 0.6108260, 1.544419, 0.4479107, 1.902094),
    (30, 0.6746958, 1.427562, 0.5289724, 1.702771),
])
def test_unadjusted_limits_as_funnelplotr(e, ll95, ul95, ll998, ul998):
    lo, hi = funnel.poisson_limits(e, float(e), 0.95)
    assert round(lo, 7) == ll95 and round(hi, 6) == ul95
    lo, hi = funnel.poisson_limits(e, float(e), 0.998)
    assert round(lo, 7) == ll998 and round(hi, 6) == ul998


def test_status_from_limits_as_funnelplotr_outliers():
    # tests/testthat/test-outliers_func.R: the same rr and limits; on a limit is inside.
    rr = [1, 0.95, 1.05, 0.8, 1.2, 0.6, 1.4, 0.4, 1.6, 0]
    n = [100] * 10
    unadj = funnel.statuses_from_limits(rr, 0.9, 1.1, 0.59, 1.41, n)
    adj = funnel.statuses_from_limits(rr, 0.79, 1.21, 0.38, 1.62, n)
    out95 = lambda s: [int(x != "as_expected") for x in s]                 # noqa: E731
    out99 = lambda s: [int(x in ("alarm_high", "alarm_low")) for x in s]  # noqa: E731
    assert out95(unadj) == [0, 0, 0, 1, 1, 1, 1, 1, 1, 1]
    assert out95(adj) == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert out99(unadj) == [0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    assert out99(adj) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert list(adj[:6]) == ["as_expected"] * 5 + ["alert_low"]
    assert funnel.statuses_from_limits([5.0], 0.9, 1.1, 0.5, 2, [9])[0] == "insufficient_data"


def test_no_overdispersion_gives_the_unadjusted_limits_on_each_scale():
    # O = E everywhere: every z is 0, phi = 0, n phi < n - 1, so tau2 = 0
    e = np.array([4.0, 9.0, 16.0, 25.0, 36.0])
    phi, tau2 = funnel.overdispersion(e, e, "shmi")
    assert phi == 0.0 and tau2 == 0.0
    lo, hi = funnel.od_limits(e, 0.998, "shmi", funnel.limits_tau2(phi, tau2))
    z = 3.090232
    assert np.allclose(lo, np.exp(-z / np.sqrt(e)), rtol=1e-6) and np.allclose(hi, np.exp(z / np.sqrt(e)), rtol=1e-6)
    # phi just under 1 but n phi > n - 1: DerSimonian-Laird gives tau2 > 0, yet no overdispersion
    assert funnel.limits_tau2(0.95, 0.01) == 0.0 and funnel.limits_tau2(float("nan"), 0.01) == 0.0
    assert funnel.limits_tau2(1.5, 0.01) == 0.01
    # tau2 widens the limits on both scales
    for method in ("shmi", "cqc"):
        lo0, hi0 = funnel.od_limits(e, 0.95, method, 0.0)
        lo1, hi1 = funnel.od_limits(e, 0.95, method, 0.02)
        assert np.all(lo1 < lo0) and np.all(hi1 > hi0)


def test_cqc_limits_without_overdispersion_approach_the_exact_poisson_funnel():
    # Squared back to the SMR scale the square-root limits are the Poisson funnel for large E
    # (FunnelPlotR's unsquared 1 + 3.09 / (2 sqrt(1000)) = 1.0489 would be half as wide).
    lo, hi = funnel.od_limits(1000.0, 0.998, "cqc", 0.0)
    plo, phi_ = funnel.control_limits(1000.0, 0.998)
    assert hi == pytest.approx(phi_, abs=0.003) and lo == pytest.approx(plo, abs=0.003)


def test_shmi_zscores_leave_out_units_without_deaths():
    z = funnel.od_zscores([0, 4, 3], [2.0, 4.0, 0.0], "shmi")
    assert math.isnan(z[0]) and z[1] == 0.0 and math.isnan(z[2])
    zc = funnel.od_zscores([0, 4], [2.0, 4.0], "cqc")
    assert zc[0] == pytest.approx(-2 * math.sqrt(2)) and zc[1] == 0.0
    assert funnel.overdispersion([3], [2.0], "shmi") == (pytest.approx(float("nan"), nan_ok=True), 0.0)


def test_published_adjusted_limits():
    e = np.array([1.0, 5.0, 50.0, 500.0])
    # phi <= 1 (no overdispersion): the exact Poisson control limits
    for level in (0.95, 0.998):
        lo, hi = funnel.adjusted_limits(e, level, "shmi", 0.9, 0.3)
        plo, phi_ = funnel.control_limits(e, level)
        assert np.array_equal(lo, plo) and np.array_equal(hi, phi_)
    # phi > 1: the transform's limits with tau2, never inside the exact ones. At E = 5 the exact
    # 99.8% lower limit is 0 (P(Poisson(5) = 0) = 0.0067 > 0.001) while the log-scale one is
    # exp(-3.090232 sqrt(0.22)) = exp(-1.449448) = 0.2347: a consultant with no deaths stays inside.
    lo, hi = funnel.adjusted_limits(e, 0.998, "shmi", 1.5, 0.02)
    assert funnel.od_limits(5.0, 0.998, "shmi", 0.02)[0] == pytest.approx(0.2347, abs=1e-4)
    assert lo[1] == 0.0
    assert funnel.statuses_from_limits([0.0], *funnel.adjusted_limits(5.0, 0.95, "shmi", 1.5, 0.02),
                                       lo[1], hi[1], [50])[0] != "alarm_low"
    olo, ohi = funnel.od_limits(e, 0.998, "shmi", 0.02)
    assert lo[-1] == olo[-1] and hi[-1] == ohi[-1]        # large E: the adjustment is the wider
    assert np.all(hi >= funnel.control_limits(e, 0.998)[1]) and np.all(lo <= funnel.control_limits(e, 0.998)[0])
    assert np.isnan(funnel.adjusted_limits(np.array([0.0]), 0.95, "cqc", 2.0, 0.1)[0]).all()


# --------------------------------------------------------------------------- power
def test_power_at_smr_2_by_hand():
    # E = 1: P(Y<=4) = 0.996340, P(Y<=5) = 0.999406 for Y ~ Poisson(1), so the 99.9% quantile is
    # 5 - (0.999406 - 0.999)/(0.999406 - 0.996340) = 4.868: alarm_high from O = 5 (k = 4).
    # Power = P(Poisson(2) >= 5) = 1 - e^-2 (1 + 2 + 2 + 4/3 + 2/3) = 1 - 7 e^-2 = 0.052653
    assert funnel.alarm_threshold(1.0) == 4
    assert funnel.power(1.0, 2.0) == pytest.approx(1 - 7 * math.exp(-2), abs=1e-9)
    # E = 5: k = 12, P(Poisson(10) >= 13) = 0.208444; E = 20: k = 34, P(Poisson(40) >= 35) = 0.806124
    assert funnel.power([5.0, 20.0]) == pytest.approx([0.208444, 0.806124], abs=1e-6)
    assert math.isnan(funnel.power(0.0)) and math.isnan(funnel.min_detectable_smr(0.0))


def test_min_detectable_smr_reaches_80_percent_power():
    # E = 1, k = 4: theta with P(Poisson(theta) >= 5) = 0.8 is theta = 6.7210 (P(Poisson(6.721) <= 4) = 0.2)
    assert funnel.min_detectable_smr(1.0) == pytest.approx(6.72098, abs=1e-5)
    e = np.array([0.5, 1.0, 5.0, 20.0, 100.0, 1000.0])
    m = funnel.min_detectable_smr(e)
    assert np.allclose([funnel.power(x, s) for x, s in zip(e, m)], 0.8, atol=1e-9)
    assert np.all(np.diff(m) < 0) and m[-1] > 1.0     # more expected deaths, smaller SMR detectable
    assert all(funnel.power(x, s * 0.999) < 0.8 for x, s in zip(e, m))


def test_power_is_monotone():
    e = np.linspace(0.3, 60, 200)
    # in the true SMR: strictly increasing for every E
    p = np.array([funnel.power(e, s) for s in (1.0, 1.5, 2.0, 3.0, 5.0)])
    assert np.all(np.diff(p, axis=0) > 0)
    # in E, while the alarm threshold k stays the same: power rises, and the detectable SMR
    # times E is constant (the Poisson mean with 80% above k)
    k = funnel.alarm_threshold(e)
    m = funnel.min_detectable_smr(e)
    for kk in np.unique(k):
        sel = k == kk
        if sel.sum() > 1:
            assert np.all(np.diff(p[2][sel]) > 0)
            assert np.allclose(m[sel] * e[sel], (m[sel] * e[sel])[0], rtol=1e-8)


def test_funnel_plot_draws_adjusted_limits():
    rows = pd.DataFrame({"consultant_code": ["C1", "C2"], "expected_deaths": [2.0, 8.0], "smr": [1.0, 2.5],
                         "outlier_status": ["as_expected", "alarm_high"], "specialty": ["x", "x"]})
    plain = funnel.funnel_plot(rows, "x", "2024-03")
    with_od = funnel.funnel_plot(rows, "x", "2024-03", overdispersion=("shmi", 1.8, 0.05))
    # no overdispersion: the adjusted limits are the exact ones, nothing more to draw
    assert funnel.funnel_plot(rows, "x", "2024-03", overdispersion=("shmi", 0.9, 0.05)) == plain
    assert with_od[:8] == b"\x89PNG\r\n\x1a\n" and with_od != plain


def test_svg_funnel_plot_shows_each_consultants_power_on_hover():
    """The SVG funnel plot (stages write it beside the PNG): each plotted consultant's point
    carries an SVG <title> (browsers show it on hover) with its power at SMR 2 and its
    minimum detectable SMR; never a death count (consultant_outcomes suppresses 1 to 7)."""
    import re

    rows = pd.DataFrame({
        "specialty": ["x"] * 4,
        "consultant_code": ["C1000001", "C1000002", "C1000003", "C1000004"],
        "provider_code": ["RA1", "RA1", "RB2", "RB2"],
        "procedures": [40, 120, 300, 6],
        "deaths_30d": [3, 5, 17, 1],
        "expected_deaths": [2.0, 5.0, 8.0, 0.5],
        "smr": [1.5, 1.0, 2.125, 2.0],
        "outlier_status": ["as_expected", "as_expected", "alarm_high", "insufficient_data"],
        "power_smr_2": funnel.power([2.0, 5.0, 8.0, 0.5]),
        "min_detectable_smr": funnel.min_detectable_smr([2.0, 5.0, 8.0, 0.5]),
    })
    svg = funnel.funnel_plot_svg(rows, "x", "2024-03").decode("utf-8")
    assert svg.startswith("<?xml") and "<svg" in svg
    titles = re.findall(r"<title>(.*?)</title>", svg, re.S)
    by_code = {t.split("\n", 1)[0].split()[1]: t for t in titles}
    # the plotted consultants (not the one with insufficient data), one hover text each
    assert set(by_code) == {"C1000001", "C1000002", "C1000003"}
    for code, e in (("C1000001", 2.0), ("C1000002", 5.0), ("C1000003", 8.0)):
        text = by_code[code]
        p2 = float(funnel.power(e))
        mds = float(funnel.min_detectable_smr(e))
        assert f"Power to flag a true SMR of 2 (alarm_high): {100 * p2:.0f}%" in text, text
        assert f"Smallest true SMR flagged with 80% power: {mds:.2f}" in text, text
        assert f"expected deaths {e:.2f}" in text
    # E = 2: the 99.8% alarm needs O >= 8; power at SMR 2 is P(Poisson(4) >= 8), about 5%
    assert "alarm_high): 5%" in by_code["C1000001"]
    assert "Procedures: 300" in by_code["C1000003"] and "SMR: 2.12" in by_code["C1000003"]
    assert not any("death" in t.lower().replace("expected deaths", "") for t in titles)
    # the same inputs give the same bytes (no date, fixed ids)
    assert funnel.funnel_plot_svg(rows, "x", "2024-03").decode("utf-8") == svg
    assert not re.search(r"\d{4}-\d{2}-\d{2}T", svg)
