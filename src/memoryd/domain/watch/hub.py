"""`WatchHub`: the watchers of one server process and what wakes them.

A watcher reads the change log itself, at its own pace (pull): writes never
wait for watchers, and a slow one slows nobody else. The hub only tells a
watcher when there may be something new for its environment:

- at once, when this process appended events of that environment
  (`appended`, called by the change recorder after the append commits);
- within the poll interval, when another replica did: one task per process
  reads the log's head every `poll_interval_s` (while anyone watches) and,
  when it moved, which environments the new events belong to, and wakes
  their watchers (all of them when too many events came at once).

A watcher also reads again after `MAX_IDLE_S` without a wake-up, so a
missed one (a failed poll) delays it, never stalls it.

The hub caps the streams of the process (`max_watchers`, RESOURCE_EXHAUSTED
past it) and ends them all at shutdown (`close`: each stream ends with
UNAVAILABLE, so clients reconnect, elsewhere, with their last token).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from memoryd.domain.changes import ChangeEvent, WatchLog
from memoryd.domain.errors import ResourceExhausted, Unavailable

log = logging.getLogger("memoryd.watch")

# The most new events the poll reads to know whom to wake; past that it
# wakes every watcher.
POLL_BATCH = 2000
# A watcher reads again after this long without a wake-up.
MAX_IDLE_S = 15.0


class Watcher:
    """One stream's place in the hub: a wake-up flag for its environment."""

    def __init__(self, hub: WatchHub, environment_id: str) -> None:
        self.environment_id = environment_id
        self._hub = hub
        self._wake = asyncio.Event()

    @property
    def closed(self) -> bool:
        """The server is shutting down: the stream must end."""
        return self._hub.closed

    def clear(self) -> None:
        """Forgets past wake-ups: call before reading the log, so a change
        that lands while reading wakes the next `wait`."""
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

    def leave(self) -> None:
        self._hub._leave(self)


class WatchHub:
    """See the module."""

    def __init__(self, log: WatchLog, *, poll_interval_s: float, max_watchers: int) -> None:
        self._log = log
        self._interval = poll_interval_s
        self._max = max_watchers
        self._by_env: dict[str, set[Watcher]] = {}
        self._count = 0
        self._seen: int | None = None  # the head the poll last saw
        self._task: asyncio.Task[None] | None = None
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
        self._wake(w for ws in self._by_env.values() for w in ws)
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5.0)
            self._task = None

    def join(self, environment_id: str) -> Watcher:
        """A new watcher of `environment_id`; ResourceExhausted when the
        process serves `max_watchers` streams already, Unavailable when
        shutting down. Call `leave` when the stream ends."""
        if self.closed:
            raise shutting_down()
        if self._count >= self._max:
            raise ResourceExhausted(
                f"this server already serves {self._max} WatchMemories streams; retry later "
                "(or on another replica)",
                reason="TOO_MANY_WATCHERS",
                retry_after=5.0,
            )
        w = Watcher(self, environment_id)
        self._by_env.setdefault(environment_id, set()).add(w)
        self._count += 1
        self.joined += 1
        return w

    def _leave(self, w: Watcher) -> None:
        watchers = self._by_env.get(w.environment_id)
        if watchers is None or w not in watchers:
            return
        watchers.discard(w)
        self._count -= 1
        if not watchers:
            del self._by_env[w.environment_id]

    def appended(self, events: Sequence[ChangeEvent]) -> None:
        """This process appended `events`: wakes their environments' watchers."""
        self._wake_envs({e.tenant.environment_id for e in events})

    def _wake_envs(self, environments: Iterable[str]) -> None:
        for env in environments:
            self._wake(self._by_env.get(env, ()))

    @staticmethod
    def _wake(watchers: Iterable[Watcher]) -> None:
        for w in list(watchers):
            w.wake()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll_once()
            except Exception as err:  # the next poll tries again
                self.poll_failures += 1
                log.warning("watch poll of the change log failed: %s", type(err).__name__)

    async def poll_once(self) -> None:
        """One look at the log's head; wakes the watchers of the
        environments whose events are new since the last look."""
        if self._count == 0:
            self._seen = None  # nobody to wake: no need to look
            return
        head = await self._log.log_head()
        if self._seen is None:
            # the first look since watching began: whatever came before it
            # may be new to someone
            self._seen = head.seq
            self._wake(w for ws in self._by_env.values() for w in ws)
            return
        if head.seq <= self._seen:
            return
        rows = await self._log.environments_after(self._seen, POLL_BATCH)
        if len(rows) >= POLL_BATCH:
            self._wake(w for ws in self._by_env.values() for w in ws)
        else:
            self._wake_envs({env for _, env in rows})
        self._seen = max([head.seq, *(seq for seq, _ in rows)])


def shutting_down() -> Unavailable:
    return Unavailable(
        "the server is shutting down; reconnect (to another replica) with the resume_token "
        "of the last event received",
        reason="SHUTTING_DOWN",
        retry_after=1.0,
    )
