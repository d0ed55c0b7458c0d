"""The values of AddMessages: the request as the domain sees it, what an
operation stores of it, and what its job decided.

The operation's `payload` (JSON) holds the request's parameters; its
messages are stored beside it (`StoredMessage`), the thread's context for
later operations. Its `result` (JSON) holds the plan (the decisions the
extractor made, checkpointed before any is applied, so a re-run after a
crash applies the same ones) and the outcome of each.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, Protocol

from memoryd.domain.conversations.extraction import ChatMessage, Decision, Event, Fact
from memoryd.domain.tenancy import Tenant

KIND = "add_messages"
MAX_MESSAGES = 100
MAX_REQUEST_ID_CHARS = 100
ROLES = ("user", "assistant", "system", "tool")

# Memory ids of an operation's decisions are derived from the operation id
# and the decision's position in the plan: a re-run writes the same ids.
_ID_NAMESPACE = uuid.UUID("6f1d8a52-3c52-4d5e-9a57-0e6b2c1e4a10")


def decision_memory_id(op_id: str, index: int) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"{op_id}/{index}"))


@dataclass(frozen=True)
class AddMessages:
    """An AddMessages request."""

    messages: tuple[ChatMessage, ...]
    agent_id: str = ""
    thread_id: str = ""
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    infer: bool = False
    request_id: str = ""

    def params(self) -> dict[str, Any]:
        """What the operation's payload keeps (the messages are stored apart)."""
        return {
            "agent_id": self.agent_id,
            "source": self.source,
            "metadata": dict(self.metadata),
            "tags": list(self.tags),
            "infer": self.infer,
        }

    def fingerprint(self) -> str:
        """SHA-256 of the request, to tell a retry from another request
        that reuses its request id."""
        body = {
            **self.params(),
            "thread_id": self.thread_id,
            "messages": [
                [m.role, m.content, m.name, m.create_time.isoformat() if m.create_time else ""]
                for m in self.messages
            ],
        }
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Params:
    """The payload of an add_messages operation, read back."""

    agent_id: str
    source: str
    metadata: Mapping[str, Any]
    tags: tuple[str, ...]
    infer: bool

    @staticmethod
    def parse(payload: str) -> Params:
        raw = json.loads(payload)
        return Params(
            agent_id=raw.get("agent_id", ""),
            source=raw.get("source", ""),
            metadata=raw.get("metadata") or {},
            tags=tuple(raw.get("tags") or ()),
            infer=bool(raw.get("infer")),
        )


@dataclass(frozen=True)
class Applied:
    """The outcome of one decision: what was done, to which memory."""

    event: Event
    fact: str
    memory_id: str = ""
    previous_memory_id: str = ""
    reason: str = ""


def plan_json(decisions: Sequence[Decision]) -> list[dict[str, Any]]:
    return [
        {
            "event": d.event.value,
            "fact": d.fact.text,
            "messages": list(d.fact.message_indexes),
            "text": d.text,
            "target": d.target_id,
            "reason": d.reason,
        }
        for d in decisions
    ]


def plan_from_json(raw: Sequence[Mapping[str, Any]]) -> list[Decision]:
    return [
        Decision(
            event=Event(d["event"]),
            fact=Fact(d["fact"], tuple(d.get("messages") or ())),
            text=d.get("text", ""),
            target_id=d.get("target", ""),
            reason=d.get("reason", ""),
        )
        for d in raw
    ]


def result_json(plan: Sequence[Decision], applied: Sequence[Applied] | None) -> str:
    body: dict[str, Any] = {"plan": plan_json(plan)}
    if applied is not None:
        body["decisions"] = [{**asdict(a), "event": a.event.value} for a in applied]
    return json.dumps(body, separators=(",", ":"))


def parse_result(result: str) -> tuple[list[Decision] | None, list[Applied]]:
    """(the checkpointed plan or None, the applied decisions) of a result."""
    if not result:
        return None, []
    raw = json.loads(result)
    plan = plan_from_json(raw["plan"]) if "plan" in raw else None
    applied = [
        Applied(
            event=Event(a["event"]),
            fact=a.get("fact", ""),
            memory_id=a.get("memory_id", ""),
            previous_memory_id=a.get("previous_memory_id", ""),
            reason=a.get("reason", ""),
        )
        for a in raw.get("decisions", ())
    ]
    return plan, applied


class TokenLedger(Protocol):
    """Model tokens per (organization, project, environment, UTC day): what
    GetUsage reports and what the per-project daily quota is checked against."""

    async def add_tokens(
        self, tenant: Tenant, day: date, input_tokens: int, output_tokens: int
    ) -> None: ...

    async def project_tokens(self, org_id: str, project_id: str, day: date) -> int:
        """Input plus output tokens of the project's environments that day."""
        ...
