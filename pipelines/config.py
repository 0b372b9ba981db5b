"""One settings object for the whole pipeline.

Precedence, lowest first: the packaged ``defaults.yaml`` (every threshold of methods.md),
an optional YAML file (``--config`` or ``CAREDATA_CONFIG``), then environment variables:

* ``CAREDATA_LANDING``, ``CAREDATA_WAREHOUSE``, ``CAREDATA_PUBLISH``: roots, local paths or
  ``s3://bucket/prefix``;
* ``CAREDATA_S3_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL``): a non-AWS S3 endpoint;
* ``CAREDATA_PSEUDO_KEY`` or ``CAREDATA_PSEUDO_KEY_FILE`` (one of them): the
  pseudonymisation key, at least 32 bytes once surrounding whitespace is stripped
  (whitespace only counts as no key);
* ``CAREDATA_DEMO_MODE=1``: use the published demo key (said in every output);
* ``CAREDATA_<SECTION>__<NAME>``: any threshold, e.g. ``CAREDATA_FFT__LINK_MAX_DAYS=3``;
* ``CAREDATA_ENGINE`` (``duckdb`` or ``spark``) and ``CAREDATA_SPARK__<NAME>`` (``MASTER``,
  ``CONNECT_URL``, ``DRIVER_MEMORY``, ``CONF`` as a YAML mapping): the engine that runs the
  heavy steps (``engine`` and ``spark`` in ``defaults.yaml``; not thresholds, so not in
  manifests: :attr:`Settings.engine`, :attr:`Settings.spark`).

:meth:`Settings.load` checks the whole configuration before any work starts and raises one
:class:`ConfigError` listing every problem with its key path: a key the defaults do not
have (YAML or ``CAREDATA_<SECTION>__<NAME>``), a value of the wrong type (the type of the
default; a default of null takes null or text, and a ``*_date`` key null, a date or
``YYYY-MM-DD``; a key of :data:`CHOICES` one of its words), a disclosure threshold below its floor (outputs.md "Disclosure control":
the thresholds are floors, configuration may only make them stricter), a key that is too
short or a key file that cannot be read. The key's value is never in a message.

No path or threshold is hard-coded in an asset: assets get this object through the
``CareDataConfig`` resource.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipelines.pseudo import MIN_KEY_BYTES, key_label_digest

# The demo key is public on purpose: outputs made with it are labelled demo.
DEMO_PSEUDO_KEY = "caredata-demo-key-not-for-real-data"

# outputs.md "Disclosure control" and methods.md (FFT rule 1): configuration may raise these,
# never lower them.
DISCLOSURE_FLOORS: dict[tuple[str, str], int] = {
    ("disclosure", "small_count_max"): 7,
    ("disclosure", "min_denominator"): 8,
    ("fft", "suppress_max_responses"): 4,
}

# Thresholds that take one of a few words (checked wherever they are set).
CHOICES: dict[str, tuple[str, ...]] = {
    "outcomes.overdispersion": ("shmi", "cqc", "none"),
    "fft.rule_set": ("spec", "nhse"),
    "fft.nhse_cascade": ("smallest_two", "all"),
    "disclosure.differencing_severity": ("warn", "error"),
    "disclosure.rounding": ("none", "nearest_5"),
}

# Settings that are not thresholds: the YAML file may give them at its top level.
ROOT_KEYS = ("landing", "warehouse", "publish", "s3_endpoint_url", "demo_mode")
# In defaults.yaml beside the thresholds, but how the pipeline runs, not what it computes.
ENGINE_KEYS = ("engine", "spark")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ConfigError(ValueError):
    """The configuration is wrong; raised before any work starts. The message is one line."""


def _all_defaults() -> dict:
    text = resources.files("pipelines").joinpath("defaults.yaml").read_text()
    return yaml.safe_load(text)


def _defaults() -> dict:
    """The thresholds of defaults.yaml (without the engine keys)."""
    return {k: v for k, v in _all_defaults().items() if k not in ENGINE_KEYS}


def _spark_defaults() -> dict:
    return dict(_all_defaults()["spark"])


def _check_engine(value: Any, where: str, problems: list[str]) -> None:
    from pipelines.engine import ENGINES

    if value not in ENGINES:
        got = f"{value!r}"[:40] if isinstance(value, str) else _kind(value)
        problems.append(f"engine{where}: expected one of {', '.join(ENGINES)}, got {got}")


def _check_spark(value: Any, path: str, where: str, problems: list[str]) -> dict:
    """Check a (partial) ``spark`` mapping; returns it (conf keys and values as text)."""
    if not isinstance(value, Mapping):
        problems.append(f"{path}{where}: expected a mapping of master, connect_url, driver_memory, conf, "
                        f"got {_kind(value)}")
        return {}
    defaults = _spark_defaults()
    out: dict = {}
    for k, v in value.items():
        if k == "conf":
            if not isinstance(v, Mapping) or not all(
                    isinstance(x, (str, int, float, bool)) and not isinstance(x, Mapping) for x in v.values()):
                problems.append(f"{path}.conf{where}: expected a mapping of Spark settings to text or "
                                "numbers, e.g. {spark.sql.shuffle.partitions: 200}")
                continue
            out["conf"] = {str(ck): str(cv).lower() if isinstance(cv, bool) else str(cv) for ck, cv in v.items()}
        elif k not in defaults:
            problems.append(f"{path}.{k}{where}: unknown key (known: {', '.join(defaults)})")
        else:
            before = len(problems)
            _check(v, defaults[k], f"{path}.{k}", problems, str(k))
            problems[before:] = [p.replace(": ", f"{where}: ", 1) for p in problems[before:]]
            if len(problems) == before:
                out[k] = v
    return out


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


# --------------------------------------------------------------------------- checking
def _kind(value: Any) -> str:
    """What a value is, for a message (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (dt.date, dt.datetime)):
        return "a date"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(value: Any, default: Any, path: str, problems: list[str], name: str = "") -> None:
    """Check ``value`` against the shape of ``default`` (its value in defaults.yaml)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {_kind(value)}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected a whole number, got {_kind(value)}")
    elif isinstance(default, float):
        if not _is_number(value):
            problems.append(f"{path}: expected a number, got {_kind(value)}")
    elif isinstance(default, str) or default is None:
        if name.endswith("_date") or (isinstance(default, str) and _DATE.match(default)):
            ok = (value is None and default is None) or isinstance(value, dt.date) or (
                isinstance(value, str) and _DATE.match(value) and _parses(value))
            if not ok:
                what = "a date YYYY-MM-DD" + (" or null" if default is None else "")
                problems.append(f"{path}: expected {what}, got {_kind(value)}")
        elif default is None:
            if value is not None and not isinstance(value, str):
                problems.append(f"{path}: expected text or null, got {_kind(value)}")
        elif not isinstance(value, str):
            problems.append(f"{path}: expected text, got {_kind(value)}")
        elif value not in CHOICES.get(path.split(" ")[0].removeprefix("thresholds."), (value,)):
            choices = CHOICES[path.split(" ")[0].removeprefix("thresholds.")]
            problems.append(f"{path}: expected one of {', '.join(choices)}")
    elif isinstance(default, dict):
        if not isinstance(value, Mapping):
            problems.append(f"{path}: expected a mapping of {', '.join(default)}, got {_kind(value)}")
            return
        for k, v in value.items():
            if k not in default:
                problems.append(f"{path}.{k}: unknown key (known: {', '.join(map(str, default))})")
            else:
                _check(v, default[k], f"{path}.{k}", problems, str(k))
    elif isinstance(default, list):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {_kind(value)}")
            return
        if default and all(isinstance(d, dict) for d in default):
            _check_records(value, default, path, problems)
        elif default:
            if len(value) != len(default):
                problems.append(f"{path}: expected a list of {len(default)} values, got {len(value)}")
                return
            for i, (v, d) in enumerate(zip(value, default)):
                _check(v, d, f"{path}[{i}]", problems, name)


def _parses(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
        return True
    except ValueError:
        return False


def _check_records(value: list, default: list[dict], path: str, problems: list[str]) -> None:
    """A list of mappings (e.g. ``targets``): each item has the keys the default items have;
    a key is required unless some default item leaves it null."""
    shape: dict[str, Any] = {}
    optional: set[str] = set()
    for item in default:
        for k, v in item.items():
            if v is None:
                optional.add(k)
            elif shape.get(k) is None:
                shape[k] = v
            shape.setdefault(k, None)
        optional.update(set(shape) - set(item))
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{where}: expected a mapping of {', '.join(shape)}, got {_kind(item)}")
            continue
        for k in shape:
            if k not in item and k not in optional:
                problems.append(f"{where}.{k}: missing")
        for k, v in item.items():
            if k not in shape:
                problems.append(f"{where}.{k}: unknown key (known: {', '.join(shape)})")
            elif v is None and k in optional:
                continue
            else:
                _check(v, shape[k], f"{where}.{k}", problems, str(k))


def _check_floors(thresholds: dict, problems: list[str], source: Mapping[str, str]) -> None:
    for (section, name), floor in DISCLOSURE_FLOORS.items():
        value = (thresholds.get(section) or {}).get(name) if isinstance(thresholds.get(section), dict) else None
        if _is_number(value) and value < floor:
            where = source.get(f"{section}.{name}", "")
            problems.append(
                f"{section}.{name}{where}: {value} would weaken disclosure control; the floor is {floor} "
                "(configuration may make it stricter, never weaker)")


def _leaf_paths(section: str, value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [f"{section}.{k}" for k in value]
    return [section]


def _read_key(env: Mapping[str, str], problems: list[str]) -> str | None:
    """The configured key, stripped; None when there is none (whitespace only is none)."""
    key = (env.get("CAREDATA_PSEUDO_KEY") or "").strip()
    source = "CAREDATA_PSEUDO_KEY"
    path = (env.get("CAREDATA_PSEUDO_KEY_FILE") or "").strip()
    if path:
        if key:
            problems.append("CAREDATA_PSEUDO_KEY and CAREDATA_PSEUDO_KEY_FILE are both set: set one of them")
            return None
        # The path is never echoed: set by mistake to the key itself, it would print the key.
        source = "CAREDATA_PSEUDO_KEY_FILE"
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            problems.append("CAREDATA_PSEUDO_KEY_FILE: the file it names cannot be read "
                            f"({exc.strerror or type(exc).__name__}; it must name a file holding the key, "
                            "not the key itself)")
            return None
        except ValueError:  # a NUL byte in the value: not a path
            problems.append("CAREDATA_PSEUDO_KEY_FILE: the file it names cannot be read (it must name a "
                            "file holding the key, not the key itself)")
            return None
        try:
            key = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append("CAREDATA_PSEUDO_KEY_FILE: the file it names is not UTF-8 text "
                            "(write the key as text, e.g. `openssl rand -hex 32`)")
            return None
    if not key:
        return None
    if key == DEMO_PSEUDO_KEY:
        problems.append(f"the pseudonymisation key from {source} is the public demo key: anyone could "
                        "reverse the pseudonyms (use --demo-mode for the demo; make a key with "
                        "`openssl rand -hex 32`)")
        return None
    if len(key.encode("utf-8")) < MIN_KEY_BYTES:
        problems.append(f"the pseudonymisation key from {source} is shorter than {MIN_KEY_BYTES} bytes "
                        "(make one with `openssl rand -hex 32`)")
        return None
    return key


def _fail(problems: list[str]) -> None:
    if problems:
        n = len(problems)
        raise ConfigError((f"{n} problems: " if n > 1 else "") + "; ".join(problems))


@dataclass(frozen=True)
class Settings:
    landing: str = "landing"
    warehouse: str = "warehouse"
    publish: str = "publish"
    s3_endpoint_url: str | None = None
    pseudo_key: str | None = field(default=None, repr=False)
    demo_mode: bool = False
    thresholds: dict = field(default_factory=_defaults)
    # The YAML file the thresholds came from (absolute), so that a run's Dagster resource
    # loads the same configuration (pipelines.runner passes it on as CAREDATA_CONFIG).
    config_file: str | None = None
    # The engine of the heavy steps (pipelines.engine.from_settings) and the Spark session's
    # settings (master, connect_url, driver_memory, conf), as in defaults.yaml.
    engine: str = "duckdb"
    spark: dict = field(default_factory=_spark_defaults)

    def __post_init__(self) -> None:
        # The same rule however the object is made (outputs.md "Keys").
        key = self.pseudo_key
        if key is not None:
            if not isinstance(key, str):
                raise ConfigError(f"the pseudonymisation key must be text, not {type(key).__name__}")
            key = key.strip() or None
            if key is not None and len(key.encode("utf-8")) < MIN_KEY_BYTES:
                raise ConfigError(f"the pseudonymisation key is shorter than {MIN_KEY_BYTES} bytes")
            object.__setattr__(self, "pseudo_key", key)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        config_file: str | os.PathLike | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> "Settings":
        """Defaults, then the YAML file, then the environment, then ``overrides``; all of it
        checked before anything is returned. Raises :class:`ConfigError` (one line, every
        problem) on any problem."""
        env = dict(os.environ if env is None else env)
        problems: list[str] = []
        defaults = _defaults()
        values: dict[str, Any] = {}
        thresholds = copy.deepcopy(defaults)
        source: dict[str, str] = {}  # threshold path -> where its value came from
        config_file = config_file or env.get("CAREDATA_CONFIG")
        if config_file:
            loaded = cls._read_yaml(Path(config_file), problems)
            values["config_file"] = str(Path(config_file).expanduser().resolve())
            where = f" (in {config_file})"
            if "pseudo_key" in loaded:
                loaded.pop("pseudo_key")
                problems.append(
                    "pseudo_key: put the pseudonymisation key in CAREDATA_PSEUDO_KEY or a file named by "
                    f"CAREDATA_PSEUDO_KEY_FILE, not in the configuration file{where}")
            for key in ROOT_KEYS:
                if key in loaded:
                    values[key] = loaded.pop(key)
                    cls._check_root(key, values[key], where, problems)
            if "engine" in loaded:
                values["engine"] = loaded.pop("engine")
                _check_engine(values["engine"], where, problems)
            if "spark" in loaded:
                spark = _check_spark(loaded.pop("spark"), "spark", where, problems)
                values["spark"] = {**_spark_defaults(), **spark}
            for section, value in loaded.items():
                if section not in defaults:
                    known = ", ".join([*ROOT_KEYS, *ENGINE_KEYS, *defaults])
                    problems.append(f"{section}{where}: unknown key (known: {known})")
                    continue
                before = len(problems)
                _check(value, defaults[section], str(section), problems, str(section))
                problems[before:] = [p.replace(": ", f"{where}: ", 1) for p in problems[before:]]
                if len(problems) == before:
                    thresholds = _merge(thresholds, {section: value})
                    for path in _leaf_paths(section, value):
                        source[path] = where
        for key in ("landing", "warehouse", "publish"):
            if env.get(f"CAREDATA_{key.upper()}"):
                values[key] = env[f"CAREDATA_{key.upper()}"]
        endpoint = env.get("CAREDATA_S3_ENDPOINT_URL") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            values["s3_endpoint_url"] = endpoint
        if "CAREDATA_DEMO_MODE" in env:
            flag = env["CAREDATA_DEMO_MODE"].strip().lower()
            if flag in _TRUE:
                values["demo_mode"] = True
            elif flag not in _FALSE:
                problems.append("CAREDATA_DEMO_MODE: expected 1/true/yes or 0/false/no")
        key = _read_key(env, problems)
        if key:
            values["pseudo_key"] = key
        if (env.get("CAREDATA_ENGINE") or "").strip():
            values["engine"] = env["CAREDATA_ENGINE"].strip().lower()
            _check_engine(values["engine"], " (CAREDATA_ENGINE)", problems)
        for name, raw in sorted(env.items()):
            if not (name.startswith("CAREDATA_") and "__" in name):
                continue
            section, _, item = name[len("CAREDATA_"):].lower().partition("__")
            if section == "spark":
                try:
                    value = _coerce(raw) if item == "conf" else (raw if raw.strip() else None)
                except (yaml.YAMLError, ValueError):
                    problems.append(f"{name}: not a value YAML can read")
                    continue
                spark = _check_spark({item: value}, "spark", f" ({name})", problems)
                values["spark"] = {**values.get("spark", _spark_defaults()), **spark}
                continue
            if section not in defaults or not isinstance(defaults[section], dict):
                sections = ", ".join(k for k, v in defaults.items() if isinstance(v, dict))
                problems.append(f"{name}: no threshold section {section!r} (sections: {sections})")
                continue
            if item not in defaults[section]:
                problems.append(f"{name}: no threshold {section}.{item} "
                                f"(known: {', '.join(defaults[section])})")
                continue
            try:
                value = _coerce(raw)
            except (yaml.YAMLError, ValueError):
                problems.append(f"{name}: not a value YAML can read")
                continue
            before = len(problems)
            _check(value, defaults[section][item], f"{section}.{item} ({name})", problems, item)
            if len(problems) == before:
                thresholds[section][item] = value
                source[f"{section}.{item}"] = f" ({name})"
        for key, value in overrides.items():
            if value is None:
                continue
            if key in ("landing", "warehouse", "publish") and isinstance(value, os.PathLike):
                value = os.fspath(value)
            if key in ROOT_KEYS:
                cls._check_root(key, value, " (override)", problems)
            elif key == "engine":
                _check_engine(value, " (override)", problems)
            elif key == "spark":
                value = {**values.get("spark", _spark_defaults()), **_check_spark(value, "spark", " (override)", problems)}
            elif key == "thresholds":
                _check(value, defaults, "thresholds", problems)
            elif key not in ("pseudo_key", "config_file"):
                problems.append(f"{key}: not a setting")
            values[key] = value
        values.setdefault("thresholds", thresholds)
        _check_floors(values["thresholds"], problems, source)
        _fail(problems)
        try:
            return cls(**values)
        except (TypeError, ConfigError) as exc:
            raise ConfigError(str(exc)) from None

    @staticmethod
    def _read_yaml(path: Path, problems: list[str]) -> dict:
        if not path.exists():
            raise ConfigError(f"configuration file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"configuration file {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"configuration file {path}: not UTF-8 text") from None
        except ValueError as exc:  # PyYAML's timestamps, e.g. 2015-13-01
            raise ConfigError(f"configuration file {path}: a value YAML cannot read "
                              f"({type(exc).__name__}: an impossible date?)") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"configuration file {path}: not valid YAML{at} "
                              f"({getattr(exc, 'problem', None) or 'syntax error'})") from None
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {path}: expected a mapping of settings, got {_kind(loaded)}")
        return loaded

    @staticmethod
    def _check_root(key: str, value: Any, where: str, problems: list[str]) -> None:
        if key == "demo_mode":
            if not isinstance(value, bool):
                problems.append(f"demo_mode{where}: expected true or false, got {_kind(value)}")
        elif key == "s3_endpoint_url":
            if value is not None and not isinstance(value, str):
                problems.append(f"s3_endpoint_url{where}: expected text or null, got {_kind(value)}")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f"{key}{where}: expected a folder or s3://bucket/prefix, got {_kind(value)}")

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
        """What manifests say about the key: ``configured:`` or ``demo:`` and the first 16
        hex characters of HMAC-SHA256(key, "caredata key label v1"); never the key, never a
        plain hash of it (that would be an offline oracle for guessing the key)."""
        key = self.effective_pseudo_key
        if key is None:
            return "none"
        tag = "demo" if (self.demo_mode and not self.pseudo_key) else "configured"
        return f"{tag}:{key_label_digest(key)}"

    def thresholds_json(self) -> str:
        return json.dumps(self.thresholds, sort_keys=True, default=str)
