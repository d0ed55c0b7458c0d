"""WatchMemories: change events streamed to watchers from the change log
(`memoryd.domain.changes`).

- `service`: `WatchService`, the call's policy, where a stream starts, the
  filter and event types, OUT_OF_RANGE behind the retention;
- `hub`: `WatchHub`, the process's watchers, their wake-ups (in-process on
  append, polling for other replicas), the cap, shutdown;
- `tokens`: `ResumeTokens`, opaque, signed and encrypted positions.
"""

from __future__ import annotations

from memoryd.domain.watch.hub import WatchHub
from memoryd.domain.watch.service import Delivered, WatchRequest, WatchService
from memoryd.domain.watch.tokens import ResumeTokens

__all__ = ["Delivered", "ResumeTokens", "WatchHub", "WatchRequest", "WatchService"]
