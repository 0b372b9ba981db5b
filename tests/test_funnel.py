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
