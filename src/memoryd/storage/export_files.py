"""Export files on the local file system: `<root>/<org>/<project>/<env>/<id>.jsonl`.

A file is written as `<id>.jsonl.part`, synced and renamed when complete,
so a complete name always holds a whole file; a crash leaves at most a
`.part` that the next attempt starts over (and the sweep removes). Every
path is built from ids the server made (checked here again), never from a
client's text.

With a sealer (encryption at rest on) the file is sealed in frames: a
header line (`SEALED_FILE` + the data key id), then every 64 KiB of the
JSONL sealed on its own (AES-GCM, the associated data naming the export,
the frame's index and whether it is the last), so ReadExport from any
offset opens only the frames it sends, and a truncated or reordered file
does not open. Sizes, digests and offsets stay those of the clear JSONL.
Files written in clear (before encryption, or with it off) read as before.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import IO

from memoryd.crypto.sealer import SEALED, Sealer
from memoryd.domain.encryption import EnvRef
from memoryd.domain.errors import DomainError, NotFound
from memoryd.domain.tenancy import Tenant
from memoryd.storage.disk import check_free_space, write_error

PIECE = 64 * 1024
SEALED_FILE = b"\x1eenc1f:"
_FRAME_OVERHEAD = 12 + 16  # nonce, tag
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DONE = ".jsonl"
_PART = ".jsonl.part"


class LocalExportFiles:
    """`ExportFiles` under one directory of the data dir."""

    def __init__(self, root: Path, min_free_bytes: int, sealer: Sealer | None = None) -> None:
        self._root = root
        self._floor = min_free_bytes
        self._sealer = sealer

    async def prepare(self, tenant: Tenant) -> None:
        if self._sealer is not None and self._sealer.enabled:
            await self._sealer.ready([_env(tenant)], create=True)

    def _dir(self, org_id: str, project_id: str, environment_id: str | None = None) -> Path:
        parts = [org_id, project_id] + ([environment_id] if environment_id is not None else [])
        for part in parts:
            if not _SAFE.match(part):
                raise ValueError(f"not a server-made id: {part!r}")
        return self._root.joinpath(*parts)

    def _path(self, tenant: Tenant, export_id: str, suffix: str) -> Path:
        if not _SAFE.match(export_id):
            raise ValueError(f"not a server-made id: {export_id!r}")
        env = self._dir(tenant.org_id, tenant.project_id, tenant.environment_id)
        return env / f"{export_id}{suffix}"

    def writer(self, tenant: Tenant, export_id: str) -> _Writer:
        self.check_space()
        part = self._path(tenant, export_id, _PART)
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            done = self._path(tenant, export_id, _DONE)
            if self._sealer is not None and self._sealer.enabled:
                return _SealedWriter(part, done, self._floor, self._sealer, _env(tenant), export_id)
            return _Writer(part, done, self._floor)
        except OSError as err:
            raise _io_error(err, part, self._floor) from err

    async def read(self, tenant: Tenant, export_id: str, offset: int) -> AsyncIterator[bytes]:
        path = self._path(tenant, export_id, _DONE)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise NotFound("the export's file is gone (expired or deleted)") from None
        with f:
            head = await asyncio.to_thread(f.read, 64)
            if not head.startswith(SEALED_FILE):
                f.seek(offset)
                while piece := await asyncio.to_thread(f.read, PIECE):
                    yield piece
                return
            if self._sealer is None:
                raise NotFound("the export's file is sealed and encryption is not set up")
            async for piece in _read_sealed(f, head, self._sealer, tenant, export_id, offset):
                yield piece

    def exists(self, tenant: Tenant, export_id: str) -> bool:
        """Whether the export has a file (complete or being written)."""
        return any(self._path(tenant, export_id, x).exists() for x in (_DONE, _PART))

    def remove(self, tenant: Tenant, export_id: str) -> None:
        for suffix in (_DONE, _PART):
            self._path(tenant, export_id, suffix).unlink(missing_ok=True)

    def remove_scope(self, org_id: str, project_id: str, environment_id: str | None) -> int:
        """Removes the scope's export files; answers how many there were."""
        root = self._dir(org_id, project_id, environment_id)
        there = sum(1 for _ in root.rglob("*.jsonl*")) if root.is_dir() else 0
        shutil.rmtree(root, ignore_errors=True)
        return there

    def sweep(self, written_before: datetime) -> int:
        """Complete files last written before the time, and parts left by a
        crash as old; answers how many were removed."""
        if not self._root.is_dir():
            return 0
        cutoff = written_before.timestamp()
        removed = 0
        for path in self._root.glob("*/*/*/*.jsonl*"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    def check_space(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        check_free_space(self._root, self._floor, what="exports")


class _Writer:
    """One export file being written; `commit` makes it complete."""

    def __init__(self, part: Path, done: Path, floor: int) -> None:
        self._part = part
        self._done = done
        self._floor = floor
        self._digest = hashlib.sha256()
        self._size = 0
        self._f: IO[bytes] | None = part.open("wb")

    def write(self, data: bytes) -> None:
        assert self._f is not None, "written after commit or abort"
        try:
            self._f.write(data)
        except OSError as err:
            raise _io_error(err, self._part, self._floor) from err
        self._digest.update(data)
        self._size += len(data)

    def commit(self) -> tuple[int, str]:
        assert self._f is not None, "committed twice"
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None
            os.replace(self._part, self._done)
            _sync_dir(self._done.parent)
        except OSError as err:
            raise _io_error(err, self._part, self._floor) from err
        return self._size, self._digest.hexdigest()

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._part.unlink(missing_ok=True)


class _SealedWriter(_Writer):
    """An export file sealed in frames of PIECE clear bytes."""

    def __init__(
        self, part: Path, done: Path, floor: int, sealer: Sealer, env: EnvRef, export_id: str
    ) -> None:
        super().__init__(part, done, floor)
        self._sealer = sealer
        self._env = env
        self._export_id = export_id
        self._buffer = bytearray()
        self._frames = 0
        key_id = _key_id(sealer.seal_bytes(env, "export", b""))  # from a sealed empty value
        self._prefix = len(_SEALED_PREFIX + key_id + b":")
        self._put(SEALED_FILE + key_id + b"\n")

    def _put(self, data: bytes) -> None:
        assert self._f is not None, "written after commit or abort"
        try:
            self._f.write(data)
        except OSError as err:
            raise _io_error(err, self._part, self._floor) from err

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self._size += len(data)
        self._buffer += data
        while len(self._buffer) > PIECE:  # the last frame is sealed as such at commit
            self._frame(bytes(self._buffer[:PIECE]), last=False)
            del self._buffer[:PIECE]

    def _frame(self, clear: bytes, *, last: bool) -> None:
        field = _frame_field(self._export_id, self._frames, last)
        sealed = self._sealer.seal_bytes(self._env, field, clear)
        self._put(sealed[self._prefix :])
        self._frames += 1

    def commit(self) -> tuple[int, str]:
        self._frame(bytes(self._buffer), last=True)
        self._buffer.clear()
        return super().commit()


def _key_id(sealed: bytes) -> bytes:
    """The data key id of a value sealed by `Sealer.seal_bytes`."""
    return sealed[len(_SEALED_PREFIX) :].split(b":", 1)[0]


def _frame_field(export_id: str, index: int, last: bool) -> str:
    return f"export|{export_id}|{index}|{'last' if last else 'more'}"


async def _read_sealed(
    f: IO[bytes], head: bytes, sealer: Sealer, tenant: Tenant, export_id: str, offset: int
) -> AsyncIterator[bytes]:
    env = _env(tenant)
    line_end = head.index(b"\n")
    key_id = head[len(SEALED_FILE) : line_end]
    await sealer.ready([env], create=False)
    total = os.fstat(f.fileno()).st_size - (line_end + 1)
    frame_size = PIECE + _FRAME_OVERHEAD
    frames = max(1, -(-total // frame_size))
    index, skip = divmod(offset, PIECE)
    while index < frames:
        f.seek(line_end + 1 + index * frame_size)
        raw = await asyncio.to_thread(f.read, frame_size)
        field = _frame_field(export_id, index, index == frames - 1)
        clear = sealer.open_bytes(env, field, _SEALED_PREFIX + key_id + b":" + raw)
        if skip < len(clear):
            yield clear[skip:]
        skip = 0
        index += 1


_SEALED_PREFIX = SEALED.encode()


def _env(tenant: Tenant) -> EnvRef:
    return (tenant.org_id, tenant.project_id, tenant.environment_id)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io_error(err: OSError, path: Path, floor: int) -> DomainError:
    return write_error(err, path, floor, "exports")
