"""Revocation against a verification in flight, on a real server: a
`keys:write` org key whose first verification is held open (a gated hasher)
while the owner revokes it must not be usable afterwards, not even to mint a
key in the window."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio
from helpers.errors import reason_of
from helpers.gated_hasher import GatedHasher, gated_server
from helpers.keys import secret_of
from helpers.polling import wait_for

from memoryd.v1 import keys_pb2


async def test_a_keys_write_key_revoked_while_in_flight_cannot_create_keys_afterwards() -> None:
    hasher = GatedHasher()
    async with gated_server(hasher, key_cache_ttl_s=300.0) as server:
        owner = server.owner
        made = await owner.keys.CreateApiKey(
            keys_pb2.CreateApiKeyRequest(name="manager", scopes=["keys:write", "keys:read"]),
            metadata=owner.md(),
        )
        manager = server.client(made.secret)
        gate = hasher.gate(secret_of(made.secret))

        def mint(name: str) -> aio.UnaryUnaryCall:  # type: ignore[type-arg]
            return manager.keys.CreateApiKey(
                keys_pb2.CreateApiKeyRequest(name=name, scopes=["keys:read"]),
                metadata=manager.md(),
            )

        auth = server.app.authenticator
        misses = auth.cache_misses
        in_flight = asyncio.ensure_future(mint("minted in the window"))
        who = asyncio.ensure_future(
            manager.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=manager.md())
        )
        await hasher.entered_verify(secret_of(made.secret))  # the key read as valid

        async def both_waiting() -> bool:  # both calls wait on that one verification
            return auth.cache_misses >= misses + 2

        await wait_for(both_waiting)
        await owner.keys.RevokeApiKey(
            keys_pb2.RevokeApiKeyRequest(id=made.api_key.id), metadata=owner.md()
        )
        gate.set()

        # the call in flight may finish as it began, but mints nothing
        assert (await who).key_id == made.api_key.id
        with pytest.raises(aio.AioRpcError) as info:
            await in_flight
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason_of(info.value) == "API_KEY_REVOKED"
        # and from now on the key is refused at authentication (nothing cached)
        for call in (
            mint("minted after"),
            manager.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=manager.md()),
        ):
            with pytest.raises(aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason_of(info.value) == "API_KEY_REVOKED"
        listed = await owner.keys.ListApiKeys(keys_pb2.ListApiKeysRequest(), metadata=owner.md())
        assert {k.name for k in listed.api_keys} == {"owner"}
    hasher.close()
