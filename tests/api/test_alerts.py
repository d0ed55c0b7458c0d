"""Alerts on a real server, delivered to real endpoints (tests/helpers/
webhook_receiver.py) that check each signature with `standardwebhooks`:
80% and 100% of an environment's memory quota are one alert each per
crossing, again after the count fell back below the threshold (by the
re-arm margin); so are 80% and 100% of a project's daily model tokens
(a real scripted OpenAI-compatible server); sustained rate limiting is one alert per episode (a
ManualClock drives the limiter and the episodes); a webhook gets alerts
only when it names their type; another environment's webhook never gets
them; WatchMemories never streams them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from helpers.errors import reason_of
from helpers.openai_server import ScriptedOpenAI
from helpers.polling import wait_for
from helpers.servers import Client, MakeServer, RunningServer
from helpers.webhook_receiver import Receiver
from test_add_messages import add, meta, wait

from memoryd.domain.clock import ManualClock
from memoryd.v1 import admin_pb2, memory_pb2, tenancy_pb2, webhooks_pb2
from memoryd.v1.webhooks_pb2 import Webhook

SCOPES = ("memory:*", "webhook:read", "webhook:write", "webhook:delete")
FAST = {
    "outbound_allow_networks": "127.0.0.0/8",
    "webhook_poll_interval_s": 0.05,
    "webhook_retry_base_s": 0.01,
    "webhook_retry_max_s": 0.05,
}
ALERTS = [Webhook.QUOTA_REACHED, Webhook.RATE_LIMITED]


async def _create(c: Client, url: str, **fields: Any) -> Any:
    return await c.webhooks.CreateWebhook(
        webhooks_pb2.CreateWebhookRequest(webhook=Webhook(url=url, **fields)), metadata=c.md()
    )


async def _update_project(server: RunningServer, project: admin_pb2.Project, **groups: Any) -> None:
    req = admin_pb2.UpdateProjectRequest(project=admin_pb2.Project(id=project.id, **groups))
    req.update_mask.paths.extend(groups)
    await server.owner.admin.UpdateProject(req, metadata=server.owner.md())


async def _write(c: Client, n: int) -> list[str]:
    resp = await c.memory.BatchCreateMemories(
        memory_pb2.BatchCreateMemoriesRequest(
            requests=[
                memory_pb2.CreateMemoryRequest(memory=memory_pb2.Memory(content=f"fact {i}"))
                for i in range(n)
            ]
        ),
        metadata=c.md(),
    )
    return [r.memory.id for r in resp.results]


async def _settled(server: RunningServer) -> None:
    """Returns once the fan-out passed every event in the log now."""
    store = server.app.store
    last = await store.last()

    async def passed() -> bool:
        return await store.dispatch_position() >= last

    await wait_for(passed, 20.0)


def _alerts(bodies: list[Any]) -> list[tuple[str, int]]:
    return [(b["type"], b["data"].get("threshold_percent", 0)) for b in bodies]


async def test_quota_thresholds_alert_once_per_crossing(make_server: MakeServer) -> None:
    server = await make_server(**FAST)
    project = await server.project("app")
    api = server.client(await server.data_key(project, SCOPES))
    other_project = await server.project("other")
    other = server.client(await server.data_key(other_project, SCOPES))
    await _update_project(server, project, quotas=admin_pb2.Quotas(max_memories_per_environment=10))
    with Receiver() as hook, Receiver() as memories_only, Receiver() as elsewhere:
        alerts = await _create(api, hook.url, event_types=ALERTS)
        plain = await _create(api, memories_only.url)
        foreign = await _create(other, elsewhere.url, event_types=ALERTS)

        await _write(api, 7)  # 70%: nothing
        ids = await _write(api, 1)  # 80%
        [first] = await hook.wait_verified(alerts.secret, 1)
        await _write(api, 1)  # 90%: nothing new
        await _write(api, 1)  # 100%
        await hook.wait_verified(alerts.secret, 2)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _write(api, 1)  # over the quota: refused, no new alert
        assert reason_of(refused.value) == "MEMORY_QUOTA_EXCEEDED"

        # fall back to 70% (below 80 - 5): both re-armed; 80% again alerts again
        for memory_id in [*ids, *(await _ids(api))[:2]]:
            await api.memory.DeleteMemory(
                memory_pb2.DeleteMemoryRequest(id=memory_id), metadata=api.md()
            )
        await _write(api, 1)
        bodies = await hook.wait_verified(alerts.secret, 3)
        await _write(api, 1)  # 90%: nothing
        await _write(other, 3)  # another environment's writes alert nothing here
        await _write(api, 1)  # 100% again
        bodies = await hook.wait_verified(alerts.secret, 4)
        await _settled(server)
        assert len(hook.requests) == 4
        assert not elsewhere.requests
        assert all(b["type"].startswith("memory.") for b in memories_only.verified(plain.secret))
        assert len(memories_only.requests) > 10
    assert foreign.webhook.environment_id != alerts.webhook.environment_id
    assert sorted(_alerts(bodies)) == sorted(
        [
            ("alert.quota_reached", 80),
            ("alert.quota_reached", 100),
            ("alert.quota_reached", 80),
            ("alert.quota_reached", 100),
        ]
    )
    data = first["data"]
    assert data["resource"] == "memories"
    assert (data["threshold_percent"], data["used"], data["limit"]) == (80, 8, 10)
    assert data["project_id"] == project.id
    assert data["environment_id"] == project.environments[0].id


async def _ids(c: Client) -> list[str]:
    resp = await c.memory.ListMemories(
        memory_pb2.ListMemoriesRequest(page_size=100), metadata=c.md()
    )
    return [m.id for m in resp.memories]


async def test_sustained_rate_limiting_alerts_once_per_episode(make_server: MakeServer) -> None:
    # the real time to start with: a receiver refuses signatures 5 minutes off
    manual_clock = ManualClock(datetime.now(UTC))
    server = await make_server(
        clock=manual_clock, alert_rate_limited_s=10.0, alert_quiet_s=30.0, **FAST
    )
    project = await server.project("app")
    api = server.client(await server.data_key(project, SCOPES))
    other_project = await server.project("other")
    other = server.client(await server.data_key(other_project, SCOPES))
    with Receiver() as hook, Receiver() as elsewhere:
        alerts = await _create(api, hook.url, event_types=[Webhook.RATE_LIMITED])
        await _create(other, elsewhere.url, event_types=ALERTS)
        # every key of the project: one call per 1,000 s
        await _update_project(
            server,
            project,
            rate_limits=admin_pb2.RateLimits(key_requests_per_second=0.001, key_burst=1),
        )
        limited = server.client(await server.data_key(project, SCOPES))

        async def refused_call() -> None:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await limited.memory.ListMemories(
                    memory_pb2.ListMemoriesRequest(), metadata=limited.md()
                )
            assert reason_of(err.value) == "RATE_LIMITED"

        await limited.memory.ListMemories(memory_pb2.ListMemoriesRequest(), metadata=limited.md())
        await refused_call()  # the episode starts
        manual_clock.advance(5)
        await refused_call()
        assert not hook.requests
        manual_clock.advance(6)
        await refused_call()  # refused for 11 s: the alert
        [first] = await hook.wait_verified(alerts.secret, 1)
        manual_clock.advance(5)
        await refused_call()  # the same episode: nothing new
        manual_clock.advance(31)
        await refused_call()  # after a quiet spell: a new episode
        manual_clock.advance(11)
        await refused_call()
        bodies = await hook.wait_verified(alerts.secret, 2)
        await _settled(server)
        assert len(hook.requests) == 2
        assert not elsewhere.requests
    assert [b["type"] for b in bodies] == ["alert.rate_limited"] * 2
    data = first["data"]
    assert data["resource"] == "rate_limit" and data["refused_for_seconds"] >= 10
    assert data["environment_id"] == project.environments[0].id


async def test_a_watcher_never_sees_alerts(make_server: MakeServer) -> None:
    server = await make_server(**FAST)
    project = await server.project("app")
    api = server.client(await server.data_key(project, SCOPES))
    await _update_project(server, project, quotas=admin_pb2.Quotas(max_memories_per_environment=2))
    stream = api.memory.WatchMemories(memory_pb2.WatchMemoriesRequest(), metadata=api.md())
    seen: list[Any] = []

    async def read() -> None:
        async for event in stream:
            seen.append(event)

    reader = asyncio.create_task(read())
    try:
        with Receiver() as hook:
            made = await _create(api, hook.url, event_types=ALERTS)
            await _write(api, 2)  # 100%: two alerts (80 and 100)
            await hook.wait_verified(made.secret, 2)
            await _write_refused(api)
            [last] = await _write_after_delete(api)
            await wait_for(lambda: _has(seen, last), 20.0)
    finally:
        reader.cancel()
    assert all(
        e.type == memory_pb2.MemoryEvent.CREATED or e.type == memory_pb2.MemoryEvent.DELETED
        for e in seen
    )
    assert len(seen) == 4  # two created, one deleted, one created: no alert


async def _write_refused(c: Client) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await _write(c, 1)


async def _write_after_delete(c: Client) -> list[str]:
    [first, *_] = await _ids(c)
    await c.memory.DeleteMemory(memory_pb2.DeleteMemoryRequest(id=first), metadata=c.md())
    return await _write(c, 1)


async def _has(seen: list[Any], memory_id: str) -> bool:
    return any(e.memory.id == memory_id for e in seen)


async def test_an_alert_type_is_a_valid_event_type(make_server: MakeServer) -> None:
    server = await make_server(**FAST)
    project = await server.project("app")
    api = server.client(await server.data_key(project, SCOPES))
    with Receiver() as hook:
        made = await _create(api, hook.url, event_types=[Webhook.QUOTA_REACHED, Webhook.CREATED])
    got = await api.webhooks.GetWebhook(
        webhooks_pb2.GetWebhookRequest(id=made.webhook.id), metadata=api.md()
    )
    assert list(got.event_types) == [Webhook.CREATED, Webhook.QUOTA_REACHED]


async def test_the_daily_model_token_quota_alerts_at_80_and_100(
    make_server: MakeServer,
) -> None:
    with ScriptedOpenAI() as llm:
        server = await make_server(
            extractor="llm",
            llm_base_url=llm.base_url,
            llm_api_key="sk-test-secret",
            llm_model="test-model",
            llm_timeout_s=5.0,
            llm_max_retries=1,
            job_max_attempts=1,
            **FAST,
        )
        project = await server.project("budget")
        api = server.client(await server.data_key(project, SCOPES))
        # two model calls of 100 + 20 tokens each: 120 (80%), then 240 (past 100%)
        await _update_project(server, project, quotas=admin_pb2.Quotas(llm_tokens_per_day=150))
        with Receiver() as hook:
            made = await _create(api, hook.url, event_types=[Webhook.QUOTA_REACHED])
            done = await wait(api, await add(api, "I like tea", infer=True))
            assert meta(done).llm_input_tokens > 0
            bodies = await hook.wait_verified(made.secret, 2)
            await _settled(server)
            assert len(hook.requests) == 2
    assert sorted(_alerts(bodies)) == [("alert.quota_reached", 80), ("alert.quota_reached", 100)]
    [eighty] = [b["data"] for b in bodies if b["data"]["threshold_percent"] == 80]
    assert eighty["resource"] == "llm_tokens" and eighty["limit"] == 150
    assert eighty["used"] >= 120


async def test_an_alert_reaches_only_its_environments_environment_wide_webhooks(
    make_server: MakeServer,
) -> None:
    server = await make_server(**FAST)
    project = await server.project("p1")
    staging = await server.owner.admin.CreateEnvironment(
        admin_pb2.CreateEnvironmentRequest(
            project_id=project.id,
            environment=admin_pb2.Environment(
                name="staging", kind=tenancy_pb2.ENVIRONMENT_KIND_TEST
            ),
        ),
        metadata=server.owner.md(),
    )
    other_org = await server.new_org("org-b")
    foreign_project = await server.project("pb", client=other_org)
    prod_key = await server.data_key(project, SCOPES)
    api = server.client(prod_key)
    alice = server.client(prod_key, "alice")
    staging_api = server.client(await server.data_key(project, SCOPES, environment_id=staging.id))
    foreign = server.client(await server.data_key(foreign_project, SCOPES, client=other_org))
    await _update_project(server, project, quotas=admin_pb2.Quotas(max_memories_per_environment=5))
    with (
        Receiver() as whole,
        Receiver() as alices,
        Receiver() as staging_hook,
        Receiver() as foreign_hook,
    ):
        made = await _create(api, whole.url, event_types=ALERTS)
        await _create(alice, alices.url, event_types=ALERTS)
        await _create(staging_api, staging_hook.url, event_types=ALERTS)
        await _create(foreign, foreign_hook.url, event_types=ALERTS)
        await _write(alice, 4)  # alice's memories count in the environment: 80%
        await whole.wait_verified(made.secret, 1)
        await _write(staging_api, 3)  # 60% of staging's own quota: nothing
        await _settled(server)
        assert len(whole.requests) == 1
        assert not alices.requests  # an end user's webhook: memory events only
        assert not staging_hook.requests and not foreign_hook.requests
