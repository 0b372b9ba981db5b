"""Monthly period partitions (keys ``YYYY-MM``)."""

from __future__ import annotations

import os

import dagster as dg

FIRST_PERIOD = os.environ.get("CAREDATA_FIRST_PERIOD", "2012-01")

period_partitions = dg.MonthlyPartitionsDefinition(
    start_date=FIRST_PERIOD, fmt="%Y-%m", end_offset=1
)
