import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from memoryd.v1 import tenancy_pb2 as _tenancy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EncryptionKey(_message.Message):
    __slots__ = ("kek_ref", "version", "data_keys", "stale_data_keys", "update_time", "encryption_enabled")
    KEK_REF_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    STALE_DATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_ENABLED_FIELD_NUMBER: _ClassVar[int]
    kek_ref: str
    version: int
    data_keys: int
    stale_data_keys: int
    update_time: _timestamp_pb2.Timestamp
    encryption_enabled: bool
    def __init__(self, kek_ref: _Optional[str] = ..., version: _Optional[int] = ..., data_keys: _Optional[int] = ..., stale_data_keys: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., encryption_enabled: _Optional[bool] = ...) -> None: ...

class GetEncryptionKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetEncryptionKeyRequest(_message.Message):
    __slots__ = ("kek_ref",)
    KEK_REF_FIELD_NUMBER: _ClassVar[int]
    kek_ref: str
    def __init__(self, kek_ref: _Optional[str] = ...) -> None: ...

class RotateEncryptionKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RewrapEncryptionKeysResponse(_message.Message):
    __slots__ = ("encryption_key", "rewrapped_data_keys")
    ENCRYPTION_KEY_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_DATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    encryption_key: EncryptionKey
    rewrapped_data_keys: int
    def __init__(self, encryption_key: _Optional[_Union[EncryptionKey, _Mapping]] = ..., rewrapped_data_keys: _Optional[int] = ...) -> None: ...

class LegalHold(_message.Message):
    __slots__ = ("id", "project_id", "environment_id", "end_user_id", "reason", "created_by", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    END_USER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    project_id: str
    environment_id: str
    end_user_id: str
    reason: str
    created_by: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., end_user_id: _Optional[str] = ..., reason: _Optional[str] = ..., created_by: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetLegalHoldRequest(_message.Message):
    __slots__ = ("legal_hold",)
    LEGAL_HOLD_FIELD_NUMBER: _ClassVar[int]
    legal_hold: LegalHold
    def __init__(self, legal_hold: _Optional[_Union[LegalHold, _Mapping]] = ...) -> None: ...

class ReleaseLegalHoldRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListLegalHoldsRequest(_message.Message):
    __slots__ = ("project_id", "environment_id", "page_size", "page_token")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    page_size: int
    page_token: str
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLegalHoldsResponse(_message.Message):
    __slots__ = ("legal_holds", "next_page_token")
    LEGAL_HOLDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    legal_holds: _containers.RepeatedCompositeFieldContainer[LegalHold]
    next_page_token: str
    def __init__(self, legal_holds: _Optional[_Iterable[_Union[LegalHold, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ProjectSettings(_message.Message):
    __slots__ = ("require_end_user_id", "dedupe_threshold", "default_ttl", "deletion_retention_days")
    REQUIRE_END_USER_ID_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TTL_FIELD_NUMBER: _ClassVar[int]
    DELETION_RETENTION_DAYS_FIELD_NUMBER: _ClassVar[int]
    require_end_user_id: bool
    dedupe_threshold: float
    default_ttl: _duration_pb2.Duration
    deletion_retention_days: int
    def __init__(self, require_end_user_id: _Optional[bool] = ..., dedupe_threshold: _Optional[float] = ..., default_ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., deletion_retention_days: _Optional[int] = ...) -> None: ...

class RateLimits(_message.Message):
    __slots__ = ("project_requests_per_second", "project_burst", "key_requests_per_second", "key_burst")
    PROJECT_REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    PROJECT_BURST_FIELD_NUMBER: _ClassVar[int]
    KEY_REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    KEY_BURST_FIELD_NUMBER: _ClassVar[int]
    project_requests_per_second: float
    project_burst: int
    key_requests_per_second: float
    key_burst: int
    def __init__(self, project_requests_per_second: _Optional[float] = ..., project_burst: _Optional[int] = ..., key_requests_per_second: _Optional[float] = ..., key_burst: _Optional[int] = ...) -> None: ...

class Quotas(_message.Message):
    __slots__ = ("max_memories_per_environment", "max_content_bytes", "max_metadata_bytes", "llm_tokens_per_day")
    MAX_MEMORIES_PER_ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_METADATA_BYTES_FIELD_NUMBER: _ClassVar[int]
    LLM_TOKENS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    max_memories_per_environment: int
    max_content_bytes: int
    max_metadata_bytes: int
    llm_tokens_per_day: int
    def __init__(self, max_memories_per_environment: _Optional[int] = ..., max_content_bytes: _Optional[int] = ..., max_metadata_bytes: _Optional[int] = ..., llm_tokens_per_day: _Optional[int] = ...) -> None: ...

class Project(_message.Message):
    __slots__ = ("id", "name", "display_name", "settings", "rate_limits", "quotas", "environments", "create_time", "update_time", "delete_time", "purge_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    PURGE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    display_name: str
    settings: ProjectSettings
    rate_limits: RateLimits
    quotas: Quotas
    environments: _containers.RepeatedCompositeFieldContainer[Environment]
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    delete_time: _timestamp_pb2.Timestamp
    purge_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., display_name: _Optional[str] = ..., settings: _Optional[_Union[ProjectSettings, _Mapping]] = ..., rate_limits: _Optional[_Union[RateLimits, _Mapping]] = ..., quotas: _Optional[_Union[Quotas, _Mapping]] = ..., environments: _Optional[_Iterable[_Union[Environment, _Mapping]]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., purge_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Environment(_message.Message):
    __slots__ = ("id", "project_id", "name", "kind", "create_time", "delete_time", "purge_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DELETE_TIME_FIELD_NUMBER: _ClassVar[int]
    PURGE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    project_id: str
    name: str
    kind: _tenancy_pb2.EnvironmentKind
    create_time: _timestamp_pb2.Timestamp
    delete_time: _timestamp_pb2.Timestamp
    purge_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., project_id: _Optional[str] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[_tenancy_pb2.EnvironmentKind, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., delete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., purge_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateProjectRequest(_message.Message):
    __slots__ = ("project",)
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    project: Project
    def __init__(self, project: _Optional[_Union[Project, _Mapping]] = ...) -> None: ...

class GetProjectRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListProjectsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "show_deleted")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHOW_DELETED_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    show_deleted: bool
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., show_deleted: _Optional[bool] = ...) -> None: ...

class ListProjectsResponse(_message.Message):
    __slots__ = ("projects", "next_page_token")
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    projects: _containers.RepeatedCompositeFieldContainer[Project]
    next_page_token: str
    def __init__(self, projects: _Optional[_Iterable[_Union[Project, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateProjectRequest(_message.Message):
    __slots__ = ("project", "update_mask")
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    project: Project
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, project: _Optional[_Union[Project, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteProjectRequest(_message.Message):
    __slots__ = ("id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class UndeleteProjectRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CreateEnvironmentRequest(_message.Message):
    __slots__ = ("project_id", "environment")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment: Environment
    def __init__(self, project_id: _Optional[str] = ..., environment: _Optional[_Union[Environment, _Mapping]] = ...) -> None: ...

class ListEnvironmentsRequest(_message.Message):
    __slots__ = ("project_id", "page_size", "page_token", "show_deleted")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHOW_DELETED_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    page_size: int
    page_token: str
    show_deleted: bool
    def __init__(self, project_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., show_deleted: _Optional[bool] = ...) -> None: ...

class ListEnvironmentsResponse(_message.Message):
    __slots__ = ("environments", "next_page_token")
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    environments: _containers.RepeatedCompositeFieldContainer[Environment]
    next_page_token: str
    def __init__(self, environments: _Optional[_Iterable[_Union[Environment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteEnvironmentRequest(_message.Message):
    __slots__ = ("id", "force")
    ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    force: bool
    def __init__(self, id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class UndeleteEnvironmentRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("project_id", "environment_id", "start_date", "end_date")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    start_date: str
    end_date: str
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("project_id", "environment_id", "date", "calls", "calls_by_method", "memories_written", "bytes_stored", "rate_limited_calls", "llm_input_tokens", "llm_output_tokens")
    class CallsByMethodEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CALLS_BY_METHOD_FIELD_NUMBER: _ClassVar[int]
    MEMORIES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_STORED_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_CALLS_FIELD_NUMBER: _ClassVar[int]
    LLM_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LLM_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    date: str
    calls: int
    calls_by_method: _containers.ScalarMap[str, int]
    memories_written: int
    bytes_stored: int
    rate_limited_calls: int
    llm_input_tokens: int
    llm_output_tokens: int
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., date: _Optional[str] = ..., calls: _Optional[int] = ..., calls_by_method: _Optional[_Mapping[str, int]] = ..., memories_written: _Optional[int] = ..., bytes_stored: _Optional[int] = ..., rate_limited_calls: _Optional[int] = ..., llm_input_tokens: _Optional[int] = ..., llm_output_tokens: _Optional[int] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[UsageRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[UsageRecord, _Mapping]]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("project_id", "environment_id", "actor_key_id", "action", "start_time", "end_time", "page_size", "page_token")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    actor_key_id: str
    action: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., actor_key_id: _Optional[str] = ..., action: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "time", "actor_key_id", "organization_id", "project_id", "environment_id", "action", "target", "request_id", "peer", "outcome", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    actor_key_id: str
    organization_id: str
    project_id: str
    environment_id: str
    action: str
    target: str
    request_id: str
    peer: str
    outcome: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor_key_id: _Optional[str] = ..., organization_id: _Optional[str] = ..., project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., request_id: _Optional[str] = ..., peer: _Optional[str] = ..., outcome: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("name", "project_id", "environment_id", "version", "text", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    project_id: str
    environment_id: str
    version: int
    text: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., version: _Optional[int] = ..., text: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreatePromptRequest(_message.Message):
    __slots__ = ("project_id", "environment_id", "prompt")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    prompt: Prompt
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ...) -> None: ...

class GetPromptRequest(_message.Message):
    __slots__ = ("project_id", "environment_id", "name", "version")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    name: str
    version: int
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListPromptsRequest(_message.Message):
    __slots__ = ("project_id", "environment_id")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ...) -> None: ...

class ListPromptsResponse(_message.Message):
    __slots__ = ("prompts",)
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[Prompt]
    def __init__(self, prompts: _Optional[_Iterable[_Union[Prompt, _Mapping]]] = ...) -> None: ...

class UpdatePromptRequest(_message.Message):
    __slots__ = ("project_id", "environment_id", "prompt")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    prompt: Prompt
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ...) -> None: ...

class DeletePromptRequest(_message.Message):
    __slots__ = ("project_id", "environment_id", "name")
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    project_id: str
    environment_id: str
    name: str
    def __init__(self, project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...
