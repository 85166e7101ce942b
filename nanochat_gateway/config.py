"""Gateway settings: pydantic models for ``config.toml``, environment and CLI overrides, readable errors.

Precedence, lowest to highest: model defaults, the TOML file, ``NANOCHAT_GATEWAY__SECTION__KEY``
environment variables, then ``overrides`` (dotted keys from the command line).
"""

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nanochat_gateway.config_errors import (
    ConfigError,
    KeyPath,
    did_you_mean,
    key_problem,
    model_of,
    resolve,
    validation_problems,
)

__all__ = [
    "ENV_PREFIX",
    "ConfigError",
    "EngineSettings",
    "LimitsSettings",
    "LoggingSettings",
    "ModelSettings",
    "PluginsSettings",
    "ServerSettings",
    "Settings",
    "UiSettings",
    "describe_settings",
    "load_settings",
    "parse_value",
]

ENV_PREFIX = "NANOCHAT_GATEWAY__"

# strict: a config file should say `port = 8000`, not `port = "8000"`; env/CLI text is typed by parse_value.
# allow_inf_nan off: `inf` is valid TOML but never a sensible timeout or fraction.
_TABLE = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

_DEVICE_RE = re.compile(r"cpu|mps|cuda(:\d+)?")
_SECRET_KEY_RE = re.compile(r"(^|_)(keys?|secret|password|passwd|token|credentials?|url|dsn|auth)$", re.I)


class ServerSettings(BaseModel):
    """The ``[server]`` table: HTTP listener and request lifecycle."""

    model_config = _TABLE

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    client_max_size: int = Field(4 * 1024 * 1024, ge=1024, description="request body limit in bytes")
    shutdown_grace_s: float = Field(30.0, ge=0, description="time in-flight streams get after SIGTERM")
    request_timeout_s: float = Field(600.0, gt=0, description="total deadline per request")
    queue_timeout_s: float = Field(60.0, gt=0, description="max wait in the queue before a timeout error")
    sse_keepalive_s: float = Field(5.0, gt=0, description="interval of SSE comment pings while waiting")
    retry_after_s: int = Field(1, ge=0, description="Retry-After header sent with 503 overload")
    head_timeout_s: float = Field(
        30.0, gt=0, description="time to send a complete request head, from connecting or from its first byte"
    )
    body_timeout_s: float = Field(60.0, gt=0, description="time to send the whole body once the head is in")
    keepalive_timeout_s: float = Field(75.0, gt=0, description="idle time allowed between requests")
    max_connections: int = Field(0, ge=0, description="open connections; 0 = from the file-descriptor limit")
    listen_backlog: int = Field(
        0, ge=0, le=65535, description="connections the kernel queues for accept(); 0 = from the file-descriptor limit"
    )


class ModelSettings(BaseModel):
    """The ``[model]`` table: which checkpoint to serve and how to render it."""

    model_config = _TABLE

    source: str = Field("", description="'' = hf:sdobson/nanochat if reachable/cached, else a demo model")
    id: str = Field("", description="model id shown to clients; '' = derived from the source")
    checkpoint_kind: Literal["base", "sft", "rl"] = "sft"
    tag: str = Field("", description="model tag in a nanochat base dir; '' = the largest")
    step: int | None = Field(None, ge=0, description="checkpoint step; None = the last")
    generation: Literal["auto", "2025-10", "2025-12", "2026-01", "2026-03", "2026-07"] = "auto"
    softcap: float | None = Field(None, gt=0, description="override the logit softcap")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantize: Literal["none", "int8"] = Field("none", description="int8: int8 linear layers on the CPU")
    demo_dir: str = Field("", description="where the demo model is written; '' = a per-user cache dir")
    tool_calls: Literal["inline", "hidden", "raw"] = "inline"
    calculator: bool = True
    default_system_prompt: str = ""


class EngineSettings(BaseModel):
    """The ``[engine]`` table: devices, batching and sampling defaults."""

    model_config = _TABLE

    devices: Literal["auto"] | list[str] = "auto"
    max_batch_size: int = Field(16, ge=1, le=1024, description="KV-cache slots per device")
    max_seq_len: int = Field(0, ge=0, description="0 = the model's sequence_len")
    prefill_chunk_tokens: int = Field(256, ge=16)
    max_queue: int = Field(256, ge=0, description="waiting requests beyond this get 503")
    cpu_threads: int = Field(0, ge=0, description="0 = auto")
    admit_window_ms: float = Field(3.0, ge=0, description="idle executor gathers arrivals this long")
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    max_tokens: int = Field(512, ge=1, description="default when a request omits max_tokens")
    kv_cache_memory_fraction: float = Field(0.9, gt=0, le=1)
    prefix_cache: bool = Field(True, description="reuse the KV of a prompt prefix computed before")
    prefix_cache_min_tokens: int = Field(16, ge=1, description="shorter matched prefixes are not reused")
    prefix_cache_scope: Literal["global", "key"] = Field(
        "global", description="'key': only requests with the same API key name share cached prefixes")

    @field_validator("devices", mode="before")
    @classmethod
    def _split_device_text(cls, value: Any) -> Any:
        # Env variables and CLI flags naturally give "cuda:0,cuda:1" rather than a TOML list.
        if isinstance(value, str) and value != "auto":
            return [part.strip() for part in value.split(",")]
        return value

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: Literal["auto"] | list[str]) -> Literal["auto"] | list[str]:
        if value == "auto":
            return value
        if not value:
            raise ValueError("the device list is empty")
        for device in value:
            if not _DEVICE_RE.fullmatch(device):
                raise ValueError(f"unknown device {device!r}, use 'cpu', 'mps', 'cuda' or 'cuda:N'")
        duplicates = sorted({device for device in value if value.count(device) > 1})
        if duplicates:
            raise ValueError(f"device {duplicates[0]!r} is listed more than once")
        return value


class LimitsSettings(BaseModel):
    """The ``[limits]`` table: per-request input validation bounds."""

    model_config = _TABLE

    max_messages: int = Field(500, ge=1)
    max_message_chars: int = Field(32000, ge=1)
    max_total_chars: int = Field(128000, ge=1)
    max_tokens_limit: int = Field(4096, ge=1, description="largest max_tokens a request may ask")
    max_n: int = Field(8, ge=1, le=128)
    max_prompts: int = Field(64, ge=1, le=4096, description="most prompts in one /v1/completions request")
    max_stop_sequences: int = Field(4, ge=0)
    max_top_logprobs: int = Field(20, ge=0, le=20)
    max_schema_bytes: int = Field(65536, ge=64, description="largest JSON schema a request may send, in bytes")
    schema_compile_timeout_s: float = Field(5.0, gt=0, description="longest a schema may take to compile")
    max_json_depth: int = Field(64, ge=2, le=500, description="deepest nesting of arrays and objects in a body")


class LoggingSettings(BaseModel):
    """The ``[logging]`` table."""

    model_config = _TABLE

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json", "keyvalue"] = "text"


class UiSettings(BaseModel):
    """The ``[ui]`` table: the chat page for people at ``/``."""

    model_config = _TABLE

    enabled: bool = Field(True, description="serve the chat page at / (its files under /ui/)")


class PluginsSettings(BaseModel):
    """The ``[plugins]`` table: the enabled list plus one raw ``[plugins.<name>]`` table per plugin.

    Plugin tables are kept as plain dicts here; each plugin validates its own table when loaded.
    """

    # extra="allow" keeps [plugins.<name>] tables; the annotation below makes each one a table.
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)
    __pydantic_extra__: dict[str, dict[str, Any]] = Field(init=False)

    enabled: list[str] = Field(
        default_factory=lambda: ["request_log", "metrics", "api_keys", "rate_limit", "stop_sequences"]
    )

    @field_validator("enabled", mode="before")
    @classmethod
    def _split_enabled_text(cls, value: Any) -> Any:
        # Env variables and CLI flags naturally give "api_keys,metrics" rather than a TOML list.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("enabled")
    @classmethod
    def _check_enabled(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.strip():
                raise ValueError("a plugin name is empty")
            if value.count(name) > 1:
                raise ValueError(f"plugin {name!r} is listed more than once")
        return value

    def table(self, name: str) -> dict[str, Any]:
        """Return a copy of the ``[plugins.<name>]`` table, or ``{}`` when the config has none."""
        return copy.deepcopy((self.__pydantic_extra__ or {}).get(name, {}))

    def tables(self) -> dict[str, dict[str, Any]]:
        """Return a copy of every ``[plugins.<name>]`` table by plugin name."""
        return copy.deepcopy(dict(self.__pydantic_extra__ or {}))


class Settings(BaseModel):
    """All gateway settings: one field per table of ``config.toml``."""

    model_config = _TABLE

    server: ServerSettings = Field(default_factory=ServerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    ui: UiSettings = Field(default_factory=UiSettings)
    plugins: PluginsSettings = Field(default_factory=PluginsSettings)


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load settings from a TOML file (``None``: defaults only), then env variables, then ``overrides``.

    ``env`` defaults to ``os.environ``; every ``NANOCHAT_GATEWAY__SECTION__KEY`` in it sets a key.
    ``overrides`` maps dotted keys (``"server.port"``, ``"plugins.rate_limit.backend"``) to values;
    a string value for a non-string key is parsed like an env value. Raises ConfigError.
    """
    label = str(path) if path is not None else "settings"
    raw: dict[str, Any] = {}
    sources: dict[KeyPath, str] = {}
    problems: list[str] = []
    if path is not None:
        raw = _read_toml(Path(path).expanduser(), label)
        _record_sources(sources, (), raw, label)

    environ = os.environ if env is None else env
    env_items = []
    for name, text in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        keys = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        problem = _check_key_path(keys)
        if problem:
            problems.append(f"{name}: {problem}")
            continue
        env_items.append((keys, name, text))
    # Shallow paths first, so NANOCHAT_GATEWAY__PLUGINS__X__KEY refines a table set by ..._PLUGINS__X.
    for keys, name, text in sorted(env_items, key=lambda item: (len(item[0]), item[1])):
        _assign(raw, sources, keys, _typed_text(keys, text), name)

    for dotted, value in (overrides or {}).items():
        keys = tuple(dotted.split("."))
        problem = _check_key_path(keys)
        if problem:
            problems.append(f"override {dotted!r}: {problem}")
            continue
        if isinstance(value, str):
            value = _typed_text(keys, value)
        _assign(raw, sources, keys, value, f"override {dotted!r}")

    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems += validation_problems(exc, Settings, source=label, raw=raw, sources=sources)
    else:
        problems += _cross_table_problems(settings, sources, label)
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_table_problems(settings: Settings, sources: Mapping[KeyPath, str], label: str) -> list[str]:
    """Problems that involve keys of two tables, which no single table's validation can see."""
    devices = settings.engine.devices
    if settings.model.quantize == "int8" and devices != "auto" and (others := [d for d in devices if d != "cpu"]):
        return [key_problem(("model", "quantize"), sources, label,
                            f"'int8' runs on the CPU only, but [engine] devices lists {', '.join(others)}; "
                            'set devices = ["cpu"], or quantize = "none" (bf16 is fast on GPUs)')]
    return []


def parse_value(text: str) -> Any:
    """Parse ``text`` as a TOML value (``8080``, ``true``, ``["a", "b"]``, ``{a = 1}``); else return it as is."""
    try:
        document = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    # A newline in the text could smuggle in more keys; then it was not a single value.
    return document["value"] if len(document) == 1 else text


def describe_settings(settings: Settings) -> dict[str, Any]:
    """Return the settings as a JSON-safe dict, with secret-looking plugin values masked as ``"***"``."""
    data = settings.model_dump(mode="json")
    plugins = data["plugins"]
    for name, table in plugins.items():
        if name != "enabled" and isinstance(table, dict):
            plugins[name] = _mask_secrets(table)
    return data


def _mask_secrets(table: dict[str, Any]) -> dict[str, Any]:
    masked: dict[str, Any] = {}
    for key, value in table.items():
        if _SECRET_KEY_RE.search(key):
            # Keep the names of a keyed table (e.g. api key owners) but never the values.
            masked[key] = {name: "***" for name in value} if isinstance(value, dict) else "***"
        elif isinstance(value, dict):
            masked[key] = _mask_secrets(value)
        else:
            masked[key] = value
    return masked


def _read_toml(path: Path, label: str) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the file: {exc.strerror or exc}") from None


def _check_key_path(keys: KeyPath) -> str | None:
    """Return why ``keys`` (from an env variable or dotted override) names no settable key, or None."""
    if not keys or any(not key for key in keys):
        return "expected SECTION__KEY (env) or section.key (override), with no empty parts"
    section, *rest = keys
    fields = Settings.model_fields
    if section not in fields:
        return f"unknown table [{section}]{did_you_mean(section, fields)}"
    if not rest:
        return f"names the table [{section}], not a key in it"
    sub_fields = model_of(fields[section].annotation).model_fields  # type: ignore[union-attr]
    if section == "plugins" and rest[0] not in sub_fields:
        return None  # [plugins.<name>] tables are free-form; each plugin validates its own.
    if rest[0] not in sub_fields:
        return f"unknown key [{section}] {rest[0]}{did_you_mean(rest[0], sub_fields)}"
    if len(rest) > 1:
        return f"[{section}] {rest[0]} is not a table"
    return None


def _typed_text(keys: KeyPath, text: str) -> Any:
    # A string key keeps the text verbatim, so e.g. model.id "123" or tag "true" stay strings.
    field = resolve(Settings, keys)[1]
    if field is not None and _is_text_type(field.annotation):
        return text
    return parse_value(text)


def _is_text_type(annotation: Any) -> bool:
    if annotation is str:
        return True
    if get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in get_args(annotation))
    return False


def _assign(raw: dict[str, Any], sources: dict[KeyPath, str], keys: KeyPath, value: Any, source: str) -> None:
    table = raw
    for key in keys[:-1]:
        if not isinstance(table.get(key), dict):
            table[key] = {}
        table = table[key]
    table[keys[-1]] = value
    # Forget where replaced sub-keys came from, then remember the new ones.
    for known in [known for known in sources if known[: len(keys)] == keys]:
        del sources[known]
    sources[keys] = source
    if isinstance(value, dict):
        _record_sources(sources, keys, value, source)


def _record_sources(
    sources: dict[KeyPath, str], prefix: KeyPath, table: Mapping[str, Any], source: str
) -> None:
    for key, value in table.items():
        sources[(*prefix, key)] = source
        if isinstance(value, dict):
            _record_sources(sources, (*prefix, key), value, source)
