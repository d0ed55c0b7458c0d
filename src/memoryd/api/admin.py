"""AdminService servicer."""

from __future__ import annotations

from datetime import date
from typing import Any, Protocol

from google.protobuf import empty_pb2

from memoryd.api import convert
from memoryd.api.call import current_caller
from memoryd.domain.audit import Auditor
from memoryd.domain.control import AuditQuery, UsageRecord
from memoryd.domain.encryption import EncryptionKeys, KeyStatus, Rewrapped
from memoryd.domain.errors import InvalidArgument
from memoryd.domain.holds import LegalHold, LegalHolds
from memoryd.domain.projects import ProjectManager
from memoryd.domain.prompts import PromptManager
from memoryd.domain.tenancy import Caller
from memoryd.v1 import admin_pb2, admin_pb2_grpc


class UsageReport(Protocol):
    """Reads usage for GetUsage (see `memoryd.domain.usage`)."""

    async def report(
        self,
        caller: Caller,
        project_id: str,
        environment_id: str,
        start: date | None,
        end: date | None,
    ) -> list[UsageRecord]: ...


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        projects: ProjectManager,
        auditor: Auditor,
        usage: UsageReport,
        prompts: PromptManager,
        holds: LegalHolds,
        encryption_keys: EncryptionKeys,
    ) -> None:
        self._projects = projects
        self._audit = auditor
        self._usage = usage
        self._prompts = prompts
        self._holds = holds
        self._keys = encryption_keys

    async def CreateProject(
        self, request: admin_pb2.CreateProjectRequest, context: Any
    ) -> admin_pb2.Project:
        draft = convert.project_from_pb(request.project)
        return convert.project(await self._projects.create_project(current_caller(), draft))

    async def GetProject(
        self, request: admin_pb2.GetProjectRequest, context: Any
    ) -> admin_pb2.Project:
        return convert.project(await self._projects.get_project(current_caller(), request.id))

    async def ListProjects(
        self, request: admin_pb2.ListProjectsRequest, context: Any
    ) -> admin_pb2.ListProjectsResponse:
        result = await self._projects.list_projects(
            current_caller(), request.page_size, request.page_token, request.show_deleted
        )
        return admin_pb2.ListProjectsResponse(
            projects=[convert.project(p) for p in result.projects],
            next_page_token=result.next_page_token,
        )

    async def UpdateProject(
        self, request: admin_pb2.UpdateProjectRequest, context: Any
    ) -> admin_pb2.Project:
        changes = convert.project_from_pb(request.project)
        updated = await self._projects.update_project(
            current_caller(), changes, list(request.update_mask.paths)
        )
        return convert.project(updated)

    async def DeleteProject(
        self, request: admin_pb2.DeleteProjectRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._projects.delete_project(current_caller(), request.id, request.force)
        return empty_pb2.Empty()

    async def UndeleteProject(
        self, request: admin_pb2.UndeleteProjectRequest, context: Any
    ) -> admin_pb2.Project:
        return convert.project(await self._projects.undelete_project(current_caller(), request.id))

    async def CreateEnvironment(
        self, request: admin_pb2.CreateEnvironmentRequest, context: Any
    ) -> admin_pb2.Environment:
        env = await self._projects.create_environment(
            current_caller(),
            request.project_id,
            request.environment.name,
            convert.env_kind_from_pb(request.environment.kind),
        )
        return convert.environment(env)

    async def ListEnvironments(
        self, request: admin_pb2.ListEnvironmentsRequest, context: Any
    ) -> admin_pb2.ListEnvironmentsResponse:
        result = await self._projects.list_environments(
            current_caller(),
            request.project_id,
            request.page_size,
            request.page_token,
            request.show_deleted,
        )
        return admin_pb2.ListEnvironmentsResponse(
            environments=[convert.environment(e) for e in result.environments],
            next_page_token=result.next_page_token,
        )

    async def DeleteEnvironment(
        self, request: admin_pb2.DeleteEnvironmentRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._projects.delete_environment(current_caller(), request.id, request.force)
        return empty_pb2.Empty()

    async def UndeleteEnvironment(
        self, request: admin_pb2.UndeleteEnvironmentRequest, context: Any
    ) -> admin_pb2.Environment:
        env = await self._projects.undelete_environment(current_caller(), request.id)
        return convert.environment(env)

    async def GetUsage(
        self, request: admin_pb2.GetUsageRequest, context: Any
    ) -> admin_pb2.GetUsageResponse:
        start = _date(request.start_date, "start_date")
        end = _date(request.end_date, "end_date")
        records = await self._usage.report(
            current_caller(), request.project_id, request.environment_id, start, end
        )
        return admin_pb2.GetUsageResponse(
            records=[
                admin_pb2.UsageRecord(
                    project_id=r.project_id,
                    environment_id=r.environment_id,
                    date=r.date.isoformat(),
                    calls=r.calls,
                    calls_by_method=dict(r.calls_by_method),
                    memories_written=r.memories_written,
                    bytes_stored=r.bytes_stored,
                    rate_limited_calls=r.rate_limited_calls,
                    llm_input_tokens=r.llm_input_tokens,
                    llm_output_tokens=r.llm_output_tokens,
                )
                for r in records
            ]
        )

    async def ListAuditEvents(
        self, request: admin_pb2.ListAuditEventsRequest, context: Any
    ) -> admin_pb2.ListAuditEventsResponse:
        query = AuditQuery(
            org_id="",
            project_id=request.project_id,
            environment_id=request.environment_id,
            actor_key_id=request.actor_key_id,
            action=request.action,
            start_time=convert.opt_ts(request, "start_time", "start_time"),
            end_time=convert.opt_ts(request, "end_time", "end_time"),
        )
        page, token = await self._audit.list(
            current_caller(), query, request.page_size, request.page_token
        )
        return admin_pb2.ListAuditEventsResponse(
            events=[convert.audit_event(e) for e in page.items], next_page_token=token
        )

    async def CreatePrompt(
        self, request: admin_pb2.CreatePromptRequest, context: Any
    ) -> admin_pb2.Prompt:
        made = await self._prompts.create_prompt(
            current_caller(),
            request.project_id,
            request.environment_id,
            request.prompt.name,
            request.prompt.text,
        )
        return convert.prompt(made)

    async def GetPrompt(
        self, request: admin_pb2.GetPromptRequest, context: Any
    ) -> admin_pb2.Prompt:
        found = await self._prompts.get_prompt(
            current_caller(),
            request.project_id,
            request.environment_id,
            request.name,
            request.version,
        )
        return convert.prompt(found)

    async def ListPrompts(
        self, request: admin_pb2.ListPromptsRequest, context: Any
    ) -> admin_pb2.ListPromptsResponse:
        prompts = await self._prompts.list_prompts(
            current_caller(), request.project_id, request.environment_id
        )
        return admin_pb2.ListPromptsResponse(prompts=[convert.prompt(p) for p in prompts])

    async def UpdatePrompt(
        self, request: admin_pb2.UpdatePromptRequest, context: Any
    ) -> admin_pb2.Prompt:
        written = await self._prompts.update_prompt(
            current_caller(),
            request.project_id,
            request.environment_id,
            request.prompt.name,
            request.prompt.text,
        )
        return convert.prompt(written)

    async def DeletePrompt(
        self, request: admin_pb2.DeletePromptRequest, context: Any
    ) -> empty_pb2.Empty:
        await self._prompts.delete_prompt(
            current_caller(), request.project_id, request.environment_id, request.name
        )
        return empty_pb2.Empty()

    async def SetLegalHold(
        self, request: admin_pb2.SetLegalHoldRequest, context: Any
    ) -> admin_pb2.LegalHold:
        h = request.legal_hold
        hold = await self._holds.set(
            current_caller(), h.project_id, h.environment_id, h.end_user_id, h.reason
        )
        return _hold(hold)

    async def ReleaseLegalHold(
        self, request: admin_pb2.ReleaseLegalHoldRequest, context: Any
    ) -> admin_pb2.LegalHold:
        return _hold(await self._holds.release(current_caller(), request.id))

    async def ListLegalHolds(
        self, request: admin_pb2.ListLegalHoldsRequest, context: Any
    ) -> admin_pb2.ListLegalHoldsResponse:
        page = await self._holds.list(
            current_caller(),
            request.project_id,
            request.environment_id,
            request.page_size,
            request.page_token,
        )
        return admin_pb2.ListLegalHoldsResponse(
            legal_holds=[_hold(h) for h in page.holds], next_page_token=page.next_page_token
        )

    async def GetEncryptionKey(
        self, request: admin_pb2.GetEncryptionKeyRequest, context: Any
    ) -> admin_pb2.EncryptionKey:
        return _encryption_key(await self._keys.get(current_caller()))

    async def SetEncryptionKey(
        self, request: admin_pb2.SetEncryptionKeyRequest, context: Any
    ) -> admin_pb2.RewrapEncryptionKeysResponse:
        return _rewrapped(await self._keys.set(current_caller(), request.kek_ref))

    async def RotateEncryptionKey(
        self, request: admin_pb2.RotateEncryptionKeyRequest, context: Any
    ) -> admin_pb2.RewrapEncryptionKeysResponse:
        return _rewrapped(await self._keys.rotate(current_caller()))


def _encryption_key(s: KeyStatus) -> admin_pb2.EncryptionKey:
    return admin_pb2.EncryptionKey(
        kek_ref=s.key.kek_ref,
        version=s.key.version,
        data_keys=s.data_keys,
        stale_data_keys=s.stale_data_keys,
        update_time=convert.ts(s.key.update_time),
        encryption_enabled=s.encryption_enabled,
    )


def _rewrapped(r: Rewrapped) -> admin_pb2.RewrapEncryptionKeysResponse:
    return admin_pb2.RewrapEncryptionKeysResponse(
        encryption_key=_encryption_key(r.status), rewrapped_data_keys=r.rewrapped
    )


def _hold(h: LegalHold) -> admin_pb2.LegalHold:
    return admin_pb2.LegalHold(
        id=h.id,
        project_id=h.project_id,
        environment_id=h.environment_id,
        end_user_id=h.end_user_id,
        reason=h.reason,
        created_by=h.created_by,
        create_time=convert.ts(h.create_time),
    )


def _date(value: str, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument.field(field, "must be a date YYYY-MM-DD") from None
