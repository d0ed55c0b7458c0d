"""Export files on the local file system: `<root>/<org>/<project>/<env>/<id>.jsonl`.

A file is written as `<id>.jsonl.part`, synced and renamed when complete,
so a complete name always holds a whole file; a crash leaves at most a
`.part` that the next attempt starts over (and the sweep removes). Every
path is built from ids the server made (checked here again), never from a
client's text.

With encryption at rest the file is `SEALED_MAGIC` and then frames, each a
4-byte big-endian length and the seal (`memoryd.crypto.sealer`) of up to
`PIECE` bytes of the JSON lines, bound to the export and the frame's index
(frames cannot be reordered or moved to another export). The size and
SHA-256 an export reports are of the clear bytes; ReadExport answers clear
bytes from a clear offset.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import struct
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import IO

from memoryd.crypto.sealer import Sealer
from memoryd.domain.encryption import key_unavailable
from memoryd.domain.errors import DomainError, NotFound
from memoryd.domain.tenancy import Tenant
from memoryd.storage.disk import check_free_space, write_error

PIECE = 64 * 1024
SEALED_MAGIC = b"MDX1"
_LENGTH = struct.Struct(">I")
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DONE = ".jsonl"
_PART = ".jsonl.part"


class LocalExportFiles:
    """`ExportFiles` under one directory of the data dir."""

    def __init__(self, root: Path, min_free_bytes: int, sealer: Sealer | None = None) -> None:
        self._root = root
        self._floor = min_free_bytes
        self._sealer = sealer

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

    async def writer(self, tenant: Tenant, export_id: str) -> _Writer:
        self.check_space()
        seal: _Seal | None = None
        if self._sealer is not None and self._sealer.enabled:
            env = (tenant.org_id, tenant.project_id, tenant.environment_id)
            await self._sealer.ready([env], create=True)
            sealer = self._sealer

            def seal(index: int, data: bytes) -> bytes:
                return sealer.seal_bytes(env, f"export/{export_id}/{index}", data)

        part = self._path(tenant, export_id, _PART)
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            return _Writer(part, self._path(tenant, export_id, _DONE), self._floor, seal)
        except OSError as err:
            raise _io_error(err, part, self._floor) from err

    async def read(self, tenant: Tenant, export_id: str, offset: int) -> AsyncIterator[bytes]:
        path = self._path(tenant, export_id, _DONE)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise NotFound("the export's file is gone (expired or deleted)") from None
        with f:
            if f.read(len(SEALED_MAGIC)) != SEALED_MAGIC:
                f.seek(offset)  # a file written in clear
                while piece := await asyncio.to_thread(f.read, PIECE):
                    yield piece
                return
            env = (tenant.org_id, tenant.project_id, tenant.environment_id)
            if self._sealer is None:
                raise key_unavailable("this export is sealed and the server has no sealer")
            await self._sealer.ready([env], create=False)
            index = 0
            while head := await asyncio.to_thread(f.read, _LENGTH.size):
                (length,) = _LENGTH.unpack(head)
                if (index + 1) * PIECE <= offset:  # every frame but the last holds PIECE bytes
                    f.seek(length, os.SEEK_CUR)
                else:
                    sealed = await asyncio.to_thread(f.read, length)
                    clear = self._sealer.open_bytes(env, f"export/{export_id}/{index}", sealed)
                    skip = max(0, offset - index * PIECE)
                    if clear[skip:]:
                        yield clear[skip:]
                index += 1

    def exists(self, tenant: Tenant, export_id: str) -> bool:
        """Whether the export has a file (complete or being written)."""
        return any(self._path(tenant, export_id, x).exists() for x in (_DONE, _PART))

    def remove(self, tenant: Tenant, export_id: str) -> None:
        for suffix in (_DONE, _PART):
            self._path(tenant, export_id, suffix).unlink(missing_ok=True)

    def remove_scope(self, org_id: str, project_id: str, environment_id: str | None) -> None:
        shutil.rmtree(self._dir(org_id, project_id, environment_id), ignore_errors=True)

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


# (frame index, clear bytes) -> sealed bytes
_Seal = Callable[[int, bytes], bytes]


class _Writer:
    """One export file being written; `commit` makes it complete. With
    `seal`, the bytes are kept until a frame of PIECE is full, then sealed."""

    def __init__(self, part: Path, done: Path, floor: int, seal: _Seal | None = None) -> None:
        self._part = part
        self._done = done
        self._floor = floor
        self._digest = hashlib.sha256()
        self._size = 0
        self._seal = seal
        self._pending = bytearray()
        self._frames = 0
        self._f: IO[bytes] | None = part.open("wb")
        if seal is not None:
            self._put(SEALED_MAGIC)

    def _put(self, data: bytes) -> None:
        assert self._f is not None, "written after commit or abort"
        try:
            self._f.write(data)
        except OSError as err:
            raise _io_error(err, self._part, self._floor) from err

    def _frame(self, data: bytes) -> None:
        assert self._seal is not None
        sealed = self._seal(self._frames, data)
        self._frames += 1
        self._put(_LENGTH.pack(len(sealed)) + sealed)

    def write(self, data: bytes) -> None:
        assert self._f is not None, "written after commit or abort"
        if self._seal is None:
            self._put(data)
        else:
            self._pending += data
            while len(self._pending) >= PIECE:
                self._frame(bytes(self._pending[:PIECE]))
                del self._pending[:PIECE]
        self._digest.update(data)
        self._size += len(data)

    def commit(self) -> tuple[int, str]:
        assert self._f is not None, "committed twice"
        if self._seal is not None and self._pending:
            self._frame(bytes(self._pending))
            self._pending.clear()
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


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io_error(err: OSError, path: Path, floor: int) -> DomainError:
    return write_error(err, path, floor, "exports")
