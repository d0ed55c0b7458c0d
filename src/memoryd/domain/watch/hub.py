"""`WatchHub`: the watchers of one server process, the recent change log
they share in memory, and what wakes them.

A watcher pulls events at its own pace: writes never wait for watchers, and
a slow one slows nobody else. Most watchers are at the tip of the log, so
the hub keeps the newest events of every tenant in memory (`Window`, up to
`window_events`) and a watcher positioned inside it reads from there: one
store read per process serves all of its watchers, and a watcher never
takes a database connection (nor, on SQLite, the one writer's turn) while
it keeps up. A watcher behind the window reads the log itself, in batches,
until it catches up.

The window holds, for the positions it covers, exactly what the log holds
(positions are dense and commit in order, see `memoryd.storage.sql.changes`):

- this process's appends enter it at once (`appended`, called by the change
  recorder after the append commits) when they continue it; one that would
  leave a gap (another replica appended in between) waits until the gap is
  read from the log, which starts at once;
- every `poll_interval_s`, while anyone watches, one task reads the log's
  head and, when it moved past the window, the new events (another
  replica's appends, within the poll interval);
- a read from the log that does not continue it (events trimmed or deleted
  with their environment meanwhile) restarts it from there: watchers before
  that point go back to the log, whose trims they check.

Watchers are woken when their environment's events enter the window; a
watcher also reads again after `MAX_IDLE_S` without a wake-up, so a missed
one delays it, never stalls it.

The hub caps the streams of the process (`max_watchers`, RESOURCE_EXHAUSTED
past it) and ends them all at shutdown (`close`: each stream ends with
UNAVAILABLE, so clients reconnect, elsewhere, with their last token). A
stream also ends (UNAVAILABLE, reason API_KEY_CHANGED) when its key is
revoked, rotated or deleted: a stream lasts, and must not outlive its key.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterable, Sequence

from memoryd.domain.changes import ChangeEvent, WatchLog
from memoryd.domain.errors import ResourceExhausted, Unavailable
from memoryd.domain.memories.snapshot import memory_from_json
from memoryd.domain.memory import MemoryRecord
from memoryd.domain.tenancy import Tenant

log = logging.getLogger("memoryd.watch")

# Events read from the log per query when the window is filled.
FILL_BATCH = 1000
# Reads of one fill before it leaves the rest to the next poll.
FILL_READS = 10
# A watcher reads again after this long without a wake-up.
MAX_IDLE_S = 15.0
# Newest events kept in memory by default.
WINDOW_EVENTS = 4096


class Entry:
    """An event, with its memory decoded once (when first read) for every
    watcher: not on the path of the write that appended it."""

    __slots__ = ("_record", "event")

    def __init__(self, event: ChangeEvent) -> None:
        self.event = event
        self._record: MemoryRecord | bool | None = False  # False: not decoded yet

    @property
    def seq(self) -> int:
        return self.event.seq

    @property
    def record(self) -> MemoryRecord | None:
        if self._record is False:
            memory = self.event.memory
            self._record = (
                memory_from_json(memory, self.event.tenant) if memory is not None else None
            )
        assert not isinstance(self._record, bool)
        return self._record

    @staticmethod
    def of(event: ChangeEvent) -> Entry:
        return Entry(event)


class Window:
    """The newest events of the log, complete for the positions (`base`,
    `top`]: every event of the log there is here. Unset (`top` None) until
    `restart`."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: deque[Entry] = deque()
        self._by_env: dict[str, deque[Entry]] = {}
        self.base = 0
        self.top: int | None = None

    def restart(self, at: int) -> None:
        """Empty, complete for nothing before `at`."""
        self._entries.clear()
        self._by_env.clear()
        self.base = at
        self.top = at

    def unset(self) -> None:
        self.restart(0)
        self.top = None

    def covers(self, position: int) -> bool:
        return self.top is not None and self.base <= position <= self.top

    def extend(self, entries: Sequence[Entry]) -> None:
        """Adds `entries` (positions after `top`, in order) and moves `top`
        to the last; the oldest go past `size`."""
        for entry in entries:
            self._entries.append(entry)
            self._by_env.setdefault(entry.event.tenant.environment_id, deque()).append(entry)
            self.top = entry.seq
        while len(self._entries) > self._size:
            old = self._entries.popleft()
            env = self._by_env[old.event.tenant.environment_id]
            env.popleft()
            if not env:
                del self._by_env[old.event.tenant.environment_id]
            self.base = old.seq

    def forget(self, tenant: Tenant, *, count_only: bool = False) -> int:
        """Drops the entries of `tenant`'s end user (erasure; the log no
        longer has them either); answers how many there were."""

        def mine(e: Entry) -> bool:
            t = e.event.tenant
            return t.key == tenant.key and t.end_user_id == tenant.end_user_id

        env = self._by_env.get(tenant.environment_id, deque())
        found = sum(1 for e in env if mine(e))
        if found and not count_only:
            self._entries = deque(e for e in self._entries if not mine(e))
            self._by_env[tenant.environment_id] = deque(e for e in env if not mine(e))
        return found

    def after(self, tenant: Tenant, position: int, limit: int) -> tuple[list[Entry], int]:
        """The entries `tenant` may see after `position` (which the window
        covers), oldest first, at most `limit`; and the position read up to."""
        assert self.top is not None
        found: list[Entry] = []
        for entry in reversed(self._by_env.get(tenant.environment_id, ())):
            if entry.seq <= position:
                break
            t = entry.event.tenant
            if tenant.sees(t.key, t.end_user_id):
                found.append(entry)
        found.reverse()
        if len(found) > limit:
            return found[:limit], found[limit - 1].seq
        return found, self.top


class Watcher:
    """One stream's place in the hub: a wake-up flag for its environment,
    and the API key it was opened with."""

    def __init__(self, hub: WatchHub, environment_id: str, key_id: str) -> None:
        self.environment_id = environment_id
        self.key_id = key_id
        self._hub = hub
        self._wake = asyncio.Event()
        self.key_changed = False

    @property
    def closed(self) -> bool:
        """The server is shutting down: the stream must end."""
        return self._hub.closed

    def end_reason(self) -> Unavailable | None:
        """Why the stream must end now (shutdown; its key revoked, rotated
        or deleted, or such news maybe missed), else None."""
        if self._hub.closed:
            return shutting_down()
        if self.key_changed:
            return Unavailable(
                "the API key of this stream was revoked, rotated or deleted (or this server may "
                "have missed such a change); reconnect with a valid key and the resume_token of "
                "the last event received",
                reason="API_KEY_CHANGED",
            )
        return None

    def clear(self) -> None:
        """Forgets past wake-ups: call before reading, so a change that
        lands while reading wakes the next `wait`."""
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    async def wait(self, timeout_s: float = MAX_IDLE_S) -> None:
        """Until woken (or `timeout_s` passed, or the hub closed)."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
        except TimeoutError:
            pass

    def recent(self, tenant: Tenant, position: int, limit: int) -> tuple[list[Entry], int] | None:
        """From the hub's window: the entries `tenant` may see after
        `position` and the position read up to; None when the window does
        not cover `position` (read the log)."""
        window = self._hub.window
        if not window.covers(position):
            return None
        return window.after(tenant, position, limit)

    def leave(self) -> None:
        self._hub._leave(self)


class WatchHub:
    """See the module."""

    def __init__(
        self,
        log: WatchLog,
        *,
        poll_interval_s: float,
        max_watchers: int,
        window_events: int = WINDOW_EVENTS,
    ) -> None:
        self._log = log
        self._interval = poll_interval_s
        self._max = max_watchers
        self.window = Window(window_events)
        self._pending: dict[int, Entry] = {}  # this process's appends past a gap
        self._by_env: dict[str, set[Watcher]] = {}
        self._count = 0
        self._task: asyncio.Task[None] | None = None
        self._fill_lock = asyncio.Lock()
        self._fill_task: asyncio.Task[None] | None = None
        self._refill = False
        self.closed = False
        self.joined = 0  # streams started (a counter)
        self.poll_failures = 0

    @property
    def watching(self) -> int:
        """Streams open now."""
        return self._count

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        """Ends every stream (they see `closed` and answer UNAVAILABLE) and
        stops polling."""
        self.closed = True
        self._wake_all()
        for task in (self._task, self._fill_task):
            if task is not None:
                task.cancel()
                await asyncio.wait([task], timeout=5.0)
        self._task = self._fill_task = None

    def join(self, environment_id: str, key_id: str = "") -> Watcher:
        """A new watcher of `environment_id` by the key `key_id`;
        ResourceExhausted when the process serves `max_watchers` streams
        already, Unavailable when shutting down. Call `leave` when the
        stream ends."""
        if self.closed:
            raise shutting_down()
        if self._count >= self._max:
            raise ResourceExhausted(
                f"this server already serves {self._max} WatchMemories streams; retry later "
                "(or on another replica)",
                reason="TOO_MANY_WATCHERS",
                retry_after=5.0,
            )
        w = Watcher(self, environment_id, key_id)
        self._by_env.setdefault(environment_id, set()).add(w)
        self._count += 1
        self.joined += 1
        if self.window.top is None:
            self._fill_soon()
        return w

    def key_changed(self, key_id: str) -> None:
        """The key `key_id` was revoked, rotated or deleted (on any replica:
        the revocation fan-out): its streams end, their clients reconnect
        and are authenticated again."""
        for ws in list(self._by_env.values()):
            for w in list(ws):
                if w.key_id == key_id:
                    w.key_changed = True
                    w.wake()

    def keys_unknown(self) -> None:
        """Key changes may have been missed (the fan-out reconnected): every
        stream ends, to be authenticated again."""
        for ws in list(self._by_env.values()):
            for w in list(ws):
                w.key_changed = True
                w.wake()

    def _leave(self, w: Watcher) -> None:
        watchers = self._by_env.get(w.environment_id)
        if watchers is None or w not in watchers:
            return
        watchers.discard(w)
        self._count -= 1
        if not watchers:
            del self._by_env[w.environment_id]
        if self._count == 0:  # nobody reads it: no need to keep it
            self.window.unset()
            self._pending.clear()

    # --- the window -----------------------------------------------------------------

    def appended(self, events: Sequence[ChangeEvent]) -> None:
        """This process appended `events` (committed): into the window when
        they continue it, else pending until the gap is read."""
        top = self.window.top
        if self._count == 0 or top is None or not events:
            return
        if events[-1].seq <= top:
            return
        for e in events:
            if e.seq > top:
                self._pending[e.seq] = Entry.of(e)
        if self._drain_pending():
            return
        self._fill_soon()  # a gap: another replica appended in between

    def _drain_pending(self) -> bool:
        """Moves the pending entries that continue the window into it;
        whether none is left."""
        top = self.window.top
        assert top is not None
        run: list[Entry] = []
        while (entry := self._pending.pop(top + 1, None)) is not None:
            run.append(entry)
            top = entry.seq
        for seq in [s for s in self._pending if s <= top]:
            del self._pending[seq]
        if run:
            self.window.extend(run)
            self._wake_envs({e.event.tenant.environment_id for e in run})
        return not self._pending

    def _fill_soon(self) -> None:
        if self._fill_task is None or self._fill_task.done():
            self._fill_task = asyncio.get_running_loop().create_task(self._fill_logged())
        else:
            self._refill = True  # the running fill goes round once more

    async def _fill_logged(self) -> None:
        try:
            await self.fill()
        except Exception as err:  # the next poll tries again
            self.poll_failures += 1
            log.warning("reading the change log for watchers failed: %s", type(err).__name__)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._fill_logged()

    async def fill(self) -> None:
        """Reads the log past the window (while anyone watches) and wakes
        the watchers of the environments of what it added; again while
        this process's appends wait behind a gap it asked to fill."""
        async with self._fill_lock:
            while True:
                self._refill = False
                await self._fill_once()
                if not (self._refill and self._pending and self._count):
                    return

    async def _fill_once(self) -> None:
        if self._count == 0:
            return
        head = await self._log.log_head()
        if self.window.top is None:
            self.window.restart(head.seq)
            self._pending.clear()
            self._wake_all()  # whatever came before may be new to someone
            return
        for _ in range(FILL_READS):
            top = self.window.top
            if top is None or head.seq <= top:
                break
            events = await self._log.read_all(top, FILL_BATCH)
            if not self._continue(events, head.seq) or len(events) < FILL_BATCH:
                break
        if self.window.top is not None:
            self._drain_pending()

    def _continue(self, events: Sequence[ChangeEvent], head: int) -> bool:
        """Adds `events` (read after the window's top, up to `head` at
        least) to the window; whether the window is still set."""
        top = self.window.top
        if top is None:  # the last watcher left meanwhile
            return False
        events = [e for e in events if e.seq > top]  # this process's appends came meanwhile
        if (events and events[0].seq != top + 1) or (not events and head > top):
            # removed meanwhile (trimmed, or their environment deleted): the
            # window starts again after the gap
            self.window.restart(events[0].seq - 1 if events else head)
            self._pending.clear()
            self._wake_all()
        if events:
            self.window.extend([Entry.of(e) for e in events])
            self._wake_envs({e.tenant.environment_id for e in events})
        return True

    # --- wake-ups ---------------------------------------------------------------------

    def _wake_envs(self, environments: Iterable[str]) -> None:
        for env in environments:
            for w in list(self._by_env.get(env, ())):
                w.wake()

    def _wake_all(self) -> None:
        for ws in list(self._by_env.values()):
            for w in list(ws):
                w.wake()


def shutting_down() -> Unavailable:
    return Unavailable(
        "the server is shutting down; reconnect (to another replica) with the resume_token "
        "of the last event received",
        reason="SHUTTING_DOWN",
        retry_after=1.0,
    )
