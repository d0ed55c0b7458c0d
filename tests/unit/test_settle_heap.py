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


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


def test_settle_heap_gives_freed_heap_back_to_the_kernel() -> None:
    # 64 MiB of 1 KiB blocks (malloc's heap, below its mmap threshold), then
    # every block freed but one in 64: the heap keeps its pages, full of
    # holes, until they are trimmed
    blocks = [bytearray(1024) for _ in range(64 * 1024)]
    kept = blocks[::64]
    del blocks
    before = _rss_kib()
    try:
        settle_heap()
        after = _rss_kib()
    finally:
        gc.unfreeze()
    assert len(kept) == 1024
    assert before - after > 32 * 1024  # most of the freed 63 MiB left the process
