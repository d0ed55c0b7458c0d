"""Files that hold a document's bytes until its ingest job has read them:
`<root>/<operation id>`, written as they arrive (an upload is never held
whole in memory), synced before the operation is stored, removed when the
operation ends."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import IO

from memoryd.domain.errors import DomainError
from memoryd.storage.disk import check_free_space, write_error

_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HEAD = 8192


class LocalSpool:
    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self._root = root
        self._floor = min_free_bytes

    def path(self, op_id: str) -> Path:
        if not _SAFE.match(op_id):
            raise ValueError(f"not a server-made id: {op_id!r}")
        return self._root / op_id

    def create(self, op_id: str) -> SpooledFile:
        self._root.mkdir(parents=True, exist_ok=True)
        check_free_space(self._root, self._floor, what="document uploads")
        return SpooledFile(self.path(op_id), self._floor)

    def remove(self, op_id: str) -> None:
        self.path(op_id).unlink(missing_ok=True)


class SpooledFile:
    def __init__(self, path: Path, floor: int) -> None:
        self._path = path
        self._floor = floor
        self._digest = hashlib.sha256()
        self._head = b""
        self.size = 0
        try:
            self._f: IO[bytes] | None = path.open("wb")
        except OSError as err:
            raise _io_error(err, path, floor) from err

    @property
    def head(self) -> bytes:
        return self._head

    def write(self, data: bytes) -> None:
        assert self._f is not None, "written after finish or discard"
        try:
            self._f.write(data)
        except OSError as err:
            raise _io_error(err, self._path, self._floor) from err
        if len(self._head) < _HEAD:
            self._head += data[: _HEAD - len(self._head)]
        self._digest.update(data)
        self.size += len(data)

    def finish(self) -> str:
        if self._f is not None:
            try:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
            except OSError as err:
                raise _io_error(err, self._path, self._floor) from err
            self._f = None
        return self._digest.hexdigest()

    def discard(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._path.unlink(missing_ok=True)


def _io_error(err: OSError, path: Path, floor: int) -> DomainError:
    return write_error(err, path, floor, "document uploads")
