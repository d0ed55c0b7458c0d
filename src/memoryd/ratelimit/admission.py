"""Admission of authenticated calls: the rate limiter as the call pipeline
sees it (usage metering per call is `memoryd.usage.recorder`).

Data keys are charged against two buckets at once, their own and their
project's; org keys against their own. Limits come from the project's
overrides (`UpdateProject` → `rate_limits`), else the server defaults.
Some methods cost more than one unit (`costs`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from memoryd.domain.control import Project
from memoryd.domain.errors import QuotaViolation, ResourceExhausted
from memoryd.domain.project_cache import Unknown
from memoryd.domain.tenancy import KeyKind, Principal, Tenant
from memoryd.ratelimit.gcra import (
    Decision,
    Limit,
    api_key_bucket,
    org_key_bucket,
    project_bucket,
)
from memoryd.ratelimit.limiter import LocalRateLimiter, RateLimiter
from memoryd.v1 import memory_pb2

_MEMORY = "/memoryd.v1.MemoryService/"
_KNOWLEDGE = "/memoryd.v1.KnowledgeService/"
_MIB = 1024 * 1024
# projects whose limits `RateLimitAdmission` keeps made (cleared when full)
_MAX_KNOWN_LIMITS = 10_000

# One unit of rate limit buys this much work: ten memories written, or 16 KiB
# of their text (embedding time grows with the text), whichever is more.
ITEMS_PER_UNIT = 10
TEXT_BYTES_PER_UNIT = 16 * 1024


def work_cost(items: int, text_bytes: int) -> int:
    """Units for writing `items` memories with `text_bytes` of content in all
    (at least one): every started ten items or 16 KiB of text is a unit."""
    return max(1, -(-items // ITEMS_PER_UNIT), -(-text_bytes // TEXT_BYTES_PER_UNIT))


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _batch_cost(req: Any) -> int:
    return work_cost(len(req.requests), sum(_utf8_len(r.memory.content) for r in req.requests))


def _search_cost(req: Any) -> int:
    # The search itself is 2; a text query is embedded first, unless a
    # vector comes with it or the search is by words alone (and not
    # diversified, which needs the vector), which costs what writing one
    # memory of that text costs.
    embeds = (
        req.query
        and not req.query_embedding
        and (req.mode != memory_pb2.KEYWORD or req.diversity > 0)
    )
    return 2 + (work_cost(1, _utf8_len(req.query)) if embeds else 0)


class ImportMeter:
    """The running cost of an ImportMemories stream, charged as it is read so
    that an import of N memories costs what a batch of the same N costs.

    The call is charged `prepaid` units before its first message (so an
    empty stream is not free); `add` takes each message and answers the units
    now due (often 0)."""

    prepaid = 1

    def __init__(self) -> None:
        self._items = 0
        self._text_bytes = 0
        self._charged = self.prepaid

    def add(self, message: Any) -> int:
        self._items += 1
        self._text_bytes += _utf8_len(message.memory.content)
        due = work_cost(self._items, self._text_bytes) - self._charged
        self._charged += max(due, 0)
        return max(due, 0)


class UploadMeter:
    """The running cost of an UploadDocument stream: one unit per MiB read
    (the first prepaid), so a large file weighs more than a small one; its
    chunks' embeddings run in the ingest job, bounded by the job queue."""

    prepaid = 1

    def __init__(self) -> None:
        self._bytes = 0
        self._charged = self.prepaid

    def add(self, message: Any) -> int:
        self._bytes += len(message.data)
        due = 1 + self._bytes // _MIB - self._charged
        self._charged += max(due, 0)
        return max(due, 0)


def _search_knowledge_cost(req: Any) -> int:
    embeds = req.query and not req.query_embedding
    return 2 + (work_cost(1, _utf8_len(req.query)) if embeds else 0)


# Units of rate limit a call costs, from its request (default 1): the one
# table of costs. A batch pays for its work (`work_cost`), so that batching
# stays the cheap way to write many memories while a 1,000-item batch, or one
# of a few huge texts, still weighs 100 or more.
def _add_messages_cost(req: Any) -> int:
    # what writing the messages as memories costs; with infer, the model's
    # work is bounded by the project's daily token quota, not here
    return work_cost(len(req.messages), sum(_utf8_len(m.content) for m in req.messages))


COSTS: dict[str, Any] = {
    _MEMORY + "BatchCreateMemories": _batch_cost,
    _MEMORY + "AddMessages": _add_messages_cost,
    _MEMORY + "SearchMemories": _search_cost,
    _MEMORY + "ExportMemories": lambda req: 10,
    _MEMORY + "PurgeMemories": lambda req: 5,
    # a stream that lasts: charged once when it starts (reading the log at
    # its own pace costs no writer anything)
    _MEMORY + "WatchMemories": lambda req: 1,
    _KNOWLEDGE + "CreateDocument": lambda req: 1 + _utf8_len(req.text) // _MIB,
    _KNOWLEDGE + "SearchKnowledge": _search_knowledge_cost,
}

# Client streams: a meter per call, charged per message as the stream is read
# (the call is charged the meter's `prepaid` units before it reads anything).
STREAM_COSTS: dict[str, Any] = {
    _MEMORY + "ImportMemories": ImportMeter,
    _KNOWLEDGE + "UploadDocument": UploadMeter,
}


class ProjectReader(Protocol):
    """Reads a project's rate-limit overrides (the call's `CallProjects`)."""

    async def get_project(self, org_id: str, project_id: str) -> Project | None: ...

    def peek(self, org_id: str, project_id: str) -> Project | Unknown | None:
        """The project if it is known without a read, else `Unknown.UNKNOWN`."""
        ...


class RateLimitAdmission:
    def __init__(
        self,
        limiter: RateLimiter,
        projects: ProjectReader,
        *,
        key_limit: Limit,
        project_limit: Limit,
        ceiling: Limit | None = None,
        on_refused: Callable[[Tenant], None] | None = None,
    ) -> None:
        """`ceiling` caps a project's overrides (stored before a ceiling
        existed or was lowered); UpdateProject refuses higher ones.
        `on_refused` sees the environment of each data key's refused call
        (rate-limit alerts; it must be cheap and never raise)."""
        self._on_refused = on_refused
        self._limiter = limiter
        # the in-process limiter never waits: `admit_now` decides with it
        self._local = limiter if isinstance(limiter, LocalRateLimiter) else None
        self._projects = projects
        self._key_limit = key_limit
        self._project_limit = project_limit
        self._ceiling = ceiling
        # (org, project) → (the project read, its limits): a project's
        # overrides are turned into limits once per read of it
        self._limits_of: dict[tuple[str, str], tuple[Project, tuple[Limit, Limit]]] = {}

    async def admit(
        self, principal: Principal, method: str, cost: int
    ) -> Sequence[tuple[str, str]]:
        if principal.kind is KeyKind.DATA:
            project = await self._projects.get_project(principal.org_id, principal.project_id)
            checks = self._data_checks(principal, project)
        else:
            checks = self._org_checks(principal)
        return self._answer(principal, await self._limiter.check(checks, cost))

    def admit_now(
        self, principal: Principal, method: str, cost: int
    ) -> Sequence[tuple[str, str]] | None:
        """`admit` without waiting, when nothing needs to be waited for (the
        in-process limiter, and a data key's project already read); None
        when only `admit` can decide."""
        if self._local is None:
            return None
        if principal.kind is KeyKind.DATA:
            project = self._projects.peek(principal.org_id, principal.project_id)
            if project is Unknown.UNKNOWN:
                return None
            checks = self._data_checks(principal, project)
        else:
            checks = self._org_checks(principal)
        return self._answer(principal, self._local.decide(checks, cost))

    def _org_checks(self, p: Principal) -> list[tuple[str, Limit]]:
        return [(org_key_bucket(p.org_id, p.key_id), self._key_limit)]

    def _data_checks(self, p: Principal, project: Project | None) -> list[tuple[str, Limit]]:
        key_limit, project_limit = self._limits(p, project)
        return [
            (api_key_bucket(p.project_id, p.key_id), key_limit),
            (project_bucket(p.project_id), project_limit),
        ]

    def _answer(self, principal: Principal, decision: Decision) -> Sequence[tuple[str, str]]:
        """The call's trailers, or its refusal."""
        trailers = decision.trailers()
        if not decision.allowed:
            if self._on_refused is not None and principal.kind is KeyKind.DATA:
                self._on_refused(
                    Tenant(principal.org_id, principal.project_id, principal.environment_id)
                )
            raise ResourceExhausted(
                f"rate limit exceeded; retry in {decision.retry_after_s:.3f} s",
                [
                    QuotaViolation(
                        "api_key"
                        if principal.kind is KeyKind.ORG
                        else f"project:{principal.project_id}",
                        f"{decision.limit} requests burst",
                    )
                ],
                retry_after=decision.retry_after_s,
                reason="RATE_LIMITED",
                trailers=dict(trailers),
            )
        return trailers

    def _limits(self, p: Principal, project: Project | None) -> tuple[Limit, Limit]:
        if project is None:
            return self._key_limit, self._project_limit
        key = (p.org_id, p.project_id)
        known = self._limits_of.get(key)
        if known is not None and known[0] is project:
            return known[1]
        r = project.rate_limits
        limits = (
            self._capped(r.key_requests_per_second, r.key_burst, self._key_limit),
            self._capped(r.project_requests_per_second, r.project_burst, self._project_limit),
        )
        if len(self._limits_of) >= _MAX_KNOWN_LIMITS:
            self._limits_of.clear()
        self._limits_of[key] = (project, limits)
        return limits

    def _capped(self, rate: float, burst: int, default: Limit) -> Limit:
        """The override (0: the default), at most the ceiling."""
        c = self._ceiling
        return Limit(
            min(rate, c.rate_per_s) if rate and c else rate or default.rate_per_s,
            min(burst, c.burst) if burst and c else burst or default.burst,
        )
