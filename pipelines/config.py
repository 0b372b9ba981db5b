"""One settings object for the whole pipeline.

Precedence, lowest first: the packaged ``defaults.yaml`` (every threshold of methods.md),
an optional YAML file (``--config`` or ``CAREDATA_CONFIG``), then environment variables:

* ``CAREDATA_LANDING``, ``CAREDATA_WAREHOUSE``, ``CAREDATA_PUBLISH``: roots, local paths or
  ``s3://bucket/prefix``;
* ``CAREDATA_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``): a non-AWS S3 endpoint;
* ``CAREDATA_PSEUDO_KEY`` or ``CAREDATA_PSEUDO_KEY_FILE``: the pseudonymisation key;
* ``CAREDATA_DEMO_MODE=1``: use the published demo key (said in every output);
* ``CAREDATA_<SECTION>__<NAME>``: any threshold, e.g. ``CAREDATA_FFT__LINK_MAX_DAYS=3``.

No path or threshold is hard-coded in an asset: assets get this object through the
``CareDataConfig`` resource.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

# The demo key is public on purpose: outputs made with it are labelled demo.
DEMO_PSEUDO_KEY = "caredata-demo-key-not-for-real-data"


class ConfigError(ValueError):
    pass


def _defaults() -> dict:
    text = resources.files("pipelines").joinpath("defaults.yaml").read_text()
    return yaml.safe_load(text)


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _coerce(text: str) -> Any:
    return yaml.safe_load(text)


@dataclass(frozen=True)
class Settings:
    landing: str = "landing"
    warehouse: str = "warehouse"
    publish: str = "publish"
    s3_endpoint_url: str | None = None
    pseudo_key: str | None = field(default=None, repr=False)
    demo_mode: bool = False
    thresholds: dict = field(default_factory=_defaults)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "Settings":
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        thresholds = _defaults()
        config_file = config_file or env.get("CAREDATA_CONFIG")
        if config_file:
            path = Path(config_file)
            if not path.exists():
                raise ConfigError(f"configuration file {path} does not exist")
            loaded = yaml.safe_load(path.read_text()) or {}
            for key in ("landing", "warehouse", "publish", "s3_endpoint_url", "demo_mode"):
                if key in loaded:
                    values[key] = loaded.pop(key)
            if "pseudo_key" in loaded:
                raise ConfigError(
                    "put the pseudonymisation key in CAREDATA_PSEUDO_KEY or a file named by "
                    "CAREDATA_PSEUDO_KEY_FILE, not in the configuration file"
                )
            thresholds = _merge(thresholds, loaded)
        for key in ("landing", "warehouse", "publish"):
            if env.get(f"CAREDATA_{key.upper()}"):
                values[key] = env[f"CAREDATA_{key.upper()}"]
        endpoint = env.get("CAREDATA_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            values["s3_endpoint_url"] = endpoint
        if env.get("CAREDATA_DEMO_MODE", "").lower() in ("1", "true", "yes"):
            values["demo_mode"] = True
        key = env.get("CAREDATA_PSEUDO_KEY")
        if not key and env.get("CAREDATA_PSEUDO_KEY_FILE"):
            key = Path(env["CAREDATA_PSEUDO_KEY_FILE"]).read_text().strip()
        if key:
            values["pseudo_key"] = key
        for name, raw in env.items():
            if name.startswith("CAREDATA_") and "__" in name:
                section, _, item = name[len("CAREDATA_"):].lower().partition("__")
                if section not in thresholds or not isinstance(thresholds[section], dict):
                    raise ConfigError(f"{name}: no threshold section {section!r}")
                if item not in thresholds[section]:
                    raise ConfigError(f"{name}: no threshold {section}.{item}")
                thresholds[section][item] = _coerce(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "thresholds" not in values:
            values["thresholds"] = thresholds
        return cls(**values)

    # ---------------------------------------------------------------- access
    def t(self, section: str, name: str) -> Any:
        """A threshold, e.g. ``settings.t("fft", "link_max_days")``."""
        try:
            return self.thresholds[section][name]
        except KeyError as exc:
            raise ConfigError(f"no threshold {section}.{name}") from exc

    @property
    def effective_pseudo_key(self) -> str | None:
        """The key restricted outputs are pseudonymised with; None means the restricted
        zone must not be written."""
        if self.pseudo_key:
            return self.pseudo_key
        if self.demo_mode:
            return DEMO_PSEUDO_KEY
        return None

    @property
    def key_label(self) -> str:
        """What manifests say about the key: never the key itself."""
        key = self.effective_pseudo_key
        if key is None:
            return "none"
        tag = "demo" if (self.demo_mode and not self.pseudo_key) else "configured"
        return f"{tag}:{hashlib.sha256(key.encode()).hexdigest()[:8]}"

    def thresholds_json(self) -> str:
        return json.dumps(self.thresholds, sort_keys=True, default=str)
