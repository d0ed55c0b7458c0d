"""The engine process's side of the protocol (`edge_child.serve`), on a real
Qdrant Edge shard over a real socket pair: every request is in the socket
before `serve` starts, so the order of the answers is decided by `serve`
alone, not by timing."""

from __future__ import annotations

import contextlib
import pickle
import socket
import threading
import uuid
from pathlib import Path
from typing import Any

from memoryd.storage.vectors.edge_backends import engine_options
from memoryd.storage.vectors.edge_child import HEADER, _recv, encode, serve
from memoryd.storage.vectors.edge_engine import UPSERT_SLICE, PlainConditions, PointTuple

DIM = 4
C = PlainConditions()
ALL = C.filter()
GUARD = C.filter(must=[C.match("tenant", "t1")])


def points(n: int) -> list[PointTuple]:
    return [
        (str(uuid.uuid4()), [1.0, float(i), 0.5, 0.25], {"tenant": "t1", "n": i}, None)
        for i in range(n)
    ]


def served(
    path: Path, *requests: tuple[int, str, tuple[Any, ...]] | bytes, raised: list[Any] | None = None
) -> list[Any]:
    """The answers of `serve` to `requests` (sent at once, then end-of-file;
    bytes are sent as they are), in the order it wrote them; what `serve`
    raised goes in `raised`."""
    ours, theirs = socket.socketpair()
    for frame in (engine_options(path), *requests):
        ours.sendall(frame if isinstance(frame, bytes) else encode(frame))
    ours.shutdown(socket.SHUT_WR)

    def run() -> None:
        try:
            serve(theirs)
        except Exception as err:
            if raised is None:
                raise
            raised.append(err)
        finally:
            theirs.close()  # end-of-file for the reader below

    server = threading.Thread(target=run)
    server.start()
    ours.settimeout(60)  # a hang fails the test instead
    answers = []
    with ours, contextlib.suppress(ConnectionResetError):  # closed with requests unread
        while (answer := _recv(ours)) is not None:
            answers.append(answer)
    server.join(timeout=60)
    assert not server.is_alive()
    return answers


def test_reads_arriving_during_an_upsert_are_answered_before_the_write(tmp_path: Path) -> None:
    many = points(5 * UPSERT_SLICE)
    answers = served(
        tmp_path / "store",
        (0, "open", ("model", DIM)),
        (1, "upsert", (many, GUARD)),
        (2, "count", (ALL,)),
        (3, "scroll", (ALL, 10, False, None, True, False)),
    )
    assert [a[0] for a in answers] == [0, 2, 3, 1]
    assert answers[1] == (2, True, 0)  # nothing written yet
    assert answers[2] == (3, True, ([], None))
    assert answers[3] == (1, True, None)


def test_writes_and_what_follows_them_keep_their_order(tmp_path: Path) -> None:
    first, second = points(3 * UPSERT_SLICE), points(3 * UPSERT_SLICE)
    answers = served(
        tmp_path / "store",
        (0, "open", ("model", DIM)),
        (1, "upsert", (first, GUARD)),
        (2, "count", (ALL,)),  # before `first` is written: answered early
        (3, "upsert", (second, GUARD)),  # a write: waits for `first`
        (4, "count", (ALL,)),  # behind it: waits for `first`, then overtakes `second`
        (5, "query_nothing", ()),  # not a read: waits for `second`
    )
    assert [a[0] for a in answers] == [0, 2, 1, 4, 3, 5]
    assert answers[1] == (2, True, 0)
    assert answers[3] == (4, True, len(first))
    _, ok, err = answers[5]
    assert not ok and "no engine call 'query_nothing'" in str(err)


def test_an_upsert_still_lands_when_the_connection_ends_during_it(tmp_path: Path) -> None:
    many = points(4 * UPSERT_SLICE)
    served(tmp_path / "store", (0, "open", ("model", DIM)), (1, "upsert", (many, GUARD)))
    answers = served(tmp_path / "store", (0, "open", ("model", DIM)), (1, "count", (ALL,)))
    assert answers == [(0, True, None), (1, True, len(many))]


def test_a_small_upsert_is_one_slice(tmp_path: Path) -> None:
    """Under UPSERT_SLICE points nothing is answered early: no slice boundary."""
    few = points(UPSERT_SLICE)
    answers = served(
        tmp_path / "store",
        (0, "open", ("model", DIM)),
        (1, "upsert", (few, GUARD)),
        (2, "count", (ALL,)),
    )
    assert answers == [(0, True, None), (1, True, None), (2, True, len(few))]


def test_a_frame_that_does_not_decode_during_an_upsert_ends_serve_after_it(
    tmp_path: Path,
) -> None:
    """As a garbled frame anywhere does (the process exits and the server
    restarts it): not answered as the upsert's error, and nothing after it
    runs."""
    many = points(4 * UPSERT_SLICE)
    garbled = HEADER.pack(5) + b"oops!"
    raised: list[Any] = []
    answers = served(
        tmp_path / "store",
        (0, "open", ("model", DIM)),
        (1, "upsert", (many, GUARD)),
        garbled,
        (2, "count", (ALL,)),
        raised=raised,
    )
    assert answers == [(0, True, None), (1, True, None)]
    assert len(raised) == 1 and isinstance(raised[0], pickle.UnpicklingError)
