"""The Dagster Definitions: every asset, check, job, schedule and sensor.

``dagster dev -w workspace.yaml`` loads this module.
"""

from __future__ import annotations

import os

import dagster as dg

from assets import ALL_ASSETS
from pipelines.resources import CareDataConfig, EngineResource
from schedules import JOBS, SCHEDULES, SENSORS

_caredata = CareDataConfig()

defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=JOBS,
    schedules=SCHEDULES,
    sensors=SENSORS,
    resources={
        "caredata": _caredata,
        # The engine of the heavy steps (engine: duckdb | spark), one per process.
        "engine": EngineResource(caredata=_caredata),
        # Assets write their own tables to the warehouse; anything returned goes here.
        "io_manager": dg.FilesystemIOManager(
            base_dir=os.path.join(os.environ.get("DAGSTER_HOME", ".dagster_home"), "storage")
        ),
    },
)
