"""Settings: config/default.yaml, then a YAML file, then LSTMQ_* environment variables, then CLI
flags (later wins). Validated once, into a frozen Settings object. Nothing is read at import time."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lstmq.shared.errors import ConfigError

if TYPE_CHECKING:
    from lstmq.shared.params import GenerationParams, Limits, ModelParams

ENV_PREFIX = "LSTMQ_"
CONFIG_ENV = "LSTMQ_CONFIG"


@dataclasses.dataclass(frozen=True)
class Field:
    kind: type            # int, float, str or bool
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    nullable: bool = False
    exclusive_minimum: bool = False


SCHEMA: dict[str, Field] = {
    "broker_url": Field(str),
    "broker_tls_ca_certs": Field(str, nullable=True),
    "broker_tls_certfile": Field(str, nullable=True),
    "broker_tls_keyfile": Field(str, nullable=True),
    "broker_tls_cert_reqs": Field(str, choices=("required", "optional", "none")),
    "sentinel_master": Field(str, nullable=True),
    "sentinel_password": Field(str, nullable=True),
    "sentinel_tls": Field(bool),
    "allow_eviction": Field(bool),
    "visibility_timeout": Field(int, 10),
    "result_ttl": Field(int, 60),
    "chunk_size": Field(int, 1, 1_000_000),
    "chunk_size_gpu": Field(int, 1, 1_000_000),
    "poll_interval": Field(float, 0.05, 60),
    "progress_interval": Field(float, 1, 3600),
    "lease_seconds": Field(int, 5, 3600),
    "redispatch_limit": Field(int, 0, 100),
    "task_retries": Field(int, 0, 100),
    "submission_timeout": Field(int, 5, 120),
    "train_slice_seconds": Field(int, 10, 86400),
    "shutdown_timeout": Field(int, 1, 3600),
    "embedding_dim": Field(int, 1, 4096),
    "lstm_units": Field(int, 1, 8192),
    "context_window": Field(int, 2, 4096),
    "max_vocab": Field(int, 0),
    "optimizer": Field(str, choices=("adam", "sgd", "rmsprop")),
    "learning_rate": Field(float, 0, 10, exclusive_minimum=True),
    "epochs": Field(int, 1, 100_000),
    "batch_size": Field(int, 1, 65_536),
    "validation_split": Field(float, 0, 0.99),
    "early_stopping_patience": Field(int, 0),
    "shuffle_seed": Field(int, 0),
    "lstm_layers": Field(int, 1, 16),
    "dropout": Field(float, 0, 0.9),
    "clipnorm": Field(float, 0, 1000),
    "words": Field(int, 1, 1_000_000),
    "temperature": Field(float, 0, 1000),
    "top_k": Field(int, 0),
    "top_p": Field(float, 0, 1, exclusive_minimum=True),
    "n": Field(int, 1, 10_000),
    "seed": Field(int, 0, 2**63 - 1, nullable=True),
    "max_words": Field(int, 1, 1_000_000),
    "max_n": Field(int, 1, 10_000),
    "max_prompt_chars": Field(int, 1),
    "max_line_bytes": Field(int, 16),
    "max_corpus_bytes": Field(int, 1),
    "model_cache_size": Field(int, 1, 64),
    "decode_batch_size": Field(int, 1, 1_000_000),
    "decode_batch_size_gpu": Field(int, 1, 1_000_000),
    "tf_threads": Field(int, 1, 1024, nullable=True),
    "tf_inter_op_threads": Field(int, 1, 1024, nullable=True),
    "native_kernels": Field(str, choices=("auto", "on", "off")),
    "metrics_port": Field(int, 1, 65535, nullable=True),
}

@dataclasses.dataclass(frozen=True)
class Settings:
    values: Mapping[str, Any]
    sources: Mapping[str, str]   # key -> where its value came from (for messages)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def model_params(self) -> ModelParams:
        from lstmq.shared.params import ModelParams
        return ModelParams.from_mapping(self.values)

    def generation_params(self) -> GenerationParams:
        from lstmq.shared.params import GenerationParams
        return GenerationParams.from_mapping(self.values)

    def limits(self) -> Limits:
        from lstmq.shared.params import Limits
        return Limits.from_mapping(self.values)

    def replace(self, **overrides: Any) -> Settings:
        """These settings with `overrides` (None: left as they are), checked as options are."""
        values, sources = dict(self.values), dict(self.sources)
        for key, value in overrides.items():
            if value is None:
                continue
            values[key] = check_value(key, value, f"argument {key}")
            sources[key] = f"argument {key}"
        _check_relations(values, sources)
        return Settings(values=values, sources=sources)


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def check_value(key: str, value: Any, source: str, noun: str = "setting",
                error: type[Exception] = ConfigError) -> Any:
    """Return `value` converted to the key's type, or raise `error` naming the key and source.
    Float settings and fields must be finite: nan and inf are rejected."""
    prefix = f"{source}: " if source else ""
    field = SCHEMA.get(key)
    if field is None:
        raise error(f"{prefix}unknown {noun} {key!r}{did_you_mean(key, SCHEMA)}")
    if value is None:
        if field.nullable:
            return None
        raise error(f"{prefix}{noun} {key!r} must not be null")
    kind = field.kind
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise error(f"{prefix}{noun} {key!r} must be a finite number, got an integer too large for a float") from None
    if kind is float and isinstance(value, str):
        # "nan" or "inf" as text (an environment variable, an unquoted YAML word): name the real problem
        try:
            non_finite_text = not math.isfinite(float(value))
        except ValueError:
            non_finite_text = False
        if non_finite_text:
            raise error(f"{prefix}{noun} {key!r} must be a finite number, got {value!r}")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise error(f"{prefix}{noun} {key!r} must be {_kind_name(field)}, got {type(value).__name__} {value!r}")
    if kind is float and not math.isfinite(value):
        # NaN compares false with every bound, so it would pass the range checks below
        raise error(f"{prefix}{noun} {key!r} must be a finite number, got {value!r}")
    if field.choices and value not in field.choices:
        raise error(f"{prefix}{noun} {key!r} must be one of {', '.join(field.choices)}, got {value!r}")
    if field.minimum is not None:
        too_small = value <= field.minimum if field.exclusive_minimum else value < field.minimum
        if too_small:
            relation = ">" if field.exclusive_minimum else ">="
            raise error(f"{prefix}{noun} {key!r} must be {relation} {field.minimum:g}, got {value!r}")
    if field.maximum is not None and value > field.maximum:
        raise error(f"{prefix}{noun} {key!r} must be <= {field.maximum:g}, got {value!r}")
    return value


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" when a known name is close to `name`, else ""."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind_name(field: Field) -> str:
    name = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[field.kind]
    return name + (" or null" if field.nullable else "")


USER_CONFIG = ".config/lstmq/config.yaml"      # under $HOME
SYSTEM_CONFIG = Path("/etc/lstmq/config.yaml")


def config_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where a config file is looked for when neither --config nor $LSTMQ_CONFIG names one."""
    environ = os.environ if environ is None else environ
    home = environ.get("HOME")
    return ([Path(home) / USER_CONFIG] if home else []) + [SYSTEM_CONFIG]


def found_config_file(environ: Mapping[str, str] | None = None) -> Path | None:
    return next((path for path in config_files(environ) if path.is_file()), None)


def default_file() -> Path:
    return Path(str(resources.files("lstmq.config").joinpath("default.yaml")))


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read config file: {error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of setting: value, got {type(data).__name__}")
    return data


def _parse_env(key: str, raw: str) -> Any:
    if SCHEMA[key].kind is str:
        return None if raw.strip().lower() in ("null", "~") and SCHEMA[key].nullable else raw
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def load_settings(config_file: str | os.PathLike[str] | None = None,
                  overrides: Mapping[str, Any] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings: defaults < config file < LSTMQ_* < overrides. The config file is
    `config_file`, else $LSTMQ_CONFIG, else the first of USER_CONFIG (under $HOME) and
    SYSTEM_CONFIG that exists (config_files() says which). Overrides whose value is None are
    ignored (a CLI flag that was not given)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = [(str(default_file()), read_yaml(default_file()))]
    config_file = config_file or environ.get(CONFIG_ENV) or found_config_file(environ)
    if config_file:
        layers.append((str(config_file), read_yaml(config_file)))
    for source, data in layers:
        for key, value in data.items():
            values[key] = check_value(str(key), value, source)
            sources[key] = source
    missing = set(SCHEMA) - set(values)
    if missing:
        raise ConfigError(f"{default_file()}: missing settings {sorted(missing)}")
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in SCHEMA:
            if key in _IGNORED_ENV:
                continue
            close = difflib.get_close_matches(key, list(SCHEMA), n=1, cutoff=0.7)
            hint = f" (did you mean {env_name(close[0])}?)" if close else ""
            raise ConfigError(f"environment variable {name}: unknown setting {key!r}{hint}")
        values[key] = check_value(key, _parse_env(key, raw), f"environment variable {name}")
        sources[key] = f"environment variable {name}"
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        flag = "--broker" if key == "broker_url" else f"--{key.replace('_', '-')}"
        values[key] = check_value(key, value, f"option {flag}")
        sources[key] = f"option {flag}"
    _check_relations(values, sources)
    return Settings(values=values, sources=sources)


# LSTMQ_* variables that are not settings (read elsewhere, documented in the README).
_IGNORED_ENV = {"device", "gpu_index", "cpus", "parent_pid",   # lstmq-worker
                "test_corpus",                    # tests and benchmarks
                "kernel_cache"}                   # worker.engine.kernels: where the native kernels are built


BROKER_SCHEMES = ("redis", "rediss", "unix", "sentinel")   # the Redis transports both kombu and redis-py take


def check_broker_url(url: str, source: str = "setting broker_url") -> None:
    """ConfigError unless `url` is a Redis URL lstmq can use (the URL itself is never shown: it
    may hold a password; its scheme is)."""
    for part in url.split(";") if url.lower().startswith("sentinel://") else [url]:
        scheme, separator, _rest = part.partition("://")
        if not separator or scheme.lower() not in BROKER_SCHEMES:
            shown = f"{scheme}://..." if separator else "no scheme"
            raise ConfigError(f"{source}: broker_url must be a Redis URL ({', '.join(f'{name}://' for name in BROKER_SCHEMES)}), "
                              f"got {shown}: lstmq keeps its jobs, models and queues in Redis")
        if url.lower().startswith("sentinel://") and scheme.lower() != "sentinel":
            raise ConfigError(f"{source}: a Redis Sentinel broker_url lists sentinels only "
                              f"(sentinel://host:port;sentinel://host:port), got {scheme}://...")


def _check_relations(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    check_broker_url(values["broker_url"], sources.get("broker_url", "setting broker_url"))
    if values["broker_url"].lower().startswith("sentinel://") and not values["sentinel_master"]:
        raise ConfigError(f"{sources.get('broker_url', 'setting broker_url')}: broker_url names Redis Sentinels: set "
                          f"sentinel_master (LSTMQ_SENTINEL_MASTER) to the name of the primary they monitor")
    if values["words"] > values["max_words"]:
        raise ConfigError(f"{sources['words']}: setting 'words' ({values['words']}) exceeds max_words ({values['max_words']})")
    if values["n"] > values["max_n"]:
        raise ConfigError(f"{sources['n']}: setting 'n' ({values['n']}) exceeds max_n ({values['max_n']})")
