"""Webhooks: the values, and the ports behind them.

A webhook belongs to an environment (its `tenant`: organization, project,
environment) and reaches either one end user's events (`tenant.end_user_id`)
or, when it names none, every end user's (`reach`). Its signing secrets are
not part of the `Webhook` value: only the delivery path reads them
(`SigningKeys`, in a `DeliveryClaim`), so a webhook cannot be answered to a
client with its secret by mistake.

`WebhookStore` is implemented by `memoryd.storage.sql` (the control store);
`UrlGuard` and `Sender` by `memoryd.outbound` (the guarded HTTP client).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from memoryd.domain.changes import ChangeEvent, EventType
from memoryd.domain.control import ListPage
from memoryd.domain.memory import Filter
from memoryd.domain.tenancy import Tenant


class WebhookState(enum.Enum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"  # enabled=false by a caller
    DISABLED_BY_FAILURES = "DISABLED_BY_FAILURES"  # by the server, after failed deliveries


@dataclass(frozen=True)
class Webhook:
    """A webhook as stored, without its secrets.

    `event_types` empty: every type. `start_seq`: the change log's position
    when it was created; it receives only later events. `disable_reason`
    is set when the server disabled it (a caller's pause leaves it empty).
    """

    id: str
    tenant: Tenant
    url: str
    event_types: frozenset[EventType]
    filter: Filter
    description: str
    enabled: bool
    create_time: datetime
    update_time: datetime
    created_by: str
    start_seq: int = 0
    disable_reason: str = ""
    disable_time: datetime | None = None
    consecutive_failures: int = 0
    rotate_time: datetime | None = None
    previous_secret_expire_time: datetime | None = None

    @property
    def state(self) -> WebhookState:
        if self.enabled:
            return WebhookState.ACTIVE
        return WebhookState.DISABLED_BY_FAILURES if self.disable_reason else WebhookState.PAUSED

    @property
    def reach(self) -> Tenant:
        """Whose events it receives: its end user's, or (naming none) every
        end user's of its environment."""
        if self.tenant.end_user_id:
            return self.tenant
        return self.tenant.across_end_users()

    def signing_grace(self, now: datetime) -> bool:
        """Whether the previous secret still signs at `now`."""
        expires = self.previous_secret_expire_time
        return expires is not None and now < expires


@dataclass(frozen=True)
class SigningKeys:
    """The secrets that sign a delivery now: the current one, and the
    previous one during a rotation's grace period ("" when none)."""

    current: str
    previous: str = ""

    def __repr__(self) -> str:
        return f"SigningKeys(current=***, previous={'***' if self.previous else ''!r})"


@dataclass(frozen=True)
class IssuedWebhook:
    """A webhook with its new secret: answered once, by create and rotate."""

    webhook: Webhook
    secret: str

    def __repr__(self) -> str:
        return f"IssuedWebhook(webhook={self.webhook!r}, secret=***)"


@dataclass(frozen=True)
class WebhookDraft:
    """What a caller sends: a new webhook, or the new values of the fields
    an update names."""

    url: str = ""
    event_types: frozenset[EventType] = frozenset()
    filter: Filter = field(default_factory=Filter)
    description: str = ""
    enabled: bool = True


class DeliveryState(enum.Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class Attempt:
    """One POST of a delivery: `response_code` 0 when the endpoint did not
    answer; `error` empty for a 2xx. Never holds a secret."""

    time: datetime
    response_code: int
    latency_ms: int
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return 200 <= self.response_code < 300


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook, with its attempts (oldest first)."""

    id: str  # the webhook-id header: the same for every attempt
    webhook_id: str
    tenant: Tenant  # the webhook's
    event_seq: int
    event_type: EventType
    memory_id: str
    event_time: datetime
    state: DeliveryState
    create_time: datetime
    update_time: datetime
    expire_time: datetime  # no retry is made after it
    next_attempt_time: datetime | None = None
    attempts: tuple[Attempt, ...] = ()


@dataclass(frozen=True)
class NewDelivery:
    """A delivery to queue: the event's payload for one webhook."""

    id: str
    webhook_id: str
    tenant: Tenant  # the webhook's
    event_seq: int
    event_type: EventType
    memory_id: str
    event_time: datetime
    payload: str
    create_time: datetime
    expire_time: datetime
    subject_end_user_id: str = ""  # the event's end user (erasure finds it by this)


@dataclass(frozen=True)
class DeliveryClaim:
    """A due delivery leased to one sender until `lease_until`: what it
    POSTs, and with which keys it signs."""

    delivery_id: str
    webhook_id: str
    tenant: Tenant  # the webhook's
    url: str
    payload: str
    keys: SigningKeys
    attempt: int  # this attempt's number, from 1
    expire_time: datetime
    owner: str
    lease_until: datetime


@dataclass(frozen=True)
class Outcome:
    """One attempt of a claimed delivery, and what follows: done
    (SUCCEEDED), a retry at `next_attempt_time` (PENDING), or given up
    (FAILED)."""

    claim: DeliveryClaim
    attempt: Attempt
    state: DeliveryState
    next_attempt_time: datetime | None = None


@dataclass(frozen=True)
class Disabled:
    """A webhook the server just disabled after `failures` failed deliveries."""

    webhook_id: str
    tenant: Tenant
    failures: int
    reason: str


# The fan-out's two callbacks (see `WebhookStore.dispatch`).
ReadEvents = Callable[[int], Awaitable[Sequence[ChangeEvent]]]
Plan = Callable[[Sequence[ChangeEvent], Sequence[Webhook]], Sequence[NewDelivery]]


class WebhookStore(Protocol):
    """Webhooks and their deliveries. Every call a client drives takes the
    caller's `Tenant` and confines itself to it (its environment, and the
    end users it reaches: one, or all); another tenant's webhook or delivery
    is None/False exactly like a missing one. Only the dispatcher and the
    senders (`dispatch`, `claim_deliveries`, `record_attempts`,
    `sweep_deliveries`) work across tenants.

    Raises `Unavailable` when the database cannot be reached."""

    async def create_webhook(self, webhook: Webhook, secret: str) -> None:
        """Stores a new webhook with its signing secret. Raises NotFound when
        its environment no longer exists."""
        ...

    async def get_webhook(self, tenant: Tenant, webhook_id: str) -> Webhook | None: ...

    async def count_webhooks(self, tenant: Tenant) -> int:
        """How many webhooks `tenant`'s environment has (every end user's)."""
        ...

    async def list_webhooks(
        self, tenant: Tenant, limit: int, after: tuple[str, str] | None
    ) -> ListPage[Webhook]:
        """Newest first, strictly after the keyset position `after`."""
        ...

    async def save_webhook(self, tenant: Tenant, webhook: Webhook) -> Webhook | None:
        """Writes the changeable fields of `webhook` (url, event types,
        filter, description, enabled, the disable fields, the failure count,
        update time); None when `tenant` has no such webhook."""
        ...

    async def delete_webhook(self, tenant: Tenant, webhook_id: str) -> bool:
        """Deletes the webhook with its deliveries."""
        ...

    async def rotate_webhook_secret(
        self,
        tenant: Tenant,
        webhook_id: str,
        secret: str,
        previous_expire_time: datetime | None,
        now: datetime,
    ) -> Webhook | None:
        """Makes `secret` the current one; the one it replaces keeps signing
        until `previous_expire_time` (None: it stops at once)."""
        ...

    async def list_deliveries(
        self,
        tenant: Tenant,
        webhook_id: str,
        state: DeliveryState | None,
        limit: int,
        after: tuple[str, str] | None,
    ) -> ListPage[Delivery] | None:
        """The webhook's deliveries with their attempts, newest first; None
        when `tenant` has no such webhook."""
        ...

    async def redeliver(
        self, tenant: Tenant, webhook_id: str, delivery_id: str, now: datetime, expire: datetime
    ) -> Delivery | None:
        """Makes the delivery PENDING and due at `now`, retried until
        `expire`; None when `tenant` has no such webhook or delivery."""
        ...

    async def dispatch(
        self, read: ReadEvents, last: Callable[[], Awaitable[int]], plan: Plan
    ) -> int:
        """One step of the fan-out, in one transaction: locks the
        dispatcher's cursor (on PostgreSQL `SELECT … FOR UPDATE`: one replica
        at a time), reads the events after it (`read(cursor)`), hands them
        and the enabled webhooks of their environments to `plan`, stores the
        deliveries it answers and moves the cursor past the events. With no
        enabled webhook at all, the cursor moves to `last()` without reading.
        A crash before the commit leaves both as they were; a delivery is
        never stored twice for one (webhook, event). Answers how many events
        it passed."""
        ...

    async def claim_deliveries(
        self,
        owner: str,
        now: datetime,
        lease_s: float,
        limit: int,
        skip_webhooks: Sequence[str],
        skip_environments: Sequence[str] = (),
    ) -> list[DeliveryClaim]:
        """Leases up to `limit` due PENDING deliveries of enabled webhooks
        (oldest due first, none of `skip_webhooks` nor of
        `skip_environments`) to `owner`; a delivery
        whose lease ran out is due again. On PostgreSQL `FOR UPDATE SKIP
        LOCKED`: two replicas never take the same one."""
        ...

    async def release_deliveries(self, claims: Sequence[DeliveryClaim]) -> None:
        """Gives claimed deliveries back unattempted (due again at once)."""
        ...

    async def record_attempts(
        self, outcomes: Sequence[Outcome], disable_after: int
    ) -> list[Disabled]:
        """Records each outcome's attempt and moves its delivery to its
        state (PENDING: due again at `next_attempt_time`), in one
        transaction, for the outcomes whose claim still holds the lease
        (the others are dropped: their delivery was taken over). In order
        per webhook: SUCCEEDED resets its failure count, FAILED adds one;
        a webhook that reaches `disable_after` is disabled and answered
        (once: by the call that disabled it)."""
        ...

    async def sweep_deliveries(self, finished_before: datetime, limit: int) -> int:
        """Deletes up to `limit` finished deliveries last changed before
        `finished_before`; answers how many."""
        ...


class UrlGuard(Protocol):
    """Checks a webhook URL before it is stored."""

    async def refusal(self, url: str) -> str:
        """Why the server will not call `url` ("" when it will): not http(s),
        credentials in it, a host that does not resolve, or one that
        resolves to a refused address. Words for the caller, no secrets."""
        ...


@dataclass(frozen=True)
class Response:
    """What an endpoint answered: its status (0: no answer) and, when it
    did not answer 2xx, why, in words without secrets."""

    status: int
    latency_ms: int
    error: str = ""


class Sender(Protocol):
    """POSTs one delivery (the address guard applies at every call)."""

    async def post(self, url: str, body: bytes, headers: Sequence[tuple[str, str]]) -> Response:
        """Never raises for the endpoint's failures: they are a Response."""
        ...
