from __future__ import annotations

from memoryd.v1 import keys_pb2


async def test_owner_key_answers_whoami(server) -> None:
    me = await server.owner.keys.WhoAmI(keys_pb2.WhoAmIRequest(), metadata=server.owner.md())
    assert me.organization_id == server.org_id
    assert list(me.scopes) == ["*"]
