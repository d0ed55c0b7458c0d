"""The write rules of a memory: content, id fields, tags, metadata keys and
sizes, a client's embedding, TTL and expiry, its time of truth, and the
update mask. Each rule
adds field violations; the callers raise them together (InvalidArgument),
or, for sizes, ResourceExhausted with the quota that was hit."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from memoryd.domain.control import Project
from memoryd.domain.errors import QuotaViolation, ResourceExhausted, Violations
from memoryd.domain.memories.model import UPDATABLE_FIELDS, MemoryUpdate, NewMemory
from memoryd.domain.memory import METADATA_KEY_FORBIDDEN

MAX_TAGS = 64
MAX_TAG_LEN = 128
MAX_ID_FIELD_LEN = 256
MAX_METADATA_KEY_LEN = 128
MAX_TTL = timedelta(days=3650)
KEY_HELP = "keys must not contain '\\' or '\"' (a filter could not name them)"
# The times of truth (valid_time, invalid_time) a memory may have: reads
# compare them exactly only within 2**53 microseconds of 1970 (1684 to 2255).
EARLIEST_TRUTH_TIME = datetime(1700, 1, 1, tzinfo=UTC)
LATEST_TRUTH_TIME = datetime(2200, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SizeLimits:
    """A project's byte limits of one memory (see `quota.size_limits`)."""

    content_bytes: int
    metadata_bytes: int

    def check(self, content: str, metadata: Mapping[str, Any]) -> None:
        """Raises ResourceExhausted (CONTENT_TOO_LARGE, METADATA_TOO_LARGE)
        when the content, or the metadata as compact JSON, is over its limit."""
        size = len(content.encode())
        if size > self.content_bytes:
            raise ResourceExhausted(
                f"content is {size} bytes; this project allows {self.content_bytes} per memory",
                [QuotaViolation("memory.content", f"max_content_bytes={self.content_bytes}")],
                reason="CONTENT_TOO_LARGE",
            )
        size = len(json.dumps(metadata, separators=(",", ":")).encode()) if metadata else 0
        if size > self.metadata_bytes:
            raise ResourceExhausted(
                f"metadata is {size} bytes as JSON; this project allows "
                f"{self.metadata_bytes} per memory",
                [QuotaViolation("memory.metadata", f"max_metadata_bytes={self.metadata_bytes}")],
                reason="METADATA_TOO_LARGE",
            )


def validate_new(
    item: NewMemory, project: Project, now: datetime, prefix: str, dimension: int
) -> datetime | None:
    """Raises InvalidArgument for every bad field of `item` (names prefixed
    with `prefix`, e.g. "requests[3]."); returns its expiry: `expire_time`,
    now + `ttl`, or now + the project's default TTL, or None."""
    v = Violations()
    if not item.content.strip():
        v.add(f"{prefix}memory.content", "is required and must not be blank")
    check_fields(v, prefix + "memory.", item.agent_id, item.thread_id, item.source, item.tags)
    check_metadata(v, prefix + "memory.metadata", item.metadata)
    if item.embedding:
        check_vector(v, f"{prefix}memory.embedding", item.embedding, dimension)
    if item.dedupe_threshold and not 0.0 < item.dedupe_threshold <= 1.0:
        v.add(f"{prefix}dedupe_threshold", "must be in (0, 1]")
    expire = _expiry(v, item, project, now, prefix)
    check_truth_times(v, f"{prefix}memory.", item.valid_time, item.invalid_time)
    if item.invalid_time is not None and item.invalid_time <= (item.valid_time or now):
        v.add(f"{prefix}memory.invalid_time", holds_help(item.valid_time is None))
    v.raise_if_any()
    return expire


def _expiry(
    v: Violations, item: NewMemory, project: Project, now: datetime, prefix: str
) -> datetime | None:
    expire = item.expire_time
    if item.ttl is not None:
        if item.expire_time is not None:
            v.add(f"{prefix}ttl", "give ttl or memory.expire_time, not both")
        elif not timedelta(0) < item.ttl <= MAX_TTL:
            v.add(f"{prefix}ttl", "must be positive and at most 3650 days")
        else:
            expire = now + item.ttl
    elif expire is None and project.settings.default_ttl is not None:
        expire = now + project.settings.default_ttl
    if item.expire_time is not None and item.expire_time <= now:
        v.add(f"{prefix}memory.expire_time", "must be in the future")
    elif item.expire_time is not None and item.expire_time > now + MAX_TTL:
        v.add(f"{prefix}memory.expire_time", "must be at most 3650 days ahead")
    return expire


def validate_update(update: MemoryUpdate, now: datetime, dimension: int) -> None:
    """Raises InvalidArgument for a bad update mask, then (the mask being
    good) for every bad field value of `update`."""
    v = Violations()
    if not update.paths:
        v.add("update_mask", f"is required; allowed: {', '.join(sorted(UPDATABLE_FIELDS))}")
    for i, path in enumerate(update.paths):
        if path not in UPDATABLE_FIELDS:
            v.add(
                f"update_mask.paths[{i}]",
                f"{path!r} cannot be updated; allowed: {', '.join(sorted(UPDATABLE_FIELDS))}",
            )
    v.raise_if_any()
    paths = update.paths
    if "content" in paths and not update.content.strip():
        v.add("memory.content", "must not be blank")
    check_fields(v, "memory.", update.agent_id, update.thread_id, update.source, update.tags)
    check_metadata(v, "memory.metadata", update.metadata)
    if "embedding" in paths:
        check_vector(v, "memory.embedding", update.embedding, dimension)
    if "expire_time" in paths and update.expire_time is not None:
        if update.expire_time <= now:
            v.add("memory.expire_time", "must be in the future (or unset to never expire)")
        elif update.expire_time > now + MAX_TTL:
            v.add("memory.expire_time", "must be at most 3650 days ahead")
    check_truth_times(
        v,
        "memory.",
        update.valid_time if "valid_time" in paths else None,
        update.invalid_time if "invalid_time" in paths else None,
    )
    v.raise_if_any()


def check_truth_times(
    v: Violations, prefix: str, valid_time: datetime | None, invalid_time: datetime | None
) -> None:
    """Each given time of truth within the bounds a memory may have."""
    for name, t in (("valid_time", valid_time), ("invalid_time", invalid_time)):
        if t is not None and not EARLIEST_TRUTH_TIME <= t < LATEST_TRUTH_TIME:
            v.add(
                prefix + name,
                f"must be from {EARLIEST_TRUTH_TIME.year} up to {LATEST_TRUTH_TIME.year}",
            )


def holds_help(from_creation: bool) -> str:
    """What a time of truth that leaves a memory holding at no time is told."""
    if from_creation:
        return "must be after valid_time (unset: the memory's create time)"
    return "must be after valid_time (a memory holds from valid_time until invalid_time)"


def check_fields(
    v: Violations, prefix: str, agent_id: str, thread_id: str, source: str, tags: Sequence[str]
) -> None:
    for name, value in (("agent_id", agent_id), ("thread_id", thread_id), ("source", source)):
        if len(value) > MAX_ID_FIELD_LEN:
            v.add(prefix + name, f"must be at most {MAX_ID_FIELD_LEN} characters")
    if len(tags) > MAX_TAGS:
        v.add(prefix + "tags", f"at most {MAX_TAGS} tags")
    for i, tag in enumerate(tags):
        if not tag or len(tag) > MAX_TAG_LEN:
            v.add(f"{prefix}tags[{i}]", f"must be 1 to {MAX_TAG_LEN} characters")


def check_metadata(v: Violations, name: str, metadata: Mapping[str, Any]) -> None:
    for key in metadata:
        if not key or "." in key or len(key) > MAX_METADATA_KEY_LEN:
            v.add(
                f"{name}.{key}",
                f"keys must be 1 to {MAX_METADATA_KEY_LEN} characters without '.'",
            )
    _check_nested_keys(v, name, metadata)


def _check_nested_keys(v: Violations, name: str, value: Any) -> None:
    """Refuses keys a filter path cannot name, at every depth (a filter can
    name nested keys: `metadata.a.b`)."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            here = f"{name}.{key!s}"
            if any(c in str(key) for c in METADATA_KEY_FORBIDDEN):
                v.add(here, KEY_HELP)
            _check_nested_keys(v, here, inner)
    elif isinstance(value, list | tuple):
        for i, inner in enumerate(value):
            _check_nested_keys(v, f"{name}[{i}]", inner)


def check_vector(v: Violations, name: str, vector: Sequence[float], dimension: int) -> None:
    """A client's vector: of the model's dimension, finite, not all zeros."""
    if len(vector) != dimension:
        v.add(name, f"has {len(vector)} values; this server's model has dimension {dimension}")
    elif not all(map(math.isfinite, vector)):
        v.add(name, "must hold finite numbers (no NaN or infinity)")
    elif not any(vector):
        v.add(name, "must not be all zeros")
