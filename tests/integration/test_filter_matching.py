"""The in-process filter (`memoryd.domain.memories.matching`, which a
watcher applies to change events) means what the vector store makes of the
same filter: for a corpus of memories that differ in every filterable way
(nested metadata, lists, numbers, bools, strings that look like numbers,
nulls, special keys) and a battery of filters, `matches` picks exactly the
memories a real Qdrant Edge store returns."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from memoryd.domain.memories.matching import matches
from memoryd.domain.memory import (
    Filter,
    Match,
    MatchAny,
    MemoryRecord,
    NumberRange,
    TimeRange,
    Validity,
)
from memoryd.domain.tenancy import Tenant
from memoryd.storage.vectors.edge import EdgeVectorStore

pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")

DIM = 4
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T = Tenant("org_a", "prj_a", "env_a", all_end_users=True)
T0 = NOW - timedelta(days=10)

_CORPUS: dict[str, dict[str, Any]] = {
    "plain": {"agent_id": "a1", "thread_id": "t1", "source": "chat", "tags": ("x", "y")},
    "user": {"end_user": "alice", "tags": ("y",), "metadata": {"lang": "en", "n": 3}},
    "nested": {"metadata": {"deep": {"x": "y", "n": 2.5, "flag": True}, "lang": "fr"}},
    "lists": {"metadata": {"langs": ["en", "de"], "ns": [1, 2, 3], "flags": [False, True]}},
    "objs": {"metadata": {"items": [{"k": "v"}, {"k": "w"}], "n": 3.0}},
    "typed": {"metadata": {"n": "3", "flag": "true", "one": 1, "zero": 0, "nul": None}},
    "bools": {"metadata": {"flag": True, "one": True, "zero": False}},
    "keys": {"metadata": {"a b": "space", "x[0]": "bracket", "$d": {"e*": 7}}},
    "empty": {"agent_id": "", "source": "", "metadata": {}},
}


def _record(i: int, name: str, spec: dict[str, Any]) -> MemoryRecord:
    created = T0 + timedelta(hours=i)
    return MemoryRecord(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
        tenant=Tenant("org_a", "prj_a", "env_a", spec.get("end_user", "")),
        content=name,
        metadata=spec.get("metadata", {}),
        agent_id=spec.get("agent_id", "a2"),
        thread_id=spec.get("thread_id", "t2"),
        source=spec.get("source", "email"),
        tags=tuple(spec.get("tags", ())),
        create_time=created,
        update_time=created + timedelta(minutes=30 * i),
        expire_time=None,
        revision=1,
        vector=tuple([1.0] + [0.0] * (DIM - 1)),
        valid_time=created,
    )


RECORDS = [_record(i, n, s) for i, (n, s) in enumerate(_CORPUS.items())]
NAMES = {r.id: r.content for r in RECORDS}

FILTERS: dict[str, Filter] = {
    "empty": Filter(),
    "agent": Filter(must=(Match("agent_id", "a1"),)),
    "agent empty string": Filter(must=(Match("agent_id", ""),)),
    "tag": Filter(must=(Match("tags", "y"),)),
    "tags any": Filter(must=(MatchAny("tags", ("x", "nope")),)),
    "end user": Filter(must=(Match("end_user_id", "alice"),)),
    "no end user": Filter(must=(Match("end_user_id", ""),)),
    "source any": Filter(must=(MatchAny("source", ("chat", "")),)),
    "lang": Filter(must=(Match("metadata.lang", "en"),)),
    "lang in list": Filter(must=(Match("metadata.langs", "de"),)),
    "langs any": Filter(must=(MatchAny("metadata.langs", ("fr", "de")),)),
    "number 3": Filter(must=(Match("metadata.n", 3),)),
    "number 3.0": Filter(must=(Match("metadata.n", 3.0),)),
    "string 3": Filter(must=(Match("metadata.n", "3"),)),
    "number in list": Filter(must=(Match("metadata.ns", 2),)),
    "number any": Filter(must=(MatchAny("metadata.ns", (5, 3)),)),
    "mixed any": Filter(must=(MatchAny("metadata.n", ("3", 3)),)),
    "one is 1 not true": Filter(must=(Match("metadata.one", 1),)),
    "bool true": Filter(must=(Match("metadata.flag", True),)),
    "bool false": Filter(must=(Match("metadata.zero", False),)),
    "bool in list": Filter(must=(Match("metadata.flags", False),)),
    "nested string": Filter(must=(Match("metadata.deep.x", "y"),)),
    "nested bool": Filter(must=(Match("metadata.deep.flag", True),)),
    "nested range": Filter(must=(NumberRange("metadata.deep.n", gt=2, lte=2.5),)),
    "range": Filter(must=(NumberRange("metadata.n", gte=3),)),
    "range list": Filter(must=(NumberRange("metadata.ns", lt=1.5),)),
    "range on bools": Filter(must=(NumberRange("metadata.one", gte=0),)),
    "through a list": Filter(must=(Match("metadata.items.k", "v"),)),
    "space key": Filter(must=(Match("metadata.a b", "space"),)),
    "bracket key": Filter(must=(Match("metadata.x[0]", "bracket"),)),
    "odd nested key": Filter(must=(Match("metadata.$d.e*", 7),)),
    "null": Filter(must=(Match("metadata.nul", "None"),)),
    "created": Filter(
        must=(TimeRange("create_time", start=T0 + timedelta(hours=2), end=T0 + timedelta(hours=5)),)
    ),
    "updated after": Filter(must=(TimeRange("update_time", start=T0 + timedelta(hours=8)),)),
    "must not lang": Filter(must_not=(Match("metadata.lang", "en"),)),
    "should": Filter(should=(Match("metadata.lang", "fr"), Match("tags", "x"))),
    "nested filter": Filter(
        must=(Match("source", "email"),),
        must_not=(
            Filter(should=(Match("metadata.flag", True), NumberRange("metadata.n", lt=3.5))),
        ),
    ),
    "must and should": Filter(
        must=(MatchAny("agent_id", ("a1", "a2")),),
        should=(Match("metadata.lang", "fr"), Match("metadata.langs", "en")),
    ),
}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EdgeVectorStore]:
    s = EdgeVectorStore(tmp_path / "vectors")
    await s.open("test/model-4", DIM)
    for r in RECORDS:
        await s.upsert(r.tenant, [r])
    yield s
    await s.close()


async def test_matches_picks_what_the_vector_store_returns(store: EdgeVectorStore) -> None:
    differ: dict[str, tuple[list[str], list[str]]] = {}
    for name, flt in FILTERS.items():
        page = await store.scroll(T, flt, 100, NOW, validity=Validity(include_invalidated=True))
        engine = sorted(NAMES[r.id] for r in page.records)
        ours = sorted(r.content for r in RECORDS if matches(flt, r))
        if ours != engine:
            differ[name] = (ours, engine)
    assert differ == {}
    # the battery is not vacuous: most filters pick some but not all memories
    picked = [sum(matches(f, r) for r in RECORDS) for f in FILTERS.values()]
    assert sum(0 < n < len(RECORDS) for n in picked) >= len(FILTERS) - 3
