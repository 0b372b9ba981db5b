"""Linkage precision and recall by match rank, measured on the generator's ground truth.

The pipeline never knows who an episode really belongs to; the generator does
(pipelines/synth/TRUTH.md, ``linkage_episodes.parquet``: ``true_nhs_number`` beside the
rank the rules should give). This module compares what linkage did (the warehouse's
``linked_episodes``: ``match_rank``, ``linked_nhs_number``) with that truth, rank by rank,
for the tests (tests/test_end_to_end.py) and the benchmark (pipelines/bench.py). The
figures are in docs/methods-linkage.md ("Precision and recall by rank, on the generator's truth").

Definitions (one row per rank 1 to 5, then ``1-5`` for every link):

* an episode is one of the truth's episodes that the pipeline kept (``expected_quarantined``
  false and present in ``linked``, joined on provider and SUSRECID); episodes of ``linked``
  the truth does not know (the benchmark's long HES history) are left out;
* a **link** at rank r: an episode the pipeline linked at rank r; it is **correct** when
  the linked NHS number is the episode's true one;
* a **true pair**: an episode whose person is in a GP extract (``in_any_extract``) and has
  no type 1 objection (type 1 GP rows are never kept, so linking them would be wrong);
* ``precision`` = correct links / links at the rank; ``recall`` = correct links at the rank
  / true pairs (the rank's share of all true pairs, so the ranks' recalls add up);
  ``cumulative_precision`` and ``cumulative_recall`` are the same over ranks 1 to r, what an
  analyst who accepts links up to rank r gets.

No NHS number leaves this module: the result holds counts and shares only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["RANKS", "precision_recall_by_rank", "from_run", "format_table"]

RANKS = (1, 2, 3, 4, 5)
_TRUTH_COLUMNS = ("provider_code", "susrecid", "true_nhs_number", "in_any_extract", "type1_patient")
_LINKED_COLUMNS = ("provider_code", "susrecid", "match_rank", "linked_nhs_number")
COLUMNS = ("rank", "links", "correct_links", "precision", "recall", "cumulative_links",
           "cumulative_correct_links", "cumulative_precision", "cumulative_recall", "true_pairs", "episodes")


def _need(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}")


def _share(num: int, den: int) -> float:
    return float(num) / den if den else float("nan")


def precision_recall_by_rank(truth: pd.DataFrame, linked: pd.DataFrame) -> pd.DataFrame:
    """Precision and recall of each match rank (module docstring) from the truth's
    ``linkage_episodes`` and the pipeline's linked episodes (pandas DataFrames or anything
    with ``to_pandas``). Rows: ranks ``1`` to ``5``, then ``1-5``; columns :data:`COLUMNS`.
    Shares are fractions from 0 to 1 (NaN where the denominator is 0)."""
    truth = truth.to_pandas() if hasattr(truth, "to_pandas") else truth
    linked = linked.to_pandas() if hasattr(linked, "to_pandas") else linked
    _need(truth, _TRUTH_COLUMNS, "truth")
    _need(linked, _LINKED_COLUMNS, "linked")
    t = truth
    if "expected_quarantined" in t.columns:
        t = t[~t["expected_quarantined"].fillna(False).astype(bool)]
    t = t[list(_TRUTH_COLUMNS)]
    ours = linked[list(_LINKED_COLUMNS)]
    m = t.merge(ours, on=["provider_code", "susrecid"], how="inner", validate="one_to_one")
    rank = pd.to_numeric(m["match_rank"], errors="coerce").astype("float64")
    true_nhs = m["true_nhs_number"].astype("string")
    correct = ((m["linked_nhs_number"].astype("string") == true_nhs).fillna(False).to_numpy(bool)
               & rank.notna().to_numpy())
    true_pair = (true_nhs.notna() & m["in_any_extract"].fillna(False).astype(bool)
                 & ~m["type1_patient"].fillna(False).astype(bool)).to_numpy(bool)
    pairs = int(true_pair.sum())
    rows = []
    cum_links = cum_correct = 0
    for r in RANKS:
        at = (rank == r).to_numpy()
        links, good = int(at.sum()), int((at & correct).sum())
        cum_links += links
        cum_correct += good
        rows.append({"rank": str(r), "links": links, "correct_links": good,
                     "precision": _share(good, links), "recall": _share(good, pairs),
                     "cumulative_links": cum_links, "cumulative_correct_links": cum_correct,
                     "cumulative_precision": _share(cum_correct, cum_links),
                     "cumulative_recall": _share(cum_correct, pairs)})
    rows.append({"rank": "1-5", "links": cum_links, "correct_links": cum_correct,
                 "precision": _share(cum_correct, cum_links), "recall": _share(cum_correct, pairs),
                 "cumulative_links": cum_links, "cumulative_correct_links": cum_correct,
                 "cumulative_precision": _share(cum_correct, cum_links),
                 "cumulative_recall": _share(cum_correct, pairs)})
    out = pd.DataFrame(rows)
    out["true_pairs"] = pairs
    out["episodes"] = len(m)
    return out[list(COLUMNS)]


def from_run(truth_dir: str | Path, warehouse) -> pd.DataFrame:
    """:func:`precision_recall_by_rank` of a run: the truth written by
    ``pipelines.synth.generate(..., truth_dir=...)`` and the linked episodes of every period
    in ``warehouse`` (a :class:`pipelines.warehouse.Warehouse`)."""
    truth = pd.read_parquet(Path(truth_dir) / "linkage_episodes.parquet", columns=[*_TRUTH_COLUMNS, "expected_quarantined"])
    table = warehouse.read_raw("linked_episodes", columns=list(_LINKED_COLUMNS))
    if table is None:
        raise ValueError("the warehouse holds no linked episodes: run the pipeline first")
    linked = table.to_pandas()
    return precision_recall_by_rank(truth, linked)


def format_table(table: pd.DataFrame) -> str:
    """The figures as a plain-text table (percentages), as the benchmark prints them."""
    # columns wide enough for a national month's counts (1,489,516), a space between each
    lines = [f"{'rank':<6}{'links':>12}{'correct':>12}{'precision':>11}{'recall':>9}{'cum. prec.':>12}{'cum. recall':>13}"]
    for row in table.itertuples(index=False):
        def pct(x):
            return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.3f}%"
        lines.append(f"{row.rank:<6}{row.links:>12,}{row.correct_links:>12,}{pct(row.precision):>11}"
                     f"{pct(row.recall):>9}{pct(row.cumulative_precision):>12}{pct(row.cumulative_recall):>13}")
    if len(table):
        lines.append(f"(true pairs {int(table['true_pairs'].iloc[0]):,} of {int(table['episodes'].iloc[0]):,} "
                     "episodes: the person is in a GP extract and has no type 1 objection)")
    return "\n".join(lines)
