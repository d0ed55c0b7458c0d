"""WebhookService on a real server, with real endpoints (tests/helpers/
webhook_receiver.py) that check every delivery's signature with the
`standardwebhooks` package: CRUD and its field rules; the secret shown
once and never again (not in List, Get, audit events or the audit file);
memory changes delivered, signed, with their attempts recorded; retries
with backoff; giving up after the maximum age and disabling a webhook
after a run of failed deliveries (audited, shown by GetWebhook); the
rotation's grace period; redelivery; who may manage which webhooks.

Time-dependent rules run on a ManualClock that starts at the real time (a
receiver's signature check refuses timestamps more than 5 minutes off);
waits are bounded polls, never assertions on speed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from helpers.errors import reason_of, refused, violations
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer, RunningServer
from helpers.webhook_receiver import Receiver

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, keys_pb2, memory_pb2, webhooks_pb2
from memoryd.v1.webhooks_pb2 import Webhook, WebhookDelivery

SCOPES = ("memory:*", "webhook:read", "webhook:write", "webhook:delete")
FAST = {
    "outbound_allow_networks": "127.0.0.0/8",
    "webhook_poll_interval_s": 0.05,
    "webhook_retry_base_s": 0.01,
    "webhook_retry_max_s": 0.05,
}


@dataclass
class Env:
    server: RunningServer
    project: admin_pb2.Project
    api: Client  # a data key of the project's production environment with SCOPES

    async def create(self, url: str, client: Client | None = None, **fields: Any) -> Any:
        c = client or self.api
        return await c.webhooks.CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(webhook=Webhook(url=url, **fields)),
            metadata=c.md(),
        )

    async def remember(self, content: str, client: Client | None = None, **fields: Any) -> Any:
        c = client or self.api
        resp = await c.memory.CreateMemory(
            memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content, **fields)),
            metadata=c.md(),
        )
        return resp.memory

    async def deliveries(
        self, webhook_id: str, client: Client | None = None
    ) -> Sequence[WebhookDelivery]:
        c = client or self.api
        resp = await c.webhooks.ListWebhookDeliveries(
            webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id, page_size=1000),
            metadata=c.md(),
        )
        return list(resp.deliveries)

    async def settled(self, webhook_id: str, n: int, within: float = 20.0) -> list[WebhookDelivery]:
        """The webhook's deliveries once `n` of them are no longer PENDING."""
        found: list[WebhookDelivery] = []

        async def done() -> bool:
            nonlocal found
            found = [
                d for d in await self.deliveries(webhook_id) if d.state != WebhookDelivery.PENDING
            ]
            return len(found) >= n

        await wait_for(done, within)
        return found

    async def fanned_out(self) -> None:
        """Returns once the fan-out has passed every event written so far."""
        store = self.server.app.store
        last = await store.last()

        async def passed() -> bool:
            return await store.dispatch_position() >= last

        await wait_for(passed, 20.0)


async def _env(server: RunningServer, scopes: Sequence[str] = SCOPES, name: str = "app") -> Env:
    project = await server.project(name)
    key = await server.data_key(project, tuple(scopes))
    return Env(server, project, server.client(key))


@pytest.fixture
async def env(make_server: MakeServer) -> Env:
    return await _env(await make_server(**FAST))


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


# --- CRUD -------------------------------------------------------------------------------------


async def test_create_get_list_update_delete(env: Env) -> None:
    api = env.api
    flt = memory_pb2.MemoryFilter(
        must=[memory_pb2.Condition(field="agent_id", equals={"string_value": "planner"})]
    )
    made = await env.create(
        "https://93.184.215.14/memoryd?tenant=a",
        event_types=[Webhook.CREATED, Webhook.DELETED],
        filter=flt,
        description="sync the cache",
    )
    assert made.secret.startswith("whsec_") and len(made.secret) > 40
    w = made.webhook
    assert w.id.startswith("whk_")
    assert w.url == "https://93.184.215.14/memoryd?tenant=a"
    assert list(w.event_types) == [Webhook.CREATED, Webhook.DELETED]
    assert w.filter == flt
    assert (w.enabled, w.state) == (True, Webhook.ACTIVE)
    assert w.project_id == env.project.id
    assert w.environment_id == env.project.environments[0].id
    assert w.end_user_id == ""

    got = await api.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(id=w.id), metadata=api.md())
    assert got == w
    listed = await api.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest(), metadata=api.md())
    assert [x.id for x in listed.webhooks] == [w.id]

    update = webhooks_pb2.UpdateWebhookRequest(
        webhook=Webhook(id=w.id, description="new words", event_types=[Webhook.UPDATED]),
        update_mask=_mask("description", "event_types", "filter"),
    )
    changed = await api.webhooks.UpdateWebhook(update, metadata=api.md())
    assert changed.description == "new words"
    assert list(changed.event_types) == [Webhook.UPDATED]
    assert changed.filter == memory_pb2.MemoryFilter()  # cleared: it was in the mask
    assert changed.url == w.url  # not in the mask

    paused = await api.webhooks.UpdateWebhook(
        webhooks_pb2.UpdateWebhookRequest(
            webhook=Webhook(id=w.id, enabled=False), update_mask=_mask("enabled")
        ),
        metadata=api.md(),
    )
    assert (paused.enabled, paused.state) == (False, Webhook.PAUSED)
    assert paused.HasField("disable_time") and paused.disable_reason == ""
    resumed = await api.webhooks.UpdateWebhook(
        webhooks_pb2.UpdateWebhookRequest(
            webhook=Webhook(id=w.id, enabled=True), update_mask=_mask("enabled")
        ),
        metadata=api.md(),
    )
    assert (resumed.enabled, resumed.state) == (True, Webhook.ACTIVE)
    assert not resumed.HasField("disable_time")

    await api.webhooks.DeleteWebhook(webhooks_pb2.DeleteWebhookRequest(id=w.id), metadata=api.md())
    await refused(
        grpc.StatusCode.NOT_FOUND,
        api.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(id=w.id), metadata=api.md()),
    )
    await refused(
        grpc.StatusCode.NOT_FOUND,
        api.webhooks.DeleteWebhook(webhooks_pb2.DeleteWebhookRequest(id=w.id), metadata=api.md()),
    )


async def test_list_pages(env: Env) -> None:
    made = [(await env.create(f"https://93.184.215.14/{i}")).webhook.id for i in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await env.api.webhooks.ListWebhooks(
            webhooks_pb2.ListWebhooksRequest(page_size=2, page_token=token), metadata=env.api.md()
        )
        seen += [w.id for w in page.webhooks]
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(made) and len(seen) == 5


@pytest.mark.parametrize(
    ("webhook", "field", "words"),
    [
        (Webhook(), "webhook.url", "required"),
        (Webhook(url="ftp://example.com/x"), "webhook.url", "http:// or https://"),
        (Webhook(url="https://u:p@example.com/"), "webhook.url", "password"),
        (Webhook(url="https://93.184.215.14/" + "x" * 2100), "webhook.url", "2,048"),
        (Webhook(url="http://10.0.0.1/"), "webhook.url", "private"),
        (Webhook(url="http://169.254.169.254/"), "webhook.url", "metadata"),
        (Webhook(url="https://93.184.215.14", description="x" * 501), "webhook.description", "500"),
        (
            Webhook(url="https://93.184.215.14", description="a\u202eb"),
            "webhook.description",
            "control",
        ),
        (
            Webhook(url="https://93.184.215.14", event_types=[Webhook.EVENT_TYPE_UNSPECIFIED]),
            "webhook.event_types[0]",
            "CREATED",
        ),
        (
            Webhook(
                url="https://93.184.215.14",
                filter=memory_pb2.MemoryFilter(
                    must=[memory_pb2.Condition(field="org_id", equals={"string_value": "o"})]
                ),
            ),
            "webhook.filter.must[0].field",
            "cannot be filtered",
        ),
    ],
)
async def test_bad_fields_are_invalid_argument(
    env: Env, webhook: Webhook, field: str, words: str
) -> None:
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        env.api.webhooks.CreateWebhook(
            webhooks_pb2.CreateWebhookRequest(webhook=webhook), metadata=env.api.md()
        ),
    )
    found = violations(err)
    assert field in found, found
    assert words in found[field]


async def test_bad_updates_and_rotations_are_invalid_argument(env: Env) -> None:
    w = (await env.create("https://93.184.215.14/")).webhook
    api = env.api
    for mask, field in ((_mask(), "update_mask"), (_mask("secret"), "update_mask.paths[0]")):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            api.webhooks.UpdateWebhook(
                webhooks_pb2.UpdateWebhookRequest(webhook=Webhook(id=w.id), update_mask=mask),
                metadata=api.md(),
            ),
        )
        assert field in violations(err)
    err = await refused(
        grpc.StatusCode.INVALID_ARGUMENT,
        api.webhooks.UpdateWebhook(
            webhooks_pb2.UpdateWebhookRequest(
                webhook=Webhook(id=w.id, url="http://127.0.0.1.nip.invalid/"),
                update_mask=_mask("url"),
            ),
            metadata=api.md(),
        ),
    )
    assert "does not resolve" in violations(err)["webhook.url"]
    for grace in (duration_pb2.Duration(seconds=-1), duration_pb2.Duration(seconds=8 * 86400)):
        err = await refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            api.webhooks.RotateWebhookSecret(
                webhooks_pb2.RotateWebhookSecretRequest(id=w.id, grace_period=grace),
                metadata=api.md(),
            ),
        )
        assert "grace_period" in violations(err)


async def test_a_loopback_url_is_refused_without_the_allow_list(make_server: MakeServer) -> None:
    env = await _env(await make_server())
    with Receiver() as hook:
        for url in (hook.url, f"http://localhost:{hook.port}/", f"http://[::1]:{hook.port}/"):
            err = await refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                env.api.webhooks.CreateWebhook(
                    webhooks_pb2.CreateWebhookRequest(webhook=Webhook(url=url)),
                    metadata=env.api.md(),
                ),
            )
            assert "loopback" in violations(err)["webhook.url"]
    assert hook.requests == []


async def test_an_environment_has_at_most_so_many_webhooks(make_server: MakeServer) -> None:
    env = await _env(await make_server(webhook_max_per_environment=2, **FAST))
    for i in range(2):
        await env.create(f"https://93.184.215.14/{i}")
    err = await refused(grpc.StatusCode.RESOURCE_EXHAUSTED, env.create("https://93.184.215.14/3"))
    assert reason_of(err) == "WEBHOOK_LIMIT"


# --- the secret ---------------------------------------------------------------------------------


async def test_the_secret_is_shown_once_and_never_again(
    make_server: MakeServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    env = await _env(await make_server(audit_log=str(audit_file), log_level="DEBUG", **FAST))
    api = env.api
    with Receiver() as hook:
        made = await env.create(hook.url)
        w = made.webhook
        rotated = await api.webhooks.RotateWebhookSecret(
            webhooks_pb2.RotateWebhookSecretRequest(id=w.id), metadata=api.md()
        )
        assert rotated.secret.startswith("whsec_") and rotated.secret != made.secret
        assert rotated.webhook.HasField("previous_secret_expire_time")  # 24 h by default
        await env.remember("a fact")
        await hook.wait_requests(1)
        await env.settled(w.id, 1)
        seen = [
            await api.webhooks.GetWebhook(
                webhooks_pb2.GetWebhookRequest(id=w.id), metadata=api.md()
            ),
            await api.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest(), metadata=api.md()),
            await api.webhooks.ListWebhookDeliveries(
                webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=w.id), metadata=api.md()
            ),
        ]
    audit = await env.server.owner.admin.ListAuditEvents(
        admin_pb2.ListAuditEventsRequest(page_size=1000), metadata=env.server.owner.md()
    )
    actions = {e.action for e in audit.events}
    assert {"webhook.create", "webhook.rotate_secret"} <= actions
    secrets_ = (made.secret, rotated.secret)
    for secret in secrets_:
        bare = secret.removeprefix("whsec_")
        for message in seen:
            assert bare.encode() not in message.SerializeToString()
        assert bare not in str(audit)
        assert bare not in audit_file.read_text()
        assert bare not in caplog.text
    # nor the URL (its query may hold a token)
    assert hook.url not in str(audit) and hook.url not in audit_file.read_text()


# --- deliveries ---------------------------------------------------------------------------------


async def test_memory_changes_are_delivered_signed(env: Env) -> None:
    api = env.api
    with Receiver() as hook:
        made = await env.create(hook.url)
        secret = made.secret
        m = await env.remember("likes green tea", agent_id="planner")
        update = memory_pb2.UpdateMemoryRequest(
            memory=memory_pb2.Memory(id=m.id, content="likes black tea"),
            update_mask=_mask("content"),
        )
        await api.memory.UpdateMemory(update, metadata=api.md())
        await api.memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(id=m.id), metadata=api.md())
        bodies = await hook.wait_verified(secret, 3)
        assert all(r.verifies(secret) for r in hook.requests)
        assert all(r.headers["content-type"] == "application/json" for r in hook.requests)
    by_type = {b["type"]: b for b in bodies}
    assert set(by_type) == {"memory.created", "memory.updated", "memory.deleted"}
    created = by_type["memory.created"]["data"]
    assert created["type"] == "CREATED" and created["memory_id"] == m.id
    assert created["memory"]["content"] == "likes green tea"
    assert created["memory"]["agent_id"] == "planner"
    assert by_type["memory.updated"]["data"]["memory"]["content"] == "likes black tea"
    deleted = by_type["memory.deleted"]["data"]
    assert deleted["memory_id"] == m.id and "memory" not in deleted
    assert "tea" not in json.dumps(deleted)

    settled = await env.settled(made.webhook.id, 3)
    assert {d.state for d in settled} == {WebhookDelivery.SUCCEEDED}
    for d in settled:
        assert d.memory_id == m.id
        [attempt] = d.attempts
        assert attempt.response_code == 200 and attempt.error == ""
    # the webhook-id header is the delivery's id
    assert {r.headers["webhook-id"] for r in hook.requests} == {d.id for d in settled}


async def test_event_types_and_the_filter_choose_what_is_sent(env: Env) -> None:
    api = env.api
    only_planner = memory_pb2.MemoryFilter(
        must=[memory_pb2.Condition(field="agent_id", equals={"string_value": "planner"})]
    )
    with Receiver() as deletes, Receiver() as planner:
        d = await env.create(deletes.url, event_types=[Webhook.DELETED])
        p = await env.create(planner.url, filter=only_planner)
        kept = await env.remember("one", agent_id="planner")
        gone = await env.remember("two", agent_id="writer")
        await api.memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(id=gone.id), metadata=api.md())
        await env.fanned_out()
        [deleted] = await deletes.wait_verified(d.secret, 1)
        [created] = await planner.wait_verified(p.secret, 1)
        await env.settled(d.webhook.id, 1)
        await env.settled(p.webhook.id, 1)
        assert len(deletes.requests) == 1 and len(planner.requests) == 1
    assert deleted["data"]["memory_id"] == gone.id
    assert created["data"]["memory_id"] == kept.id


async def test_a_failing_endpoint_is_retried_with_every_attempt_recorded(env: Env) -> None:
    with Receiver() as hook:
        hook.script(500, 503)
        made = await env.create(hook.url)
        await env.remember("a fact")
        bodies = await hook.wait_verified(made.secret, 3)  # the third answer is 200
        [d] = await env.settled(made.webhook.id, 1)
        ids = {r.headers["webhook-id"] for r in hook.requests}
    assert [b["type"] for b in bodies] == ["memory.created"] * 3
    assert bodies[0] == bodies[1] == bodies[2]
    assert d.state == WebhookDelivery.SUCCEEDED
    assert [a.response_code for a in d.attempts] == [500, 503, 200]
    assert [a.error for a in d.attempts] == ["answered HTTP 500", "answered HTTP 503", ""]
    assert all(a.HasField("time") and a.HasField("latency") for a in d.attempts)
    assert ids == {d.id}  # the same webhook-id on every attempt


async def test_giving_up_and_disabling_after_a_run_of_failed_deliveries(
    make_server: MakeServer,
) -> None:
    clock = ManualClock(datetime.now(UTC))
    server = await make_server(
        clock=clock,
        webhook_max_age_hours=0.01,  # 36 s
        webhook_retry_base_s=1.0,
        webhook_retry_max_s=1.0,
        webhook_disable_after_failures=2,
        outbound_allow_networks="127.0.0.0/8",
        webhook_poll_interval_s=0.05,
    )
    env = await _env(server)
    with Receiver(default=500) as hook:
        made = await env.create(hook.url)
        w = made.webhook
        for i in range(2):
            await env.remember(f"fact {i}")
        # each first attempt failed and is on record: retried within 1 s of the clock

        async def tried_once() -> bool:
            found = await env.deliveries(w.id)
            return len(found) == 2 and all(len(d.attempts) == 1 for d in found)

        await wait_for(tried_once, 20)
        pending = await env.deliveries(w.id)
        assert [d.state for d in pending] == [WebhookDelivery.PENDING] * 2
        assert all(d.HasField("next_attempt_time") for d in pending)
        clock.advance(37)  # past the maximum age: the next failure is the last
        gave_up = await env.settled(w.id, 2)
        assert [d.state for d in gave_up] == [WebhookDelivery.FAILED] * 2
        assert all(len(d.attempts) == 2 for d in gave_up)

        api = env.api
        got = await api.webhooks.GetWebhook(
            webhooks_pb2.GetWebhookRequest(id=w.id), metadata=api.md()
        )
        assert (got.enabled, got.state) == (False, Webhook.DISABLED_BY_FAILURES)
        assert "2 deliveries in a row failed" in got.disable_reason
        assert got.HasField("disable_time") and got.consecutive_failures == 2

        # disabled: new changes are not queued for it
        before = len(hook.requests)
        await env.remember("while disabled")
        await env.fanned_out()
        assert len(await env.deliveries(w.id)) == 2
        assert len(hook.requests) == before

        audit = await server.owner.admin.ListAuditEvents(
            admin_pb2.ListAuditEventsRequest(action="webhook.disabled"), metadata=server.owner.md()
        )
        [event] = audit.events
        assert event.target == w.id and event.actor_key_id == ""
        assert event.environment_id == w.environment_id
        assert event.details["consecutive_failures"] == "2"

        # enabled again: the failures are forgiven, new changes flow
        hook.default = 200
        resumed = await api.webhooks.UpdateWebhook(
            webhooks_pb2.UpdateWebhookRequest(
                webhook=Webhook(id=w.id, enabled=True), update_mask=_mask("enabled")
            ),
            metadata=api.md(),
        )
        assert (resumed.state, resumed.consecutive_failures, resumed.disable_reason) == (
            Webhook.ACTIVE,
            0,
            "",
        )
        await env.remember("after")
        latest = (await hook.wait_requests(before + 1))[-1]
        assert latest.verifies(made.secret)
        assert latest.json["data"]["memory"]["content"] == "after"


async def test_both_secrets_sign_during_the_rotation_grace_then_only_the_new(
    make_server: MakeServer,
) -> None:
    clock = ManualClock(datetime.now(UTC))
    env = await _env(await make_server(clock=clock, **FAST))
    api = env.api
    with Receiver() as hook:
        made = await env.create(hook.url)
        old = made.secret
        rotated = await api.webhooks.RotateWebhookSecret(
            webhooks_pb2.RotateWebhookSecretRequest(
                id=made.webhook.id, grace_period=duration_pb2.Duration(seconds=60)
            ),
            metadata=api.md(),
        )
        new = rotated.secret
        await env.remember("during the grace")
        [during] = await hook.wait_requests(1)
        assert len(during.signatures) == 2
        assert during.verifies(new) and during.verifies(old)

        clock.advance(61)  # within the receivers' 5-minute tolerance
        await env.remember("after the grace")
        after = (await hook.wait_requests(2))[1]
        assert len(after.signatures) == 1
        assert after.verifies(new) and not after.verifies(old)
        got = await api.webhooks.GetWebhook(
            webhooks_pb2.GetWebhookRequest(id=made.webhook.id), metadata=api.md()
        )
        assert got.rotate_time == rotated.webhook.rotate_time

        # no grace at all: the old secret stops at once
        again = await api.webhooks.RotateWebhookSecret(
            webhooks_pb2.RotateWebhookSecretRequest(
                id=made.webhook.id, grace_period=duration_pb2.Duration(seconds=0)
            ),
            metadata=api.md(),
        )
        assert not again.webhook.HasField("previous_secret_expire_time")
        await env.remember("no grace")
        last = (await hook.wait_requests(3))[2]
        assert last.verifies(again.secret) and not last.verifies(new)


async def test_redeliver_sends_the_same_delivery_again(env: Env) -> None:
    api = env.api
    with Receiver() as hook:
        made = await env.create(hook.url)
        w = made.webhook
        await env.remember("a fact")
        [d] = await env.settled(w.id, 1)
        again = await api.webhooks.RedeliverWebhookDelivery(
            webhooks_pb2.RedeliverWebhookDeliveryRequest(webhook_id=w.id, delivery_id=d.id),
            metadata=api.md(),
        )
        assert again.id == d.id and again.state == WebhookDelivery.PENDING
        first, second = await hook.wait_verified(made.secret, 2)
        assert first == second
        assert {r.headers["webhook-id"] for r in hook.requests} == {d.id}

        async def twice() -> bool:
            [x] = await env.deliveries(w.id)
            return x.state == WebhookDelivery.SUCCEEDED and len(x.attempts) == 2

        await wait_for(twice, 20)
        await refused(
            grpc.StatusCode.NOT_FOUND,
            api.webhooks.RedeliverWebhookDelivery(
                webhooks_pb2.RedeliverWebhookDeliveryRequest(webhook_id=w.id, delivery_id="msg_x"),
                metadata=api.md(),
            ),
        )
        await api.webhooks.UpdateWebhook(
            webhooks_pb2.UpdateWebhookRequest(
                webhook=Webhook(id=w.id, enabled=False), update_mask=_mask("enabled")
            ),
            metadata=api.md(),
        )
        err = await refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            api.webhooks.RedeliverWebhookDelivery(
                webhooks_pb2.RedeliverWebhookDeliveryRequest(webhook_id=w.id, delivery_id=d.id),
                metadata=api.md(),
            ),
        )
        assert reason_of(err) == "WEBHOOK_DISABLED"


async def test_list_deliveries_by_state(env: Env) -> None:
    with Receiver() as hook:
        hook.script(500)
        made = await env.create(hook.url)
        await env.remember("x")
        [d] = await env.settled(made.webhook.id, 1)
    api = env.api
    for state, n in ((WebhookDelivery.SUCCEEDED, 1), (WebhookDelivery.FAILED, 0)):
        page = await api.webhooks.ListWebhookDeliveries(
            webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=made.webhook.id, state=state),
            metadata=api.md(),
        )
        assert len(page.deliveries) == n
    assert len(d.attempts) == 2


# --- who may manage which webhooks -----------------------------------------------------------


async def test_scopes(make_server: MakeServer) -> None:
    server = await make_server(**FAST)
    project = await server.project()

    async def client(*scopes: str) -> Client:
        return server.client(await server.data_key(project, scopes))

    url = "https://93.184.215.14/"
    writer = await client("webhook:write", "memory:read", "memory:all_end_users")
    made = await writer.webhooks.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(webhook=Webhook(url=url)), metadata=writer.md()
    )
    cases = [
        (await client("memory:*", "webhook:read"), "webhook:write"),
        (await client("webhook:write", "memory:all_end_users"), "memory:read"),
        (await client("webhook:write", "memory:read"), "memory:all_end_users"),
    ]
    for c, missing in cases:
        err = await refused(
            grpc.StatusCode.PERMISSION_DENIED,
            c.webhooks.CreateWebhook(
                webhooks_pb2.CreateWebhookRequest(webhook=Webhook(url=url)), metadata=c.md()
            ),
        )
        assert reason_of(err) == "SCOPE_MISSING"
        assert f"'{missing}'" in (err.details() or "")
    # with x-end-user-id, memory:all_end_users is not needed
    bound = (await client("webhook:write", "webhook:read", "memory:read")).with_key(
        (await client("webhook:write", "webhook:read", "memory:read")).key, end_user="alice"
    )
    mine = await bound.webhooks.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(webhook=Webhook(url=url)), metadata=bound.md()
    )
    assert mine.webhook.end_user_id == "alice"
    # read without write; delete needs webhook:delete
    reader = await client("webhook:read", "memory:all_end_users")
    await reader.webhooks.GetWebhook(
        webhooks_pb2.GetWebhookRequest(id=made.webhook.id), metadata=reader.md()
    )
    err = await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        writer.webhooks.DeleteWebhook(
            webhooks_pb2.DeleteWebhookRequest(id=made.webhook.id), metadata=writer.md()
        ),
    )
    assert "'webhook:delete'" in (err.details() or "")
    # an org key manages no webhooks
    owner = server.owner
    err = await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        owner.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest(), metadata=owner.md()),
    )
    assert reason_of(err) == "DATA_KEY_REQUIRED"


async def test_webhook_scopes_are_data_key_scopes(server: RunningServer) -> None:
    project = await server.project()
    made = await server.owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            name="hooks",
            project_id=project.id,
            environment_id=project.environments[0].id,
            scopes=["webhook:read", "webhook:write", "webhook:delete"],
        ),
        metadata=server.owner.md(),
    )
    assert sorted(made.api_key.scopes) == ["webhook:delete", "webhook:read", "webhook:write"]


# method → (the scope it needs, a request)
NEEDS: dict[str, tuple[str, Any]] = {
    "CreateWebhook": (
        "webhook:write",
        webhooks_pb2.CreateWebhookRequest(webhook=Webhook(url="https://93.184.215.14/")),
    ),
    "ListWebhooks": ("webhook:read", webhooks_pb2.ListWebhooksRequest()),
    "GetWebhook": ("webhook:read", webhooks_pb2.GetWebhookRequest(id="whk_x")),
    "UpdateWebhook": (
        "webhook:write",
        webhooks_pb2.UpdateWebhookRequest(webhook=Webhook(id="whk_x"), update_mask=_mask("url")),
    ),
    "DeleteWebhook": ("webhook:delete", webhooks_pb2.DeleteWebhookRequest(id="whk_x")),
    "RotateWebhookSecret": ("webhook:write", webhooks_pb2.RotateWebhookSecretRequest(id="whk_x")),
    "ListWebhookDeliveries": (
        "webhook:read",
        webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id="whk_x"),
    ),
    "RedeliverWebhookDelivery": (
        "webhook:write",
        webhooks_pb2.RedeliverWebhookDeliveryRequest(webhook_id="whk_x", delivery_id="msg_x"),
    ),
}


def test_the_scope_table_covers_every_method() -> None:
    service = webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"]
    assert set(NEEDS) == {m.name for m in service.methods}


@pytest.mark.parametrize("method", list(NEEDS))
async def test_each_method_needs_its_scope_and_a_data_key(
    server: RunningServer, method: str
) -> None:
    scope, request = NEEDS[method]
    project = await server.project()
    others = [s for s in ("webhook:read", "webhook:write", "webhook:delete") if s != scope]
    lacking = server.client(await server.data_key(project, ("memory:*", *others)))
    err = await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        getattr(lacking.webhooks, method)(request, metadata=lacking.md()),
    )
    assert reason_of(err) == "SCOPE_MISSING" and f"'{scope}'" in (err.details() or "")
    owner = server.owner  # an org key holding `*`
    err = await refused(
        grpc.StatusCode.PERMISSION_DENIED,
        getattr(owner.webhooks, method)(request, metadata=owner.md()),
    )
    assert reason_of(err) == "DATA_KEY_REQUIRED"


async def test_a_tenants_slow_endpoints_hold_only_their_share_of_the_senders(
    make_server: MakeServer,
) -> None:
    # 4 senders; one environment may hold 2 of them: another tenant's
    # delivery goes out while the slow backlog is still being worked off
    server = await make_server(
        webhook_workers=4, webhook_workers_per_webhook=2, webhook_workers_per_environment=2, **FAST
    )
    slow_env = await _env(server, name="slow")
    other = await _env(server, name="other")
    with Receiver(delay_s=6.0) as slow, Receiver() as fast:
        for _ in range(2):
            await slow_env.create(slow.url)
        made = await other.create(fast.url)
        for i in range(5):
            await slow_env.remember(f"slow {i}")  # 10 deliveries of 6 s, 2 at a time
        await other.remember("fast")
        [body] = await fast.wait_verified(made.secret, 1)
        assert body["data"]["memory"]["content"] == "fast"
        # before any slow one was answered: it did not wait for a sender
        # (the receiver records a request once it answers it)
        assert slow.requests == []
