"""Period partitions (keys ``YYYY-MM``) that follow the data.

The periods are Dagster *dynamic* partitions: a month is a partition only while the landing
zone holds data of it (``stages.periods``), whatever the month: 2001 (the artificial HES
sample), 1801 (a HES placeholder date) or next year. The runner adds and removes them
through the instance (:func:`sync_periods`), the landing sensor through its
``SensorResult(dynamic_partitions_requests=...)`` (:func:`partition_requests`). No fixed
first month, no empty months in the UI.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

import dagster as dg

PERIODS = "period"

period_partitions = dg.DynamicPartitionsDefinition(name=PERIODS)

_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])", re.ASCII)


def is_period(key: str) -> bool:
    """A partition key is a month ``YYYY-MM`` written with ASCII digits."""
    return isinstance(key, str) and _PERIOD.fullmatch(key) is not None


def _wanted(periods: Iterable[str]) -> list[str]:
    bad = sorted(str(p) for p in periods if not is_period(p))
    if bad:
        raise ValueError(f"not a period (YYYY-MM): {', '.join(bad[:5])}")
    return sorted(set(periods))


def plan(existing: Iterable[str], periods: Iterable[str], *, in_order: bool = False) -> tuple[list[str], list[str]]:
    """(keys to add, keys to delete) so that the partitions are exactly ``periods``.

    Dynamic partitions are listed (in the UI, and by ``dagster job backfill --from --to``)
    in the order they were added. With ``in_order``, a month that sorts before months
    already there (historical HES loaded after 2014) has those later months deleted and
    added again after it, so the list stays in calendar order; delete before adding."""
    want = _wanted(periods)
    have = list(existing)
    gone = [k for k in have if k not in set(want)]
    kept = [k for k in have if k in set(want)]
    if not in_order:
        return sorted(set(want) - set(have)), sorted(gone)
    same = 0  # the kept keys already in calendar order before any new one
    while same < len(kept) and same < len(want) and kept[same] == want[same]:
        same += 1
    return want[same:], sorted(gone + kept[same:])


def sync_periods(instance: dg.DagsterInstance, periods: Iterable[str]) -> tuple[list[str], list[str]]:
    """Make the instance's period partitions exactly ``periods``, in calendar order;
    returns (months added, months removed)."""
    existing = list(instance.get_dynamic_partitions(PERIODS))
    want = _wanted(periods)
    add, delete = plan(existing, want, in_order=True)
    for key in delete:
        instance.delete_dynamic_partition(PERIODS, key)
    if add:
        instance.add_dynamic_partitions(PERIODS, add)
    return sorted(set(want) - set(existing)), sorted(set(existing) - set(want))


def partition_requests(existing: Iterable[str], periods: Iterable[str]) -> list:
    """A sensor's dynamic partition requests making the partitions exactly ``periods``
    (additions at the end: a sensor's run requests cannot name a key it also deletes)."""
    add, delete = plan(existing, periods)
    out = []
    if delete:
        out.append(period_partitions.build_delete_request(delete))
    if add:
        out.append(period_partitions.build_add_request(add))
    return out


def period_check(name: str, *, asset, **kwargs) -> dg.AssetCheckSpec:
    """An asset check of a period-partitioned asset, partitioned by period like it: each
    result is recorded for its period, and the UI shows the check's status per period
    instead of only the latest result. (Partitioned checks are a preview feature of Dagster
    1.13: its warning, once per declaration, is not for the operator.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
        return dg.AssetCheckSpec(name, asset=asset, partitions_def=period_partitions, **kwargs)
