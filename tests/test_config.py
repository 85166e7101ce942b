"""Tests for nanochat_gateway.config: defaults, the shipped config.toml, overrides and error messages."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from nanochat_gateway.config import (
    ConfigError,
    EngineSettings,
    PluginsSettings,
    Settings,
    describe_settings,
    load_settings,
    parse_value,
)

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config.toml"

EXPECTED_DEFAULTS: dict[str, dict[str, Any]] = {
    "server": {
        "host": "127.0.0.1",
        "port": 8000,
        "client_max_size": 4194304,
        "shutdown_grace_s": 30.0,
        "request_timeout_s": 600.0,
        "queue_timeout_s": 60.0,
        "sse_keepalive_s": 5.0,
        "retry_after_s": 1,
        "head_timeout_s": 30.0,
        "body_timeout_s": 60.0,
        "keepalive_timeout_s": 75.0,
        "max_connections": 0,
        "listen_backlog": 0,
    },
    "model": {
        "source": "",
        "id": "",
        "checkpoint_kind": "sft",
        "tag": "",
        "step": None,
        "generation": "auto",
        "softcap": None,
        "dtype": "auto", "quantize": "none",
        "demo_dir": "",
        "tool_calls": "inline",
        "calculator": True,
        "default_system_prompt": "",
    },
    "engine": {
        "devices": "auto",
        "max_batch_size": 16,
        "max_seq_len": 0,
        "prefill_chunk_tokens": 256,
        "max_queue": 256,
        "cpu_threads": 0,
        "admit_window_ms": 3.0,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_tokens": 512,
        "kv_cache_memory_fraction": 0.9,
        "prefix_cache": True,
        "prefix_cache_min_tokens": 16,
        "prefix_cache_scope": "global",
    },
    "limits": {
        "max_messages": 500,
        "max_message_chars": 32000,
        "max_total_chars": 128000,
        "max_tokens_limit": 4096,
        "max_n": 8,
        "max_prompts": 64,
        "max_stop_sequences": 4,
        "max_top_logprobs": 20,
        "max_schema_bytes": 65536,
        "schema_compile_timeout_s": 5.0,
        "max_json_depth": 64,
    },
    "logging": {"level": "info", "format": "text"},
    "ui": {"enabled": True},
    "plugins": {"enabled": ["request_log", "metrics", "api_keys", "rate_limit", "stop_sequences"]},
}


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def config_error(*args: Any, **kwargs: Any) -> str:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)
    return str(info.value)


def section_models() -> dict[str, type[BaseModel]]:
    return {name: field.annotation for name, field in Settings.model_fields.items()}  # type: ignore[misc]


# --- defaults and the shipped file ---------------------------------------------------------------


def test_defaults_match_spec() -> None:
    assert Settings().model_dump() == EXPECTED_DEFAULTS
    assert load_settings(env={}) == Settings()


def test_defaults_cover_every_field() -> None:
    for section, model in section_models().items():
        assert set(model.model_fields) == set(EXPECTED_DEFAULTS[section]), section


def test_shipped_config_equals_defaults() -> None:
    shipped = load_settings(SHIPPED_CONFIG, env={})
    defaults = Settings()
    assert shipped.model_dump(exclude={"plugins"}) == defaults.model_dump(exclude={"plugins"})
    assert shipped.plugins.enabled == defaults.plugins.enabled


def test_shipped_plugin_tables_hold_each_plugins_defaults_with_comments() -> None:
    """Every setting of every enabled plugin is written out, commented, at its default."""
    from nanochat_gateway.plugins import resolve_plugin_class

    shipped = load_settings(SHIPPED_CONFIG, env={})
    text = SHIPPED_CONFIG.read_text()
    for name in shipped.plugins.enabled:
        settings_model = resolve_plugin_class(name).Settings
        table = shipped.plugins.table(name)
        assert settings_model.model_validate(table) == settings_model(), name
        assert set(table) == set(settings_model.model_fields), name
        section = text.split(f"[plugins.{name}]\n", 1)[1].split("\n[", 1)[0].splitlines()
        for index, line in enumerate(section):
            if re.match(r"\w+ = ", line):
                assert section[index - 1].startswith("#"), f"[plugins.{name}] {line} has no comment above it"


def test_every_key_is_in_shipped_config_with_a_comment_above() -> None:
    lines = SHIPPED_CONFIG.read_text().splitlines()
    table = ""
    found: dict[tuple[str, str], bool] = {}
    for index, line in enumerate(lines):
        header = re.fullmatch(r"\[([\w.]+)\]", line.strip())
        if header:
            table = header.group(1)
            continue
        # Keys whose default is None cannot be written in TOML, so they appear commented out.
        key = re.match(r"(?:# )?(\w+) = ", line)
        if key:
            above = [previous for previous in lines[:index] if previous.strip()][-1]
            found.setdefault((table, key.group(1)), above.startswith("#"))
    for section, model in section_models().items():
        for name, field in model.model_fields.items():
            assert (section, name) in found, f"[{section}] {name} missing from config.toml"
            assert found[(section, name)], f"[{section}] {name} has no comment line above it"
            if field.default is None:
                assert f"\n# {name} = " in SHIPPED_CONFIG.read_text()


# --- errors from the file ------------------------------------------------------------------------


def test_unknown_key_names_file_table_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nprot = 9000\n")
    message = config_error(path)
    assert message.startswith(f"{path}: ")
    assert "[server] prot" in message
    assert "unknown key" in message
    assert "'port'" in message  # the suggestion


def test_unknown_table(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, "[sever]\nport = 1\n"))
    assert "[sever]" in message and "unknown table" in message and "'server'" in message


def test_bad_type_names_key_expected_type_and_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[engine]\nmax_batch_size = "abc"\n')
    assert config_error(path) == (
        f"{path}: [engine] max_batch_size: expected an integer from 1 to 1024, got 'abc'"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nport = 0", "[server] port: expected an integer from 1 to 65535, got 0"),
        ('[server]\nport = "8000"', "[server] port: expected an integer from 1 to 65535, got '8000'"),
        ("[server]\nhost = 1", "[server] host: expected a string, got 1"),
        ("[server]\nrequest_timeout_s = 0", "[server] request_timeout_s: expected a number > 0, got 0"),
        ("[server]\nrequest_timeout_s = inf", "expected a number > 0, got inf (must be finite)"),
        ('[model]\ncalculator = "yes"', "[model] calculator: expected a boolean, got 'yes'"),
        ('[model]\ndtype = "fp8"', "[model] dtype: expected one of 'auto', 'float32', 'bfloat16', 'float16'"),
        ("[model]\nsoftcap = -1.0", "[model] softcap: expected a number > 0, got -1.0"),
        ("[engine]\ntop_p = 0.0", "[engine] top_p: expected a number > 0 and <= 1, got 0.0"),
        ("[limits]\nmax_top_logprobs = 21", "[limits] max_top_logprobs: expected an integer from 0 to 20"),
        ("[logging]\nlevel = 'loud'", "[logging] level: expected one of 'debug', 'info', 'warning', 'error'"),
        ("[plugins]\nenabled = ['a', 1]", "[plugins] enabled: expected a list of strings, got ['a', 1]"),
        ("server = 1", "[server]: expected a table, got 1"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in config_error(write_config(tmp_path, text + "\n"))


def test_one_line_per_problem(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nport = 0\nhost = 1\n[engine]\ntop_k = -1\n")
    lines = config_error(path).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nport = 8000\nhost = \n")
    message = config_error(path)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 3" in message


def test_missing_file(tmp_path: Path) -> None:
    message = config_error(tmp_path / "nope.toml")
    assert "nope.toml" in message and "cannot read" in message


# --- plugins -------------------------------------------------------------------------------------


def test_plugin_tables_are_kept_raw(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[plugins]\nenabled = ["rate_limit"]\n[plugins.rate_limit]\nbackend = "redis"\nanything = [1, 2]\n',
    )
    plugins = load_settings(path, env={}).plugins
    assert plugins.enabled == ["rate_limit"]
    assert plugins.table("rate_limit") == {"backend": "redis", "anything": [1, 2]}
    assert plugins.table("metrics") == {}
    # table() hands out a copy, so a plugin cannot change the settings by accident.
    plugins.table("rate_limit")["backend"] = "memory"
    assert plugins.table("rate_limit")["backend"] == "redis"


def test_non_table_under_plugins_is_an_error(tmp_path: Path) -> None:
    message = config_error(write_config(tmp_path, "[plugins]\nrate_limt = 5\n"))
    assert "[plugins] rate_limt" in message and "table" in message and "got 5" in message


def test_duplicate_plugin_is_an_error() -> None:
    with pytest.raises(ValueError, match="more than once"):
        PluginsSettings(enabled=["metrics", "metrics"])


# --- environment ---------------------------------------------------------------------------------


def test_env_overrides_typed_values(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nport = 7000\n")
    settings = load_settings(
        path,
        env={
            "NANOCHAT_GATEWAY__SERVER__PORT": "8080",
            "NANOCHAT_GATEWAY__model__calculator": "false",
            "NANOCHAT_GATEWAY__ENGINE__DEVICES": '["cuda:0","cuda:1"]',
            "NANOCHAT_GATEWAY__ENGINE__TOP_P": "0.5",
            "NANOCHAT_GATEWAY__MODEL__SOURCE": "hf:sdobson/nanochat@main",
            "NANOCHAT_GATEWAY__PLUGINS__RATE_LIMIT__BACKEND": "redis",
            "UNRELATED": "1",
        },
    )
    assert settings.server.port == 8080
    assert settings.model.calculator is False
    assert settings.engine.devices == ["cuda:0", "cuda:1"]
    assert settings.engine.top_p == 0.5
    assert settings.model.source == "hf:sdobson/nanochat@main"
    assert settings.plugins.table("rate_limit") == {"backend": "redis"}


def test_env_text_stays_text_for_string_keys() -> None:
    settings = load_settings(
        env={"NANOCHAT_GATEWAY__MODEL__ID": "123", "NANOCHAT_GATEWAY__MODEL__TAG": "true"}
    )
    assert settings.model.id == "123"
    assert settings.model.tag == "true"


def test_env_nested_plugin_key_refines_file_table(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[plugins.rate_limit]\nbackend = "memory"\nrequests_per_minute = 60\n')
    settings = load_settings(path, env={"NANOCHAT_GATEWAY__PLUGINS__RATE_LIMIT__REQUESTS_PER_MINUTE": "5"})
    assert settings.plugins.table("rate_limit") == {"backend": "memory", "requests_per_minute": 5}


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOCHAT_GATEWAY__LOGGING__LEVEL", "debug")
    assert load_settings().logging.level == "debug"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NANOCHAT_GATEWAY__SERVER__PROT", "unknown key [server] prot"),
        ("NANOCHAT_GATEWAY__SERVERS__PORT", "unknown table [servers]"),
        ("NANOCHAT_GATEWAY__SERVER", "not a key"),
        ("NANOCHAT_GATEWAY__SERVER__PORT__X", "not a table"),
    ],
)
def test_unknown_env_key_names_the_variable(name: str, expected: str) -> None:
    message = config_error(env={name: "1"})
    assert message.startswith(f"{name}: ")
    assert expected in message


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[engine]\nmax_queue = 10\n")
    message = config_error(path, env={"NANOCHAT_GATEWAY__ENGINE__MAX_QUEUE": "lots"})
    assert (
        message
        == "NANOCHAT_GATEWAY__ENGINE__MAX_QUEUE: [engine] max_queue: expected an integer >= 0, got 'lots'"
    )


def test_parse_value() -> None:
    assert parse_value("8080") == 8080
    assert parse_value("true") is True
    assert parse_value("0.5") == 0.5
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value("{ a = 1 }") == {"a": 1}
    assert parse_value("0.0.0.0") == "0.0.0.0"
    assert parse_value("") == ""
    assert parse_value("1\nother = 2") == "1\nother = 2"


# --- CLI-style overrides -------------------------------------------------------------------------


def test_dotted_overrides_win_over_env_and_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[server]\nport = 7000\n")
    settings = load_settings(
        path,
        env={"NANOCHAT_GATEWAY__SERVER__PORT": "8080"},
        overrides={
            "server.port": 9000,
            "model.source": "x",
            "engine.max_batch_size": "4",
            "plugins.rate_limit.backend": "redis",
        },
    )
    assert settings.server.port == 9000
    assert settings.model.source == "x"
    assert settings.engine.max_batch_size == 4
    assert settings.plugins.table("rate_limit") == {"backend": "redis"}


def test_bad_overrides() -> None:
    assert "override 'server.prot'" in config_error(overrides={"server.prot": 1})
    message = config_error(overrides={"server.port": 0})
    assert message.startswith("override 'server.port': [server] port: expected an integer")


# --- devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", "auto"),
        (["cpu"], ["cpu"]),
        (["cuda", "mps"], ["cuda", "mps"]),
        (["cuda:0", "cuda:12"], ["cuda:0", "cuda:12"]),
        ("cuda:0, cuda:1", ["cuda:0", "cuda:1"]),
    ],
)
def test_valid_devices(value: Any, expected: Any) -> None:
    assert EngineSettings(devices=value).devices == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (["gpu"], "unknown device 'gpu'"),
        (["cuda:x"], "unknown device 'cuda:x'"),
        (["CPU"], "unknown device 'CPU'"),
        ([], "empty"),
        (["cuda:0", "cuda:0"], "more than once"),
        (5, "expected 'auto' or a list of strings"),
    ],
)
def test_invalid_devices(value: Any, reason: str) -> None:
    message = config_error(overrides={"engine.devices": value})
    assert "[engine] devices" in message
    assert reason in message


# --- messages and describe_settings --------------------------------------------------------------


def test_no_traceback_text_in_messages(tmp_path: Path) -> None:
    cases = [
        {"path": write_config(tmp_path, "[server\n")},
        {"path": write_config(tmp_path, "[engine]\ndevices = ['gpu']\nmax_queue = 'x'\nfoo = 1\n")},
        {"env": {"NANOCHAT_GATEWAY__NOPE__X": "1", "NANOCHAT_GATEWAY__ENGINE__TOP_K": "x"}},
        {"overrides": {"plugins.x": 3}},
    ]
    for case in cases:
        message = config_error(case.pop("path", None), **case)
        assert message
        for forbidden in ("Traceback", 'File "', "errors.pydantic.dev", "ValidationError", "Value error"):
            assert forbidden not in message, message


def test_describe_settings_is_json_safe_and_masks_secrets() -> None:
    settings = load_settings(
        env={},
        overrides={
            "plugins.api_keys.keys": {"alice": "sha256:abc"},
            "plugins.rate_limit.redis_url": "redis://:pw@host",
            "plugins.rate_limit.tokens_per_minute": 1000,
        },
    )
    described = describe_settings(settings)
    json.dumps(described)
    assert described["server"]["port"] == 8000
    assert described["plugins"]["api_keys"] == {"keys": {"alice": "***"}}
    assert described["plugins"]["rate_limit"] == {"redis_url": "***", "tokens_per_minute": 1000}
    assert "sha256:abc" not in json.dumps(described)
