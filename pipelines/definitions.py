"""The Dagster Definitions: every asset, check, job, schedule and sensor.

``dagster dev -w workspace.yaml`` loads this module; ``caredata run`` (pipelines/runner.py)
runs the same jobs from :func:`build_definitions` with its own resources.
"""

from __future__ import annotations

import os

import dagster as dg

from assets import ALL_ASSETS
from pipelines.resources import CareDataConfig, EngineResource
from schedules import JOBS, SCHEDULES, SENSORS

# workspace.yaml loads this module as a python_module: Dagster names the code location
# after the module, and the repository of a Definitions object "__repository__".
LOCATION = "pipelines.definitions"
REPOSITORY = "__repository__"


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """The Definitions, with ``resources`` (default: the ones the UI and the daemon use,
    read from the environment)."""
    if resources is None:
        caredata = CareDataConfig()
        resources = {
            "caredata": caredata,
            # The engine of the heavy steps (engine: duckdb | spark), one per process.
            "engine": EngineResource(caredata=caredata),
            # Assets write their own tables to the warehouse; anything returned goes here.
            "io_manager": dg.FilesystemIOManager(
                base_dir=os.path.join(os.environ.get("DAGSTER_HOME", ".dagster_home"), "storage")
            ),
        }
    return dg.Definitions(assets=ALL_ASSETS, jobs=JOBS, schedules=SCHEDULES, sensors=SENSORS, resources=resources)


defs = build_definitions()


def job_origin(job_name: str):
    """Where the UI finds ``job_name``: this module's code location, by the name
    workspace.yaml gives it. A run executed in process (``caredata run``) has no origin of
    its own; given this one, the UI lists it under its job (Jobs page, Overview timeline)
    like a launched run. (The name only: the UI re-executes a run through its workspace.)"""
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin

    return RemoteJobOrigin(
        repository_origin=RemoteRepositoryOrigin(
            code_location_origin=RegisteredCodeLocationOrigin(location_name=LOCATION),
            repository_name=REPOSITORY),
        job_name=job_name)
