"""The extractor port: how the messages of a conversation become facts, and
how each fact is decided against the tenant's current memories.

Two steps, as the peers do: `extract` finds candidate facts in the new
messages (with earlier messages of the thread as context); `decide` gets,
for every fact, the most similar current memories *of the same tenant and
end user* (the candidates, fetched by the domain before the extractor sees
them) and answers one `Decision` per fact.

An extractor never sees a memory id outside the candidates it was given,
and its answers are checked against them again by the domain (`checked`):
an id the model made up becomes NONE with the reason said, never a write.

Implementations: `memoryd.extraction.verbatim` (each user message is one
fact, always ADD, no model) and `memoryd.extraction.llm` (an
OpenAI-compatible chat completions endpoint).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from memoryd.domain.errors import DomainError, Unavailable


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation, as the client sent it."""

    role: str
    content: str
    name: str = ""
    create_time: datetime | None = None


@dataclass(frozen=True)
class Fact:
    """A fact found in the new messages, and the indexes (in the new
    messages of the operation) of the messages it came from."""

    text: str
    message_indexes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Candidate:
    """A current memory of the tenant shown to the decision step."""

    id: str
    content: str


class Event(enum.Enum):
    ADD = "ADD"
    UPDATE = "UPDATE"
    SUPERSEDE = "SUPERSEDE"
    DELETE = "DELETE"
    NONE = "NONE"


@dataclass(frozen=True)
class Decision:
    """What to do about one fact.

    ADD: store `text` as a new memory. UPDATE: change memory `target_id`'s
    content to `text` in place. SUPERSEDE: store `text` as a new memory that
    replaces `target_id` (which stops holding). DELETE: `target_id` stops
    holding (contradicted). NONE: nothing. `target_id` is always one of the
    candidates' ids (or "" for ADD and NONE)."""

    event: Event
    fact: Fact
    text: str = ""
    target_id: str = ""
    reason: str = ""


@dataclass
class TokenUsage:
    """Model tokens spent by one operation; extractors add to it as they go
    (also for calls whose answer was then refused)."""

    input_tokens: int = 0
    output_tokens: int = 0

    def add(self, input_tokens: int, output_tokens: int) -> None:
        self.input_tokens += max(0, int(input_tokens))
        self.output_tokens += max(0, int(output_tokens))

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class PromptSet:
    """The prompts an operation uses: the environment's own (text) where it
    has one, else None for the extractor's built-in one, and the version
    label of each as recorded in the operation (`extraction:builtin-1`,
    `decision:3`)."""

    extraction: str | None = None
    decision: str | None = None
    versions: tuple[str, ...] = field(default_factory=tuple)


class ExtractionFailed(DomainError):
    """The model's answers could not be used (malformed after the retries,
    or refused): the operation fails with this message, which carries the
    raw reason (clipped), so nothing is dropped silently."""

    code = "UNKNOWN"  # an error of another system (the model), as gRPC names it
    reason = "EXTRACTION_FAILED"


class ModelUnavailable(Unavailable):
    """The model endpoint did not answer usably (429 past the retries, 5xx,
    timeout, connection refused): the operation is tried again later, up to
    the job's attempt limit."""

    reason = "MODEL_UNAVAILABLE"


class Extractor(Protocol):
    """Finds facts and decides them. Raises `ExtractionFailed` or
    `ModelUnavailable`; adds the tokens of every model call to `usage`."""

    @property
    def name(self) -> str:
        """`verbatim` or `llm`."""
        ...

    @property
    def version(self) -> str:
        """The extractor's version (for `llm`, with the model name)."""
        ...

    @property
    def needs_candidates(self) -> bool:
        """Whether `decide` reads the candidates (the domain skips the
        similarity search when it does not)."""
        ...

    async def extract(
        self,
        messages: Sequence[ChatMessage],
        context: Sequence[ChatMessage],
        prompts: PromptSet,
        usage: TokenUsage,
    ) -> list[Fact]:
        """The facts in `messages` (earlier messages of the thread in
        `context`, oldest first, for reference only)."""
        ...

    async def decide(
        self,
        items: Sequence[tuple[Fact, Sequence[Candidate]]],
        prompts: PromptSet,
        usage: TokenUsage,
    ) -> list[Decision]:
        """One decision per item, in order. A decision naming an id that is
        not among that item's candidates must not be returned as such: it is
        NONE with the reason."""
        ...


def checked(decision: Decision, candidates: Sequence[Candidate]) -> Decision:
    """`decision`, or NONE when it names a memory that was not among
    `candidates` (the second line: extractors check this too), or when an
    event that needs a target has none, or one that writes text has none."""
    needs_target = decision.event in (Event.UPDATE, Event.SUPERSEDE, Event.DELETE)
    needs_text = decision.event in (Event.ADD, Event.UPDATE, Event.SUPERSEDE)
    if needs_target and decision.target_id not in {c.id for c in candidates}:
        return Decision(
            Event.NONE,
            decision.fact,
            reason=(
                f"refused {decision.event.value}: memory {decision.target_id!r} was not among "
                "the candidates shown"
            ),
        )
    if needs_text and not decision.text.strip():
        return Decision(
            Event.NONE, decision.fact, reason=f"refused {decision.event.value}: no text given"
        )
    return decision
