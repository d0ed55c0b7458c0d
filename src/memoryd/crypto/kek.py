"""Providers of key-encryption keys (the `KeyWrapper` port).

- `LocalKeyFile`: one 256-bit master secret in a file (created on first
  start with permissions 0600); each organization's KEK is derived from it
  with HKDF (organization id and KEK version as the info), so rotating one
  organization's key changes no other's. A wrapped key names the file's
  fingerprint, so a wrong or replaced file is reported as such.
- `AwsKms`: AWS KMS Encrypt/Decrypt through boto3 (the `kms` extra), with
  the data key's environment as the encryption context.
- `KekProviders`: picks the provider by the organization's KEK reference.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from memoryd.domain.encryption import AWS_KMS, LOCAL, OrgKey, key_unavailable

_HEADER = "memoryd-kek-v1"
_LOCAL_TAG = b"L1"
_KMS_TAG = b"K1"
_NONCE = 12


class KeyFileError(Exception):
    """The local key file cannot be used (the server refuses to start)."""


class LocalKeyFile:
    """The default KEK provider: a master secret in `path`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._master = _load_or_create(path)
        self.fingerprint = hashlib.sha256(b"memoryd-kek-fingerprint" + self._master).digest()[:8]
        self._keks: dict[tuple[str, int], AESGCM] = {}

    def _kek(self, org: OrgKey) -> AESGCM:
        found = self._keks.get((org.org_id, org.version))
        if found is None:
            derived = HKDF(
                algorithm=hashes.SHA256(),
                length=32,
                salt=None,
                info=f"memoryd organization kek|{org.org_id}|{org.version}".encode(),
            ).derive(self._master)
            found = self._keks[(org.org_id, org.version)] = AESGCM(derived)
        return found

    async def wrap(self, org: OrgKey, context: str, key: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._kek(org).encrypt(nonce, key, context.encode())
        return _LOCAL_TAG + self.fingerprint + nonce + sealed

    async def unwrap(self, org: OrgKey, context: str, wrapped: bytes) -> bytes:
        if not wrapped.startswith(_LOCAL_TAG):
            raise key_unavailable(f"the data key of {context} was not wrapped by a local key file")
        fingerprint, rest = wrapped[2:10], wrapped[10:]
        if fingerprint != self.fingerprint:
            raise key_unavailable(
                f"the data key of {context} was wrapped with the local key file of fingerprint "
                f"{fingerprint.hex()}, but the key file in use ({self._path}, MEMORYD_KEK_FILE) "
                f"has fingerprint {self.fingerprint.hex()}: restore the original key file"
            )
        try:
            return self._kek(org).decrypt(rest[:_NONCE], rest[_NONCE:], context.encode())
        except InvalidTag:
            raise key_unavailable(
                f"the local key-encryption key (version {org.version}) does not open the "
                f"data key of {context}"
            ) from None


def _load_or_create(path: Path) -> bytes:
    """The master secret of `path`, made (0600, atomically) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = os.urandom(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(f"{_HEADER} {base64.b64encode(secret).decode()}\n")
                f.flush()
                os.fsync(f.fileno())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"the key file {path} (MEMORYD_KEK_FILE) is readable by others (mode {mode:o}); "
            f"run: chmod 600 {path}"
        )
    text = path.read_text().split()
    try:
        if len(text) != 2 or text[0] != _HEADER:
            raise ValueError
        secret = base64.b64decode(text[1], validate=True)
        if len(secret) != 32:
            raise ValueError
    except ValueError:
        raise KeyFileError(
            f"the key file {path} (MEMORYD_KEK_FILE) is not a memoryd key file "
            f"('{_HEADER} <base64 of 32 bytes>')"
        ) from None
    return secret


class AwsKms:
    """AWS KMS (or an endpoint speaking its API, `endpoint_url`)."""

    def __init__(self, endpoint_url: str, region: str, timeout_s: float) -> None:
        self._endpoint_url = endpoint_url or None
        self._region = region
        self._timeout_s = timeout_s
        self._client: Any = None

    def _kms(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise key_unavailable(
                    "AWS KMS needs boto3: install memoryd with the 'kms' extra"
                ) from None
            self._client = boto3.client(
                "kms",
                endpoint_url=self._endpoint_url,
                region_name=self._region,
                config=Config(
                    connect_timeout=self._timeout_s,
                    read_timeout=self._timeout_s,
                    retries={"max_attempts": 2},
                ),
            )
        return self._client

    async def wrap(self, org: OrgKey, context: str, key: bytes) -> bytes:
        answer = await self._call(
            org,
            "encrypt",
            KeyId=_key_id(org),
            Plaintext=key,
            EncryptionContext={"memoryd": context},
        )
        return _KMS_TAG + bytes(answer["CiphertextBlob"])

    async def unwrap(self, org: OrgKey, context: str, wrapped: bytes) -> bytes:
        if not wrapped.startswith(_KMS_TAG):
            raise key_unavailable(f"the data key of {context} was not wrapped by AWS KMS")
        answer = await self._call(
            org,
            "decrypt",
            KeyId=_key_id(org),
            CiphertextBlob=wrapped[len(_KMS_TAG) :],
            EncryptionContext={"memoryd": context},
        )
        return bytes(answer["Plaintext"])

    async def _call(self, org: OrgKey, name: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(getattr(self._kms(), name), **kwargs)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "error")
            raise key_unavailable(
                f"AWS KMS refused {name} with the key {_key_id(org)!r}: {code}"
            ) from None
        except BotoCoreError as e:
            raise key_unavailable(
                f"AWS KMS could not be reached for {name} ({type(e).__name__})"
            ) from None


def _key_id(org: OrgKey) -> str:
    return org.kek_ref[len(AWS_KMS) :]


class KekProviders:
    """The `KeyWrapper` of the server: the provider an organization's KEK
    reference names."""

    def __init__(self, local: LocalKeyFile, kms: AwsKms | None) -> None:
        self._local = local
        self._kms = kms

    def _of(self, org: OrgKey) -> LocalKeyFile | AwsKms:
        if org.kek_ref == LOCAL:
            return self._local
        if org.kek_ref.startswith(AWS_KMS):
            if self._kms is None:
                raise key_unavailable("AWS KMS is not configured on this server (MEMORYD_KMS_*)")
            return self._kms
        raise key_unavailable(f"unknown key-encryption key reference {org.kek_ref!r}")

    async def wrap(self, org: OrgKey, context: str, key: bytes) -> bytes:
        return await self._of(org).wrap(org, context, key)

    async def unwrap(self, org: OrgKey, context: str, wrapped: bytes) -> bytes:
        return await self._of(org).unwrap(org, context, wrapped)
