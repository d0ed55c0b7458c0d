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
from memoryd.domain.tenancy import KeyKind, Principal, Tenant
from memoryd.ratelimit.gcra import Limit, api_key_bucket, org_key_bucket, project_bucket
from memoryd.ratelimit.limiter import RateLimiter
from memoryd.v1 import memory_pb2

_MEMORY = "/memoryd.v1.MemoryService/"
_KNOWLEDGE = "/memoryd.v1.KnowledgeService/"
_MIB = 1024 * 1024

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
        self._projects = projects
        self._key_limit = key_limit
        self._project_limit = project_limit
        self._ceiling = ceiling

    async def admit(
        self, principal: Principal, method: str, cost: int
    ) -> Sequence[tuple[str, str]]:
        if principal.kind is KeyKind.DATA:
            key_limit, project_limit = await self._limits(principal)
            checks = [
                (api_key_bucket(principal.project_id, principal.key_id), key_limit),
                (project_bucket(principal.project_id), project_limit),
            ]
        else:
            checks = [(org_key_bucket(principal.org_id, principal.key_id), self._key_limit)]
        decision = await self._limiter.check(checks, cost)
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
                trailers=trailers,
            )
        return list(trailers.items())

    async def _limits(self, p: Principal) -> tuple[Limit, Limit]:
        project = await self._projects.get_project(p.org_id, p.project_id)
        if project is None:
            return self._key_limit, self._project_limit
        r = project.rate_limits
        key = self._capped(r.key_requests_per_second, r.key_burst, self._key_limit)
        proj = self._capped(r.project_requests_per_second, r.project_burst, self._project_limit)
        return key, proj

    def _capped(self, rate: float, burst: int, default: Limit) -> Limit:
        """The override (0: the default), at most the ceiling."""
        c = self._ceiling
        return Limit(
            min(rate, c.rate_per_s) if rate and c else rate or default.rate_per_s,
            min(burst, c.burst) if burst and c else burst or default.burst,
        )
