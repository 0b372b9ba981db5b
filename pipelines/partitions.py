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


def plan(existing: Iterable[str], periods: Iterable[str]) -> tuple[list[str], list[str]]:
    """(keys to add, keys to delete) so that the partitions are exactly ``periods``."""
    want, have = set(_wanted(periods)), set(existing)
    return sorted(want - have), sorted(have - want)


def sync_periods(instance: dg.DagsterInstance, periods: Iterable[str]) -> tuple[list[str], list[str]]:
    """Make the instance's period partitions exactly ``periods``; returns (added, removed)."""
    add, delete = plan(instance.get_dynamic_partitions(PERIODS), periods)
    if add:
        instance.add_dynamic_partitions(PERIODS, add)
    for key in delete:
        instance.delete_dynamic_partition(PERIODS, key)
    return add, delete


def partition_requests(existing: Iterable[str], periods: Iterable[str]) -> list:
    """The same change as :func:`sync_periods`, as a sensor's dynamic partition requests."""
    add, delete = plan(existing, periods)
    out = []
    if add:
        out.append(period_partitions.build_add_request(add))
    if delete:
        out.append(period_partitions.build_delete_request(delete))
    return out
