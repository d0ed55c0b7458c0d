"""The add_messages job: messages in, decisions out, memories written.

1. Plan (once): the extractor finds facts in the operation's messages (the
   thread's earlier messages as context); for each fact the most similar
   memories that hold now, *of the operation's tenant and end user only*,
   become its candidates; the extractor decides each fact against them.
   Every decision is checked (an id outside the candidates becomes NONE)
   and downgraded to what the writing key may do. The plan is checkpointed
   before anything is written.
2. Apply: each decision is applied so that applying it twice changes
   nothing more: new memories get ids derived from the operation id and the
   decision's position (written only if absent), an UPDATE is skipped when
   the memory already carries this operation as its origin, an
   invalidation only when the memory still holds.

A re-run after a crash (or a lost lease) starts from the checkpoint, so the
effect happens once even though the model is not asked twice.

Change events (caused by the operation): ADD → CREATED; UPDATE → UPDATED;
SUPERSEDE → SUPERSEDED for the old memory (it stops holding, its
`superseded_by` names the new one) and CREATED for the new; DELETE →
SUPERSEDED (the memory stops holding but stays as history, so it is not
DELETED). A re-run records again the events of what an earlier run
already did (that run may have crashed between a write and its event): a
change is in the log at least once before the operation ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from typing import Any, Protocol

from memoryd.domain.changes import EventType
from memoryd.domain.clock import Clock
from memoryd.domain.conversations.extraction import (
    Candidate,
    ChatMessage,
    Decision,
    Event,
    Extractor,
    Fact,
    PromptSet,
    TokenUsage,
    checked,
)
from memoryd.domain.conversations.model import (
    Applied,
    Params,
    TokenLedger,
    decision_memory_id,
    parse_result,
    result_json,
)
from memoryd.domain.errors import DomainError, Unavailable
from memoryd.domain.memories import MemoryService, MemoryUpdate, NewMemory
from memoryd.domain.memories.recording import Cause
from memoryd.domain.memory import Embedder, MemoryRecord, Origin
from memoryd.domain.operations import (
    JobControl,
    JobOutcome,
    Operation,
    OperationStore,
    OpState,
    StoredMessage,
)
from memoryd.domain.tenancy import Scope, Tenant, scope_grants

log = logging.getLogger("memoryd.conversations")


class PromptSource(Protocol):
    """The environment's own prompts (`PromptManager.prompt_set`)."""

    async def prompt_set(self, org_id: str, project_id: str, environment_id: str) -> PromptSet: ...


class AddMessagesJob:
    """The `JobHandler` of add_messages operations."""

    def __init__(
        self,
        operations: OperationStore,
        memories: MemoryService,
        embedder: Embedder,
        clock: Clock,
        *,
        verbatim: Extractor,
        inferring: Extractor,
        prompts: PromptSource | None = None,
        ledger: TokenLedger | None = None,
        candidates: int = 5,
        context_messages: int = 10,
        builtin_prompt_version: str = "builtin-1",
        default_tokens_per_day: int = 0,
        on_token_level: Callable[[Tenant, int, int], None] | None = None,
    ) -> None:
        """`verbatim` serves operations with infer false, `inferring` those
        with infer true (the same extractor when the server has no model).
        `on_token_level` sees the project's model tokens of the day against
        its daily quota (the project's, else `default_tokens_per_day`)
        after each model call that used some (quota alerts; cheap, never
        raises)."""
        self._default_tokens = default_tokens_per_day
        self._on_token_level = on_token_level
        self._ops = operations
        self._memories = memories
        self._embedder = embedder
        self._clock = clock
        self._verbatim = verbatim
        self._inferring = inferring
        self._prompts = prompts
        self._ledger = ledger
        self._k = candidates
        self._context = context_messages
        self._builtin = builtin_prompt_version

    async def run(self, job: JobControl) -> JobOutcome:
        op = job.operation
        params = Params.parse(op.payload)
        extractor = self._inferring if params.infer else self._verbatim
        info: dict[str, Any] = dict(op.info)
        plan, _ = parse_result(op.result)
        messages = await self._ops.messages(op.id)
        # the vectors of the facts, computed to find their candidates, are
        # reused for the memories written with the same text (not after a
        # re-run from the checkpoint: those are embedded again)
        vectors: dict[str, list[float]] = {}
        if plan is None:
            plan = await self._plan(op, extractor, messages, info, vectors)
            info["progress_percent"] = 50
            await job.checkpoint(info, result_json(plan, None))
        applied = await self._apply(op, params, extractor, plan, messages, info, vectors)
        info["progress_percent"] = 100
        return JobOutcome(OpState.SUCCEEDED, info, result_json(plan, applied))

    # --- plan --------------------------------------------------------------------

    async def _plan(
        self,
        op: Operation,
        extractor: Extractor,
        stored: Sequence[StoredMessage],
        info: dict[str, Any],
        vectors: dict[str, list[float]],
    ) -> list[Decision]:
        prompts = await self._prompt_set(op, extractor)
        info["prompt_versions"] = list(prompts.versions)
        info["extractor"] = extractor.name
        info["extractor_version"] = extractor.version
        messages = [_chat(m) for m in stored]
        context: list[ChatMessage] = []
        if extractor.needs_candidates and op.thread_id:
            earlier = await self._ops.thread_messages(
                op.tenant, op.thread_id, op.create_time, op.id, self._context
            )
            context = [_chat(m) for m in earlier]
        usage = TokenUsage()
        try:
            facts = await extractor.extract(messages, context, prompts, usage)
            items = (
                await self._candidates(op, facts, vectors) if extractor.needs_candidates else None
            )
            pairs = [(f, items[i] if items else []) for i, f in enumerate(facts)]
            decisions = await extractor.decide(pairs, prompts, usage) if facts else []
        finally:
            await self._count_tokens(op, usage, info)
        if len(decisions) != len(pairs):
            decisions = _one_per_fact(decisions, pairs)
        allowed = [
            _allowed(checked(d, cands), op.scopes)
            for d, (_, cands) in zip(decisions, pairs, strict=True)
        ]
        return _one_per_target(allowed)

    async def _prompt_set(self, op: Operation, extractor: Extractor) -> PromptSet:
        own = PromptSet()
        if extractor.needs_candidates and self._prompts is not None:
            t = op.tenant
            own = await self._prompts.prompt_set(t.org_id, t.project_id, t.environment_id)
        if not extractor.needs_candidates:
            return own  # a verbatim extractor reads no prompt
        versions = list(own.versions)
        for name, text in (("extraction", own.extraction), ("decision", own.decision)):
            if text is None:
                versions.append(f"{name}:{self._builtin}")
        return replace(own, versions=tuple(sorted(versions)))

    async def _candidates(
        self, op: Operation, facts: Sequence[Fact], vectors: dict[str, list[float]]
    ) -> list[list[Candidate]]:
        """For each fact, the most similar memories that hold now, of the
        operation's tenant and end user (never another's: the store is
        asked for this tenant only). Each fact's vector goes in `vectors`."""
        if not facts:
            return []
        embedded = await self._embedder.embed(
            [f.text for f in facts], fairness_key=op.tenant.org_id
        )
        out: list[list[Candidate]] = []
        for fact, vector in zip(facts, embedded, strict=True):
            vectors[fact.text] = vector
            hits = await self._memories.similar(op.tenant, vector, self._k)
            out.append([Candidate(h.record.id, h.record.content) for h in hits])
        return out

    async def _count_tokens(self, op: Operation, usage: TokenUsage, info: dict[str, Any]) -> None:
        info["llm_input_tokens"] = int(info.get("llm_input_tokens", 0)) + usage.input_tokens
        info["llm_output_tokens"] = int(info.get("llm_output_tokens", 0)) + usage.output_tokens
        if self._ledger is not None and usage.total:
            day = self._clock.now().date()
            await self._ledger.add_tokens(op.tenant, day, usage.input_tokens, usage.output_tokens)
            if self._on_token_level is not None:
                await self._token_level(op.tenant, day)

    async def _token_level(self, tenant: Tenant, day: date) -> None:
        """Reports the project's tokens of `day` against its quota; a failure
        to read them is logged, never the operation's."""
        assert self._ledger is not None and self._on_token_level is not None
        try:
            project = await self._memories.project_of(tenant)
            quota = project.quotas.llm_tokens_per_day or self._default_tokens
            if quota <= 0:
                return
            used = await self._ledger.project_tokens(tenant.org_id, tenant.project_id, day)
        except DomainError as err:
            log.warning("token quota alert skipped: %s", err.message)
            return
        self._on_token_level(tenant, used, quota)

    # --- apply -------------------------------------------------------------------

    async def _apply(
        self,
        op: Operation,
        params: Params,
        extractor: Extractor,
        plan: Sequence[Decision],
        messages: Sequence[StoredMessage],
        info: Mapping[str, Any],
        vectors: Mapping[str, Sequence[float]],
    ) -> list[Applied]:
        ctx = _Writing(op, params, extractor, messages, info, self._clock.now(), vectors)
        out: list[Applied | None] = [None] * len(plan)
        # The new memories of ADD and SUPERSEDE, written together (one
        # embedding batch); each only if a previous run did not write it.
        new_ids = {
            i: decision_memory_id(op.id, i)
            for i, d in enumerate(plan)
            if d.event in (Event.ADD, Event.SUPERSEDE)
        }
        written = await self._write_new(ctx, plan, new_ids, out)
        for i, d in enumerate(plan):
            if out[i] is not None:
                continue
            out[i] = await self._apply_one(ctx, d, new_ids.get(i, ""), written)
        return [a for a in out if a is not None]

    async def _write_new(
        self,
        ctx: _Writing,
        plan: Sequence[Decision],
        new_ids: Mapping[int, str],
        out: list[Applied | None],
    ) -> set[str]:
        """Writes the new memories not yet written; answers the ids that
        exist afterwards. An item refused (e.g. over a size limit) becomes
        NONE with the reason."""
        tenant = ctx.op.tenant
        found = await self._memories.records(tenant, list(new_ids.values()))
        existing = {r.id for r in found}
        if found and ctx.rerun:
            await self._memories.record_changes([(EventType.CREATED, r) for r in found], ctx.cause)
        todo = [(i, mid) for i, mid in new_ids.items() if mid not in existing]
        items = [ctx.new_memory(plan[i], mid) for i, mid in todo]
        if items:
            results = await self._memories.create_for(tenant, items, ctx.op.key_id, ctx.cause)
            for (i, mid), result in zip(todo, results, strict=True):
                if isinstance(result, DomainError):
                    out[i] = Applied(Event.NONE, plan[i].fact.text, reason=_refused(result))
                else:
                    existing.add(mid)
        return existing

    async def _apply_one(
        self, ctx: _Writing, d: Decision, new_id: str, written: set[str]
    ) -> Applied:
        fact = d.fact.text
        if d.event is Event.NONE:
            return Applied(Event.NONE, fact, reason=d.reason)
        if d.event is Event.ADD:
            return Applied(Event.ADD, fact, memory_id=new_id, reason=d.reason)
        target = await self._target(ctx, d)
        if target is None and new_id in written:
            return Applied(
                Event.ADD,
                fact,
                memory_id=new_id,
                reason=f"memory {d.target_id!r} it was to replace no longer exists; added",
            )
        if target is None:
            return Applied(
                Event.NONE,
                fact,
                reason=f"memory {d.target_id!r} no longer exists; nothing {d.event.value}d",
            )
        if d.event is Event.UPDATE:
            if target.origin.operation_id != ctx.op.id:  # not applied by an earlier run
                update = MemoryUpdate(
                    paths=("content", "origin"), content=d.text, origin=ctx.origin(d.fact)
                )
                refused = await self._update(ctx, target, update)
                if refused:
                    return Applied(Event.NONE, fact, reason=refused)
            elif ctx.rerun:
                await self._memories.record_changes([(EventType.UPDATED, target)], ctx.cause)
            return Applied(
                Event.UPDATE,
                fact,
                memory_id=target.id,
                previous_memory_id=target.id,
                reason=d.reason,
            )
        # SUPERSEDE and DELETE: the target stops holding (once)
        if d.event is Event.SUPERSEDE and new_id not in written:
            return Applied(Event.NONE, fact, reason="the new memory could not be written")
        if target.invalid_time is None:
            paths: tuple[str, ...] = ("invalid_time",)
            if d.event is Event.SUPERSEDE:
                paths += ("superseded_by",)
            update = MemoryUpdate(
                paths=paths, invalid_time=ctx.now, superseded_by=new_id if new_id else ""
            )
            refused = await self._update(ctx, target, update)
            if refused and d.event is Event.SUPERSEDE:  # the new memory is written
                return Applied(
                    Event.ADD,
                    fact,
                    memory_id=new_id,
                    reason=f"added; memory {target.id!r} could not be superseded ({refused})",
                )
            if refused:
                return Applied(Event.NONE, fact, reason=refused)
        elif ctx.rerun and (d.event is Event.DELETE or target.superseded_by == new_id):
            # invalidated already, perhaps by an earlier run of this operation
            await self._memories.record_changes([(EventType.SUPERSEDED, target)], ctx.cause)
        memory_id = new_id if d.event is Event.SUPERSEDE else target.id
        return Applied(
            d.event, fact, memory_id=memory_id, previous_memory_id=target.id, reason=d.reason
        )

    async def _update(self, ctx: _Writing, target: MemoryRecord, update: MemoryUpdate) -> str:
        """Applies `update`; "" when done, else why it was refused (the new
        text over the size limit, a memory whose valid_time is still ahead
        cannot stop holding now...). A store that does not answer raises."""
        try:
            await self._memories.update_for(target, update, ctx.cause)
        except Unavailable:
            raise
        except DomainError as err:
            return _refused(err)
        return ""

    async def _target(self, ctx: _Writing, d: Decision) -> MemoryRecord | None:
        found = await self._memories.records(ctx.op.tenant, [d.target_id], with_vectors=True)
        return found[0] if found else None


class _Writing:
    """What every write of one operation shares: its provenance and times."""

    def __init__(
        self,
        op: Operation,
        params: Params,
        extractor: Extractor,
        messages: Sequence[StoredMessage],
        info: Mapping[str, Any],
        now: datetime,
        vectors: Mapping[str, Sequence[float]],
    ) -> None:
        self.op = op
        self.cause = Cause(operation_id=op.id)
        # a later attempt: an earlier one may have written without recording
        self.rerun = op.attempts > 1
        self._vectors = vectors
        self.params = params
        self.extractor = extractor
        self.now = now
        self._times = {m.index: m.create_time for m in messages}
        self._versions = tuple(info.get("prompt_versions") or ())

    def origin(self, fact: Fact) -> Origin:
        return Origin(
            operation_id=self.op.id,
            message_indexes=fact.message_indexes,
            thread_id=self.op.thread_id,
            extractor=self.extractor.name,
            extractor_version=self.extractor.version,
            prompt_versions=self._versions,
            writer_key_id=self.op.key_id,
        )

    def new_memory(self, d: Decision, memory_id: str) -> NewMemory:
        times = [self._times[i] for i in d.fact.message_indexes if i in self._times]
        p = self.params
        return NewMemory(
            content=d.text,
            metadata=p.metadata,
            agent_id=p.agent_id,
            thread_id=self.op.thread_id,
            source=p.source,
            tags=p.tags,
            valid_time=max(times) if times else self.op.create_time,
            embedding=tuple(self._vectors.get(d.text, ())),
            id=memory_id,
            origin=self.origin(d.fact),
        )


def _chat(m: StoredMessage) -> ChatMessage:
    return ChatMessage(m.role, m.content, m.name, m.create_time)


def _one_per_fact(
    decisions: Sequence[Decision], pairs: Sequence[tuple[Fact, Sequence[Candidate]]]
) -> list[Decision]:
    """Exactly one decision per fact (an extractor that broke its contract
    is not trusted beyond that): missing ones are NONE, extra ones dropped."""
    out = list(decisions[: len(pairs)])
    for fact, _ in pairs[len(out) :]:
        out.append(Decision(Event.NONE, fact, reason="the extractor gave no decision"))
    return out


def _one_per_target(decisions: Sequence[Decision]) -> list[Decision]:
    """At most one decision per existing memory (facts share candidates):
    the first counts, a later one on the same memory becomes NONE."""
    seen: dict[str, int] = {}
    out: list[Decision] = []
    for i, d in enumerate(decisions):
        if d.target_id and d.event in (Event.UPDATE, Event.SUPERSEDE, Event.DELETE):
            if d.target_id in seen:
                d = Decision(
                    Event.NONE,
                    d.fact,
                    reason=f"memory {d.target_id!r} was already decided for fact "
                    f"{seen[d.target_id]} of this operation",
                )
            else:
                seen[d.target_id] = i
        out.append(d)
    return out


def _allowed(d: Decision, scopes: frozenset[str]) -> Decision:
    """`d` as far as the writing key may go: changing a memory in place or
    replacing it needs memory:update (else the fact is added as new),
    invalidating one needs memory:delete (else nothing is done)."""
    if d.event in (Event.UPDATE, Event.SUPERSEDE) and not scope_grants(scopes, Scope.MEMORY_UPDATE):
        return replace(
            d,
            event=Event.ADD,
            target_id="",
            reason=f"downgraded from {d.event.value} to ADD: the key lacks memory:update"
            + (f" ({d.reason})" if d.reason else ""),
        )
    if d.event is Event.DELETE and not scope_grants(scopes, Scope.MEMORY_DELETE):
        return replace(
            d,
            event=Event.NONE,
            reason="downgraded from DELETE to NONE: the key lacks memory:delete"
            + (f" ({d.reason})" if d.reason else ""),
        )
    return d


def _refused(err: DomainError) -> str:
    return f"not written: {err.message}"
