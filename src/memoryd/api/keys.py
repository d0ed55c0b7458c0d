"""KeyService servicer."""

from __future__ import annotations

from typing import Any

from memoryd.api import convert
from memoryd.api.call import current_caller
from memoryd.domain.clock import Clock
from memoryd.domain.keys import KeyManager
from memoryd.v1 import keys_pb2, keys_pb2_grpc


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, keys: KeyManager, clock: Clock) -> None:
        self._keys = keys
        self._clock = clock

    async def CreateApiKey(
        self, request: keys_pb2.CreateApiKeyRequest, context: Any
    ) -> keys_pb2.CreateApiKeyResponse:
        issued = await self._keys.create(
            current_caller(),
            project_id=request.project_id,
            environment_id=request.environment_id,
            name=request.name,
            scopes=list(request.scopes),
            expire_time=convert.opt_ts(request, "expire_time", "expire_time"),
        )
        return keys_pb2.CreateApiKeyResponse(
            api_key=convert.api_key(issued.record, self._clock.now()), secret=issued.plaintext
        )

    async def ListApiKeys(
        self, request: keys_pb2.ListApiKeysRequest, context: Any
    ) -> keys_pb2.ListApiKeysResponse:
        result = await self._keys.list(
            current_caller(),
            project_id=request.project_id,
            environment_id=request.environment_id,
            show_revoked=request.show_revoked,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        now = self._clock.now()
        return keys_pb2.ListApiKeysResponse(
            api_keys=[convert.api_key(k, now) for k in result.keys],
            next_page_token=result.next_page_token,
        )

    async def GetApiKey(self, request: keys_pb2.GetApiKeyRequest, context: Any) -> keys_pb2.ApiKey:
        record = await self._keys.get(current_caller(), request.id)
        return convert.api_key(record, self._clock.now())

    async def RevokeApiKey(
        self, request: keys_pb2.RevokeApiKeyRequest, context: Any
    ) -> keys_pb2.ApiKey:
        record = await self._keys.revoke(current_caller(), request.id)
        return convert.api_key(record, self._clock.now())

    async def RotateApiKey(
        self, request: keys_pb2.RotateApiKeyRequest, context: Any
    ) -> keys_pb2.RotateApiKeyResponse:
        grace = (
            convert.from_duration(request.grace_period, "grace_period")
            if request.HasField("grace_period")
            else None
        )
        issued = await self._keys.rotate(current_caller(), request.id, grace)
        return keys_pb2.RotateApiKeyResponse(
            api_key=convert.api_key(issued.record, self._clock.now()), secret=issued.plaintext
        )

    async def WhoAmI(
        self, request: keys_pb2.WhoAmIRequest, context: Any
    ) -> keys_pb2.WhoAmIResponse:
        p = current_caller().principal
        return keys_pb2.WhoAmIResponse(
            key_id=p.key_id,
            kind=keys_pb2.KEY_KIND_ORG if p.kind.value == "org" else keys_pb2.KEY_KIND_DATA,
            organization_id=p.org_id,
            organization_name=await self._keys.org_name(p.org_id),
            project_id=p.project_id,
            environment_id=p.environment_id,
            environment_kind=convert.env_kind_to_pb(p.environment_kind),  # type: ignore[arg-type]
            scopes=sorted(p.scopes),
            end_user_id=p.end_user_id,
        )
