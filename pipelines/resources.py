"""Dagster resources: the one place assets get their settings, stores and warehouse."""

from __future__ import annotations

import dagster as dg
from pydantic import PrivateAttr

from pipelines.config import Settings


class CareDataConfig(dg.ConfigurableResource):
    """Roots and thresholds for every asset. Empty fields fall back to the environment
    (CAREDATA_LANDING, ...) and the YAML configuration (CAREDATA_CONFIG). The
    pseudonymisation key is never resource config (it would show in run config): it comes
    from CAREDATA_PSEUDO_KEY or CAREDATA_PSEUDO_KEY_FILE.

    The whole configuration is checked when a run starts (``setup_for_execution``), before
    any step: a wrong setting fails the run at once with the one-line
    :class:`~pipelines.config.ConfigError`, as ``caredata run`` does."""

    landing: str = ""
    warehouse: str = ""
    publish: str = ""
    config_file: str = ""
    s3_endpoint_url: str = ""
    demo_mode: bool = False

    _settings: Settings | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.settings()  # raises ConfigError before any asset runs

    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.load(
                self.config_file or None,
                landing=self.landing or None,
                warehouse=self.warehouse or None,
                publish=self.publish or None,
                s3_endpoint_url=self.s3_endpoint_url or None,
                demo_mode=self.demo_mode or None,
            )
        return self._settings


class EngineResource(dg.ConfigurableResource):
    """The engine that runs the heavy plans for a run (``engine: duckdb | spark`` in the
    configuration: CAREDATA_ENGINE, ``caredata run --engine``): an asset takes
    ``engine: EngineResource`` and calls ``engine.engine()``. It is the process's engine for
    the run's settings (:func:`pipelines.engine.from_settings`), the same object
    ``pipelines.stages.engine(settings)`` returns, so an asset and the stages it calls
    share one Spark session. A Spark session starts when the resource is set up (before
    the step that needs it): a cluster that cannot be reached fails that step at once."""

    caredata: CareDataConfig

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        engine = self.engine()
        if engine.name == "spark":
            engine.spark  # noqa: B018 - start (or reach) the session now

    def engine(self):
        from pipelines.engine import from_settings

        return from_settings(self.caredata.settings())
