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
    inner, outer = sorted(levels)
    # No expected deaths (a specialty with no deaths in the window): nothing to flag.
    pos = e > 0
    e_pos = np.where(pos, e, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        smr = o / e_pos
        lo_in, hi_in = (np.atleast_1d(x) for x in control_limits(e_pos, inner))
        lo_out, hi_out = (np.atleast_1d(x) for x in control_limits(e_pos, outer))
    return statuses_from_limits(smr, lo_in, hi_in, lo_out, hi_out, procedures, min_procedures=min_procedures)


def statuses_from_limits(smr, lower_inner, upper_inner, lower_outer, upper_outer, procedures,
                         *, min_procedures: int = 10) -> np.ndarray:
    """The status vocabulary of methods.md from an SMR and any pair of limits (the exact
    Poisson control limits, or the overdispersion-adjusted ones): above the outer upper
    limit ``alarm_high``; else above the inner ``alert_high``; below the outer lower
    ``alarm_low``; else below the inner ``alert_low``; otherwise (on a limit is inside, no
    SMR or no limit too) ``as_expected``; fewer than ``min_procedures`` ``insufficient_data``."""
    smr, lo_in, hi_in, lo_out, hi_out = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (
        smr, lower_inner, upper_inner, lower_outer, upper_outer))
    n = np.asarray(procedures, dtype=float)
    with np.errstate(invalid="ignore"):
        status = np.select([smr > hi_out, smr > hi_in, smr < lo_out, smr < lo_in],
                           ["alarm_high", "alert_high", "alarm_low", "alert_low"], "as_expected")
    return np.where(n >= min_procedures, status, "insufficient_data").astype(object)


# --------------------------------------------------------------------------- overdispersion
OD_METHODS = ("shmi", "cqc", "none")
TRIM_BY = 0.1
"""Share of z-scores set aside at each end before phi is estimated (FunnelPlotR ``trim_by``)."""


def od_zscores(observed, expected, method: str) -> np.ndarray:
    """Unadjusted z-scores of each unit (FunnelPlotR ``transformed_zscore``, data type SR).

    ``shmi``: sqrt(E) * log(O / E) (the log SMR over its standard error 1 / sqrt(E));
    ``cqc``: (sqrt(O / E) - 1) / (1 / (2 sqrt(E))) = 2 (sqrt(O) - sqrt(E)).
    NaN where E <= 0, and under ``shmi`` where O = 0 (log 0 is not a number: FunnelPlotR
    would carry -Inf into phi; such units are left out of the estimate instead)."""
    o = np.asarray(observed, dtype=float)
    e = np.asarray(expected, dtype=float)
    ok = e > 0
    e1 = np.where(ok, e, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "shmi":
            z = np.where(ok & (o > 0), np.sqrt(e1) * np.log(np.where(o > 0, o, 1.0) / e1), np.nan)
        elif method == "cqc":
            z = np.where(ok, 2.0 * (np.sqrt(o) - np.sqrt(e1)), np.nan)
        else:
            raise ValueError(f"overdispersion method: expected shmi or cqc, got {method!r}")
    return z


def _truncation_kept(z: np.ndarray, trim_by: float) -> np.ndarray:
    """FunnelPlotR ``truncation`` (the SHMI's) of finite z-scores: rank them (ties
    averaged), group = floor(rank * (1 / trim_by) / (n + 1)); keep groups 1 to
    1 / trim_by - 2, i.e. drop about ``trim_by`` of the units at each end. A boolean mask."""
    from scipy.stats import rankdata

    if not len(z):
        return np.zeros(0, dtype=bool)
    k = 1.0 / trim_by
    group = np.floor(rankdata(z, method="average") * k / (len(z) + 1))
    return (group > 0) & (group < k - 1)


def _winsorised(z: np.ndarray, trim_by: float) -> np.ndarray:
    """FunnelPlotR ``winsorisation`` (CQC's): z-scores beyond the ``trim_by`` and
    1 - ``trim_by`` quantiles (R's default type 7 = numpy's linear) set to those quantiles."""
    z = z[np.isfinite(z)]
    if not len(z):
        return z
    lo, hi = np.quantile(z, [trim_by, 1.0 - trim_by])
    return np.clip(z, lo, hi)


def overdispersion(observed, expected, method: str = "shmi", *, trim_by: float = TRIM_BY) -> tuple[float, float]:
    """(phi, tau2) of a set of units, as FunnelPlotR estimates them (``phi_func``,
    ``tau_func``): phi = the mean of the squared z-scores after SHMI truncation or CQC
    winsorisation; tau2 (DerSimonian-Laird, additive random effects) = (n phi - (n - 1)) /
    (sum w - sum w^2 / sum w), w = 1 / s^2 with s = 1 / sqrt(E) (shmi) or 1 / (2 sqrt(E))
    (cqc) over the units kept; 0 when n phi < n - 1. (nan, 0.0) with fewer than 2 units."""
    z = od_zscores(observed, expected, method)
    e = np.asarray(expected, dtype=float)
    finite = np.isfinite(z)
    zf, ef = z[finite], e[finite]
    if method == "shmi":
        # s of the units kept (FunnelPlotR: "only include the S without NA values in SHMI")
        mask = _truncation_kept(zf, trim_by)
        kept, w = zf[mask], ef[mask]
    else:
        kept, w = _winsorised(zf, trim_by), 4.0 * ef
    n = len(kept)
    if n < 2:
        return math.nan, 0.0
    phi = float(np.sum(kept ** 2) / n)
    if n * phi < n - 1:
        return phi, 0.0
    tau2 = max(0.0, (n * phi - (n - 1)) / (w.sum() - (w ** 2).sum() / w.sum()))
    return phi, float(tau2)


def limits_tau2(phi: float, tau2: float) -> float:
    """The tau2 the adjusted limits use: 0 when phi is unknown or shows no overdispersion
    (phi <= 1; FunnelPlotR 0.4.2 then draws the unadjusted limits), else ``tau2``."""
    if phi is None or not math.isfinite(phi) or phi <= 1.0:
        return 0.0
    return float(tau2)


def od_limits(expected, level: float, method: str, tau2: float) -> tuple:
    """Overdispersion-adjusted limits on the SMR scale (FunnelPlotR ``calculate_limits``,
    SR), z = the normal quantile of 1 - (1 - level) / 2:

    ``shmi``: exp(+-z sqrt(1/E + tau2));
    ``cqc``: (1 +- z sqrt(1/(4E) + tau2))^2, the lower floored at 0 before squaring: the
    square-root scale's limits brought back to the SMR scale. (FunnelPlotR draws
    1 +- z sqrt(...) unsquared, square-root-scale limits against the untransformed SMR,
    which is half as wide as the Poisson funnel when tau2 = 0; we square.)

    With tau2 = 0 these are the unadjusted limits on that scale. NaN where E <= 0."""
    e = np.asarray(expected, dtype=float)
    z = float(stats.norm.ppf(1.0 - (1.0 - level) / 2.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        e_pos = np.where(e > 0, e, np.nan)
        if method == "shmi":
            sd = np.sqrt(1.0 / e_pos + tau2)
            lo, hi = np.exp(-z * sd), np.exp(z * sd)
        elif method == "cqc":
            sd = np.sqrt(1.0 / (4.0 * e_pos) + tau2)
            lo, hi = np.maximum(1.0 - z * sd, 0.0) ** 2, (1.0 + z * sd) ** 2
        else:
            raise ValueError(f"overdispersion method: expected shmi or cqc, got {method!r}")
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def adjusted_limits(expected, level: float, method: str, phi: float, tau2: float) -> tuple:
    """The published overdispersion-adjusted limits: with no overdispersion (phi <= 1 or
    unknown: :func:`limits_tau2` is 0) the exact Poisson :func:`control_limits`, as
    FunnelPlotR then draws its unadjusted limits; else :func:`od_limits` with tau2, never
    inside the exact Poisson limits (overdispersion widens the funnel, never narrows it: at
    small E the normal approximation on the log or square-root scale puts a lower limit
    above 0 where the exact one is 0, and would flag a consultant with no deaths)."""
    e = np.asarray(expected, dtype=float)
    e_pos = np.where(e > 0, e, np.nan)
    lo_p, hi_p = (np.atleast_1d(x) for x in control_limits(e_pos, level))
    t2 = limits_tau2(phi, tau2)
    if t2 == 0.0:
        lo, hi = lo_p, hi_p
    else:
        lo_o, hi_o = (np.atleast_1d(x) for x in od_limits(e_pos, level, method, t2))
        lo, hi = np.fmin(lo_o, lo_p), np.fmax(hi_o, hi_p)
        lo, hi = np.where(e > 0, lo, np.nan), np.where(e > 0, hi, np.nan)
    if e.ndim == 0:
        return float(lo[0]), float(hi[0])
    return lo, hi


# --------------------------------------------------------------------------- power
def alarm_threshold(expected, level: float = 0.998) -> np.ndarray:
    """The deaths count k such that O > k is above the upper control limit at ``level``
    (:func:`control_limits`: O / E > q / E with q the interpolated upper quantile of
    Poisson(E), O whole, so O >= floor(q) + 1 raises the alarm): k = floor(q). NaN where
    E <= 0."""
    e = np.asarray(expected, dtype=float)
    q = poisson_quantile(1.0 - (1.0 - level) / 2.0, np.where(e > 0, e, np.nan))
    return np.floor(q)


def power(expected, smr: float = 2.0, level: float = 0.998) -> np.ndarray:
    """Walker et al. (Lancet 2013): the probability that a consultant with expected deaths
    E whose true SMR is ``smr`` is above the upper ``level`` limit,
    P(Poisson(smr * E) > k) with k = :func:`alarm_threshold`. NaN where E <= 0."""
    e = np.asarray(expected, dtype=float)
    k = alarm_threshold(e, level)
    with np.errstate(invalid="ignore"):
        out = stats.poisson.sf(k, smr * np.where(e > 0, e, np.nan))
    return np.where(e > 0, out, np.nan)


def min_detectable_smr(expected, target_power: float = 0.8, level: float = 0.998) -> np.ndarray:
    """The smallest true SMR that :func:`power` reaches ``target_power`` for, solved with
    :func:`scipy.optimize.brentq` (P(Poisson(theta E) > k) rises continuously with theta).
    NaN where E <= 0."""
    from scipy.optimize import brentq

    e = np.atleast_1d(np.asarray(expected, dtype=float))
    k = np.atleast_1d(alarm_threshold(e, level))
    out = np.full(e.shape, np.nan)
    cache: dict = {}
    for i, (ei, ki) in enumerate(zip(e, k)):
        if not (ei > 0) or not math.isfinite(ki):
            continue
        key = (float(ei), float(ki))
        if key not in cache:
            def f(theta, ei=ei, ki=ki):
                return float(stats.poisson.sf(ki, theta * ei)) - target_power
            hi = max((ki + 1.0) / ei, 1.0)
            while f(hi) < 0:
                hi *= 2.0
            cache[key] = brentq(f, 1e-12, hi, xtol=1e-12, rtol=1e-12)
        out[i] = cache[key]
    return out if np.ndim(expected) else float(out[0])


# --------------------------------------------------------------------------- plot
_COLOURS = {
    "alarm_high": "red", "alert_high": "orange", "as_expected": "tab:blue",
    "alert_low": "tab:green", "alarm_low": "darkgreen",
}
# What a point's hover text shows (funnel_plot_svg), all of it published in
# consultant_outcomes: never a death or readmission count (1 to 7 are suppressed there).
HOVER_COLUMNS = ("consultant_code", "provider_code", "procedures", "expected_deaths", "smr",
                 "outlier_status", "power_smr_2", "min_detectable_smr")


def _plotted(consultant_rows: pd.DataFrame, specialty: str) -> pd.DataFrame:
    rows = consultant_rows
    if "specialty" in rows.columns:
        rows = rows[rows["specialty"] == specialty]
    return rows[rows["outlier_status"].ne("insufficient_data") & rows["smr"].notna()
                & rows["expected_deaths"].gt(0)]


def _figure(rows: pd.DataFrame, specialty: str, window_end: str, levels, overdispersion, *, one_per_point: bool):
    """The funnel plot's Figure. ``one_per_point``: each consultant is an artist of its own
    with gid ``consultant-<k>`` (k its position in ``rows``), for the SVG's hover text."""
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend, thread safe.
    from matplotlib.figure import Figure

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
        if overdispersion is not None and overdispersion[0] in ("shmi", "cqc"):
            method, phi, tau2 = overdispersion
            phi = math.nan if phi is None else float(phi)
            t2 = limits_tau2(phi, 0.0 if tau2 is None else float(tau2))
            if t2 > 0:  # else the adjusted limits are the exact ones already drawn
                olo, ohi = adjusted_limits(grid, level, method, phi, t2)
                ax.plot(grid, ohi, style, color="firebrick", alpha=0.7,
                        label=f"{level * 100:g}% adjusted ({method.upper()}, tau2 {t2:.3g})")
                ax.plot(grid, olo, style, color="firebrick", alpha=0.7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    status = rows["outlier_status"].to_numpy()
    for st, colour in _COLOURS.items():
        sel = status == st
        if not sel.any():
            continue
        if not one_per_point:
            ax.scatter(e[sel], smr[sel], s=18, color=colour, label=st.replace("_", " "), zorder=3)
            continue
        for n, k in enumerate(np.flatnonzero(sel)):
            dot = ax.scatter(e[k:k + 1], smr[k:k + 1], s=18, color=colour, zorder=3,
                             label=st.replace("_", " ") if n == 0 else None)
            dot.set_gid(f"consultant-{k}")
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
    return fig


def funnel_plot(
    consultant_rows: pd.DataFrame,
    specialty: str,
    window_end: str,
    *,
    levels: tuple[float, float] = (0.95, 0.998),
    overdispersion: tuple[str, float, float] | None = None,
) -> bytes:
    """A funnel plot (PNG bytes) of one specialty and window: each consultant's SMR
    against expected deaths, the 95% and 99.8% control limits around SMR 1, outliers
    labelled by consultant code. ``consultant_rows`` has the columns of
    ``consultant_outcomes``; rows with ``insufficient_data`` or no SMR are left out.
    ``overdispersion`` = (method, phi, tau2) (``shmi`` or ``cqc``) draws the published
    overdispersion-adjusted limits too (:func:`adjusted_limits`), in red."""
    fig = _figure(_plotted(consultant_rows, specialty), specialty, window_end, levels, overdispersion,
                  one_per_point=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(value, spec: str, missing: str = "not known") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return missing
    return missing if math.isnan(v) else format(v, spec)


def hover_text(row) -> str:
    """A consultant's hover text in the SVG funnel plot: code, provider, procedures, SMR,
    expected deaths, status, and the power of the funnel for them (``power_smr_2``: the
    chance of an alarm_high if their true SMR were 2; ``min_detectable_smr``: the smallest
    true SMR flagged with 80% power). Only :data:`HOVER_COLUMNS` are read."""
    get = row.get if hasattr(row, "get") else (lambda k, d=None: getattr(row, k, d))
    lines = [
        f"Consultant {get('consultant_code')}" + (f" ({get('provider_code')})" if get("provider_code") else ""),
        f"Procedures: {_fmt(get('procedures'), '.0f')}",
        f"SMR: {_fmt(get('smr'), '.2f')} (expected deaths {_fmt(get('expected_deaths'), '.2f')})",
        f"Status: {str(get('outlier_status')).replace('_', ' ')}",
        f"Power to flag a true SMR of 2 (alarm_high): {_fmt(get('power_smr_2'), '.0%')}",
        f"Smallest true SMR flagged with 80% power: {_fmt(get('min_detectable_smr'), '.2f')}",
    ]
    return "\n".join(lines)


def funnel_plot_svg(
    consultant_rows: pd.DataFrame,
    specialty: str,
    window_end: str,
    *,
    levels: tuple[float, float] = (0.95, 0.998),
    overdispersion: tuple[str, float, float] | None = None,
) -> bytes:
    """The same funnel plot as :func:`funnel_plot`, as SVG, each consultant's point carrying
    its :func:`hover_text` (an SVG ``<title>``, which browsers show on hover): power at SMR 2
    and the minimum detectable SMR beside the SMR. Text is kept as text; the file holds no
    date and its element ids are fixed, so the same inputs give the same bytes."""
    import xml.etree.ElementTree as ET

    import matplotlib

    rows = _plotted(consultant_rows, specialty)
    fig = _figure(rows, specialty, window_end, levels, overdispersion, one_per_point=True)
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "caredata-funnel", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg_ns = "http://www.w3.org/2000/svg"
    ET.register_namespace("", svg_ns)
    ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    ET.register_namespace("dc", "http://purl.org/dc/elements/1.1/")
    ET.register_namespace("cc", "http://creativecommons.org/ns#")
    ET.register_namespace("rdf", "http://www.w3.org/1999/02/22-rdf-syntax-ns#")
    root = ET.fromstring(buf.getvalue())
    texts = [hover_text(r) for r in rows.to_dict("records")]
    for g in root.iter(f"{{{svg_ns}}}g"):
        gid = g.get("id", "")
        if gid.startswith("consultant-"):
            title = ET.Element(f"{{{svg_ns}}}title")
            title.text = texts[int(gid.split("-", 1)[1])]
            g.insert(0, title)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
