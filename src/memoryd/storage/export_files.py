"""Export files on the local file system: `<root>/<org>/<project>/<env>/<id>.jsonl`.

A file is written as `<id>.jsonl.part`, synced and renamed when complete,
so a complete name always holds a whole file; a crash leaves at most a
`.part` that the next attempt starts over (and the sweep removes). Every
path is built from ids the server made (checked here again), never from a
client's text.
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

from memoryd.domain.errors import DomainError, NotFound
from memoryd.domain.tenancy import Tenant
from memoryd.storage.disk import check_free_space, write_error

PIECE = 64 * 1024
_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DONE = ".jsonl"
_PART = ".jsonl.part"


class LocalExportFiles:
    """`ExportFiles` under one directory of the data dir."""

    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self._root = root
        self._floor = min_free_bytes

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
            return _Writer(part, self._path(tenant, export_id, _DONE), self._floor)
        except OSError as err:
            raise _io_error(err, part, self._floor) from err

    async def read(self, tenant: Tenant, export_id: str, offset: int) -> AsyncIterator[bytes]:
        path = self._path(tenant, export_id, _DONE)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise NotFound("the export's file is gone (expired or deleted)") from None
        with f:
            f.seek(offset)
            while piece := await asyncio.to_thread(f.read, PIECE):
                yield piece

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


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _io_error(err: OSError, path: Path, floor: int) -> DomainError:
    return write_error(err, path, floor, "exports")
