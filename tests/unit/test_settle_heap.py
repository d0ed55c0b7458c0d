"""`memoryd serve` freezes what start-up made before serving (cli.settle_heap):
the collector stops walking it, and still collects what calls make."""

from __future__ import annotations

import gc
import weakref

from memoryd.cli import settle_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_settle_heap_freezes_what_exists_and_still_collects_what_comes_after() -> None:
    assert gc.get_freeze_count() == 0
    try:
        settle_heap()
        frozen = gc.get_freeze_count()
        assert frozen > 1000  # this process's modules, classes and functions at least
        # a cycle made afterwards (as a call's objects are) is still collected
        a, b = _Node(), _Node()
        a.other, b.other = b, a
        gone = weakref.ref(a)
        del a, b
        gc.collect()
        assert gone() is None
        assert gc.get_freeze_count() == frozen  # a collection does not thaw them
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
