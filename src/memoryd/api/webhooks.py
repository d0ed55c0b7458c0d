"""WebhookService servicer, and the webhook protobuf ⇄ domain conversions."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from google.protobuf import empty_pb2, struct_pb2

from memoryd.api import convert
from memoryd.api.call import current_caller
from memoryd.api.memory import to_filter
from memoryd.domain.changes import EventType
from memoryd.domain.errors import InvalidArgument, Violations
from memoryd.domain.memory import Condition, Filter, Match, MatchAny, NumberRange, TimeRange
from memoryd.domain.webhooks import (
    Delivery,
    DeliveryState,
    Webhook,
    WebhookDraft,
    WebhookManager,
    WebhookState,
)
from memoryd.v1 import memory_pb2, webhooks_pb2, webhooks_pb2_grpc

_STATE_TO_PB = {
    WebhookState.ACTIVE: webhooks_pb2.Webhook.ACTIVE,
    WebhookState.PAUSED: webhooks_pb2.Webhook.PAUSED,
    WebhookState.DISABLED_BY_FAILURES: webhooks_pb2.Webhook.DISABLED_BY_FAILURES,
}
_DELIVERY_STATE_TO_PB = {
    DeliveryState.PENDING: webhooks_pb2.WebhookDelivery.PENDING,
    DeliveryState.SUCCEEDED: webhooks_pb2.WebhookDelivery.SUCCEEDED,
    DeliveryState.FAILED: webhooks_pb2.WebhookDelivery.FAILED,
}
_DELIVERY_STATE_FROM_PB = {v: k for k, v in _DELIVERY_STATE_TO_PB.items()}
_TYPE_TO_PB: dict[EventType, webhooks_pb2.Webhook.EventType] = {
    t: getattr(webhooks_pb2.Webhook, t.value) for t in EventType
}
_TYPE_FROM_PB = {v: k for k, v in _TYPE_TO_PB.items()}


class WebhookServicer(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, webhooks: WebhookManager) -> None:
        self._w = webhooks

    async def CreateWebhook(
        self, request: webhooks_pb2.CreateWebhookRequest, context: Any
    ) -> webhooks_pb2.CreateWebhookResponse:
        issued = await self._w.create(current_caller(), draft(request.webhook, with_filter=True))
        return webhooks_pb2.CreateWebhookResponse(
            webhook=webhook_pb(issued.webhook), secret=issued.secret
        )

    async def ListWebhooks(
        self, request: webhooks_pb2.ListWebhooksRequest, context: Any
    ) -> webhooks_pb2.ListWebhooksResponse:
        page = await self._w.list(current_caller(), request.page_size, request.page_token)
        return webhooks_pb2.ListWebhooksResponse(
            webhooks=[webhook_pb(w) for w in page.webhooks],
            next_page_token=page.next_page_token,
        )

    async def GetWebhook(
        self, request: webhooks_pb2.GetWebhookRequest, context: Any
    ) -> webhooks_pb2.Webhook:
        return webhook_pb(await self._w.get(current_caller(), request.id))

    async def UpdateWebhook(
        self, request: webhooks_pb2.UpdateWebhookRequest, context: Any
    ) -> webhooks_pb2.Webhook:
        paths = list(request.update_mask.paths)
        changes = draft(request.webhook, with_filter="filter" in paths)
        updated = await self._w.update(current_caller(), request.webhook.id, paths, changes)
        return webhook_pb(updated)

    async def DeleteWebhook(
        self, request: webhooks_pb2.DeleteWebhookRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._w.delete(current_caller(), request.id)
        return empty_pb2.Empty()

    async def RotateWebhookSecret(
        self, request: webhooks_pb2.RotateWebhookSecretRequest, context: Any
    ) -> webhooks_pb2.RotateWebhookSecretResponse:
        grace = (
            convert.from_duration(request.grace_period, "grace_period")
            if request.HasField("grace_period")
            else None
        )
        issued = await self._w.rotate_secret(current_caller(), request.id, grace)
        return webhooks_pb2.RotateWebhookSecretResponse(
            webhook=webhook_pb(issued.webhook), secret=issued.secret
        )

    async def ListWebhookDeliveries(
        self, request: webhooks_pb2.ListWebhookDeliveriesRequest, context: Any
    ) -> webhooks_pb2.ListWebhookDeliveriesResponse:
        state = None
        if request.state:
            state = _DELIVERY_STATE_FROM_PB.get(request.state)
            if state is None:
                raise InvalidArgument.field(
                    "state", "is not a delivery state: PENDING, SUCCEEDED or FAILED"
                )
        page = await self._w.deliveries(
            current_caller(), request.webhook_id, state, request.page_size, request.page_token
        )
        return webhooks_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_pb(d) for d in page.deliveries],
            next_page_token=page.next_page_token,
        )

    async def RedeliverWebhookDelivery(
        self, request: webhooks_pb2.RedeliverWebhookDeliveryRequest, context: Any
    ) -> webhooks_pb2.WebhookDelivery:
        delivery = await self._w.redeliver(
            current_caller(), request.webhook_id, request.delivery_id
        )
        return delivery_pb(delivery)


# --- conversions ------------------------------------------------------------------------


def draft(msg: webhooks_pb2.Webhook, *, with_filter: bool) -> WebhookDraft:
    """The caller's values; InvalidArgument for an event type that is not one."""
    v = Violations()
    types: set[EventType] = set()
    for i, value in enumerate(msg.event_types):
        if value in _TYPE_FROM_PB:
            types.add(_TYPE_FROM_PB[value])
        else:
            v.add(
                f"webhook.event_types[{i}]",
                "must be CREATED, UPDATED, SUPERSEDED, DELETED, EXPIRED, PURGED, "
                "QUOTA_REACHED or RATE_LIMITED",
            )
    v.raise_if_any()
    return WebhookDraft(
        url=msg.url,
        event_types=frozenset(types),
        filter=to_filter(msg.filter, "webhook.filter") if with_filter else Filter(),
        description=msg.description,
        enabled=msg.enabled,
    )


def webhook_pb(w: Webhook) -> webhooks_pb2.Webhook:
    return webhooks_pb2.Webhook(
        id=w.id,
        url=w.url,
        event_types=[_TYPE_TO_PB[t] for t in sorted(w.event_types, key=_TYPE_TO_PB.__getitem__)],
        filter=filter_pb(w.filter),
        description=w.description,
        enabled=w.enabled,
        state=_STATE_TO_PB[w.state],
        disable_reason=w.disable_reason,
        disable_time=convert.ts(w.disable_time),
        consecutive_failures=w.consecutive_failures,
        end_user_id=w.tenant.end_user_id,
        project_id=w.tenant.project_id,
        environment_id=w.tenant.environment_id,
        create_time=convert.ts(w.create_time),
        update_time=convert.ts(w.update_time),
        rotate_time=convert.ts(w.rotate_time),
        previous_secret_expire_time=convert.ts(w.previous_secret_expire_time),
        created_by=w.created_by,
    )


def delivery_pb(d: Delivery) -> webhooks_pb2.WebhookDelivery:
    return webhooks_pb2.WebhookDelivery(
        id=d.id,
        webhook_id=d.webhook_id,
        event_type=_TYPE_TO_PB[d.event_type],
        memory_id=d.memory_id,
        event_time=convert.ts(d.event_time),
        state=_DELIVERY_STATE_TO_PB[d.state],
        attempts=[
            webhooks_pb2.WebhookAttempt(
                time=convert.ts(a.time),
                response_code=a.response_code,
                latency=convert.duration(timedelta(milliseconds=a.latency_ms)),
                error=a.error,
            )
            for a in d.attempts
        ],
        next_attempt_time=convert.ts(d.next_attempt_time),
        create_time=convert.ts(d.create_time),
        update_time=convert.ts(d.update_time),
    )


def filter_pb(flt: Filter) -> memory_pb2.MemoryFilter:
    """Domain filter → proto filter (the inverse of `to_filter`)."""
    return memory_pb2.MemoryFilter(
        must=[_condition_pb(c) for c in flt.must],
        should=[_condition_pb(c) for c in flt.should],
        must_not=[_condition_pb(c) for c in flt.must_not],
    )


def _value(x: str | int | float | bool) -> struct_pb2.Value:
    if isinstance(x, bool):
        return struct_pb2.Value(bool_value=x)
    if isinstance(x, str):
        return struct_pb2.Value(string_value=x)
    return struct_pb2.Value(number_value=float(x))


def _condition_pb(c: Condition) -> memory_pb2.Condition:
    if isinstance(c, Filter):
        return memory_pb2.Condition(filter=filter_pb(c))
    if isinstance(c, Match):
        return memory_pb2.Condition(field=c.field, equals=_value(c.value))
    if isinstance(c, MatchAny):
        return memory_pb2.Condition(
            field=c.field, any_of=struct_pb2.ListValue(values=[_value(x) for x in c.values])
        )
    if isinstance(c, NumberRange):
        return memory_pb2.Condition(
            field=c.field, range=memory_pb2.NumberRange(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte)
        )
    assert isinstance(c, TimeRange)
    return memory_pb2.Condition(
        field=c.field,
        time_range=memory_pb2.TimeRange(start_time=convert.ts(c.start), end_time=convert.ts(c.end)),
    )
