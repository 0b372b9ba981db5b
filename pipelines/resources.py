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
    configuration, or ``engine`` here to override it): ``context.resources.engine.engine()``,
    or ``engine: EngineResource`` as an asset parameter then ``engine.engine()``. It is the
    process's engine for the run's settings (:func:`pipelines.engine.from_settings`), the
    same object ``pipelines.stages.engine(settings)`` returns, so an asset and the stages it
    calls share one Spark session. A Spark session starts when the run starts (before any
    step): a cluster that cannot be reached fails the run at once."""

    caredata: CareDataConfig
    engine_name: str = ""  # "" = the configuration's (CAREDATA_ENGINE, defaults.yaml)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        engine = self.engine()
        if engine.name == "spark":
            engine.spark  # noqa: B018 - start (or reach) the session now

    def engine(self):
        from dataclasses import replace

        from pipelines.engine import from_settings

        settings = self.caredata.settings()
        if self.engine_name and self.engine_name != settings.engine:
            from pipelines.config import ConfigError
            from pipelines.engine import ENGINES

            if self.engine_name not in ENGINES:
                raise ConfigError(f"engine (EngineResource): expected one of {', '.join(ENGINES)}, "
                                  f"got {self.engine_name!r}"[:120])
            settings = replace(settings, engine=self.engine_name)
        return from_settings(settings)
