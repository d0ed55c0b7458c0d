import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.longrunning import operations_pb2 as _operations_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_MODE_UNSPECIFIED: _ClassVar[SearchMode]
    SEMANTIC: _ClassVar[SearchMode]
    KEYWORD: _ClassVar[SearchMode]
    HYBRID: _ClassVar[SearchMode]

class ExportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_FORMAT_UNSPECIFIED: _ClassVar[ExportFormat]
    JSONL: _ClassVar[ExportFormat]
SEARCH_MODE_UNSPECIFIED: SearchMode
SEMANTIC: SearchMode
KEYWORD: SearchMode
HYBRID: SearchMode
EXPORT_FORMAT_UNSPECIFIED: ExportFormat
JSONL: ExportFormat

class Memory(_message.Message):
    __slots__ = ("id", "content", "metadata", "agent_id", "thread_id", "source", "tags", "end_user_id", "project_id", "environment_id", "create_time", "update_time", "expire_time", "revision", "embedding", "valid_time", "invalid_time", "superseded_by", "origin")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    END_USER_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    VALID_TIME_FIELD_NUMBER: _ClassVar[int]
    INVALID_TIME_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_BY_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    id: str
    content: str
    metadata: _struct_pb2.Struct
    agent_id: str
    thread_id: str
    source: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    end_user_id: str
    project_id: str
    environment_id: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    revision: int
    embedding: _containers.RepeatedScalarFieldContainer[float]
    valid_time: _timestamp_pb2.Timestamp
    invalid_time: _timestamp_pb2.Timestamp
    superseded_by: str
    origin: MemoryOrigin
    def __init__(self, id: _Optional[str] = ..., content: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., agent_id: _Optional[str] = ..., thread_id: _Optional[str] = ..., source: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., end_user_id: _Optional[str] = ..., project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., embedding: _Optional[_Iterable[float]] = ..., valid_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., invalid_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., superseded_by: _Optional[str] = ..., origin: _Optional[_Union[MemoryOrigin, _Mapping]] = ...) -> None: ...

class MemoryOrigin(_message.Message):
    __slots__ = ("operation", "message_indexes", "thread_id", "extractor", "extractor_version", "prompt_versions", "writer_key_id")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_INDEXES_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    EXTRACTOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WRITER_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    operation: str
    message_indexes: _containers.RepeatedScalarFieldContainer[int]
    thread_id: str
    extractor: str
    extractor_version: str
    prompt_versions: _containers.RepeatedScalarFieldContainer[str]
    writer_key_id: str
    def __init__(self, operation: _Optional[str] = ..., message_indexes: _Optional[_Iterable[int]] = ..., thread_id: _Optional[str] = ..., extractor: _Optional[str] = ..., extractor_version: _Optional[str] = ..., prompt_versions: _Optional[_Iterable[str]] = ..., writer_key_id: _Optional[str] = ...) -> None: ...

class CreateMemoryRequest(_message.Message):
    __slots__ = ("memory", "ttl", "dedupe", "dedupe_threshold", "request_id")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_FIELD_NUMBER: _ClassVar[int]
    DEDUPE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    memory: Memory
    ttl: _duration_pb2.Duration
    dedupe: bool
    dedupe_threshold: float
    request_id: str
    def __init__(self, memory: _Optional[_Union[Memory, _Mapping]] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., dedupe: _Optional[bool] = ..., dedupe_threshold: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateMemoryResponse(_message.Message):
    __slots__ = ("memory", "deduplicated")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    memory: Memory
    deduplicated: bool
    def __init__(self, memory: _Optional[_Union[Memory, _Mapping]] = ..., deduplicated: _Optional[bool] = ...) -> None: ...

class BatchCreateMemoriesRequest(_message.Message):
    __slots__ = ("requests", "request_id")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[CreateMemoryRequest]
    request_id: str
    def __init__(self, requests: _Optional[_Iterable[_Union[CreateMemoryRequest, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class BatchCreateMemoriesResult(_message.Message):
    __slots__ = ("index", "memory", "deduplicated", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    memory: Memory
    deduplicated: bool
    error: _status_pb2.Status
    def __init__(self, index: _Optional[int] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ..., deduplicated: _Optional[bool] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class BatchCreateMemoriesResponse(_message.Message):
    __slots__ = ("results", "succeeded_count", "failed_count")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_COUNT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchCreateMemoriesResult]
    succeeded_count: int
    failed_count: int
    def __init__(self, results: _Optional[_Iterable[_Union[BatchCreateMemoriesResult, _Mapping]]] = ..., succeeded_count: _Optional[int] = ..., failed_count: _Optional[int] = ...) -> None: ...

class GetMemoryRequest(_message.Message):
    __slots__ = ("id", "include_embedding")
    ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    id: str
    include_embedding: bool
    def __init__(self, id: _Optional[str] = ..., include_embedding: _Optional[bool] = ...) -> None: ...

class UpdateMemoryRequest(_message.Message):
    __slots__ = ("memory", "update_mask")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    memory: Memory
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, memory: _Optional[_Union[Memory, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteMemoryRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class MemoryFilter(_message.Message):
    __slots__ = ("must", "should", "must_not")
    MUST_FIELD_NUMBER: _ClassVar[int]
    SHOULD_FIELD_NUMBER: _ClassVar[int]
    MUST_NOT_FIELD_NUMBER: _ClassVar[int]
    must: _containers.RepeatedCompositeFieldContainer[Condition]
    should: _containers.RepeatedCompositeFieldContainer[Condition]
    must_not: _containers.RepeatedCompositeFieldContainer[Condition]
    def __init__(self, must: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., should: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ..., must_not: _Optional[_Iterable[_Union[Condition, _Mapping]]] = ...) -> None: ...

class Condition(_message.Message):
    __slots__ = ("field", "equals", "any_of", "range", "time_range", "filter")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    field: str
    equals: _struct_pb2.Value
    any_of: _struct_pb2.ListValue
    range: NumberRange
    time_range: TimeRange
    filter: MemoryFilter
    def __init__(self, field: _Optional[str] = ..., equals: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., any_of: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., range: _Optional[_Union[NumberRange, _Mapping]] = ..., time_range: _Optional[_Union[TimeRange, _Mapping]] = ..., filter: _Optional[_Union[MemoryFilter, _Mapping]] = ...) -> None: ...

class NumberRange(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("start_time", "end_time")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMemoriesRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token", "include_invalidated", "as_of")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INVALIDATED_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    filter: MemoryFilter
    page_size: int
    page_token: str
    include_invalidated: bool
    as_of: _timestamp_pb2.Timestamp
    def __init__(self, filter: _Optional[_Union[MemoryFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_invalidated: _Optional[bool] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMemoriesResponse(_message.Message):
    __slots__ = ("memories", "next_page_token")
    MEMORIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    memories: _containers.RepeatedCompositeFieldContainer[Memory]
    next_page_token: str
    def __init__(self, memories: _Optional[_Iterable[_Union[Memory, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SearchMemoriesRequest(_message.Message):
    __slots__ = ("query", "query_embedding", "filter", "top_k", "min_score", "include_invalidated", "as_of", "mode", "recency_half_life", "diversity")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    QUERY_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_INVALIDATED_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RECENCY_HALF_LIFE_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    query: str
    query_embedding: _containers.RepeatedScalarFieldContainer[float]
    filter: MemoryFilter
    top_k: int
    min_score: float
    include_invalidated: bool
    as_of: _timestamp_pb2.Timestamp
    mode: SearchMode
    recency_half_life: _duration_pb2.Duration
    diversity: float
    def __init__(self, query: _Optional[str] = ..., query_embedding: _Optional[_Iterable[float]] = ..., filter: _Optional[_Union[MemoryFilter, _Mapping]] = ..., top_k: _Optional[int] = ..., min_score: _Optional[float] = ..., include_invalidated: _Optional[bool] = ..., as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mode: _Optional[_Union[SearchMode, str]] = ..., recency_half_life: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., diversity: _Optional[float] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("memory", "score", "project_id")
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    memory: Memory
    score: float
    project_id: str
    def __init__(self, memory: _Optional[_Union[Memory, _Mapping]] = ..., score: _Optional[float] = ..., project_id: _Optional[str] = ...) -> None: ...

class SearchMemoriesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ...) -> None: ...

class PurgeMemoriesRequest(_message.Message):
    __slots__ = ("filter", "dry_run", "all")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    filter: MemoryFilter
    dry_run: bool
    all: bool
    def __init__(self, filter: _Optional[_Union[MemoryFilter, _Mapping]] = ..., dry_run: _Optional[bool] = ..., all: _Optional[bool] = ...) -> None: ...

class PurgeMemoriesResponse(_message.Message):
    __slots__ = ("purged_count", "dry_run")
    PURGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    purged_count: int
    dry_run: bool
    def __init__(self, purged_count: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class MemoryRevision(_message.Message):
    __slots__ = ("memory_id", "revision", "content", "metadata", "tags", "agent_id", "thread_id", "source", "update_time", "replace_time")
    MEMORY_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REPLACE_TIME_FIELD_NUMBER: _ClassVar[int]
    memory_id: str
    revision: int
    content: str
    metadata: _struct_pb2.Struct
    tags: _containers.RepeatedScalarFieldContainer[str]
    agent_id: str
    thread_id: str
    source: str
    update_time: _timestamp_pb2.Timestamp
    replace_time: _timestamp_pb2.Timestamp
    def __init__(self, memory_id: _Optional[str] = ..., revision: _Optional[int] = ..., content: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., agent_id: _Optional[str] = ..., thread_id: _Optional[str] = ..., source: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replace_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListMemoryRevisionsRequest(_message.Message):
    __slots__ = ("id", "page_size", "page_token")
    ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    page_size: int
    page_token: str
    def __init__(self, id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListMemoryRevisionsResponse(_message.Message):
    __slots__ = ("revisions", "next_page_token")
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[MemoryRevision]
    next_page_token: str
    def __init__(self, revisions: _Optional[_Iterable[_Union[MemoryRevision, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportMemoriesRequest(_message.Message):
    __slots__ = ("filter", "include_embeddings")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    filter: MemoryFilter
    include_embeddings: bool
    def __init__(self, filter: _Optional[_Union[MemoryFilter, _Mapping]] = ..., include_embeddings: _Optional[bool] = ...) -> None: ...

class WatchMemoriesRequest(_message.Message):
    __slots__ = ("filter", "event_types", "resume_token", "start_time")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    filter: MemoryFilter
    event_types: _containers.RepeatedScalarFieldContainer[MemoryEvent.Type]
    resume_token: str
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, filter: _Optional[_Union[MemoryFilter, _Mapping]] = ..., event_types: _Optional[_Iterable[_Union[MemoryEvent.Type, str]]] = ..., resume_token: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class MemoryEvent(_message.Message):
    __slots__ = ("type", "memory", "memory_id", "time", "operation_id", "request_id", "resume_token", "document")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[MemoryEvent.Type]
        CREATED: _ClassVar[MemoryEvent.Type]
        UPDATED: _ClassVar[MemoryEvent.Type]
        SUPERSEDED: _ClassVar[MemoryEvent.Type]
        DELETED: _ClassVar[MemoryEvent.Type]
        EXPIRED: _ClassVar[MemoryEvent.Type]
        PURGED: _ClassVar[MemoryEvent.Type]
        DOCUMENT_READY: _ClassVar[MemoryEvent.Type]
        DOCUMENT_FAILED: _ClassVar[MemoryEvent.Type]
        DOCUMENT_DELETED: _ClassVar[MemoryEvent.Type]
    TYPE_UNSPECIFIED: MemoryEvent.Type
    CREATED: MemoryEvent.Type
    UPDATED: MemoryEvent.Type
    SUPERSEDED: MemoryEvent.Type
    DELETED: MemoryEvent.Type
    EXPIRED: MemoryEvent.Type
    PURGED: MemoryEvent.Type
    DOCUMENT_READY: MemoryEvent.Type
    DOCUMENT_FAILED: MemoryEvent.Type
    DOCUMENT_DELETED: MemoryEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    OPERATION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    type: MemoryEvent.Type
    memory: Memory
    memory_id: str
    time: _timestamp_pb2.Timestamp
    operation_id: str
    request_id: str
    resume_token: str
    document: DocumentChange
    def __init__(self, type: _Optional[_Union[MemoryEvent.Type, str]] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ..., memory_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., operation_id: _Optional[str] = ..., request_id: _Optional[str] = ..., resume_token: _Optional[str] = ..., document: _Optional[_Union[DocumentChange, _Mapping]] = ...) -> None: ...

class DocumentChange(_message.Message):
    __slots__ = ("document", "document_id", "display_name", "folder", "state", "chunk_count", "error")
    DOCUMENT_FIELD_NUMBER: _ClassVar[int]
    DOCUMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    document: str
    document_id: str
    display_name: str
    folder: str
    state: str
    chunk_count: int
    error: str
    def __init__(self, document: _Optional[str] = ..., document_id: _Optional[str] = ..., display_name: _Optional[str] = ..., folder: _Optional[str] = ..., state: _Optional[str] = ..., chunk_count: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ImportMemoriesRequest(_message.Message):
    __slots__ = ("memory",)
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    memory: Memory
    def __init__(self, memory: _Optional[_Union[Memory, _Mapping]] = ...) -> None: ...

class ImportError(_message.Message):
    __slots__ = ("index", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    error: _status_pb2.Status
    def __init__(self, index: _Optional[int] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ImportMemoriesResponse(_message.Message):
    __slots__ = ("imported_count", "failed_count", "errors")
    IMPORTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    imported_count: int
    failed_count: int
    errors: _containers.RepeatedCompositeFieldContainer[ImportError]
    def __init__(self, imported_count: _Optional[int] = ..., failed_count: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[ImportError, _Mapping]]] = ...) -> None: ...

class Message(_message.Message):
    __slots__ = ("role", "content", "name", "create_time")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    name: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ..., name: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AddMessagesRequest(_message.Message):
    __slots__ = ("messages", "agent_id", "thread_id", "source", "metadata", "infer", "request_id", "tags")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    INFER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    agent_id: str
    thread_id: str
    source: str
    metadata: _struct_pb2.Struct
    infer: bool
    request_id: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., agent_id: _Optional[str] = ..., thread_id: _Optional[str] = ..., source: _Optional[str] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., infer: _Optional[bool] = ..., request_id: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class AddMessagesResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[MemoryDecision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[MemoryDecision, _Mapping]]] = ...) -> None: ...

class MemoryDecision(_message.Message):
    __slots__ = ("event", "memory", "previous_memory_id", "reason", "fact")
    class Event(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        EVENT_UNSPECIFIED: _ClassVar[MemoryDecision.Event]
        ADD: _ClassVar[MemoryDecision.Event]
        UPDATE: _ClassVar[MemoryDecision.Event]
        SUPERSEDE: _ClassVar[MemoryDecision.Event]
        DELETE: _ClassVar[MemoryDecision.Event]
        NONE: _ClassVar[MemoryDecision.Event]
    EVENT_UNSPECIFIED: MemoryDecision.Event
    ADD: MemoryDecision.Event
    UPDATE: MemoryDecision.Event
    SUPERSEDE: MemoryDecision.Event
    DELETE: MemoryDecision.Event
    NONE: MemoryDecision.Event
    EVENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MEMORY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FACT_FIELD_NUMBER: _ClassVar[int]
    event: MemoryDecision.Event
    memory: Memory
    previous_memory_id: str
    reason: str
    fact: str
    def __init__(self, event: _Optional[_Union[MemoryDecision.Event, str]] = ..., memory: _Optional[_Union[Memory, _Mapping]] = ..., previous_memory_id: _Optional[str] = ..., reason: _Optional[str] = ..., fact: _Optional[str] = ...) -> None: ...

class AddMessagesMetadata(_message.Message):
    __slots__ = ("state", "progress_percent", "create_time", "start_time", "end_time", "llm_input_tokens", "llm_output_tokens", "attempts", "extractor", "prompt_versions", "message_count", "thread_id")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[AddMessagesMetadata.State]
        PENDING: _ClassVar[AddMessagesMetadata.State]
        RUNNING: _ClassVar[AddMessagesMetadata.State]
        SUCCEEDED: _ClassVar[AddMessagesMetadata.State]
        FAILED: _ClassVar[AddMessagesMetadata.State]
        CANCELLED: _ClassVar[AddMessagesMetadata.State]
    STATE_UNSPECIFIED: AddMessagesMetadata.State
    PENDING: AddMessagesMetadata.State
    RUNNING: AddMessagesMetadata.State
    SUCCEEDED: AddMessagesMetadata.State
    FAILED: AddMessagesMetadata.State
    CANCELLED: AddMessagesMetadata.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LLM_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LLM_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    PROMPT_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    state: AddMessagesMetadata.State
    progress_percent: int
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    llm_input_tokens: int
    llm_output_tokens: int
    attempts: int
    extractor: str
    prompt_versions: _containers.RepeatedScalarFieldContainer[str]
    message_count: int
    thread_id: str
    def __init__(self, state: _Optional[_Union[AddMessagesMetadata.State, str]] = ..., progress_percent: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., llm_input_tokens: _Optional[int] = ..., llm_output_tokens: _Optional[int] = ..., attempts: _Optional[int] = ..., extractor: _Optional[str] = ..., prompt_versions: _Optional[_Iterable[str]] = ..., message_count: _Optional[int] = ..., thread_id: _Optional[str] = ...) -> None: ...

class CreateExportRequest(_message.Message):
    __slots__ = ("filter", "format", "include_embeddings", "description")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    filter: MemoryFilter
    format: ExportFormat
    include_embeddings: bool
    description: str
    def __init__(self, filter: _Optional[_Union[MemoryFilter, _Mapping]] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., include_embeddings: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class Export(_message.Message):
    __slots__ = ("name", "state", "format", "include_embeddings", "description", "memory_count", "size_bytes", "sha256", "create_time", "complete_time", "expire_time", "expired")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: ExportMetadata.State
    format: ExportFormat
    include_embeddings: bool
    description: str
    memory_count: int
    size_bytes: int
    sha256: str
    create_time: _timestamp_pb2.Timestamp
    complete_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    expired: bool
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[ExportMetadata.State, str]] = ..., format: _Optional[_Union[ExportFormat, str]] = ..., include_embeddings: _Optional[bool] = ..., description: _Optional[str] = ..., memory_count: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., complete_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expired: _Optional[bool] = ...) -> None: ...

class ExportMetadata(_message.Message):
    __slots__ = ("state", "memories_written", "bytes_written", "create_time", "start_time", "end_time", "attempts")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ExportMetadata.State]
        PENDING: _ClassVar[ExportMetadata.State]
        RUNNING: _ClassVar[ExportMetadata.State]
        SUCCEEDED: _ClassVar[ExportMetadata.State]
        FAILED: _ClassVar[ExportMetadata.State]
        CANCELLED: _ClassVar[ExportMetadata.State]
    STATE_UNSPECIFIED: ExportMetadata.State
    PENDING: ExportMetadata.State
    RUNNING: ExportMetadata.State
    SUCCEEDED: ExportMetadata.State
    FAILED: ExportMetadata.State
    CANCELLED: ExportMetadata.State
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEMORIES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    state: ExportMetadata.State
    memories_written: int
    bytes_written: int
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    attempts: int
    def __init__(self, state: _Optional[_Union[ExportMetadata.State, str]] = ..., memories_written: _Optional[int] = ..., bytes_written: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ...) -> None: ...

class ListExportsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListExportsResponse(_message.Message):
    __slots__ = ("exports", "next_page_token")
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    exports: _containers.RepeatedCompositeFieldContainer[Export]
    next_page_token: str
    def __init__(self, exports: _Optional[_Iterable[_Union[Export, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReadExportRequest(_message.Message):
    __slots__ = ("name", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ReadExportResponse(_message.Message):
    __slots__ = ("offset", "data")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class EraseEndUserRequest(_message.Message):
    __slots__ = ("end_user_id", "project_id", "environment_id", "request_id")
    END_USER_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    end_user_id: str
    project_id: str
    environment_id: str
    request_id: str
    def __init__(self, end_user_id: _Optional[str] = ..., project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ErasureReceipt(_message.Message):
    __slots__ = ("org_id", "project_id", "environment_id", "end_user_hash", "memories", "revisions", "chunks", "conversation_messages", "operations", "change_events", "webhook_deliveries", "cache_entries", "start_time", "finish_time", "verified", "vacuum_time", "vacuum", "digest", "documents", "export_files")
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    END_USER_HASH_FIELD_NUMBER: _ClassVar[int]
    MEMORIES_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_MESSAGES_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    CHANGE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_DELIVERIES_FIELD_NUMBER: _ClassVar[int]
    CACHE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    VACUUM_TIME_FIELD_NUMBER: _ClassVar[int]
    VACUUM_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DOCUMENTS_FIELD_NUMBER: _ClassVar[int]
    EXPORT_FILES_FIELD_NUMBER: _ClassVar[int]
    org_id: str
    project_id: str
    environment_id: str
    end_user_hash: str
    memories: int
    revisions: int
    chunks: int
    conversation_messages: int
    operations: int
    change_events: int
    webhook_deliveries: int
    cache_entries: int
    start_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    verified: bool
    vacuum_time: _timestamp_pb2.Timestamp
    vacuum: str
    digest: str
    documents: int
    export_files: int
    def __init__(self, org_id: _Optional[str] = ..., project_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., end_user_hash: _Optional[str] = ..., memories: _Optional[int] = ..., revisions: _Optional[int] = ..., chunks: _Optional[int] = ..., conversation_messages: _Optional[int] = ..., operations: _Optional[int] = ..., change_events: _Optional[int] = ..., webhook_deliveries: _Optional[int] = ..., cache_entries: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., verified: _Optional[bool] = ..., vacuum_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., vacuum: _Optional[str] = ..., digest: _Optional[str] = ..., documents: _Optional[int] = ..., export_files: _Optional[int] = ...) -> None: ...

class EraseEndUserMetadata(_message.Message):
    __slots__ = ("state", "progress_percent", "create_time", "start_time", "end_time", "attempts", "stores_done")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_PERCENT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    STORES_DONE_FIELD_NUMBER: _ClassVar[int]
    state: AddMessagesMetadata.State
    progress_percent: int
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    attempts: int
    stores_done: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, state: _Optional[_Union[AddMessagesMetadata.State, str]] = ..., progress_percent: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ..., stores_done: _Optional[_Iterable[str]] = ...) -> None: ...
