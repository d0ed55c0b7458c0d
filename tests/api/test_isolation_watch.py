"""Tenant isolation of WatchMemories, on the isolation world of
test_isolation_memories (two organizations, projects, environments, end
users, keys with and without memory:all_end_users): every seat watching
from the start gets exactly the events of the memories it may read, never
another tenant's or another end user's; a key without an end user gets only
the events of memories without one, unless it holds memory:all_end_users.
Resume tokens do not cross environments (test_watch_memories)."""

from __future__ import annotations

from helpers.servers import MakeServer
from test_isolation_memories import NO_LIMITS, Seed, World, build_world
from test_watch_memories import LONG_AGO, E, create, until, watch


async def test_isolation_matrix_of_watchers(make_server: MakeServer) -> None:
    """Every seat of the isolation world (orgs, projects, environments, end
    users, keys with and without memory:all_end_users) watches from the
    start: it gets exactly the events of the memories it may read."""
    world: World = await build_world(await make_server(**NO_LIMITS))
    names = list(world.seats)
    sentinels: dict[str, str] = {}
    for name in names:  # after every seed, in this order: each seat's last event
        seat = world.seats[name]
        sentinels[name] = (await create(seat.client, f"sentinel of {name}")).id
    order = {sid: i for i, sid in enumerate(sentinels.values())}
    for name in names:
        seat = world.seats[name]
        stream = watch(seat.client, start_time=LONG_AGO)
        events = await until(stream, lambda e, name=name: e.memory_id == sentinels[name])
        stream.cancel()
        got = {e.memory_id for e in events}
        own_sentinels = {
            sid
            for writer, sid in sentinels.items()
            if order[sid] <= order[sentinels[name]]
            and world.visible(seat, _seed(world, writer, sid))
        }
        assert got == world.mine(seat) | own_sentinels, name
        assert all(e.type == E.CREATED for e in events)
        assert all(e.memory.end_user_id == seat.end_user for e in events if seat.end_user)


def _seed(world: World, writer: str, memory_id: str) -> Seed:
    seat = world.seats[writer]
    return Seed(memory_id, writer, seat.env, seat.end_user, "")
