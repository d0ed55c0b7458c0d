"""WebhookService's rules: who may manage which webhooks, what a webhook may
be, and the audit record of every change.

Webhooks belong to the environment of the data key that manages them. A
webhook reaches what reading memories would reach with the same key and
headers: with `x-end-user-id`, that end user's events (and the caller sees
and manages only that end user's webhooks); without it, every end user's
events, which needs `memory:all_end_users`, as reading them would. A
webhook sends memories out: creating or changing one needs `memory:read`
besides `webhook:write`.

Another tenant's webhook, or one of another end user, answers NOT_FOUND
exactly as a missing one. Secrets are answered once (create, rotate) and
never recorded in an audit event; nor is the URL (it may carry a token in
its query).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta

from memoryd.domain import paging
from memoryd.domain.audit import Auditor, PendingEvent
from memoryd.domain.clock import Clock
from memoryd.domain.errors import (
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    Violations,
)
from memoryd.domain.ids import new_webhook_id
from memoryd.domain.keys import shown
from memoryd.domain.memories.filters import validate_filter
from memoryd.domain.tenancy import Caller, KeyKind, Scope, Tenant, scope_grants
from memoryd.domain.text import UNPRINTABLE_RULE, has_unprintable
from memoryd.domain.webhooks.model import (
    Delivery,
    DeliveryState,
    IssuedWebhook,
    UrlGuard,
    Webhook,
    WebhookDraft,
    WebhookStore,
)
from memoryd.domain.webhooks.signing import new_secret

MAX_URL_CHARS = 2048
MAX_DESCRIPTION_CHARS = 500
DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=7)
UPDATABLE = ("url", "event_types", "filter", "description", "enabled")


@dataclass(frozen=True)
class WebhookPage:
    webhooks: list[Webhook]
    next_page_token: str


@dataclass(frozen=True)
class DeliveryPage:
    deliveries: list[Delivery]
    next_page_token: str


class WebhookManager:
    def __init__(
        self,
        store: WebhookStore,
        guard: UrlGuard,
        auditor: Auditor,
        clock: Clock,
        last_event: Callable[[], Awaitable[int]],
        *,
        max_per_environment: int = 25,
        max_age: timedelta = timedelta(hours=24),
    ) -> None:
        """`last_event()` is the change log's newest position: a new webhook
        receives the events after it. `max_age` is how long a redelivery is
        retried."""
        self._store = store
        self._guard = guard
        self._audit = auditor
        self._clock = clock
        self._last_event = last_event
        self._max_per_environment = max_per_environment
        self._max_age = max_age

    # --- policy -------------------------------------------------------------------

    def _tenant(self, caller: Caller, scope: str, *, sends_memories: bool = False) -> Tenant:
        """The webhooks the caller reaches (see the module); PermissionDenied
        for an org key, a missing scope, or no end user without
        memory:all_end_users."""
        p = caller.principal
        if p.kind is not KeyKind.DATA:
            raise PermissionDenied(
                "webhooks belong to an environment: use a data key (ms_live_/ms_test_/ms_dev_) "
                "of that environment, not an org key",
                reason="DATA_KEY_REQUIRED",
            )
        p.require(scope)
        if sends_memories:
            p.require(Scope.MEMORY_READ)
        tenant = p.tenant()
        if tenant.end_user_id:
            return tenant
        if not scope_grants(p.scopes, Scope.MEMORY_ALL_END_USERS):
            raise PermissionDenied(
                "without x-end-user-id a webhook reaches every end user's memories, which "
                "needs the scope 'memory:all_end_users'; or send x-end-user-id to work with "
                "that end user's webhooks",
                reason="SCOPE_MISSING",
            )
        return tenant.across_end_users()

    @asynccontextmanager
    async def _audited(
        self, caller: Caller, action: str, target: str = ""
    ) -> AsyncIterator[PendingEvent]:
        """`Auditor.action` in the caller's environment, with its end user."""
        p = caller.principal
        async with self._audit.action(
            caller, action, target=target, project_id=p.project_id, environment_id=p.environment_id
        ) as ev:
            if p.end_user_id:
                ev.details["end_user_id"] = p.end_user_id
            yield ev

    # --- the methods --------------------------------------------------------------

    async def create(self, caller: Caller, draft: WebhookDraft) -> IssuedWebhook:
        async with self._audited(caller, "webhook.create") as ev:
            tenant = self._tenant(caller, Scope.WEBHOOK_WRITE, sends_memories=True)
            # a new webhook starts enabled (proto3 cannot tell an unset bool)
            await self._check(draft, UPDATABLE)
            await self._check_room(tenant)
            now = self._clock.now()
            p = caller.principal
            webhook = Webhook(
                id=new_webhook_id(),
                tenant=Tenant(p.org_id, p.project_id, p.environment_id, p.end_user_id),
                url=draft.url,
                event_types=draft.event_types,
                filter=draft.filter,
                description=draft.description,
                enabled=True,
                create_time=now,
                update_time=now,
                created_by=p.key_id,
                start_seq=await self._last_event(),
            )
            ev.target = webhook.id
            secret = new_secret()
            await self._store.create_webhook(webhook, secret)
            return IssuedWebhook(webhook, secret)

    async def get(self, caller: Caller, webhook_id: str) -> Webhook:
        tenant = self._tenant(caller, Scope.WEBHOOK_READ)
        return await self._read(tenant, webhook_id)

    async def list(self, caller: Caller, page_size: int, page_token: str) -> WebhookPage:
        tenant = self._tenant(caller, Scope.WEBHOOK_READ)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("webhooks", tenant.key, tenant.end_user_id)
        page = await self._store.list_webhooks(tenant, size, paging.decode_keyset(page_token, fp))
        return WebhookPage(page.items, paging.encode_keyset(fp, page.next_after))

    async def update(
        self, caller: Caller, webhook_id: str, paths: Sequence[str], draft: WebhookDraft
    ) -> Webhook:
        async with self._audited(caller, "webhook.update", webhook_id) as ev:
            tenant = self._tenant(caller, Scope.WEBHOOK_WRITE, sends_memories=True)
            _check_paths(paths)
            await self._check(draft, paths)
            ev.details["fields"] = ",".join(sorted(set(paths)))
            current = await self._read(tenant, webhook_id)
            updated = _changed(current, paths, draft, self._clock)
            saved = await self._store.save_webhook(tenant, updated)
            if saved is None:
                raise _missing(webhook_id)
            return saved

    async def delete(self, caller: Caller, webhook_id: str) -> None:
        async with self._audited(caller, "webhook.delete", webhook_id):
            tenant = self._tenant(caller, Scope.WEBHOOK_DELETE)
            if not await self._store.delete_webhook(tenant, webhook_id):
                raise _missing(webhook_id)

    async def rotate_secret(
        self, caller: Caller, webhook_id: str, grace: timedelta | None
    ) -> IssuedWebhook:
        async with self._audited(caller, "webhook.rotate_secret", webhook_id) as ev:
            tenant = self._tenant(caller, Scope.WEBHOOK_WRITE)
            grace = DEFAULT_GRACE if grace is None else grace
            if grace < timedelta(0) or grace > MAX_GRACE:
                v = Violations()
                v.add("grace_period", f"must be between 0 and {MAX_GRACE.days} days")
                v.raise_if_any()
            ev.details["grace_period_s"] = str(int(grace.total_seconds()))
            now = self._clock.now()
            secret = new_secret()
            webhook = await self._store.rotate_webhook_secret(
                tenant, webhook_id, secret, now + grace if grace else None, now
            )
            if webhook is None:
                raise _missing(webhook_id)
            return IssuedWebhook(webhook, secret)

    async def deliveries(
        self,
        caller: Caller,
        webhook_id: str,
        state: DeliveryState | None,
        page_size: int,
        page_token: str,
    ) -> DeliveryPage:
        tenant = self._tenant(caller, Scope.WEBHOOK_READ)
        size = paging.page_size(page_size)
        fp = paging.fingerprint("deliveries", tenant.key, webhook_id, state.value if state else "")
        page = await self._store.list_deliveries(
            tenant, webhook_id, state, size, paging.decode_keyset(page_token, fp)
        )
        if page is None:
            raise _missing(webhook_id)
        return DeliveryPage(page.items, paging.encode_keyset(fp, page.next_after))

    async def redeliver(self, caller: Caller, webhook_id: str, delivery_id: str) -> Delivery:
        async with self._audited(caller, "webhook.redeliver", webhook_id) as ev:
            ev.details["delivery_id"] = delivery_id
            tenant = self._tenant(caller, Scope.WEBHOOK_WRITE)
            webhook = await self._read(tenant, webhook_id)
            if not webhook.enabled:
                raise FailedPrecondition(
                    f"webhook {shown(webhook_id)} is disabled; enable it (UpdateWebhook, "
                    "enabled: true) before redelivering",
                    reason="WEBHOOK_DISABLED",
                )
            now = self._clock.now()
            delivery = await self._store.redeliver(
                tenant, webhook_id, delivery_id, now, now + self._max_age
            )
            if delivery is None:
                raise NotFound(f"webhook {shown(webhook_id)} has no delivery {shown(delivery_id)}")
            return delivery

    # --- helpers ------------------------------------------------------------------

    async def _read(self, tenant: Tenant, webhook_id: str) -> Webhook:
        webhook = await self._store.get_webhook(tenant, webhook_id)
        if webhook is None:
            raise _missing(webhook_id)
        return webhook

    async def _check(self, draft: WebhookDraft, paths: Sequence[str]) -> None:
        """Raises InvalidArgument for every bad field among `paths`."""
        v = Violations()
        if "url" in paths:
            if not draft.url:
                v.add("webhook.url", "is required: the http or https URL of the endpoint")
            elif len(draft.url) > MAX_URL_CHARS:
                v.add("webhook.url", f"must be at most {MAX_URL_CHARS:,} characters")
            else:
                refusal = await self._guard.refusal(draft.url)
                if refusal:
                    v.add("webhook.url", refusal)
        if "description" in paths:
            if len(draft.description) > MAX_DESCRIPTION_CHARS:
                v.add("webhook.description", f"must be at most {MAX_DESCRIPTION_CHARS} characters")
            elif has_unprintable(draft.description):
                v.add("webhook.description", UNPRINTABLE_RULE)
        v.raise_if_any()
        if "filter" in paths:
            validate_filter(draft.filter, "webhook.filter")

    async def _check_room(self, tenant: Tenant) -> None:
        """ResourceExhausted when the environment has its most webhooks:
        every event is matched against each of them."""
        count = await self._store.count_webhooks(tenant)
        if count >= self._max_per_environment:
            raise ResourceExhausted(
                f"the environment has {count} webhooks, the most it may have; "
                "delete one, or filter events in fewer webhooks",
                [
                    QuotaViolation(
                        f"environment:{tenant.environment_id}",
                        f"max_webhooks_per_environment={self._max_per_environment}",
                    )
                ],
                reason="WEBHOOK_LIMIT",
            )


def _check_paths(paths: Sequence[str]) -> None:
    v = Violations()
    if not paths:
        v.add("update_mask", f"is required: name the fields to change ({', '.join(UPDATABLE)})")
    for i, path in enumerate(paths):
        if path not in UPDATABLE:
            v.add(
                f"update_mask.paths[{i}]",
                f"{shown(path)} cannot be changed; changeable: {', '.join(UPDATABLE)}",
            )
    v.raise_if_any()


def _changed(current: Webhook, paths: Sequence[str], draft: WebhookDraft, clock: Clock) -> Webhook:
    now = clock.now()
    w = replace(current, update_time=now)
    if "url" in paths:
        w = replace(w, url=draft.url)
    if "event_types" in paths:
        w = replace(w, event_types=draft.event_types)
    if "filter" in paths:
        w = replace(w, filter=draft.filter)
    if "description" in paths:
        w = replace(w, description=draft.description)
    if "enabled" in paths and draft.enabled != current.enabled:
        if draft.enabled:  # resumed: the failures behind a disable are forgiven
            w = replace(
                w, enabled=True, disable_reason="", disable_time=None, consecutive_failures=0
            )
        else:
            w = replace(w, enabled=False, disable_reason="", disable_time=now)
    return w


def _missing(webhook_id: str) -> NotFound:
    return NotFound(f"webhook {shown(webhook_id)} not found")
