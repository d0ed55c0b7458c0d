"""The audit log as a JSON-lines file, for a SIEM (`MEMORYD_AUDIT_LOG`).

One event per line, its fields as `AuditEvent` names them and `time` in ISO
8601. The file is opened for append per event and written off the event
loop; a lock keeps the lines of concurrent events whole and in order.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from memoryd.domain.control import AuditEvent


class JsonLinesAuditFile:
    """The `AuditSink` port on a file (created on the first event)."""

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._lock = asyncio.Lock()

    async def append(self, event: AuditEvent) -> None:
        line = json.dumps({**vars(event), "time": event.time.isoformat()}, separators=(",", ":"))
        async with self._lock:
            await asyncio.to_thread(self._append_line, line)

    def _append_line(self, line: str) -> None:
        with self._path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
