"""EraseEndUser on the wire: an erase_end_user operation's metadata and its
receipt as protobuf (`operations.Describe`)."""

from __future__ import annotations

from memoryd.api import convert
from memoryd.domain.erasure import Receipt
from memoryd.domain.operations import Operation, OpState
from memoryd.v1 import memory_pb2

_States = memory_pb2.AddMessagesMetadata
_STATES = {
    OpState.PENDING: _States.PENDING,
    OpState.RUNNING: _States.RUNNING,
    OpState.SUCCEEDED: _States.SUCCEEDED,
    OpState.FAILED: _States.FAILED,
    OpState.CANCELLED: _States.CANCELLED,
}


async def describe_erasure(
    op: Operation,
) -> tuple[memory_pb2.EraseEndUserMetadata, memory_pb2.ErasureReceipt | None]:
    stores = op.info.get("stores")
    done = sorted(k for k, v in stores.items() if v.get("done")) if isinstance(stores, dict) else []
    meta = memory_pb2.EraseEndUserMetadata(
        state=_STATES[op.state],
        progress_percent=int(op.info.get("progress_percent", 0)),
        create_time=convert.ts(op.create_time),
        start_time=convert.ts(op.start_time),
        end_time=convert.ts(op.end_time),
        attempts=op.attempts,
        stores_done=done,
    )
    if op.state is not OpState.SUCCEEDED or not op.result:
        return meta, None
    return meta, receipt_pb(Receipt.from_json(op.result))


def receipt_pb(r: Receipt) -> memory_pb2.ErasureReceipt:
    c = r.counts
    return memory_pb2.ErasureReceipt(
        org_id=r.org_id,
        project_id=r.project_id,
        environment_id=r.environment_id,
        end_user_hash=r.end_user_hash,
        memories=c.get("memories", 0),
        revisions=c.get("revisions", 0),
        chunks=c.get("chunks", 0),
        conversation_messages=c.get("conversation_messages", 0),
        operations=c.get("operations", 0),
        change_events=c.get("change_events", 0),
        webhook_deliveries=c.get("webhook_deliveries", 0),
        cache_entries=c.get("cache_entries", 0),
        documents=c.get("documents", 0),
        export_files=c.get("export_files", 0),
        start_time=convert.ts(r.start_time),
        finish_time=convert.ts(r.finish_time),
        verified=r.verified,
        vacuum_time=convert.ts(r.vacuum_time),
        vacuum=r.vacuum,
        digest=r.digest,
    )
