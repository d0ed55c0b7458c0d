"""The memory rules, one module per job:

- `model`: what a client asks to write or change, what a call answers,
  the quota defaults, the project and metering ports;
- `validation`: content, id fields, tags, metadata keys and sizes, TTL,
  a client's vector, the update mask;
- `filters`: the filter rule of every method that takes one;
- `quota`: effective project quotas, the per-environment memory count;
- `dedupe`: near-duplicates on write, stored or earlier in the same write;
- `create`, `update`, `reads`, `search`: the work of each kind of call;
- `export_import`: export pages and import chunks;
- `recording`: every change's events in the change log; `snapshot` the
  memory's API form they keep; `matching` the filter evaluated on one
  memory (a watcher's events);
- `service`: `MemoryService`, the calls' policy (scopes, end users, audit),
  composing the others.
"""

from __future__ import annotations

from memoryd.domain.memories.dedupe import first_near_duplicates
from memoryd.domain.memories.filters import (
    MAX_FILTER_CONDITIONS,
    MAX_FILTER_DEPTH,
    raise_filter_violations,
    validate_filter,
)
from memoryd.domain.memories.model import (
    Created,
    Defaults,
    ImportSummary,
    MemoryPage,
    MemoryUpdate,
    NewMemory,
    ProjectSource,
    WriteMeter,
)
from memoryd.domain.memories.service import MemoryService

__all__ = [
    "MAX_FILTER_CONDITIONS",
    "MAX_FILTER_DEPTH",
    "Created",
    "Defaults",
    "ImportSummary",
    "MemoryPage",
    "MemoryService",
    "MemoryUpdate",
    "NewMemory",
    "ProjectSource",
    "WriteMeter",
    "first_near_duplicates",
    "raise_filter_violations",
    "validate_filter",
]
