"""Settings: every one readable from `MEMORYD_<NAME>`, validated with a
ConfigError naming the variable, overridable by the CLI."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from memoryd.config import ConfigError, Settings, env_name, setting_fields

FIELDS = {f.name: f for f in setting_fields()}

# Strings whose values are checked: a valid value other than the default.
SPECIAL_STRINGS = {
    "database_url": "postgresql+asyncpg://u:p@db.internal/memoryd",
    "qdrant_url": "https://qdrant.internal:6333",
    "redis_url": "redis://redis.internal:6379/2",
    "openai_base_url": "https://llm.internal/v1",
    "outbound_allow_networks": "10.20.0.0/16,fd00::/8",
    "mcp_port": "8765",
}
TLS = ("tls_cert", "tls_key", "tls_client_ca")


def _other_value(f: dataclasses.Field[Any]) -> tuple[str, Any]:
    """An environment value different from the default, and what it parses to."""
    default = f.default
    choices = f.metadata.get("choices")
    if choices:
        value = next(c for c in choices if c != default)
        return value, value
    if isinstance(default, bool):
        return ("false", False) if default else ("true", True)
    if isinstance(default, int):
        if "port" in f.name:
            return "8081", 8081
        return str(default + 7), default + 7
    if isinstance(default, float):
        value = default * 2 + 0.5
        return repr(value), value
    value = SPECIAL_STRINGS.get(f.name, f"/custom/{f.name}")
    return value, value


def test_the_setting_names_are_what_the_docs_show() -> None:
    assert env_name("key_cache_ttl_s") == "MEMORYD_KEY_CACHE_TTL_S"
    for f in setting_fields():
        assert f.metadata["help"], f.name


@pytest.mark.parametrize("name", [n for n in FIELDS if n not in (*TLS, "workers")])
def test_every_setting_is_read_from_its_variable(name: str) -> None:
    raw, expected = _other_value(FIELDS[name])
    assert expected != FIELDS[name].default
    settings = Settings.load(environ={env_name(name): raw})
    assert getattr(settings, name) == expected
    # and nothing else moved
    for other, f in FIELDS.items():
        if other != name:
            assert getattr(settings, other) == f.default, other


def test_workers_are_read_and_need_redis() -> None:
    redis = {env_name("redis_url"): "redis://127.0.0.1:6379/0"}
    assert Settings.load(environ={env_name("workers"): "4", **redis}).workers == 4
    with pytest.raises(ConfigError, match=r"MEMORYD_WORKERS.*MEMORYD_REDIS_URL"):
        Settings.load(environ={env_name("workers"): "2"})
    with pytest.raises(ConfigError, match="MEMORYD_WORKERS"):
        Settings.load(environ={env_name("workers"): "0", **redis})


def test_tls_settings_are_read_together(tmp_path: Path) -> None:
    paths = {}
    for name in TLS:
        p = tmp_path / f"{name}.pem"
        p.write_text("-----BEGIN-----\n")
        paths[name] = str(p)
    settings = Settings.load(environ={env_name(n): p for n, p in paths.items()})
    assert {n: getattr(settings, n) for n in TLS} == paths
    assert settings.tls_enabled


def test_defaults_load_from_an_empty_environment() -> None:
    settings = Settings.load(environ={})
    assert settings == Settings()
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_database_url.endswith("memoryd.db")


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.load(environ={"MEMORYD_NO_SUCH_THING": "x", "PORT": "1"}) == Settings()


def _numeric() -> list[str]:
    return [
        n
        for n, f in FIELDS.items()
        if isinstance(f.default, int | float) and not isinstance(f.default, bool)
    ]


@pytest.mark.parametrize("name", _numeric())
@pytest.mark.parametrize("raw", ["abc", "", "1.2.3", "-5", "nan", "inf", "-inf"])
def test_bad_numbers_name_the_variable(name: str, raw: str) -> None:
    if raw in ("nan", "inf", "-inf") and isinstance(FIELDS[name].default, int):
        raw = "12abc"
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={env_name(name): raw})
    assert env_name(name) in str(info.value)


@pytest.mark.parametrize("name", [n for n, f in FIELDS.items() if isinstance(f.default, bool)])
def test_bad_booleans_name_the_variable(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={env_name(name): "maybe"})
    assert env_name(name) in str(info.value)
    for raw, value in (("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)):
        assert getattr(Settings.load(environ={env_name(name): raw}), name) is value


@pytest.mark.parametrize("name", [n for n, f in FIELDS.items() if f.metadata.get("choices")])
def test_bad_choices_name_the_variable_and_the_choices(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={env_name(name): "bogus"})
    message = str(info.value)
    assert env_name(name) in message
    for choice in FIELDS[name].metadata["choices"]:
        assert choice in message


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("port", "65536"),
        ("metrics_port", "70000"),
        ("embedding_dimension", "0"),
        ("key_cache_size", "0"),
        ("key_requests_per_second", "0"),
        ("max_content_bytes", "0"),
        ("database_url", "mysql://localhost/db"),
        ("database_url", "postgresql://no-driver/db"),
        ("qdrant_url", "qdrant.internal:6333"),
        ("redis_url", "http://redis"),
        ("tls_cert", "/no/such/cert.pem"),
        ("alert_rearm_percent", "50"),
        ("alert_rate_limited_s", "0"),
        ("alert_quiet_s", "0"),
    ],
)
def test_bad_values_name_the_variable(name: str, raw: str) -> None:
    environ = {env_name(name): raw}
    if name == "tls_cert":
        environ[env_name("tls_key")] = "/no/such/key.pem"
    with pytest.raises(ConfigError) as info:
        Settings.load(environ=environ)
    assert env_name(name) in str(info.value)


def test_tls_halves_go_together(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="MEMORYD_TLS_KEY"):
        Settings.load(environ={"MEMORYD_TLS_CERT": str(cert)})
    with pytest.raises(ConfigError, match="MEMORYD_TLS_CERT"):
        Settings.load(environ={"MEMORYD_TLS_KEY": str(cert)})
    with pytest.raises(ConfigError, match="MEMORYD_TLS_CLIENT_CA"):
        Settings.load(environ={"MEMORYD_TLS_CLIENT_CA": str(cert)})


def test_command_line_values_win_and_are_checked() -> None:
    settings = Settings.load(
        environ={"MEMORYD_PORT": "7000", "MEMORYD_LOG_LEVEL": "ERROR"},
        overrides={"port": "7001", "log_level": None},
    )
    assert (settings.port, settings.log_level) == (7001, "ERROR")
    with pytest.raises(ConfigError, match="--port"):
        Settings.load(environ={}, overrides={"port": "seven"})
    with pytest.raises(ConfigError, match="PORT"):
        Settings.load(environ={}, overrides={"port": "99999"})


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().port = 1  # type: ignore[misc]


def test_redacted_hides_secrets_only() -> None:
    settings = Settings.load(
        environ={
            "MEMORYD_DATABASE_URL": "postgresql+asyncpg://user:hunter2@db/memoryd",
            "MEMORYD_OPENAI_API_KEY": "sk-very-secret",
            "MEMORYD_REDIS_URL": "redis://:pw@redis:6379/0",
        }
    )
    shown = repr(settings.redacted())
    for secret in ("hunter2", "sk-very-secret", ":pw@"):
        assert secret not in shown
    assert settings.redacted()["port"] == 50051
    assert settings.redacted()["qdrant_api_key"] == ""  # empty stays empty


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        (
            {"MEMORYD_OUTBOUND_ALLOW_NETWORKS": "10.0.0.0/8,localhost"},
            "'localhost' is not a network",
        ),
        ({"MEMORYD_OUTBOUND_ALLOW_NETWORKS": "10.0.0.0/33"}, "OUTBOUND_ALLOW_NETWORKS"),
        ({"MEMORYD_WEBHOOK_TIMEOUT_S": "0"}, "MEMORYD_WEBHOOK_TIMEOUT_S: must be positive"),
        (
            {"MEMORYD_WEBHOOK_RETRY_BASE_S": "10", "MEMORYD_WEBHOOK_RETRY_MAX_S": "5"},
            "MEMORYD_WEBHOOK_RETRY_MAX_S: must be at least webhook_retry_base_s",
        ),
    ],
)
def test_bad_webhook_settings_name_the_variable(environ: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        Settings.load(environ=environ)
