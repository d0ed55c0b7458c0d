"""Webhook deliveries survive kill -9, with the installed `memoryd serve`:

- a delivery pending when the server is killed (its endpoint answered 500,
  a retry is due) is delivered by the restarted server on the same data
  directory, with the attempts before the kill still on record;
- a change acknowledged but not yet fanned out to the webhooks when the
  server is killed is delivered after the restart.

The endpoint is a real HTTP server checking signatures with the
`standardwebhooks` package. Waits are bounded polls.
"""

from __future__ import annotations

from pathlib import Path

from helpers.polling import wait_for
from helpers.served import Served
from helpers.webhook_receiver import Receiver

from memoryd.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    memory_pb2,
    memory_pb2_grpc,
    webhooks_pb2,
    webhooks_pb2_grpc,
)
from memoryd.v1.webhooks_pb2 import WebhookDelivery

WITHIN_S = 60.0
OPTIONS = (
    "--outbound-allow-networks",
    "127.0.0.0/8",
    "--webhook-retry-base-s",
    "0.2",
    "--webhook-retry-max-s",
    "0.5",
)


class Api:
    def __init__(self, served: Served, key: str) -> None:
        assert served.channel is not None
        self.md: tuple[tuple[str, str], ...] = (("x-api-key", key),)
        self.memory = memory_pb2_grpc.MemoryServiceStub(served.channel)
        self.keys = keys_pb2_grpc.KeyServiceStub(served.channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(served.channel)
        self.webhooks = webhooks_pb2_grpc.WebhookServiceStub(served.channel)


async def _data_key(served: Served) -> str:
    owner_key = served.owner_key()
    assert owner_key
    owner = Api(served, owner_key)
    project = await owner.admin.CreateProject(
        admin_pb2.CreateProjectRequest(project=admin_pb2.Project(name="app")), metadata=owner.md
    )
    made = await owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            project_id=project.id,
            environment_id=project.environments[0].id,
            name="runtime",
            scopes=["memory:*", "webhook:read", "webhook:write"],
        ),
        metadata=owner.md,
    )
    return made.secret


async def _deliveries(api: Api, webhook_id: str) -> list[WebhookDelivery]:
    resp = await api.webhooks.ListWebhookDeliveries(
        webhooks_pb2.ListWebhookDeliveriesRequest(webhook_id=webhook_id), metadata=api.md
    )
    return list(resp.deliveries)


async def _delivered_after_restart(
    tmp_path: Path, first_options: tuple[str, ...], wait_attempt: bool
) -> None:
    data = tmp_path / "data"
    with Receiver(default=500) as hook:
        first = Served(data, tmp_path, 0, *OPTIONS, *first_options)
        try:
            key = await _data_key(first)
            api = Api(first, key)
            made = await api.webhooks.CreateWebhook(
                webhooks_pb2.CreateWebhookRequest(webhook=webhooks_pb2.Webhook(url=hook.url)),
                metadata=api.md,
            )
            memory = await api.memory.CreateMemory(
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content="survives")),
                metadata=api.md,
            )
            if wait_attempt:  # until a failed attempt is on record: a retry is due

                async def tried() -> bool:
                    found = await _deliveries(api, made.webhook.id)
                    return bool(found) and len(found[0].attempts) >= 1

                await wait_for(tried, WITHIN_S)
        finally:
            first.kill()  # SIGKILL: no shutdown
        tried_before = len(hook.requests)
        hook.default = 200  # the endpoint is back

        second = Served(data, tmp_path, 1, *OPTIONS, "--webhook-poll-interval-s", "0.1")
        try:
            api = Api(second, key)
            webhook_id = made.webhook.id

            async def succeeded() -> bool:
                return [d.state for d in await _deliveries(api, webhook_id)] == [
                    WebhookDelivery.SUCCEEDED
                ]

            await wait_for(succeeded, WITHIN_S)
            [d] = await _deliveries(api, webhook_id)
            assert d.memory_id == memory.memory.id
            assert d.attempts[-1].response_code == 200
            assert [a.response_code for a in d.attempts[:-1]] == [500] * (len(d.attempts) - 1)
            if wait_attempt:
                assert len(d.attempts) >= 2  # the attempts before the kill are kept
            else:
                assert tried_before == 0, "the first server fanned out before the kill"
                assert len(d.attempts) == 1
            bodies = hook.verified(made.secret)
            assert len(bodies) == len(hook.requests)  # every request signed with the secret
            assert {b["data"]["memory_id"] for b in bodies} == {memory.memory.id}
            assert bodies[-1]["data"]["memory"]["content"] == "survives"
        finally:
            second.kill()


async def test_a_pending_delivery_is_delivered_after_kill_9(tmp_path: Path) -> None:
    await _delivered_after_restart(
        tmp_path, ("--webhook-poll-interval-s", "0.1"), wait_attempt=True
    )


async def test_a_change_not_yet_fanned_out_is_delivered_after_kill_9(tmp_path: Path) -> None:
    # the first server looks at the change log once at start (before the
    # webhook exists), then not for ten minutes: the write is in the log,
    # no delivery exists yet when it is killed
    await _delivered_after_restart(
        tmp_path, ("--webhook-poll-interval-s", "600"), wait_attempt=False
    )


async def test_two_servers_on_one_postgresql_deliver_every_change_once(
    tmp_path: Path, pg_url: str
) -> None:
    # replicas of one deployment share the key-encryption key file
    common = (
        *OPTIONS,
        "--database-url",
        pg_url,
        "--webhook-poll-interval-s",
        "0.1",
        "--kek-file",
        str(tmp_path / "kek.key"),
    )
    with Receiver() as hook:
        a = Served(tmp_path / "a", tmp_path, 0, *common)
        b = Served(tmp_path / "b", tmp_path, 1, *common, "--bootstrap", "false")
        try:
            key = await _data_key(a)
            apis = [Api(a, key), Api(b, key)]
            made = await apis[1].webhooks.CreateWebhook(
                webhooks_pb2.CreateWebhookRequest(webhook=webhooks_pb2.Webhook(url=hook.url)),
                metadata=apis[1].md,
            )
            written = []
            for i in range(30):
                api = apis[i % 2]
                resp = await api.memory.CreateMemory(
                    memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=f"fact {i}")),
                    metadata=api.md,
                )
                written.append(resp.memory.id)
            bodies = await hook.wait_verified(made.secret, 30, within=WITHIN_S)

            async def settled() -> bool:
                found = await _deliveries(apis[0], made.webhook.id)
                return len(found) == 30 and all(d.state == WebhookDelivery.SUCCEEDED for d in found)

            await wait_for(settled, WITHIN_S)
            # both fan-outs and both sets of senders ran on one queue: each
            # change went out once
            assert sorted(b["data"]["memory_id"] for b in bodies) == sorted(written)
            assert len(hook.requests) == 30
            assert len({r.headers["webhook-id"] for r in hook.requests}) == 30
        finally:
            a.kill()
            b.kill()
