"""How a call that ended without an answer is counted (`Answer.cancelled`):
DEADLINE_EXCEEDED when its deadline has passed or is within the slack (the
server's copy of the deadline is later than the client's by the request's
transit), CANCELLED when the client gave up earlier or the call had no
deadline. The api test checks the client's side of a timed-out import; the
classification itself is checked here, without timing."""

from __future__ import annotations

from typing import Any

import pytest

from memoryd.api.call import CallState
from memoryd.api.steps import Answer


class Context:
    def __init__(self, remaining: float | None) -> None:
        self._remaining = remaining

    def time_remaining(self) -> float | None:
        return self._remaining


@pytest.mark.parametrize(
    ("timeout_s", "remaining", "code"),
    [
        (8.0, -3.0, "DEADLINE_EXCEEDED"),  # noticed late, on a busy loop
        (8.0, 0.0, "DEADLINE_EXCEEDED"),
        (8.0, 1.9, "DEADLINE_EXCEEDED"),  # within a quarter of the timeout
        (8.0, 2.5, "CANCELLED"),  # the client gave up well before
        (1.0, 0.4, "DEADLINE_EXCEEDED"),  # within the 0.5 s floor
        (1.0, 0.7, "CANCELLED"),
        (None, None, "CANCELLED"),  # no deadline: only a client can cancel
    ],
)
def test_a_call_ended_without_an_answer_is_counted_by_its_deadline(
    timeout_s: float | None, remaining: float | None, code: str
) -> None:
    call = CallState(method="/memoryd.v1.MemoryService/ImportMemories", request_id="r", peer="p")
    call.timeout_s = timeout_s
    context: Any = Context(remaining)
    Answer.cancelled(Answer.__new__(Answer), call, context)
    assert call.code == code
