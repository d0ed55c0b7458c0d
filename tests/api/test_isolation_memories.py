"""Tenant isolation of every MemoryService method, across every boundary.

The world: two organizations; org A has projects P1 and P2, P1 has its
`production` (live) environment and a `staging` (test) one; org B has one
project. Callers ("seats") are a key of one environment, with or without an
`x-end-user-id`; most keys hold `memory:*` (so `memory:all_end_users`), the
`!` seats a key with the four memory scopes only. Every seat except `a1/c`
wrote two memories, all alike (same words, tags, agent, thread, source,
metadata), so that only the tenant tells them apart. A memory is visible to a
seat when it is of the seat's environment and, when the seat names an end
user, of that end user; when it names none, the memory has no end user
either, unless the seat's key holds `memory:all_end_users`.

Each test tries one method from every seat against everything: where it goes
by id, another tenant's memory answers NOT_FOUND exactly as a missing one and
stays intact for its owner; where it goes by query, only the seat's own
memories come back (all of them).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from grpc import aio
from helpers.errors import raised, reason_of
from helpers.servers import Client, MakeServer, RunningServer, fast_hasher

from memoryd.app import build_app
from memoryd.config import Settings
from memoryd.domain.clock import SystemClock
from memoryd.v1 import admin_pb2, keys_pb2, memory_pb2, tenancy_pb2

NO_LIMITS = {
    "key_requests_per_second": 1e6,
    "key_burst": 1_000_000,
    "project_requests_per_second": 1e6,
    "project_burst": 1_000_000,
}
CONTENT = "shared secret note about the launch plan"


@dataclass(frozen=True)
class Seat:
    """A caller: a key of one environment, maybe narrowed to one end user."""

    name: str
    org: str
    project: str
    environment: str
    end_user: str
    client: Client
    all_end_users: bool = True  # the key holds memory:all_end_users

    @property
    def env(self) -> tuple[str, str, str]:
        return (self.org, self.project, self.environment)


@dataclass(frozen=True)
class Seed:
    id: str
    writer: str
    env: tuple[str, str, str]
    end_user: str
    content: str


@dataclass
class World:
    server: RunningServer
    seats: dict[str, Seat]
    seeds: list[Seed]
    projects: dict[str, admin_pb2.Project] = field(default_factory=dict)
    environments: dict[str, str] = field(default_factory=dict)  # seat env name → env id
    owners: dict[str, Client] = field(default_factory=dict)  # org name → owner client

    def visible(self, seat: Seat, seed: Seed) -> bool:
        return seed.env == seat.env and reaches(seat, seed.end_user)

    def mine(self, seat: Seat) -> set[str]:
        return {s.id for s in self.seeds if self.visible(seat, s)}

    def foreign(self, seat: Seat) -> list[Seed]:
        return [s for s in self.seeds if not self.visible(seat, s)]

    def owner_of(self, seed: Seed) -> Seat:
        return self.seats[seed.writer]


def reaches(seat: Seat, end_user: str) -> bool:
    """Whether `seat` reaches a memory of `end_user` ("" for none) of its environment."""
    if seat.end_user:
        return end_user == seat.end_user
    return seat.all_end_users or end_user == ""


# seat name → (org, project, environment, end user); `a1/c` writes nothing.
SEATS = {
    "a1": ("A", "P1", "production", ""),
    "a1/a": ("A", "P1", "production", "a"),
    "a1/b": ("A", "P1", "production", "b"),
    "a1/c": ("A", "P1", "production", "c"),
    "a1-staging": ("A", "P1", "staging", ""),
    "a2": ("A", "P2", "production", ""),
    "a2/a": ("A", "P2", "production", "a"),
    "b1": ("B", "Q1", "production", ""),
    # keys without memory:all_end_users: no header, and with one
    "a1!": ("A", "P1", "production", ""),
    "a1!/a": ("A", "P1", "production", "a"),
    "a2!": ("A", "P2", "production", ""),
}
WRITERS = [name for name in SEATS if name != "a1/c"]
# The four memory scopes, without memory:all_end_users.
NARROW = ("memory:read", "memory:add", "memory:update", "memory:delete")


async def build_world(server: RunningServer) -> World:
    org_b = await server.new_org("org-b")
    owners = {"A": server.owner, "B": org_b}
    projects = {
        "P1": await server.project("p1"),
        "P2": await server.project("p2"),
        "Q1": await server.project("q1", client=org_b),
    }
    staging = await server.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=projects["P1"].id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=server.owner.md(),
    )
    env_ids = {
        ("A", "P1", "production"): projects["P1"].environments[0].id,
        ("A", "P1", "staging"): staging.id,
        ("A", "P2", "production"): projects["P2"].environments[0].id,
        ("B", "Q1", "production"): projects["Q1"].environments[0].id,
    }
    keys: dict[tuple[str, str, str, bool], str] = {}
    for (org, project, env), env_id in env_ids.items():
        for narrow in (False, True):
            keys[(org, project, env, narrow)] = await server.data_key(
                projects[project],
                NARROW if narrow else ("memory:*",),
                client=owners[org],
                environment_id=env_id,
            )
    seats = {}
    for name, (org, project, env, user) in SEATS.items():
        narrow = "!" in name
        client = server.client(keys[(org, project, env, narrow)], user)
        seats[name] = Seat(name, org, project, env, user, client, all_end_users=not narrow)
    seeds: list[Seed] = []
    for name in WRITERS:
        seat = seats[name]
        contents = [f"{CONTENT} number {i} from {name}" for i in range(2)]
        resp = await seat.client.memory.BatchCreateMemories(
            memory_pb2.BatchCreateMemoriesRequest(
                requests=[memory_pb2.CreateMemoryRequest(memory=alike(c)) for c in contents]
            ),
            metadata=seat.client.md(),
        )
        assert resp.failed_count == 0
        for r, content in zip(resp.results, contents, strict=True):
            seeds.append(Seed(r.memory.id, name, seat.env, seat.end_user, content))
    world = World(server, seats, seeds, owners=owners)
    world.projects = projects
    world.environments = {f"{o}/{p}/{e}": i for (o, p, e), i in env_ids.items()}
    return world


def alike(content: str = CONTENT, **fields: Any) -> memory_pb2.Memory:
    """A memory with the attributes every seed shares."""
    meta = struct_pb2.Struct()
    meta.update({"topic": "launch", "n": 1, "flag": True})
    return memory_pb2.Memory(
        content=content,
        tags=["shared"],
        agent_id="agent-1",
        thread_id="thread-1",
        source="chat",
        metadata=meta,
        **fields,
    )


@pytest.fixture
async def fresh(make_server: MakeServer) -> World:
    """A fresh world, for the tests that change it."""
    return await build_world(await make_server(**NO_LIMITS))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One world for the tests that only read it (or fail to change it)."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        data_dir=str(tmp_path_factory.mktemp("isolation")),
        embedding_provider="hashing",
        embedding_dimension=64,
        grace_period_s=0.5,
        log_level="WARNING",
        **NO_LIMITS,
    )
    app = await build_app(settings, hasher=fast_hasher())
    await app.start()
    assert app.bootstrapped is not None
    channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
    server = RunningServer(
        app,
        f"127.0.0.1:{app.port}",
        app.bootstrapped.plaintext,
        app.bootstrapped.org.id,
        channel,
        SystemClock(),
    )
    yield await build_world(server)
    await channel.close()
    await app.stop(0)


# Tests on the shared world run in the module's event loop, where it lives.
on_shared = pytest.mark.asyncio(loop_scope="module")


# --- helpers ----------------------------------------------------------------------------------


def match_all() -> memory_pb2.MemoryFilter:
    """A filter every seed matches."""
    flt = memory_pb2.MemoryFilter()
    flt.must.add(field="tags", equals=struct_pb2.Value(string_value="shared"))
    flt.must.add(field="agent_id", equals=struct_pb2.Value(string_value="agent-1"))
    return flt


async def assert_not_found_like_missing(
    world: World, seat: Seat, seed: Seed, call: Callable[[str], Awaitable[Any]]
) -> None:
    """`call(id)` answers NOT_FOUND for another tenant's memory, with the same
    message and reason as for an id that does not exist at all."""
    foreign = await raised(call(seed.id))
    missing_id = str(uuid.uuid4())
    missing = await raised(call(missing_id))
    where = f"{seat.name} reaching {seed.writer}'s memory"
    assert foreign.code() == grpc.StatusCode.NOT_FOUND, f"{where}: {foreign.details()}"
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert foreign.details().replace(seed.id, "ID") == missing.details().replace(missing_id, "ID")
    assert reason_of(foreign) == reason_of(missing)


async def assert_all_intact(world: World) -> None:
    """Every seed is still there for its writer, unchanged."""
    for seed in world.seeds:
        owner = world.owner_of(seed).client
        got = await owner.memory.GetMemory(
            memory_pb2.GetMemoryRequest(id=seed.id), metadata=owner.md()
        )
        assert (got.content, got.revision, list(got.tags)) == (seed.content, 1, ["shared"])


async def list_ids(
    client: Client, flt: memory_pb2.MemoryFilter | None = None, size: int = 0
) -> list[str]:
    ids: list[str] = []
    token = ""
    while True:
        page = await client.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(filter=flt, page_size=size, page_token=token),
            metadata=client.md(),
        )
        ids += [m.id for m in page.memories]
        token = page.next_page_token
        if not token:
            return ids


async def export_ids(client: Client, **request: Any) -> list[str]:
    stream = client.memory.ExportMemories(
        memory_pb2.ExportMemoriesRequest(**request), metadata=client.md()
    )
    return [m.id async for m in stream]


async def search(client: Client, **request: Any) -> memory_pb2.SearchMemoriesResponse:
    request.setdefault("top_k", 100)
    return await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(**request), metadata=client.md()
    )


# --- by id: NOT_FOUND, and the memory intact --------------------------------------------------


def _get(c: Client) -> Callable[[str], Awaitable[Any]]:
    return lambda mid: c.memory.GetMemory(
        memory_pb2.GetMemoryRequest(id=mid, include_embedding=True), metadata=c.md()
    )


def _update(c: Client) -> Callable[[str], Awaitable[Any]]:
    def call(mid: str) -> Awaitable[Any]:
        req = memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=mid, content="overwritten", tags=["pwned"])
        )
        req.update_mask.paths.extend(["content", "tags", "metadata", "expire_time"])
        return c.memory.UpdateMemory(req, metadata=c.md())

    return call


def _delete(c: Client) -> Callable[[str], Awaitable[Any]]:
    return lambda mid: c.memory.DeleteMemory(
        memory_pb2.DeleteMemoryRequest(id=mid), metadata=c.md()
    )


def _revisions(c: Client) -> Callable[[str], Awaitable[Any]]:
    return lambda mid: c.memory.ListMemoryRevisions(
        memory_pb2.ListMemoryRevisionsRequest(id=mid), metadata=c.md()
    )


@on_shared
@pytest.mark.parametrize(
    "method", [_get, _update, _delete, _revisions], ids=["Get", "Update", "Delete", "Revisions"]
)
async def test_by_id_another_tenants_memory_is_not_found_and_stays_intact(
    world: World, method: Callable[[Client], Callable[[str], Awaitable[Any]]]
) -> None:
    for seat in world.seats.values():
        for seed in world.foreign(seat):
            await assert_not_found_like_missing(world, seat, seed, method(seat.client))
    await assert_all_intact(world)


async def test_revisions_of_another_tenants_updated_memory_stay_hidden(fresh: World) -> None:
    # Give every seed a past state worth stealing, then look from everywhere else.
    for seed in fresh.seeds:
        owner = fresh.owner_of(seed).client
        req = memory_pb2.UpdateMemoryRequest(memory=memory_pb2.Memory(id=seed.id, content="v2"))
        req.update_mask.paths.append("content")
        await owner.memory.UpdateMemory(req, metadata=owner.md())
    for seat in fresh.seats.values():
        for seed in fresh.foreign(seat):
            await assert_not_found_like_missing(fresh, seat, seed, _revisions(seat.client))
        for mid in fresh.mine(seat):
            resp = await _revisions(seat.client)(mid)
            assert [r.revision for r in resp.revisions] == [1]


@on_shared
async def test_own_memories_are_reachable_by_id(world: World) -> None:
    # The positive control of the NOT_FOUND matrix: the same calls work at home.
    for seat in world.seats.values():
        for mid in world.mine(seat):
            got = await _get(seat.client)(mid)
            assert got.id == mid and len(got.embedding) == 64


# --- by query: only the caller's own, all of them ---------------------------------------------


@on_shared
@pytest.mark.parametrize("flt", [None, match_all()], ids=["no-filter", "match-all-filter"])
async def test_list_sees_exactly_the_tenants_memories(
    world: World, flt: memory_pb2.MemoryFilter | None
) -> None:
    for seat in world.seats.values():
        for size in (0, 1):
            ids = await list_ids(seat.client, flt, size)
            assert len(ids) == len(set(ids))
            assert set(ids) == world.mine(seat), f"{seat.name} page_size={size}"


@on_shared
async def test_a_page_token_from_another_tenant_reveals_nothing(world: World) -> None:
    a1, b1 = world.seats["a1"], world.seats["b1"]
    page = await a1.client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=1), metadata=a1.client.md()
    )
    assert page.next_page_token
    try:
        other = await b1.client.memory.ListMemories(
            memory_pb2.ListMemoriesRequest(page_size=100, page_token=page.next_page_token),
            metadata=b1.client.md(),
        )
    except aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert {m.id for m in other.memories} <= world.mine(b1)


@on_shared
@pytest.mark.parametrize("flt", [None, match_all()], ids=["no-filter", "match-all-filter"])
async def test_export_streams_exactly_the_tenants_memories(
    world: World, flt: memory_pb2.MemoryFilter | None
) -> None:
    for seat in world.seats.values():
        ids = await export_ids(seat.client, filter=flt, include_embeddings=True)
        assert len(ids) == len(set(ids))
        assert set(ids) == world.mine(seat), seat.name


@on_shared
@pytest.mark.parametrize("mode", ["SEMANTIC", "KEYWORD", "HYBRID"])
@pytest.mark.parametrize("flt", [None, match_all()], ids=["no-filter", "match-all-filter"])
async def test_search_by_text_finds_exactly_the_tenants_memories(
    world: World, flt: memory_pb2.MemoryFilter | None, mode: str
) -> None:
    # every memory has the same content: by keywords too, each seat finds
    # all of its own and nothing else
    bound = {} if mode == "KEYWORD" else {"min_score": -1}
    for seat in world.seats.values():
        resp = await search(
            seat.client, query=CONTENT, filter=flt, mode=memory_pb2.SearchMode.Value(mode), **bound
        )
        assert {r.memory.id for r in resp.results} == world.mine(seat), seat.name
        assert all(r.project_id == world.projects[seat.project].id for r in resp.results)


@on_shared
async def test_search_with_another_tenants_exact_vector_finds_only_own(world: World) -> None:
    for seed in world.seeds:
        owner = world.owner_of(seed).client
        victim = await _get(owner)(seed.id)
        for seat in world.seats.values():
            if world.visible(seat, seed):
                continue
            for words in ({}, {"query": victim.content, "mode": memory_pb2.HYBRID}):
                resp = await search(
                    seat.client, query_embedding=list(victim.embedding), min_score=-1, **words
                )
                ids = {r.memory.id for r in resp.results}
                assert seed.id not in ids
                assert ids == world.mine(seat), f"{seat.name} with {seed.writer}'s vector"


@on_shared
async def test_purge_dry_run_counts_only_own_and_deletes_nothing(world: World) -> None:
    for seat in world.seats.values():
        for request in (
            memory_pb2.PurgeMemoriesRequest(all=True, dry_run=True),
            memory_pb2.PurgeMemoriesRequest(filter=match_all(), dry_run=True),
        ):
            resp = await seat.client.memory.PurgeMemories(request, metadata=seat.client.md())
            assert resp.dry_run
            assert resp.purged_count == len(world.mine(seat)), seat.name
    await assert_all_intact(world)


@pytest.mark.parametrize("everything", [True, False], ids=["all", "match-all-filter"])
async def test_purge_deletes_only_own(fresh: World, everything: bool) -> None:
    # End-user seats first, then project-level ones, so that each purge still
    # finds its own memories.
    order = sorted(fresh.seats.values(), key=lambda s: (s.end_user == "", s.all_end_users))
    purged: set[str] = set()
    for seat in order:
        mine = fresh.mine(seat) - purged
        request = (
            memory_pb2.PurgeMemoriesRequest(all=True)
            if everything
            else memory_pb2.PurgeMemoriesRequest(filter=match_all())
        )
        resp = await seat.client.memory.PurgeMemories(request, metadata=seat.client.md())
        assert resp.purged_count == len(mine), seat.name
        purged |= mine
        for seed in fresh.seeds:
            if seed.id in purged:
                continue
            owner = fresh.owner_of(seed).client
            got = await owner.memory.GetMemory(
                memory_pb2.GetMemoryRequest(id=seed.id), metadata=owner.md()
            )
            assert got.content == seed.content, f"{seat.name} purged {seed.writer}'s memory"
    assert purged == {s.id for s in fresh.seeds}


# --- writes land in the caller's tenant, whatever the request claims --------------------------


def spoofed(world: World, content: str) -> memory_pb2.Memory:
    """A memory claiming to be org B's, end user `b`'s, with a taken id; its
    content is also in `metadata.marker`, to find it again."""
    b1 = world.projects["Q1"]
    memory = alike(
        content,
        id=world.seeds[-1].id,
        project_id=b1.id,
        environment_id=b1.environments[0].id,
        end_user_id="b",
        revision=7,
    )
    memory.metadata.update({"marker": content})
    return memory


async def _write_create(world: World, seat: Seat, content: str) -> list[memory_pb2.Memory]:
    resp = await seat.client.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=spoofed(world, content)), metadata=seat.client.md()
    )
    return [resp.memory]


async def _write_batch(world: World, seat: Seat, content: str) -> list[memory_pb2.Memory]:
    resp = await seat.client.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[memory_pb2.CreateMemoryRequest(memory=spoofed(world, content))] * 2
        ),
        metadata=seat.client.md(),
    )
    assert resp.succeeded_count == 2, resp
    return [r.memory for r in resp.results]


async def _write_import(world: World, seat: Seat, content: str) -> list[memory_pb2.Memory]:
    async def items() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
        for _ in range(2):
            yield memory_pb2.ImportMemoriesRequest(memory=spoofed(world, content))

    summary = await seat.client.memory.ImportMemories(items(), metadata=seat.client.md())
    assert (summary.imported_count, summary.failed_count) == (2, 0), summary
    found = await seat.client.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(filter=_content_is(content)), metadata=seat.client.md()
    )
    return list(found.memories)


def _content_is(content: str) -> memory_pb2.MemoryFilter:
    flt = memory_pb2.MemoryFilter()
    flt.must.add(field="source", equals=struct_pb2.Value(string_value="chat"))
    flt.must.add(field="metadata.marker", equals=struct_pb2.Value(string_value=content))
    return flt


@pytest.mark.parametrize(
    "write", [_write_create, _write_batch, _write_import], ids=["Create", "BatchCreate", "Import"]
)
async def test_writes_land_in_the_callers_tenant_only(fresh: World, write: Any) -> None:
    for seat in fresh.seats.values():
        content = f"written by {seat.name} via {write.__name__}"
        written = await write(fresh, seat, content)
        assert written, seat.name
        env_id = fresh.environments[f"{seat.org}/{seat.project}/{seat.environment}"]
        for m in written:
            assert m.project_id == fresh.projects[seat.project].id
            assert m.environment_id == env_id
            assert m.end_user_id == seat.end_user
            assert m.revision == 1
            assert m.id not in {s.id for s in fresh.seeds}
        new_ids = {m.id for m in written}
        for other in fresh.seats.values():
            ids = set(await list_ids(other.client))
            sees = other.env == seat.env and reaches(other, seat.end_user)
            assert (new_ids <= ids) if sees else not (new_ids & ids), (seat.name, other.name)
    await assert_all_intact(fresh)


# --- end users --------------------------------------------------------------------------------


@on_shared
async def test_end_user_header_confines_reads_and_its_absence_sees_all_only_with_the_scope(
    world: World,
) -> None:
    by_writer = {
        s.writer: s.id for s in world.seeds if s.content.endswith("number 0 from " + s.writer)
    }

    async def contents(seat: str) -> set[str]:
        return {
            w
            for w, mid in by_writer.items()
            if mid in set(await list_ids(world.seats[seat].client))
        }

    assert await contents("a1/a") == {"a1/a", "a1!/a"}
    assert await contents("a1/b") == {"a1/b"}
    assert await contents("a1/c") == set()
    assert await contents("a1") == {"a1", "a1/a", "a1/b", "a1!", "a1!/a"}
    # The same end user id in another project is another person.
    assert await contents("a2/a") == {"a2/a"}
    assert await contents("a2") == {"a2", "a2/a", "a2!"}
    # Without memory:all_end_users and without the header: no end user's memory.
    assert await contents("a1!") == {"a1", "a1!"}
    assert await contents("a2!") == {"a2", "a2!"}
    # With the header, the scope does not matter.
    assert await contents("a1!/a") == {"a1/a", "a1!/a"}


@on_shared
async def test_memories_written_with_an_end_user_are_tagged_with_it(world: World) -> None:
    a1 = world.seats["a1"].client
    page = await a1.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=a1.md())
    users = {m.id: m.end_user_id for m in page.memories}
    for seed in world.seeds:
        if seed.env == world.seats["a1"].env:
            assert users[seed.id] == seed.end_user


async def test_an_update_without_end_user_keeps_the_memorys_end_user(fresh: World) -> None:
    a1, a1a, a1b = (fresh.seats[n].client for n in ("a1", "a1/a", "a1/b"))
    mid = next(s.id for s in fresh.seeds if s.writer == "a1/a")
    req = memory_pb2.UpdateMemoryRequest(memory=memory_pb2.Memory(id=mid, content="edited"))
    req.update_mask.paths.append("content")
    updated = await a1.memory.UpdateMemory(req, metadata=a1.md())
    assert updated.end_user_id == "a"
    assert mid in await list_ids(a1a)
    assert mid not in await list_ids(a1b)


# --- org keys ---------------------------------------------------------------------------------


async def _org_calls(c: Client, mid: str) -> list[tuple[str, Callable[[], Awaitable[Any]]]]:
    async def export() -> Any:
        return [
            m
            async for m in c.memory.ExportMemories(
                memory_pb2.ExportMemoriesRequest(), metadata=c.md()
            )
        ]

    async def imports() -> Any:
        async def items() -> AsyncIterator[memory_pb2.ImportMemoriesRequest]:
            yield memory_pb2.ImportMemoriesRequest(memory=alike())

        return await c.memory.ImportMemories(items(), metadata=c.md())

    m = c.memory
    md = c.md()
    update = memory_pb2.UpdateMemoryRequest(memory=memory_pb2.Memory(id=mid, content="x"))
    update.update_mask.paths.append("content")
    return [
        (
            "Create",
            lambda: m.CreateMemory(memory_pb2.CreateMemoryRequest(memory=alike()), metadata=md),
        ),
        (
            "BatchCreate",
            lambda: m.BatchCreateMemories(
                memory_pb2.BatchCreateMemoriesRequest(
                    requests=[memory_pb2.CreateMemoryRequest(memory=alike())]
                ),
                metadata=md,
            ),
        ),
        ("Get", lambda: m.GetMemory(memory_pb2.GetMemoryRequest(id=mid), metadata=md)),
        ("Update", lambda: m.UpdateMemory(update, metadata=md)),
        ("Delete", lambda: m.DeleteMemory(memory_pb2.DeleteMemoryRequest(id=mid), metadata=md)),
        ("List", lambda: m.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=md)),
        (
            "Search",
            lambda: m.SearchMemories(memory_pb2.SearchMemoriesRequest(query=CONTENT), metadata=md),
        ),
        ("Purge", lambda: m.PurgeMemories(memory_pb2.PurgeMemoriesRequest(all=True), metadata=md)),
        (
            "PurgeDryRun",
            lambda: m.PurgeMemories(
                memory_pb2.PurgeMemoriesRequest(all=True, dry_run=True), metadata=md
            ),
        ),
        (
            "Revisions",
            lambda: m.ListMemoryRevisions(
                memory_pb2.ListMemoryRevisionsRequest(id=mid), metadata=md
            ),
        ),
        ("Export", export),
        ("Import", imports),
    ]


@on_shared
async def test_org_keys_cannot_use_memory_service(world: World) -> None:
    owner = world.server.owner  # an org key holding every scope ('*')
    resp = await owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(name="org reader", scopes=["*"]), metadata=owner.md()
    )
    assert resp.api_key.kind == keys_pb2.KEY_KIND_ORG
    mid = world.seeds[0].id
    for client in (owner, owner.with_key(resp.secret), owner.with_key(resp.secret, "a")):
        for name, call in await _org_calls(client, mid):
            err = await raised(call())
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (name, err.details())
            assert reason_of(err) == "DATA_KEY_REQUIRED", name
    await assert_all_intact(world)
    for seat in world.seats.values():
        assert set(await list_ids(seat.client)) == world.mine(seat)


# --- cross-project search ---------------------------------------------------------------------


async def cross_key(world: World, project: str, environment: str, scopes: list[str]) -> str:
    env_id = world.environments[f"A/{project}/{environment}"]
    return await world.server.data_key(
        world.projects[project], tuple(scopes), environment_id=env_id
    )


ALL_LIVE = {"a1", "a1/a", "a1/b", "a2", "a2/a", "a1!", "a1!/a", "a2!"}
PROJECT_LEVEL_LIVE = {"a1", "a2", "a1!", "a2!"}


@on_shared
@pytest.mark.parametrize(
    ("project", "environment", "end_user", "all_end_users", "expected_writers"),
    [
        # live keys of org A see org A's live memories, of every project
        ("P2", "production", "", True, ALL_LIVE),
        ("P1", "production", "", True, ALL_LIVE),
        # without memory:all_end_users nor the header: those without an end user
        ("P2", "production", "", False, PROJECT_LEVEL_LIVE),
        ("P1", "production", "", False, PROJECT_LEVEL_LIVE),
        # narrowed to one end user, in every project
        ("P2", "production", "a", True, {"a1/a", "a2/a", "a1!/a"}),
        ("P1", "production", "b", True, {"a1/b"}),
        ("P2", "production", "a", False, {"a1/a", "a2/a", "a1!/a"}),
        # a test key sees the org's test environments only
        ("P1", "staging", "", True, {"a1-staging"}),
    ],
    ids=[
        "live-from-P2",
        "live-from-P1",
        "no-scope-from-P2",
        "no-scope-from-P1",
        "end-user-a",
        "end-user-b",
        "end-user-a-no-scope",
        "test-kind",
    ],
)
async def test_cross_project_search_spans_the_orgs_projects_of_the_same_kind(
    world: World,
    project: str,
    environment: str,
    end_user: str,
    all_end_users: bool,
    expected_writers: set[str],
) -> None:
    scopes = ["memory:read", "org:cross_project_read"]
    if all_end_users:
        scopes.append("memory:all_end_users")
    key = await cross_key(world, project, environment, scopes)
    client = world.server.client(key, end_user)
    for request in ({"query": CONTENT}, {"query": CONTENT, "filter": match_all()}):
        resp = await client.memory.SearchMemories(
            memory_pb2.SearchMemoriesRequest(top_k=100, min_score=-1, **request),
            metadata=client.md(x_allow_cross_project="true"),
        )
        found = {r.memory.id for r in resp.results}
        expected = {s.id for s in world.seeds if s.writer in expected_writers}
        assert found == expected
        project_of = {s.id: world.projects[world.seats[s.writer].project].id for s in world.seeds}
        for r in resp.results:
            assert r.project_id == project_of[r.memory.id] == r.memory.project_id
    # Without the header, the same key stays in its own environment.
    own = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query=CONTENT, top_k=100, min_score=-1),
        metadata=client.md(),
    )
    seat = Seat("cross", "A", project, environment, end_user, client, all_end_users)
    assert {r.memory.id for r in own.results} == {
        s.id for s in world.seeds if s.env == seat.env and reaches(seat, s.end_user)
    }


@on_shared
async def test_cross_project_search_never_reaches_another_org(world: World) -> None:
    org_b = world.owners["B"]
    q1 = world.projects["Q1"]
    key = await world.server.data_key(q1, ("memory:read", "org:cross_project_read"), client=org_b)
    client = world.server.client(key)
    resp = await client.memory.SearchMemories(
        memory_pb2.SearchMemoriesRequest(query=CONTENT, top_k=100, min_score=-1),
        metadata=client.md(x_allow_cross_project="true"),
    )
    assert {r.memory.id for r in resp.results} == {s.id for s in world.seeds if s.writer == "b1"}


@on_shared
@pytest.mark.parametrize("header", ["true", "TRUE"])
async def test_cross_project_search_without_the_scope_is_denied(world: World, header: str) -> None:
    for seat in world.seats.values():  # keys holding memory:* only
        err = await raised(
            seat.client.memory.SearchMemories(
                memory_pb2.SearchMemoriesRequest(query=CONTENT),
                metadata=seat.client.md(x_allow_cross_project=header),
            )
        )
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, seat.name
        assert reason_of(err) == "SCOPE_MISSING", seat.name
        assert "org:cross_project_read" in err.details()  # the scope to grant
