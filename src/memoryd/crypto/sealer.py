"""Sealing content with its environment's data key (AES-256-GCM).

A sealed text is `SEALED` + data key id + ":" + base64(nonce + ciphertext);
sealed bytes are the same in bytes. The associated data binds the
environment and the field, so a sealed value copied into another tenant's
row or another field does not open. Values written before encryption (or
with it off) stay readable as they are; with encryption off, a clear value
that happens to start with the marker is escaped (`CLEAR`), so it is never
taken for a sealed one.

Keys are loaded (unwrapped) once per environment and kept in a bounded LRU:
after the first call of an environment, sealing and opening cost one
AES-GCM operation each and no I/O. `ready` must be awaited for the
environments of a call before the synchronous `seal`/`open`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import uuid
from collections import OrderedDict
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from memoryd.domain.encryption import (
    DataKeyStore,
    EnvRef,
    KeyWrapper,
    OrgKey,
    WrappedKey,
    data_key_context,
    key_unavailable,
)

SEALED = "\x1eenc1:"
CLEAR = "\x1eclr:"
_SEALED_B = SEALED.encode()
_CLEAR_B = CLEAR.encode()
_NONCE = 12


context = data_key_context


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED)


class Sealer:
    """Seals and opens content of environments; creates their data keys."""

    def __init__(
        self,
        store: DataKeyStore,
        wrapper: KeyWrapper,
        *,
        enabled: bool = True,
        cache_size: int = 10_000,
    ) -> None:
        self._store = store
        self._wrapper = wrapper
        self.enabled = enabled
        self._cache_size = max(1, cache_size)
        self._keys: OrderedDict[EnvRef, tuple[str, AESGCM]] = OrderedDict()
        self._loading: dict[EnvRef, asyncio.Lock] = {}

    @property
    def wrapper(self) -> KeyWrapper:
        """The KEK providers the data keys are wrapped with."""
        return self._wrapper

    # --- keys ---------------------------------------------------------------

    async def ready(self, envs: Iterable[EnvRef], *, create: bool) -> None:
        """Loads the data keys of `envs` (making them when `create` and
        sealing is on). Raises Unavailable when a KEK cannot unwrap one."""
        if create and not self.enabled:
            return  # nothing is sealed: writes need no key (and no store read)
        for env in envs:
            if env in self._keys:
                self._keys.move_to_end(env)
                continue
            lock = self._loading.setdefault(env, asyncio.Lock())
            async with lock:
                if env not in self._keys:
                    await self._load(env, create=create and self.enabled)
            self._loading.pop(env, None)

    async def _load(self, env: EnvRef, *, create: bool) -> None:
        stored = await self._store.data_key(env)
        if stored is None:
            if not create:
                return  # nothing of this environment was ever sealed
            key = AESGCM.generate_key(bit_length=256)
            org = await self._store.org_key(env[0])
            wrapped = await self._wrapper.wrap(org, context(env), key)
            made = WrappedKey(env, uuid.uuid4().hex[:12], wrapped, org.kek_ref, org.version)
            stored = await self._store.add_data_key(made)
            if stored.key_id == made.key_id:
                self._remember(env, stored.key_id, key)
                return
        org = OrgKey(env[0], stored.kek_ref, stored.kek_version)
        key = await self._wrapper.unwrap(org, context(env), stored.wrapped)
        self._remember(env, stored.key_id, key)

    def _remember(self, env: EnvRef, key_id: str, key: bytes) -> None:
        self._keys[env] = (key_id, AESGCM(key))
        while len(self._keys) > self._cache_size:
            self._keys.popitem(last=False)

    def forget(self, org_id: str, project_id: str, environment_id: str | None) -> None:
        """Drops cached keys of an environment (or of a project's) whose
        data keys were destroyed."""
        for env in [e for e in self._keys if e[:2] == (org_id, project_id)]:
            if environment_id is None or env[2] == environment_id:
                del self._keys[env]

    def _key(self, env: EnvRef) -> tuple[str, AESGCM]:
        found = self._keys.get(env)
        if found is None:
            raise key_unavailable(f"the data key of {context(env)} is not available")
        return found

    # --- text ---------------------------------------------------------------

    def seal(self, env: EnvRef, field: str, text: str) -> str:
        """`text` as stored: sealed when encryption is on."""
        if not self.enabled:
            return CLEAR + text if text.startswith("\x1e") else text
        key_id, aead = self._key(env)
        nonce = os.urandom(_NONCE)
        sealed = aead.encrypt(nonce, text.encode(), _aad(env, field))
        return f"{SEALED}{key_id}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, env: EnvRef, field: str, value: str) -> str:
        """The text of a stored `value` (sealed or not)."""
        if value.startswith(SEALED):
            key_id, _, body = value[len(SEALED) :].partition(":")
            try:
                raw = base64.b64decode(body, validate=True)
            except binascii.Error:
                raise key_unavailable(f"a sealed value of {context(env)} is damaged") from None
            return self._open(env, field, key_id, raw).decode()
        if value.startswith(CLEAR):
            return value[len(CLEAR) :]
        return value

    # --- bytes --------------------------------------------------------------

    def seal_bytes(self, env: EnvRef, field: str, data: bytes) -> bytes:
        if not self.enabled:
            return _CLEAR_B + data if data.startswith(b"\x1e") else data
        key_id, aead = self._key(env)
        nonce = os.urandom(_NONCE)
        return (
            _SEALED_B + key_id.encode() + b":" + nonce + aead.encrypt(nonce, data, _aad(env, field))
        )

    def open_bytes(self, env: EnvRef, field: str, data: bytes) -> bytes:
        if data.startswith(_SEALED_B):
            key_id, _, raw = data[len(_SEALED_B) :].partition(b":")
            return self._open(env, field, key_id.decode(errors="replace"), raw)
        if data.startswith(_CLEAR_B):
            return data[len(_CLEAR_B) :]
        return data

    def _open(self, env: EnvRef, field: str, key_id: str, raw: bytes) -> bytes:
        have, aead = self._key(env)
        if key_id != have:
            raise key_unavailable(
                f"a value of {context(env)} was sealed with data key {key_id!r}, "
                f"which this environment no longer has"
            )
        try:
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(env, field))
        except InvalidTag:
            raise key_unavailable(
                f"a sealed value of {context(env)} does not open with its data key"
            ) from None

    def needs(self, values: Iterable[tuple[EnvRef, str | bytes | None]]) -> set[EnvRef]:
        """The environments among `values` whose value is sealed and whose
        key is not loaded yet."""
        out: set[EnvRef] = set()
        for env, value in values:
            if env in self._keys or env in out or value is None:
                continue
            if (isinstance(value, str) and value.startswith(SEALED)) or (
                isinstance(value, bytes) and value.startswith(_SEALED_B)
            ):
                out.add(env)
        return out

    async def ready_for(self, values: Iterable[tuple[EnvRef, str | bytes | None]]) -> None:
        """Loads the keys that opening `values` needs (never makes one)."""
        missing = self.needs(values)
        if missing:
            await self.ready(missing, create=False)


def _aad(env: EnvRef, field: str) -> bytes:
    return f"{env[0]}/{env[1]}/{env[2]}|{field}".encode()
