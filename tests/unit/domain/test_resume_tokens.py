"""Resume tokens: a position read back only by the log that issued it, for
the environment it was issued for; opaque (the position is encrypted:
neighbouring positions give unrelated tokens); one token per position and
environment."""

from __future__ import annotations

import base64

import pytest

from memoryd.domain.errors import InvalidArgument
from memoryd.domain.watch.tokens import MAX_TOKEN_CHARS, ResumeTokens

ENV = "org_1/prj_1/env_1"


def test_a_token_reads_back_its_position() -> None:
    tokens = ResumeTokens("secret-a")
    for seq in (0, 1, 2**40, 2**63 - 1):
        assert tokens.read(ENV, tokens.issue(ENV, seq)) == seq


def test_tokens_are_opaque_and_one_per_position_and_environment() -> None:
    tokens = ResumeTokens("secret-a")
    issued = [tokens.issue(ENV, seq) for seq in range(1000, 1050)]
    assert len(set(issued)) == 50
    assert all(len(t) <= MAX_TOKEN_CHARS for t in issued)
    assert tokens.issue(ENV, 1000) == issued[0]
    assert tokens.issue("org_1/prj_1/env_2", 1000) != issued[0]
    # neighbouring positions share no bytes in place: nothing counts up in the clear
    raw = [base64.urlsafe_b64decode(t + "==") for t in issued]
    for i in range(1, 29):
        assert len({r[i] for r in raw}) > 10, i


@pytest.mark.parametrize(
    "token_of",
    [
        lambda: ResumeTokens("secret-b").issue(ENV, 5),  # another log
        lambda: ResumeTokens("secret-a").issue("org_1/prj_1/env_2", 5),  # another environment
        lambda: "",
        lambda: "x" * 40,
        lambda: "%%%%",
        lambda: base64.urlsafe_b64encode(b"\x02" + bytes(28)).decode(),  # another version
        lambda: "A" * (MAX_TOKEN_CHARS + 1),
    ],
)
def test_a_token_not_issued_here_for_this_environment_is_invalid(token_of: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        ResumeTokens("secret-a").read(ENV, token_of())  # type: ignore[operator]
    assert [v.field for v in info.value.violations] == ["resume_token"]


def test_any_changed_bit_is_refused() -> None:
    tokens = ResumeTokens("secret-a")
    raw = base64.urlsafe_b64decode(tokens.issue(ENV, 12345) + "==")
    for i in range(len(raw)):
        for bit in (0, 7):
            changed = bytearray(raw)
            changed[i] ^= 1 << bit
            forged = base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
            with pytest.raises(InvalidArgument):
                tokens.read(ENV, forged)
