"""The installed `memoryd` command: help that explains every setting, start-up
validation naming the bad variable, and `bootstrap` printing a key once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from memoryd.auth.keys import parse_key
from memoryd.config import env_name, setting_fields

MEMORYD = Path(sys.executable).parent / "memoryd"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MEMORYD_")}
    return subprocess.run(
        [str(MEMORYD), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        check=False,
    )


def test_the_command_is_installed() -> None:
    assert MEMORYD.is_file(), f"{MEMORYD} missing: is the package installed in this venv?"


def test_top_level_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "bootstrap", "bench"):
        assert command in result.stdout
    version = run("--version")
    assert version.returncode == 0 and re.search(r"memoryd \d+\.\d+", version.stdout)


@pytest.mark.parametrize("command", ["serve", "bootstrap"])
def test_subcommand_help_explains_every_setting(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for f in setting_fields():
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        assert env_name(f.name) in text, env_name(f.name)
        first_words = " ".join(f.metadata["help"].split()[:3])
        assert first_words in text, (f.name, first_words)
    if command == "bootstrap":
        assert "--org-name" in text


def test_help_never_shows_secret_values_from_the_environment() -> None:
    result = run(
        "serve",
        "--help",
        env={
            "MEMORYD_DATABASE_URL": "postgresql+asyncpg://u:hunter2@db/x",
            "MEMORYD_OPENAI_API_KEY": "sk-x",
        },
    )
    assert result.returncode == 0
    assert "hunter2" not in result.stdout and "sk-x" not in result.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MEMORYD_PORT": "not-a-port"}, "MEMORYD_PORT"),
        ({"MEMORYD_LOG_LEVEL": "chatty"}, "MEMORYD_LOG_LEVEL"),
        ({"MEMORYD_DATABASE_URL": "mysql://x/y"}, "MEMORYD_DATABASE_URL"),
        ({"MEMORYD_KEY_CACHE_TTL_S": "nan"}, "MEMORYD_KEY_CACHE_TTL_S"),
    ],
)
def test_a_bad_setting_stops_start_up_naming_it(
    env: dict[str, str], named: str, tmp_path: Path
) -> None:
    result = run("serve", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    assert "configuration error" in result.stderr
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "memoryd.db").exists()  # nothing was started


def test_a_bad_option_names_the_option(tmp_path: Path) -> None:
    result = run("serve", "--data-dir", str(tmp_path), "--port", "http")
    assert result.returncode == 2
    assert "--port" in result.stderr


def test_bootstrap_prints_a_new_owner_key_once(tmp_path: Path) -> None:
    keys = []
    for name in ("first", "second"):
        result = run(
            "bootstrap", "--data-dir", str(tmp_path), "--org-name", name, "--log-level", "DEBUG"
        )
        assert result.returncode == 0, result.stderr
        found = re.findall(r"ms_org_[0-9A-Za-z]+", result.stdout)
        assert len(found) == 1, result.stdout
        assert f"'{name}'" in result.stdout and "ONCE" in result.stdout
        assert found[0] not in result.stderr  # printed, never logged
        parsed = parse_key(found[0])
        assert parsed.kind == "org"
        keys.append(found[0])
    assert keys[0] != keys[1]
    assert (tmp_path / "memoryd.db").is_file()
