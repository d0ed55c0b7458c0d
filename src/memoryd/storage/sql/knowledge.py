"""Knowledge documents and folders in the control store.

Every row carries its tenant (organization, project, environment, end
user) from its first line; every read is confined to the caller's
(`_visible`). Deleting an environment (or its project) deletes its
documents and folders (foreign keys, ON DELETE CASCADE); their chunks are
deleted from the knowledge vector store by the same deletion.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from memoryd.domain.knowledge.model import DocState, Document, Folder, Ready, Usage
from memoryd.domain.operations import Operation
from memoryd.domain.tenancy import Tenant
from memoryd.storage.sql.operations import _row as operation_row
from memoryd.storage.sql.operations import operations
from memoryd.storage.sql.schema import SafeString, UTCDateTime, json_dump, metadata, visible_to
from memoryd.storage.sql.sealing import Sealing
from memoryd.storage.sql.tx import Transacting


def _tenant_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("org_id", SafeString(40), nullable=False),
        sa.Column("project_id", SafeString(40), nullable=False),
        sa.Column(
            "environment_id",
            SafeString(40),
            sa.ForeignKey("environments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("end_user_id", SafeString(200), nullable=False),
    ]


knowledge_folders = sa.Table(
    "knowledge_folders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    *_tenant_columns(),
    sa.Column("name", SafeString(200), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.UniqueConstraint("environment_id", "end_user_id", "name", name="uq_knowledge_folders_name"),
)

knowledge_documents = sa.Table(
    "knowledge_documents",
    metadata,
    sa.Column("id", SafeString(40), primary_key=True),
    *_tenant_columns(),
    sa.Column("display_name", SafeString(200), nullable=False),
    sa.Column("folder", SafeString(200), nullable=False),
    sa.Column("state", SafeString(16), nullable=False),
    sa.Column("mime_type", SafeString(100), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", SafeString(64), nullable=False),
    sa.Column("chunk_count", sa.Integer, nullable=False),
    sa.Column("page_count", sa.Integer, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("source_uri", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=False),
    sa.Column("operation_id", SafeString(40), nullable=False),
    sa.Column("generation", SafeString(40), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    sa.Index("ix_knowledge_documents_tenant_time", "environment_id", "create_time"),
    sa.Index("ix_knowledge_documents_sha", "environment_id", "folder", "sha256"),
)


def _visible(table: sa.Table, tenant: Tenant) -> list[sa.ColumnElement[bool]]:
    """The rows `tenant` may see: its environment, and the end users it
    reaches (its own; none when it names none; any with all_end_users)."""
    return visible_to(table, tenant)


def _owner(tenant: Tenant) -> dict[str, str]:
    return {
        "org_id": tenant.org_id,
        "project_id": tenant.project_id,
        "environment_id": tenant.environment_id,
        "end_user_id": tenant.end_user_id,
    }


def _doc(row: Any) -> Document:
    return Document(
        id=row.id,
        tenant=Tenant(row.org_id, row.project_id, row.environment_id, row.end_user_id),
        display_name=row.display_name,
        folder=row.folder,
        state=DocState(row.state),
        create_time=row.create_time,
        update_time=row.update_time,
        operation_id=row.operation_id,
        mime_type=row.mime_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        chunk_count=row.chunk_count,
        page_count=row.page_count,
        metadata=json.loads(row.metadata),
        source_uri=row.source_uri,
        error=row.error,
        generation=row.generation,
    )


def _doc_row(d: Document) -> dict[str, Any]:
    return {
        "id": d.id,
        **_owner(d.tenant),
        "display_name": d.display_name,
        "folder": d.folder,
        "state": d.state.value,
        "mime_type": d.mime_type,
        "size_bytes": d.size_bytes,
        "sha256": d.sha256,
        "chunk_count": d.chunk_count,
        "page_count": d.page_count,
        "metadata": json_dump(dict(d.metadata)),
        "source_uri": d.source_uri,
        "error": d.error,
        "operation_id": d.operation_id,
        "generation": d.generation,
        "create_time": d.create_time,
        "update_time": d.update_time,
    }


class KnowledgeTables(Transacting, Sealing):
    """The knowledge calls of `SqlControlStore` (`KnowledgeStore`)."""

    async def create_document(
        self, doc: Document, op: Operation, *, new_folder: Folder | None
    ) -> None:
        t = knowledge_documents
        await self._keys_for_writing([op.tenant])  # the operation's payload is sealed
        op_row = operation_row(
            op,
            self._seal(op.tenant, "payload", op.payload),
            self._seal(op.tenant, "result", op.result),
        )
        async with self._begin(parent="environment") as conn:
            if new_folder is not None:
                exists = await conn.execute(
                    sa.select(knowledge_folders.c.id).where(
                        *_visible(knowledge_folders, doc.tenant),
                        knowledge_folders.c.end_user_id == doc.tenant.end_user_id,
                        knowledge_folders.c.name == new_folder.name,
                    )
                )
                if exists.first() is None:
                    await conn.execute(
                        knowledge_folders.insert().values(
                            **_owner(doc.tenant),
                            name=new_folder.name,
                            description=new_folder.description,
                            create_time=new_folder.create_time,
                        )
                    )
            await conn.execute(operations.insert().values(**op_row))
            found = await conn.execute(
                sa.select(t.c.id).where(*_visible(t, doc.tenant), t.c.id == doc.id)
            )
            if found.first() is None:
                await conn.execute(t.insert().values(**_doc_row(doc)))
            else:  # a replacement: the new operation, the old generation kept
                await conn.execute(
                    t.update()
                    .where(*_visible(t, doc.tenant), t.c.id == doc.id)
                    .values(
                        operation_id=doc.operation_id,
                        metadata=json_dump(dict(doc.metadata)),
                        source_uri=doc.source_uri,
                        error="",
                        update_time=doc.update_time,
                    )
                )

    async def get_document(self, tenant: Tenant, doc_id: str) -> Document | None:
        t = knowledge_documents
        async with self._begin() as conn:
            row = (
                await conn.execute(sa.select(t).where(*_visible(t, tenant), t.c.id == doc_id))
            ).first()
        return _doc(row) if row else None

    async def find_document(
        self, tenant: Tenant, folder: str, *, sha256: str = "", display_name: str = ""
    ) -> Document | None:
        t = knowledge_documents
        q = sa.select(t).where(
            *_visible(t, tenant), t.c.end_user_id == tenant.end_user_id, t.c.folder == folder
        )
        if sha256:
            q = q.where(t.c.sha256 == sha256, t.c.state != DocState.FAILED.value)
        if display_name:
            q = q.where(t.c.display_name == display_name)
        async with self._begin() as conn:
            row = (await conn.execute(q.order_by(t.c.create_time.desc()).limit(1))).first()
        return _doc(row) if row else None

    async def list_documents(
        self, tenant: Tenant, folder: str | None, limit: int, before: tuple[datetime, str] | None
    ) -> list[Document]:
        t = knowledge_documents
        q = sa.select(t).where(*_visible(t, tenant))
        if folder is not None:
            q = q.where(t.c.folder == folder)
        if before is not None:
            q = q.where(
                sa.or_(
                    t.c.create_time < before[0],
                    sa.and_(t.c.create_time == before[0], t.c.id < before[1]),
                )
            )
        q = q.order_by(t.c.create_time.desc(), t.c.id.desc()).limit(limit)
        async with self._begin() as conn:
            return [_doc(r) for r in await conn.execute(q)]

    async def documents(self, tenant: Tenant, ids: Sequence[str]) -> dict[str, Document]:
        if not ids:
            return {}
        t = knowledge_documents
        async with self._begin() as conn:
            rows = await conn.execute(
                sa.select(t).where(*_visible(t, tenant), t.c.id.in_(sorted(set(ids))))
            )
            return {r.id: _doc(r) for r in rows}

    async def update_document(
        self, tenant: Tenant, doc_id: str, changes: Mapping[str, Any], now: datetime
    ) -> Document | None:
        t = knowledge_documents
        values: dict[str, Any] = {"update_time": now}
        for name in ("display_name", "folder"):
            if name in changes:
                values[name] = changes[name]
        if "metadata" in changes:
            values["metadata"] = json_dump(dict(changes["metadata"]))
        async with self._begin() as conn:
            done = await conn.execute(
                t.update().where(*_visible(t, tenant), t.c.id == doc_id).values(**values)
            )
            if not done.rowcount:
                return None
            row = (
                await conn.execute(sa.select(t).where(*_visible(t, tenant), t.c.id == doc_id))
            ).first()
        return _doc(row) if row else None

    async def document_ready(
        self, tenant: Tenant, doc_id: str, ready: Ready, now: datetime
    ) -> bool:
        t = knowledge_documents
        async with self._begin() as conn:
            done = await conn.execute(
                t.update()
                .where(*_visible(t, tenant), t.c.id == doc_id)
                .values(
                    state=DocState.READY.value,
                    generation=ready.generation,
                    mime_type=ready.mime_type,
                    size_bytes=ready.size_bytes,
                    sha256=ready.sha256,
                    chunk_count=ready.chunk_count,
                    page_count=ready.page_count,
                    error="",
                    update_time=now,
                )
            )
        return bool(done.rowcount)

    async def document_failed(
        self, tenant: Tenant, doc_id: str, operation_id: str, error: str, now: datetime
    ) -> None:
        t = knowledge_documents
        where = [*_visible(t, tenant), t.c.id == doc_id, t.c.operation_id == operation_id]
        async with self._begin() as conn:
            await conn.execute(
                t.update()
                .where(*where)
                .values(
                    state=sa.case((t.c.generation == "", DocState.FAILED.value), else_=t.c.state),
                    error=error[:2000],
                    update_time=now,
                )
            )

    async def delete_document(self, tenant: Tenant, doc_id: str) -> bool:
        t = knowledge_documents
        async with self._begin() as conn:
            done = await conn.execute(t.delete().where(*_visible(t, tenant), t.c.id == doc_id))
        return bool(done.rowcount)

    async def knowledge_usage(self, tenant: Tenant) -> Usage:
        t = knowledge_documents
        async with self._begin() as conn:
            row = (
                await conn.execute(
                    sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(t.c.size_bytes), 0))
                    .select_from(t)
                    .where(*_visible(t, tenant.across_end_users()))
                )
            ).one()
        return Usage(int(row[0]), int(row[1]))

    async def end_user_documents(self, tenant: Tenant) -> int:
        """Documents of the end user `tenant` names (EraseEndUser)."""
        t = knowledge_documents
        async with self._begin() as conn:
            q = sa.select(sa.func.count()).select_from(t).where(*_visible(t, tenant))
            return int((await conn.execute(q)).scalar_one())

    async def erase_end_user_documents(self, tenant: Tenant) -> int:
        """Deletes the end user's documents and folders; answers how many
        documents."""
        t, f = knowledge_documents, knowledge_folders
        async with self._begin() as conn:
            done = await conn.execute(t.delete().where(*_visible(t, tenant)))
            await conn.execute(f.delete().where(*_visible(f, tenant)))
        return int(done.rowcount or 0)

    async def create_folder(self, tenant: Tenant, folder: Folder) -> Folder:
        async with self._begin(parent="environment") as conn:
            await conn.execute(
                knowledge_folders.insert().values(
                    **_owner(tenant),
                    name=folder.name,
                    description=folder.description,
                    create_time=folder.create_time,
                )
            )
        return folder

    async def get_folder(self, tenant: Tenant, name: str) -> Folder | None:
        folders = await self._folders(tenant, [knowledge_folders.c.name == name], 1)
        return folders[0] if folders else None

    async def list_folders(self, tenant: Tenant, limit: int, after: str | None) -> list[Folder]:
        conds = [] if after is None else [knowledge_folders.c.name > after]
        return await self._folders(tenant, conds, limit)

    async def _folders(
        self, tenant: Tenant, conds: list[sa.ColumnElement[bool]], limit: int
    ) -> list[Folder]:
        f, d = knowledge_folders, knowledge_documents
        count = (
            sa.select(sa.func.count())
            .select_from(d)
            .where(*_visible(d, tenant), d.c.folder == f.c.name)
            .scalar_subquery()
        )
        q = (
            sa.select(f.c.name, f.c.description, f.c.create_time, count.label("n"))
            .where(*_visible(f, tenant), *conds)
            .order_by(f.c.name)
            .limit(limit)
        )
        async with self._begin() as conn:
            return [
                Folder(r.name, r.description, r.create_time, int(r.n))
                for r in await conn.execute(q)
            ]

    async def delete_folder(self, tenant: Tenant, name: str) -> list[str]:
        f, d = knowledge_folders, knowledge_documents
        async with self._begin() as conn:
            ids = [
                r.id
                for r in await conn.execute(
                    sa.select(d.c.id).where(*_visible(d, tenant), d.c.folder == name)
                )
            ]
            await conn.execute(d.delete().where(*_visible(d, tenant), d.c.folder == name))
            await conn.execute(f.delete().where(*_visible(f, tenant), f.c.name == name))
        return ids
