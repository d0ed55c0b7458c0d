"""What of an error goes on the wire is capped in one place (api/errors.py),
whatever the domain collected, so that an error always fits in a client's
16 KiB of trailers."""

from __future__ import annotations

import base64

from google.rpc import error_details_pb2

from memoryd.api.errors import MAX_DETAIL, MAX_MESSAGE, MAX_VIOLATIONS, clip, status_proto
from memoryd.domain.errors import FieldViolation, InvalidArgument

TRAILER_LIMIT = 16 * 1024


def _bad_request(err: InvalidArgument) -> error_details_pb2.BadRequest:
    status = status_proto(err)
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad
    raise AssertionError(f"no BadRequest in {status}")


def test_clip_keeps_short_text_and_cuts_long_text_with_an_ellipsis() -> None:
    assert clip("short", 10) == "short"
    assert clip("x" * 10, 10) == "x" * 10
    assert clip("x" * 11, 10) == "x" * 9 + "…"
    assert len(clip("y" * 10_000)) == MAX_DETAIL


def test_every_violation_is_listed_up_to_the_cap() -> None:
    found = [FieldViolation(f"tags[{i}]", "must not be empty") for i in range(MAX_VIOLATIONS)]
    listed = _bad_request(InvalidArgument("bad", found)).field_violations
    assert [v.field for v in listed] == [v.field for v in found]


def test_past_the_cap_the_last_violation_says_how_many_more_there_were() -> None:
    found = [FieldViolation(f"tags[{i}]", "must not be empty") for i in range(2_000)]
    listed = _bad_request(InvalidArgument("bad", found)).field_violations
    assert len(listed) == MAX_VIOLATIONS
    assert [v.field for v in listed[:-1]] == [f"tags[{i}]" for i in range(MAX_VIOLATIONS - 1)]
    last = listed[-1]
    assert last.field == "tags[0]"
    assert last.description == f"and {2_000 - MAX_VIOLATIONS + 1} more violations, not listed"


def test_the_largest_error_fits_in_a_clients_trailers() -> None:
    """Every size at its cap: a long message, many violations, each with a
    long field name and description (the status travels base64-encoded in
    grpc-status-details-bin, and its message again in grpc-message)."""
    found = [FieldViolation("f" * 20_000, "d" * 20_000) for _ in range(5_000)]
    status = status_proto(InvalidArgument("m" * 100_000, found))
    assert len(status.message) == MAX_MESSAGE
    encoded = len(base64.b64encode(status.SerializeToString()))
    assert encoded + len(status.message.encode()) < TRAILER_LIMIT
