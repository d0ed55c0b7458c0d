"""Protobuf ⇄ domain values for the control plane."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from memoryd.domain.control import (
    ApiKeyRecord,
    AuditEvent,
    Environment,
    Project,
    ProjectSettings,
    Quotas,
    RateLimits,
)
from memoryd.domain.errors import InvalidArgument
from memoryd.domain.keys import key_state
from memoryd.domain.prompts import Prompt
from memoryd.domain.tenancy import EnvironmentKind, KeyKind
from memoryd.v1 import admin_pb2, keys_pb2, tenancy_pb2

_ENV_KIND_TO_PB = {
    EnvironmentKind.LIVE: tenancy_pb2.ENVIRONMENT_KIND_LIVE,
    EnvironmentKind.TEST: tenancy_pb2.ENVIRONMENT_KIND_TEST,
    EnvironmentKind.DEV: tenancy_pb2.ENVIRONMENT_KIND_DEV,
}
_ENV_KIND_FROM_PB = {v: k for k, v in _ENV_KIND_TO_PB.items()}
_KEY_KIND_TO_PB = {KeyKind.DATA: keys_pb2.KEY_KIND_DATA, KeyKind.ORG: keys_pb2.KEY_KIND_ORG}
_KEY_STATE_TO_PB = {
    "active": keys_pb2.KEY_STATE_ACTIVE,
    "revoked": keys_pb2.KEY_STATE_REVOKED,
    "expired": keys_pb2.KEY_STATE_EXPIRED,
}
MAX_TIMESTAMP = datetime(9999, 12, 31, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """The Timestamp of `value` (a naive datetime is taken as UTC, as
    `Timestamp.FromDatetime` does). Computed from the difference to the
    epoch: FromDatetime (pure Python in protobuf) cost ~4x as much, and a
    search answer carries five timestamps per result (issue 16)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    since = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
    )


def from_ts(msg: timestamp_pb2.Timestamp, field: str) -> datetime:
    try:
        if msg.nanos < 0 or msg.nanos >= 1_000_000_000:
            raise ValueError
        return msg.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument.field(field, "is not a valid timestamp") from None


def opt_ts(parent: object, name: str, field: str) -> datetime | None:
    """A Timestamp field of `parent`, or None when unset."""
    if not parent.HasField(name):  # type: ignore[attr-defined]
        return None
    return from_ts(getattr(parent, name), field)


def duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    out = duration_pb2.Duration()
    out.FromTimedelta(value)
    return out


def from_duration(msg: duration_pb2.Duration, field: str) -> timedelta:
    try:
        if abs(msg.seconds) > 315_576_000_000 or abs(msg.nanos) >= 1_000_000_000:
            raise ValueError
        return msg.ToTimedelta()
    except (ValueError, OverflowError):
        raise InvalidArgument.field(field, "is not a valid duration") from None


def env_kind_to_pb(kind: EnvironmentKind | None) -> int:
    return _ENV_KIND_TO_PB.get(kind, tenancy_pb2.ENVIRONMENT_KIND_UNSPECIFIED) if kind else 0


def env_kind_from_pb(value: int) -> EnvironmentKind | None:
    return _ENV_KIND_FROM_PB.get(value)  # type: ignore[call-overload,no-any-return]


def api_key(record: ApiKeyRecord, now: datetime) -> keys_pb2.ApiKey:
    return keys_pb2.ApiKey(
        id=record.id,
        name=record.name,
        prefix=f"ms_{record.prefix_kind}_{record.id}",
        scopes=list(record.scopes),
        kind=_KEY_KIND_TO_PB[record.kind],
        project_id=record.project_id,
        environment_id=record.environment_id,
        environment_kind=env_kind_to_pb(record.environment_kind),  # type: ignore[arg-type]
        state=_KEY_STATE_TO_PB[key_state(record, now)],
        create_time=ts(record.create_time),
        expire_time=ts(record.expire_time),
        last_used_time=ts(record.last_used_time),
        revoke_time=ts(record.revoke_time),
        rotate_time=ts(record.rotate_time),
        previous_secret_expire_time=ts(record.previous_secret_expire_time),
        created_by=record.created_by,
    )


def environment(env: Environment) -> admin_pb2.Environment:
    return admin_pb2.Environment(
        id=env.id,
        project_id=env.project_id,
        name=env.name,
        kind=env_kind_to_pb(env.kind),  # type: ignore[arg-type]
        create_time=ts(env.create_time),
        delete_time=ts(env.delete_time),
        purge_time=ts(env.purge_time),
    )


def project(p: Project) -> admin_pb2.Project:
    s = p.settings
    return admin_pb2.Project(
        id=p.id,
        name=p.name,
        display_name=p.display_name,
        settings=admin_pb2.ProjectSettings(
            require_end_user_id=s.require_end_user_id,
            dedupe_threshold=s.dedupe_threshold,
            default_ttl=duration(s.default_ttl),
            deletion_retention_days=s.deletion_retention_days,
        ),
        rate_limits=admin_pb2.RateLimits(**vars(p.rate_limits)),
        quotas=admin_pb2.Quotas(**vars(p.quotas)),
        environments=[environment(e) for e in p.environments],
        create_time=ts(p.create_time),
        update_time=ts(p.update_time),
        delete_time=ts(p.delete_time),
        purge_time=ts(p.purge_time),
    )


def project_from_pb(msg: admin_pb2.Project) -> Project:
    """A draft or a set of changes; server-owned fields are left empty."""
    s = msg.settings
    ttl = (
        from_duration(s.default_ttl, "project.settings.default_ttl")
        if s.HasField("default_ttl")
        else None
    )
    r, q = msg.rate_limits, msg.quotas
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return Project(
        id=msg.id,
        org_id="",
        name=msg.name,
        display_name=msg.display_name,
        settings=ProjectSettings(
            require_end_user_id=s.require_end_user_id,
            dedupe_threshold=s.dedupe_threshold,
            default_ttl=ttl,
            deletion_retention_days=(
                s.deletion_retention_days if s.HasField("deletion_retention_days") else None
            ),
        ),
        rate_limits=RateLimits(
            project_requests_per_second=r.project_requests_per_second,
            project_burst=r.project_burst,
            key_requests_per_second=r.key_requests_per_second,
            key_burst=r.key_burst,
        ),
        quotas=Quotas(
            max_memories_per_environment=q.max_memories_per_environment,
            max_content_bytes=q.max_content_bytes,
            max_metadata_bytes=q.max_metadata_bytes,
            llm_tokens_per_day=q.llm_tokens_per_day,
        ),
        create_time=epoch,
        update_time=epoch,
    )


def audit_event(e: AuditEvent) -> admin_pb2.AuditEvent:
    return admin_pb2.AuditEvent(
        id=e.id,
        time=ts(e.time),
        actor_key_id=e.actor_key_id,
        organization_id=e.org_id,
        project_id=e.project_id,
        environment_id=e.environment_id,
        action=e.action,
        target=e.target,
        request_id=e.request_id,
        peer=e.peer,
        outcome=e.outcome,
        details=e.details,
    )


def prompt(p: Prompt) -> admin_pb2.Prompt:
    return admin_pb2.Prompt(
        name=p.name,
        project_id=p.project_id,
        environment_id=p.environment_id,
        version=p.version,
        text=p.text,
        create_time=ts(p.create_time),
    )
