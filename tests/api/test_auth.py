"""Authentication as a client sees it: every bad key is UNAUTHENTICATED with a
message that says what to do and never repeats the secret; guessing costs
the server no hash per request and is cut off."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers.errors import error_info, has_detail, reason_of, refused
from helpers.keys import secret_of
from helpers.servers import Client, RunningServer

from memoryd.app import build_app
from memoryd.auth.hashing import Argon2Hasher
from memoryd.config import Settings
from memoryd.domain.clock import ManualClock
from memoryd.domain.key_format import format_key, new_key_id, new_secret
from memoryd.v1 import admin_pb2, keys_pb2


class CountingHasher(Argon2Hasher):
    """The server's hasher, counting slow verifications."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost_kib=1024)
        self.verifies = 0

    async def verify(self, secret: str, hashed: str) -> bool:
        self.verifies += 1
        return await super().verify(secret, hashed)


async def whoami(client: Client, metadata: Any = None) -> keys_pb2.WhoAmIResponse:
    return await client.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=metadata or client.md())


async def _key(server: RunningServer, **fields: Any) -> keys_pb2.CreateApiKeyResponse:
    project = await server.project(f"p{new_key_id()[:6]}")
    return await server.owner.keys.CreateApiKey(
        keys_pb2.CreateApiKeyRequest(
            name="k", project_id=project.id, environment_id=project.environments[0].id, **fields
        ),
        metadata=server.owner.md(),
    )


# --- every kind of bad key ---------------------------------------------------------------


async def test_every_bad_key_is_unauthenticated_with_a_helpful_message(
    make_server: Any, manual_clock: ManualClock
) -> None:
    server: RunningServer = await make_server(clock=manual_clock)
    good = await _key(server)
    revoked = await _key(server)
    await server.owner.keys.RevokeApiKey(
        keys_pb2.RevokeApiKeyRequest(id=revoked.api_key.id), metadata=server.owner.md()
    )
    expire = timestamp_pb2.Timestamp()
    expire.FromDatetime(manual_clock.now() + timedelta(seconds=5))
    expiring = await _key(server, expire_time=expire)
    manual_clock.advance(6)
    body = good.secret.split("_", 2)[2]
    wrong_secret = format_key("live", good.api_key.id, new_secret())
    cases = {
        "malformed": ("ms_live_" + body[:-3], "API_KEY_MALFORMED", "malformed"),
        "foreign prefix": ("sk-" + body, "API_KEY_MALFORMED", "ms_live_"),
        "checksum": (
            good.secret[:-1] + ("A" if good.secret[-1] != "A" else "B"),
            "API_KEY_CHECKSUM",
            "checksum",
        ),
        "unknown": (format_key("live", new_key_id(), new_secret()), "API_KEY_INVALID", "unknown"),
        "wrong secret": (wrong_secret, "API_KEY_INVALID", "unknown"),
        "revoked": (revoked.secret, "API_KEY_REVOKED", "revoked"),
        "expired": (expiring.secret, "API_KEY_EXPIRED", "expired"),
    }
    # the right secret under another prefix (valid checksum, so it reaches the store)
    wrong_kind = format_key("test", good.api_key.id, secret_of(good.secret))
    cases["wrong kind"] = (wrong_kind, "API_KEY_INVALID", "unknown")

    for name, (raw, reason, word) in cases.items():
        err = await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(server.client(raw)))
        details = err.details() or ""
        assert word in details, (name, details)
        assert "key" in details.lower()
        assert error_info(err).reason == reason, name
        assert error_info(err).domain == "memoryd"
        for secret in (raw, secret_of(raw), good.secret, secret_of(good.secret)):
            assert secret not in details, name
            assert secret not in str(err.trailing_metadata()), name
    await whoami(server.client(good.secret))  # the good key still works


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("x-api-key", ""),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer"),),
    ],
    ids=["none", "empty", "basic", "bearer-without-token"],
)
async def test_a_missing_key_says_where_to_put_one(server: RunningServer, metadata: Any) -> None:
    err = await refused(
        grpc.StatusCode.UNAUTHENTICATED,
        server.owner.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=metadata or None),
    )
    assert "x-api-key" in (err.details() or "")
    assert error_info(err).reason == "API_KEY_MISSING"


def _all_methods(client: Client) -> list[Any]:
    k, a, md = client.keys, client.admin, client.md()
    return [
        k.CreateApiKey(keys_pb2.CreateApiKeyRequest(name="x"), metadata=md),
        k.ListApiKeys(keys_pb2.ListApiKeysRequest(), metadata=md),
        k.GetApiKey(keys_pb2.GetApiKeyRequest(id="x"), metadata=md),
        k.RevokeApiKey(keys_pb2.RevokeApiKeyRequest(id="x"), metadata=md),
        k.RotateApiKey(keys_pb2.RotateApiKeyRequest(id="x"), metadata=md),
        k.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=md),
        a.CreateProject(admin_pb2.CreateProjectRequest(), metadata=md),
        a.GetProject(admin_pb2.GetProjectRequest(id="x"), metadata=md),
        a.ListProjects(admin_pb2.ListProjectsRequest(), metadata=md),
        a.UpdateProject(admin_pb2.UpdateProjectRequest(), metadata=md),
        a.DeleteProject(admin_pb2.DeleteProjectRequest(id="x"), metadata=md),
        a.CreateEnvironment(admin_pb2.CreateEnvironmentRequest(), metadata=md),
        a.ListEnvironments(admin_pb2.ListEnvironmentsRequest(), metadata=md),
        a.DeleteEnvironment(admin_pb2.DeleteEnvironmentRequest(id="x"), metadata=md),
        a.GetUsage(admin_pb2.GetUsageRequest(), metadata=md),
        a.ListAuditEvents(admin_pb2.ListAuditEventsRequest(), metadata=md),
        a.CreatePrompt(admin_pb2.CreatePromptRequest(), metadata=md),
        a.GetPrompt(admin_pb2.GetPromptRequest(), metadata=md),
        a.ListPrompts(admin_pb2.ListPromptsRequest(), metadata=md),
        a.UpdatePrompt(admin_pb2.UpdatePromptRequest(), metadata=md),
        a.DeletePrompt(admin_pb2.DeletePromptRequest(), metadata=md),
    ]


async def test_every_method_refuses_a_bad_key_before_anything_else(server: RunningServer) -> None:
    bad = server.client("ms_org_" + "0" * 50)
    for call in _all_methods(bad):
        err = await refused(grpc.StatusCode.UNAUTHENTICATED, call)
        assert "ms_org_" + "0" * 50 not in (err.details() or "")


async def test_bearer_authorization_works_too(server: RunningServer) -> None:
    made = await _key(server)
    for scheme in ("Bearer", "bearer"):
        me = await whoami(server.owner, metadata=(("authorization", f"{scheme} {made.secret}"),))
        assert me.key_id == made.api_key.id
    owner = await whoami(server.owner, metadata=(("authorization", f"Bearer {server.owner_key}"),))
    assert owner.organization_id == server.org_id


async def test_health_and_reflection_need_no_key(server: RunningServer) -> None:
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "memoryd.v1.KeyService", "memoryd.v1.AdminService"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_request_id_is_echoed_on_success_and_failure(server: RunningServer) -> None:
    call = server.owner.keys.WhoAmI(
        keys_pb2.WhoAmIRequest(), metadata=(*server.owner.md(), ("x-request-id", "req-ok-1"))
    )
    await call
    assert ("x-request-id", "req-ok-1") in tuple(await call.trailing_metadata())
    err = await refused(
        grpc.StatusCode.UNAUTHENTICATED,
        server.owner.keys.WhoAmI(
            keys_pb2.WhoAmIRequest(), metadata=(("x-request-id", "req-bad-1"),)
        ),
    )
    assert ("x-request-id", "req-bad-1") in tuple(err.trailing_metadata())


# --- guessing is cheap for the server and cut off ----------------------------------------------


@pytest.fixture
async def counted() -> AsyncIterator[tuple[RunningServer, CountingHasher, ManualClock]]:
    import tempfile

    clock = ManualClock()
    hasher = CountingHasher()
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(
            host="127.0.0.1",
            port=0,
            data_dir=data,
            embedding_provider="hashing",
            embedding_dimension=64,
            auth_failures_per_minute=5,
            shutdown_delay_s=0.0,
            log_level="WARNING",
        )
        app = await build_app(settings, clock=clock, hasher=hasher)
        await app.start()
        assert app.bootstrapped is not None
        channel = aio.insecure_channel(f"127.0.0.1:{app.port}")
        server = RunningServer(
            app,
            f"127.0.0.1:{app.port}",
            app.bootstrapped.plaintext,
            app.bootstrapped.org.id,
            channel,
            clock,
        )
        try:
            yield server, hasher, clock
        finally:
            await channel.close()
            await app.stop(0)


async def test_failures_on_one_key_id_do_not_refuse_another_tenants_fresh_key(
    counted: tuple[RunningServer, CountingHasher, ManualClock],
) -> None:
    server, _, _ = counted
    made = await _key(server)
    for _ in range(8):  # more than the 5 allowed, all from this address
        with pytest.raises(aio.AioRpcError):
            await whoami(server.client(format_key("live", made.api_key.id, new_secret())))
    for _ in range(8):  # and unknown key ids too
        await refused(
            grpc.StatusCode.UNAUTHENTICATED,
            whoami(server.client(format_key("live", new_key_id(), new_secret()))),
        )
    other = await server.new_org("tenant-b")  # behind the same address, never verified
    assert (await whoami(other)).organization_name == "tenant-b"


# (grpc's Python client refuses tab or NBSP in metadata: those are covered by
# tests/unit/test_authenticator.py and tests/unit/test_key_format.py)
@pytest.mark.parametrize("pad", [" {}", "{} ", "  {}  "], ids=repr)
async def test_a_padded_copy_of_a_valid_key_is_refused_without_a_hash(
    counted: tuple[RunningServer, CountingHasher, ManualClock], pad: str
) -> None:
    server, hasher, _ = counted
    made = await _key(server)
    await whoami(server.client(made.secret))  # the canonical key, verified and cached
    before = hasher.verifies
    for _ in range(3):
        err = await refused(
            grpc.StatusCode.UNAUTHENTICATED, whoami(server.client(pad.format(made.secret)))
        )
        assert error_info(err).reason == "API_KEY_MALFORMED"
    assert hasher.verifies == before


async def test_a_wrong_secret_does_not_cost_a_hash_per_request(
    counted: tuple[RunningServer, CountingHasher, ManualClock],
) -> None:
    server, hasher, _ = counted
    made = await _key(server)
    wrong = server.client(format_key("live", made.api_key.id, new_secret()))
    before = hasher.verifies
    for _ in range(4):
        await refused(grpc.StatusCode.UNAUTHENTICATED, whoami(wrong))
    assert hasher.verifies - before == 1
    # and a cached good key costs none
    await whoami(server.client(made.secret))
    before = hasher.verifies
    for _ in range(20):
        await whoami(server.client(made.secret))
    assert hasher.verifies == before


async def test_repeated_failures_get_resource_exhausted(
    counted: tuple[RunningServer, CountingHasher, ManualClock],
) -> None:
    server, hasher, clock = counted
    made = await _key(server)
    await whoami(server.owner)  # cached before the storm
    for _ in range(5):
        await refused(
            grpc.StatusCode.UNAUTHENTICATED,
            whoami(server.client(format_key("live", made.api_key.id, new_secret()))),
        )
    verifies = hasher.verifies
    err = await refused(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        whoami(server.client(format_key("live", made.api_key.id, new_secret()))),
    )
    assert reason_of(err) == "AUTH_FAILURES_EXCEEDED"
    assert "retry" in (err.details() or "")
    assert has_detail(err, error_details_pb2.RetryInfo)
    assert hasher.verifies == verifies  # refused without hashing
    # the right secret of the attacked key is refused from this address for now
    # (failures count per address and key id) ...
    with pytest.raises(aio.AioRpcError) as info:
        await whoami(server.client(made.secret))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # ... while an already verified key goes on working
    await whoami(server.owner)
    clock.advance(61)
    assert (await whoami(server.client(made.secret))).key_id == made.api_key.id
