"""The MCP endpoint's settings: off unless a port is given, 0 for any port."""

from __future__ import annotations

import pytest

from memoryd.config import ConfigError, Settings, env_name


def test_the_endpoint_is_off_by_default_and_port_0_picks_one() -> None:
    assert Settings.load(environ={}).mcp_port_number is None
    assert Settings.load(environ={"MEMORYD_MCP_PORT": "0"}).mcp_port_number == 0
    assert Settings.load(environ={"MEMORYD_MCP_PORT": "8765"}).mcp_port_number == 8765


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("mcp_port", "70000"),
        ("mcp_port", "-1"),
        ("mcp_port", "http"),
        ("mcp_port", "\uff18\uff17"),  # digits, but not ASCII ones
        ("mcp_add_messages_wait_s", "61"),
        ("mcp_add_messages_wait_s", "-1"),
    ],
)
def test_bad_values_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(environ={env_name(name): raw})
    assert env_name(name) in str(info.value)
