"""memoryd.client's webhook methods against a real server and a real
endpoint (tests/helpers/webhook_receiver.py, signatures checked with
`standardwebhooks`): create, list, get, update, rotate, deliveries,
redeliver and delete, on the asyncio and the blocking client."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from helpers.polling import wait_for
from helpers.servers import MakeServer, RunningServer
from helpers.webhook_receiver import Receiver

from memoryd.client import AsyncMemorydClient, MemorydClient, MemorydError, where
from memoryd.v1 import webhooks_pb2
from memoryd.v1.webhooks_pb2 import Webhook, WebhookDelivery

SCOPES = ("memory:*", "webhook:read", "webhook:write", "webhook:delete")
FAST = {
    "outbound_allow_networks": "127.0.0.0/8",
    "webhook_poll_interval_s": 0.05,
    "webhook_retry_base_s": 0.01,
    "webhook_retry_max_s": 0.05,
}


async def _key(server: RunningServer) -> str:
    project = await server.project(f"p-{uuid.uuid4().hex[:8]}")
    return await server.data_key(project, SCOPES)


async def test_async_webhook_round_trip(make_server: MakeServer) -> None:
    server = await make_server(**FAST)
    key = await _key(server)
    with Receiver() as hook:
        async with AsyncMemorydClient(server.address, key) as client:
            made = await client.create_webhook(
                hook.url,
                event_types=["created", "QUOTA_REACHED"],
                filter=where({"tags": "ops"}),
                description="cache sync",
            )
            webhook = made.webhook
            assert made.secret.startswith("whsec_")
            assert list(webhook.event_types) == [Webhook.CREATED, Webhook.QUOTA_REACHED]
            assert webhook.description == "cache sync"

            listed = await client.list_webhooks(page_size=10)
            assert [w.id for w in listed.webhooks] == [webhook.id]
            assert (await client.get_webhook(webhook.id)).url == hook.url

            created = await client.create_memory("deploys go through hermes", tags=["ops"])
            await client.create_memory("not sent", tags=["other"])
            [body] = await hook.wait_verified(made.secret, 1)
            assert body["data"]["memory_id"] == created.memory.id

            async def succeeded() -> bool:
                page = await client.list_webhook_deliveries(webhook.id, state="succeeded")
                return len(page.deliveries) == 1

            await wait_for(succeeded, 20.0)
            [delivery] = (await client.list_webhook_deliveries(webhook.id)).deliveries
            again = await client.redeliver_webhook_delivery(webhook.id, delivery.id)
            assert again.id == delivery.id and again.state == WebhookDelivery.PENDING
            await hook.wait_verified(made.secret, 2)

            paused = await client.update_webhook(webhook.id, enabled=False, description="off")
            assert paused.state == Webhook.PAUSED and paused.description == "off"
            assert list(paused.event_types) == list(webhook.event_types)  # not in the mask

            rotated = await client.rotate_webhook_secret(webhook.id, grace_period=0)
            assert rotated.secret != made.secret and rotated.secret.startswith("whsec_")

            await client.delete_webhook(webhook.id)
            with pytest.raises(MemorydError) as err:
                await client.get_webhook(webhook.id)
            assert err.value.code.name == "NOT_FOUND"
            with pytest.raises(ValueError):
                await client.update_webhook(webhook.id)
            with pytest.raises(ValueError):
                await client.create_webhook(hook.url, event_types=["NOT_A_TYPE"])


async def test_sync_webhook_round_trip(make_server: MakeServer) -> None:
    server = await make_server(**FAST)
    key = await _key(server)

    def work(url: str) -> tuple[str, list[int], int, str]:
        # Blocking calls: run off the event loop that serves them.
        with MemorydClient(server.address, key) as client:
            made = client.create_webhook(url, event_types=["DELETED"])
            wid = made.webhook.id
            updated = client.update_webhook(wid, event_types=["CREATED", "DELETED"])
            client.create_memory("the build server is called hermes")
            deliveries = client.list_webhook_deliveries(wid, page_size=5)
            rotated = client.rotate_webhook_secret(wid, grace_period=60.0)
            listed = client.list_webhooks()
            client.delete_webhook(wid)
            try:
                client.get_webhook(wid)
                outcome = "found"
            except MemorydError as e:
                outcome = e.code.name
        assert rotated.webhook.previous_secret_expire_time.seconds > 0
        assert [w.id for w in listed.webhooks] == [wid]
        return made.secret, list(updated.event_types), len(deliveries.deliveries), outcome

    with Receiver() as hook:
        secret, types, _, outcome = await asyncio.to_thread(work, hook.url)
    assert secret.startswith("whsec_")
    assert types == [Webhook.CREATED, Webhook.DELETED]
    assert outcome == "NOT_FOUND"
    assert webhooks_pb2.Webhook.EventType.Name(types[0]) == "CREATED"
