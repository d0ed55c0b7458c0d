"""The request-pipeline settings: size limits that must hold one memory and
fit in a gRPC message, and a positive idle timeout."""

from __future__ import annotations

import pytest

from memoryd.config import ConfigError, Settings


def test_the_defaults_hold_a_largest_memory_and_fit_the_message_cap() -> None:
    s = Settings.load({})
    assert s.max_content_bytes + s.max_metadata_bytes <= s.max_request_bytes
    assert s.max_request_bytes <= s.max_batch_request_bytes <= s.max_message_bytes
    assert s.stream_idle_timeout_s == 30.0


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"MEMORYD_MAX_REQUEST_BYTES": "40000"}, "MEMORYD_MAX_REQUEST_BYTES"),
        (
            {"MEMORYD_MAX_CONTENT_BYTES": "1000000", "MEMORYD_MAX_BATCH_REQUEST_BYTES": "9000000"},
            "MEMORYD_MAX_REQUEST_BYTES",
        ),
        ({"MEMORYD_MAX_BATCH_REQUEST_BYTES": "100000"}, "MEMORYD_MAX_BATCH_REQUEST_BYTES"),
        ({"MEMORYD_MAX_BATCH_REQUEST_BYTES": "20000000"}, "MEMORYD_MAX_BATCH_REQUEST_BYTES"),
        ({"MEMORYD_STREAM_IDLE_TIMEOUT_S": "0"}, "MEMORYD_STREAM_IDLE_TIMEOUT_S"),
    ],
)
def test_inconsistent_request_limits_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.load(env)
