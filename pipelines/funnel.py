"""Funnel limits, outlier status and funnel plots (methods.md "Funnel limits").

Two exact Poisson constructions live here; they answer different questions:

* :func:`control_limits` -- **what the published limits and the outlier status use**.
  The range of observed deaths O expected by chance alone for a consultant whose true
  SMR is 1 and whose expected deaths are E: the p and 1 - p quantiles of Poisson(E),
  interpolated as in Spiegelhalter (2005) *Funnel plots for comparing institutional
  performance*, Stat Med 24:1185-1202, Appendix A.1.1, divided by E. Drawn against E
  these are the funnel; a consultant is an outlier when O / E falls outside them. This is
  the construction of the Consultant Outcomes Publication, the NCEPOD/HQIP audits and
  NHS Digital's SHMI.
* :func:`poisson_limits` -- the exact (Garwood 1936) confidence interval of the SMR
  given the observed O, from the chi-square distribution, divided by E. Provided for
  analysts who want an interval around a consultant's own SMR; not used for the status
  (a point is always inside its own interval, so "above the upper limit" can only mean
  the control limits).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from scipy import stats

STATUSES = ("alarm_high", "alert_high", "as_expected", "alert_low", "alarm_low", "insufficient_data")


# --------------------------------------------------------------------------- limits
def poisson_quantile(p: float | np.ndarray, mean: float | np.ndarray) -> np.ndarray:
    """Interpolated p-quantile of Poisson(mean) (Spiegelhalter 2005, A.1.1).

    r_p is the smallest r with P(Y <= r) >= p; alpha = (P(Y <= r_p) - p) /
    (P(Y <= r_p) - P(Y <= r_p - 1)); the quantile is r_p - alpha, floored at 0.
    """
    p = np.asarray(p, dtype=float)
    mean = np.asarray(mean, dtype=float)
    r = stats.poisson.ppf(p, mean)
    f_r = stats.poisson.cdf(r, mean)
    f_r1 = stats.poisson.cdf(r - 1, mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = np.where(f_r > f_r1, (f_r - p) / (f_r - f_r1), 0.0)
    q = np.maximum(r - alpha, 0.0)
    return np.where(mean > 0, q, np.nan)


def control_limits(expected: float | np.ndarray, level: float) -> tuple:
    """Two-sided control limits at ``level`` (e.g. 0.95, 0.998) for an SMR whose expected
    deaths are ``expected``, on the SMR scale: quantiles of Poisson(E) / E.
    Vectorised over ``expected``; NaN where E <= 0."""
    e = np.asarray(expected, dtype=float)
    tail = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = poisson_quantile(tail, e) / e
        hi = poisson_quantile(1.0 - tail, e) / e
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def exact_ci(observed: int, level: float) -> tuple[float, float]:
    """Garwood exact two-sided confidence interval for a Poisson count ``observed``."""
    tail = (1.0 - level) / 2.0
    lo = 0.0 if observed == 0 else stats.chi2.ppf(tail, 2 * observed) / 2.0
    hi = stats.chi2.ppf(1.0 - tail, 2 * observed + 2) / 2.0
    return float(lo), float(hi)


def poisson_limits(observed: int, expected: float, level: float) -> tuple[float, float]:
    """Exact (Garwood) confidence interval of the SMR O / E: the interval for O divided by
    E. NaN when E <= 0. See the module docstring: the published limits are
    :func:`control_limits`."""
    if not expected or expected <= 0 or math.isnan(expected):
        return math.nan, math.nan
    lo, hi = exact_ci(int(observed), level)
    return lo / expected, hi / expected


# --------------------------------------------------------------------------- status
def outlier_status(
    observed: int,
    expected: float,
    procedures: int,
    *,
    levels: tuple[float, float] = (0.95, 0.998),
    min_procedures: int = 10,
) -> str:
    """methods.md: above the 99.8% upper control limit ``alarm_high``; else above the 95%
    upper limit ``alert_high``; below the 99.8% lower limit ``alarm_low``; else below the
    95% lower limit ``alert_low``; otherwise ``as_expected``; fewer than
    ``min_procedures`` procedures ``insufficient_data``. Exactly on a limit is inside."""
    return str(outlier_statuses([observed], [expected], [procedures], levels=levels,
                                min_procedures=min_procedures)[0])


def outlier_statuses(
    observed,
    expected,
    procedures,
    *,
    levels: tuple[float, float] = (0.95, 0.998),
    min_procedures: int = 10,
) -> np.ndarray:
    """:func:`outlier_status` of many consultants at once (arrays of the same length;
    None or NaN procedures count as too few, None or NaN expected as none): the limits
    are worked out once for all."""
    o = np.asarray(observed, dtype=float)
    e = np.asarray(expected, dtype=float)
    n = np.asarray(procedures, dtype=float)
    inner, outer = sorted(levels)
    # No expected deaths (a specialty with no deaths in the window): nothing to flag.
    pos = e > 0
    e_pos = np.where(pos, e, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        smr = o / e_pos
        lo_in, hi_in = (np.atleast_1d(x) for x in control_limits(e_pos, inner))
        lo_out, hi_out = (np.atleast_1d(x) for x in control_limits(e_pos, outer))
        status = np.select([smr > hi_out, smr > hi_in, smr < lo_out, smr < lo_in],
                           ["alarm_high", "alert_high", "alarm_low", "alert_low"], "as_expected")
    return np.where(n >= min_procedures, status, "insufficient_data").astype(object)


# --------------------------------------------------------------------------- plot
def funnel_plot(
    consultant_rows: pd.DataFrame,
    specialty: str,
    window_end: str,
    *,
    levels: tuple[float, float] = (0.95, 0.998),
) -> bytes:
    """A funnel plot (PNG bytes) of one specialty and window: each consultant's SMR
    against expected deaths, the 95% and 99.8% control limits around SMR 1, outliers
    labelled by consultant code. ``consultant_rows`` has the columns of
    ``consultant_outcomes``; rows with ``insufficient_data`` or no SMR are left out."""
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend, thread safe.
    from matplotlib.figure import Figure

    rows = consultant_rows
    if "specialty" in rows.columns:
        rows = rows[rows["specialty"] == specialty]
    rows = rows[rows["outlier_status"].ne("insufficient_data") & rows["smr"].notna()
                & rows["expected_deaths"].gt(0)]
    e = rows["expected_deaths"].to_numpy(dtype=float)
    smr = rows["smr"].to_numpy(dtype=float)

    fig = Figure(figsize=(8, 5.5), dpi=100)
    ax = fig.subplots()
    e_max = max(float(e.max()) * 1.15 if len(e) else 10.0, 5.0)
    grid = np.linspace(max(min(0.2, float(e.min()) * 0.8) if len(e) else 0.2, 0.05), e_max, 400)
    inner, outer = sorted(levels)
    for level, style in ((inner, "--"), (outer, ":")):
        lo, hi = control_limits(grid, level)
        label = f"{level * 100:g}% limits"
        ax.plot(grid, hi, style, color="grey", label=label)
        ax.plot(grid, lo, style, color="grey")
    ax.axhline(1.0, color="black", linewidth=0.8)
    colours = {
        "alarm_high": "red", "alert_high": "orange", "as_expected": "tab:blue",
        "alert_low": "tab:green", "alarm_low": "darkgreen",
    }
    for status, colour in colours.items():
        sel = rows["outlier_status"].to_numpy() == status
        if sel.any():
            ax.scatter(e[sel], smr[sel], s=18, color=colour, label=status.replace("_", " "), zorder=3)
    for _, row in rows[rows["outlier_status"].isin(
            ["alarm_high", "alert_high", "alert_low", "alarm_low"])].iterrows():
        ax.annotate(str(row["consultant_code"]), (row["expected_deaths"], row["smr"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    top = max(float(np.nanmax(smr)) * 1.1 if len(smr) else 3.0, 3.0)
    ax.set_ylim(0, top)
    ax.set_xlim(0, e_max)
    ax.set_xlabel("Expected deaths (risk model)")
    ax.set_ylabel("SMR (observed / expected 30-day deaths)")
    ax.set_title(f"{specialty.replace('_', ' ')}: 30-day mortality, window ending {window_end}")
    ax.legend(fontsize=7, loc="upper right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
