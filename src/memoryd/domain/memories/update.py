"""Updating one memory: the fields of the mask take their new values, the
content is embedded again when it changed (unless a vector was given), and
the state it replaces is kept as a revision (the newest MAX_REVISIONS).
Invalidating a memory (or superseding it, for a job) is such an update."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from memoryd.domain.control import Project
from memoryd.domain.errors import InvalidArgument
from memoryd.domain.memories.model import Defaults, MemoryUpdate, WriteMeter
from memoryd.domain.memories.quota import size_limits
from memoryd.domain.memories.recording import NO_CAUSE, Cause, ChangeRecorder, update_event
from memoryd.domain.memories.validation import holds_help
from memoryd.domain.memory import Embedder, MemoryRecord, Origin, Revision, VectorStore

MAX_REVISIONS = 100


class Updater:
    """Applies a validated MemoryUpdate to a memory read with its vector."""

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        meter: WriteMeter,
        defaults: Defaults,
        changes: ChangeRecorder | None = None,
    ) -> None:
        self._store = store
        self._changes = changes or ChangeRecorder()
        self._embedder = embedder
        self._meter = meter
        self._defaults = defaults

    async def apply(
        self,
        project: Project,
        current: MemoryRecord,
        update: MemoryUpdate,
        now: datetime,
        cause: Cause = NO_CAUSE,
    ) -> MemoryRecord:
        """Stores and returns (without its vector) the new state of
        `current`, recorded as UPDATED or SUPERSEDED (`update_event`),
        caused by `cause`. Raises ResourceExhausted when the new content or
        metadata is over the project's size limits, InvalidArgument when
        the new state would hold at no time (invalid_time not after
        valid_time)."""
        updated = revised(current, update, None, now)
        size_limits(self._defaults, project).check(updated.content, updated.metadata)
        _check_holds(updated, update.paths)
        updated = replace(updated, vector=await self._vector(current, update, updated.content))
        await self._store.upsert(current.tenant, [updated])
        stored = replace(updated, vector=None)
        await self._changes.record([(update_event(current, updated), stored)], cause)
        await self._meter.memories_written(current.tenant, 1, len(updated.content.encode()))
        return stored

    async def _vector(
        self, current: MemoryRecord, update: MemoryUpdate, content: str
    ) -> tuple[float, ...] | None:
        if "embedding" in update.paths:
            return tuple(update.embedding)
        if "content" in update.paths and content != current.content:
            embedded = await self._embedder.embed([content], fairness_key=current.tenant.org_id)
            return tuple(embedded[0])
        return current.vector


def _check_holds(updated: MemoryRecord, paths: tuple[str, ...]) -> None:
    """Refuses a state that holds at no time, naming the time the update set."""
    start = updated.valid_time or updated.create_time
    if updated.invalid_time is not None and updated.invalid_time <= start:
        name = "memory.invalid_time" if "invalid_time" in paths else "memory.valid_time"
        raise InvalidArgument.field(name, holds_help(from_creation=False))


def revised(
    current: MemoryRecord, update: MemoryUpdate, vector: tuple[float, ...] | None, now: datetime
) -> MemoryRecord:
    """`current` with the fields of `update.paths` changed, its revision
    number one up, and its replaced state first in its revisions. A memory
    keeps its tenant (and end user). A memory that holds again (no
    invalid_time) is no longer superseded, unless the update says by what."""
    paths = update.paths
    invalid_time = update.invalid_time if "invalid_time" in paths else current.invalid_time
    superseded_by = current.superseded_by if invalid_time is not None else ""
    past = Revision(
        revision=current.revision,
        content=current.content,
        metadata=current.metadata,
        tags=current.tags,
        agent_id=current.agent_id,
        thread_id=current.thread_id,
        source=current.source,
        update_time=current.update_time,
        replace_time=now,
        valid_time=current.valid_time,
        invalid_time=current.invalid_time,
    )
    return replace(
        current,
        content=update.content if "content" in paths else current.content,
        metadata=dict(update.metadata if "metadata" in paths else current.metadata),
        tags=tuple(dict.fromkeys(update.tags)) if "tags" in paths else current.tags,
        agent_id=update.agent_id if "agent_id" in paths else current.agent_id,
        thread_id=update.thread_id if "thread_id" in paths else current.thread_id,
        source=update.source if "source" in paths else current.source,
        expire_time=update.expire_time if "expire_time" in paths else current.expire_time,
        valid_time=(update.valid_time or current.create_time)
        if "valid_time" in paths
        else current.valid_time,
        invalid_time=invalid_time,
        superseded_by=update.superseded_by if "superseded_by" in paths else superseded_by,
        origin=(update.origin or Origin()) if "origin" in paths else current.origin,
        update_time=now,
        revision=current.revision + 1,
        vector=vector,
        revisions=(past, *current.revisions)[:MAX_REVISIONS],
    )
