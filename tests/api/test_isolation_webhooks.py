"""Tenant isolation of WebhookService and of webhook deliveries.

The world: organization A with projects P1 (environments `production` and
`staging`) and P2; organization B with one project. Each seat is a data key
(webhook scopes and `memory:*`) of one environment, some with an
`x-end-user-id`. Seat `a` (P1 production, no end user) owns an
environment-wide webhook, seat `alice` (P1 production, end user alice) a
webhook bound to alice.

- Every other seat finds neither webhook by any method: NOT_FOUND exactly
  as for an id that never existed, and an empty list; the webhooks stay as
  they were.
- Events: every seat writes one memory; the environment-wide webhook gets
  exactly the events of P1 production (every end user's), alice's webhook
  exactly alice's; nothing of another environment, project or organization.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from helpers.errors import raised
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer, RunningServer
from helpers.webhook_receiver import Receiver

from memoryd.v1 import admin_pb2, memory_pb2, tenancy_pb2, webhooks_pb2
from memoryd.v1.webhooks_pb2 import Webhook, WebhookDelivery

SCOPES = ("memory:*", "webhook:read", "webhook:write", "webhook:delete")
SETTINGS = {
    "outbound_allow_networks": "127.0.0.0/8",
    "webhook_poll_interval_s": 0.05,
    "key_requests_per_second": 1e6,
    "key_burst": 1_000_000,
    "project_requests_per_second": 1e6,
    "project_burst": 1_000_000,
}


@dataclass
class World:
    server: RunningServer
    seats: dict[str, Client]
    whole: webhooks_pb2.CreateWebhookResponse
    alice: webhooks_pb2.CreateWebhookResponse
    delivery_id: str  # a delivery of the environment-wide webhook
    alice_delivery_id: str


async def _key(
    server: RunningServer, owner: Client, project: admin_pb2.Project, env_id: str
) -> str:
    return await server.data_key(project, SCOPES, client=owner, environment_id=env_id)


async def _world(server: RunningServer, whole_hook: Receiver, alice_hook: Receiver) -> World:
    a = server.owner
    p1 = await server.project("p1")
    staging = await a.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=p1.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=a.md(),
    )
    p2 = await server.project("p2")
    b = await server.new_org("org-b")
    pb = await server.project("pb", client=b)
    prod = p1.environments[0].id
    a_key = await _key(server, a, p1, prod)
    seats = {
        "a": server.client(a_key),
        "alice": server.client(a_key, end_user="alice"),
        "bob": server.client(a_key, end_user="bob"),
        "staging": server.client(await _key(server, a, p1, staging.id)),
        "p2": server.client(await _key(server, a, p2, p2.environments[0].id)),
        "org-b": server.client(await _key(server, b, pb, pb.environments[0].id)),
        "org-b-alice": server.client(
            await _key(server, b, pb, pb.environments[0].id), end_user="alice"
        ),
    }
    whole = await _create(seats["a"], whole_hook.url)
    alice = await _create(seats["alice"], alice_hook.url)
    # one delivery each, to have delivery ids to try
    await _remember(seats["alice"], "first")
    await whole_hook.wait_requests(1)
    await alice_hook.wait_requests(1)
    return World(
        server,
        seats,
        whole,
        alice,
        whole_hook.requests[0].headers["webhook-id"],
        alice_hook.requests[0].headers["webhook-id"],
    )


async def _create(c: Client, url: str) -> webhooks_pb2.CreateWebhookResponse:
    return await c.webhooks.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(webhook=Webhook(url=url)), metadata=c.md()
    )


async def _remember(c: Client, content: str) -> memory_pb2.Memory:
    resp = await c.memory.CreateMemory(
        memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=content)), metadata=c.md()
    )
    return resp.memory


Method = Callable[[Client, str, str], Awaitable[Any]]


def _methods() -> dict[str, Method]:
    def get(c: Client, w: str, d: str) -> Awaitable[Any]:
        return c.webhooks.GetWebhook(webhooks_pb2.GetWebhookRequest(id=w), metadata=c.md())

    def update(c: Client, w: str, d: str) -> Awaitable[Any]:
        return c.webhooks.UpdateWebhook(
            webhooks_pb2.UpdateWebhookRequest(
                webhook=Webhook(id=w, description="pwned"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=c.md(),
        )

    def delete(c: Client, w: str, d: str) -> Awaitable[Any]:
        return c.webhooks.DeleteWebhook(webhooks_pb2.DeleteWebhookRequest(id=w), metadata=c.md())

    def rotate(c: Client, w: str, d: str) -> Awaitable[Any]:
        return c.webhooks.RotateWebhookSecret(
            webhooks_pb2.RotateWebhookSecretRequest(id=w), metadata=c.md()
        )

    def deliveries(c: Client, w: str, d: str) -> Awaitable[Any]:
        return c.webhooks.ListWebhookDeliveries(
            webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=w), metadata=c.md()
        )

    def redeliver(c: Client, w: str, d: str) -> Awaitable[Any]:
        return c.webhooks.RedeliverWebhookDelivery(
            webhooks_pb2.RedeliverWebhookDeliveryRequest(webhook_id=w, delivery_id=d),
            metadata=c.md(),
        )

    return {
        "GetWebhook": get,
        "UpdateWebhook": update,
        "DeleteWebhook": delete,
        "RotateWebhookSecret": rotate,
        "ListWebhookDeliveries": deliveries,
        "RedeliverWebhookDelivery": redeliver,
    }


METHODS = _methods()
# who may not see which webhook
OUTSIDERS = {
    "whole": ("alice", "bob", "staging", "p2", "org-b", "org-b-alice"),
    "alice": ("bob", "staging", "p2", "org-b", "org-b-alice"),
}


def test_the_matrix_covers_every_method_but_create_and_list() -> None:
    names = {m.name for m in webhooks_pb2.DESCRIPTOR.services_by_name["WebhookService"].methods}
    assert set(METHODS) == names - {"CreateWebhook", "ListWebhooks"}


@pytest.mark.parametrize("method", list(METHODS))
async def test_another_tenants_webhook_is_not_found_by_every_method(
    make_server: MakeServer, method: str
) -> None:
    server = await make_server(**SETTINGS)
    with Receiver() as whole_hook, Receiver() as alice_hook:
        world = await _world(server, whole_hook, alice_hook)
        call = METHODS[method]
        targets = {
            "whole": (world.whole.webhook.id, world.delivery_id),
            "alice": (world.alice.webhook.id, world.alice_delivery_id),
        }
        for which, (webhook_id, delivery_id) in targets.items():
            for seat in OUTSIDERS[which]:
                c = world.seats[seat]
                err = await raised(call(c, webhook_id, delivery_id))
                missing = await raised(call(c, "whk_doesnotexist000000", delivery_id))
                assert err.code() == grpc.StatusCode.NOT_FOUND, (seat, which, err.details())
                assert missing.code() == grpc.StatusCode.NOT_FOUND
                # indistinguishable from an id that never existed
                assert (err.details() or "").replace(webhook_id, "X") == (
                    missing.details() or ""
                ).replace("whk_doesnotexist000000", "X"), (seat, which)
        # the owners still see theirs, untouched
        a, alice = world.seats["a"], world.seats["alice"]
        for owner, made in ((a, world.whole), (alice, world.alice)):
            got = await owner.webhooks.GetWebhook(
                webhooks_pb2.GetWebhookRequest(id=made.webhook.id), metadata=owner.md()
            )
            assert got == made.webhook


async def test_lists_show_only_the_callers_webhooks(make_server: MakeServer) -> None:
    server = await make_server(**SETTINGS)
    with Receiver() as whole_hook, Receiver() as alice_hook:
        world = await _world(server, whole_hook, alice_hook)
    expected = {
        "a": {world.whole.webhook.id, world.alice.webhook.id},  # every end user's
        "alice": {world.alice.webhook.id},
        "bob": set(),
        "staging": set(),
        "p2": set(),
        "org-b": set(),
        "org-b-alice": set(),
    }
    for seat, ids in expected.items():
        c = world.seats[seat]
        page = await c.webhooks.ListWebhooks(webhooks_pb2.ListWebhooksRequest(), metadata=c.md())
        assert {w.id for w in page.webhooks} == ids, seat


async def test_events_reach_only_the_webhooks_of_their_environment_and_end_user(
    make_server: MakeServer,
) -> None:
    server = await make_server(**SETTINGS)
    with Receiver() as whole_hook, Receiver() as alice_hook, Receiver() as b_hook:
        world = await _world(server, whole_hook, alice_hook)
        b = await _create(world.seats["org-b"], b_hook.url)
        written: dict[str, str] = {}
        for seat, c in world.seats.items():
            written[seat] = (await _remember(c, f"note of {seat}")).id
        store = server.app.store
        last = await store.last()

        async def fanned_out() -> bool:
            return await store.dispatch_position() >= last

        await wait_for(fanned_out, 20)

        async def settled(c: Client, webhook_id: str, n: int) -> None:
            async def done() -> bool:
                page = await c.webhooks.ListWebhookDeliveries(
                    webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id),
                    metadata=c.md(),
                )
                states = [d.state for d in page.deliveries]
                return len(states) == n and WebhookDelivery.PENDING not in states

            await wait_for(done, 20)

        await settled(world.seats["a"], world.whole.webhook.id, 4)  # first + a, alice, bob
        await settled(world.seats["alice"], world.alice.webhook.id, 2)  # first + alice
        await settled(world.seats["org-b"], b.webhook.id, 2)  # org-b, org-b-alice

        def got(hook: Receiver, secret: str) -> set[str]:
            return {body["data"]["memory_id"] for body in hook.verified(secret)}

        first_id = whole_hook.requests[0].json["data"]["memory_id"]
        assert got(whole_hook, world.whole.secret) == {
            first_id,
            written["a"],
            written["alice"],
            written["bob"],
        }
        assert got(alice_hook, world.alice.secret) == {first_id, written["alice"]}
        assert got(b_hook, b.secret) == {written["org-b"], written["org-b-alice"]}
        # every request verified: nothing unsigned or signed otherwise arrived
        assert len(whole_hook.requests) == 4
        assert len(alice_hook.requests) == 2
        assert len(b_hook.requests) == 2
