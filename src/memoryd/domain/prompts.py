"""Prompts of an environment: the system messages its conversations are
extracted (`extraction`) and decided (`decision`) with, in place of the
extractor's built-in ones.

A prompt is versioned: CreatePrompt writes version 1, every UpdatePrompt the
next one, and old versions stay readable by number until the prompt is
deleted (with all its versions; the built-in one applies again). Deleting
the environment or its project deletes its prompts.

Administered like the rest of AdminService: org keys only, `admin:read` to
read and `admin:write` to change; an environment of another organization, or
one that is not in the project named, answers NOT_FOUND like a missing one.
Changes are audited with their version, never their text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from memoryd.domain.audit import Auditor
from memoryd.domain.clock import Clock
from memoryd.domain.control import ControlStore
from memoryd.domain.conversations.extraction import PromptSet
from memoryd.domain.errors import AlreadyExists, NotFound, Violations
from memoryd.domain.keys import shown
from memoryd.domain.tenancy import Caller, Principal, Scope

EXTRACTION = "extraction"
DECISION = "decision"
PROMPT_NAMES: tuple[str, ...] = (EXTRACTION, DECISION)
MAX_PROMPT_CHARS = 32_768
NAME_RULE = "must be 'extraction' or 'decision'"


@dataclass(frozen=True)
class Prompt:
    """One version of a prompt of an environment."""

    org_id: str
    project_id: str
    environment_id: str
    name: str
    version: int
    text: str
    create_time: datetime


class PromptStore(Protocol):
    """Versions of prompts. Every call is scoped by organization, project and
    environment: nothing outside them is read, written or deleted.

    Raises `Unavailable` when the database cannot be reached."""

    async def create_prompt(self, prompt: Prompt) -> None:
        """Writes `prompt` (version 1). Raises AlreadyExists when the
        environment has a prompt of that name, NotFound when the environment
        does not exist (any more)."""
        ...

    async def add_prompt_version(
        self,
        org_id: str,
        project_id: str,
        environment_id: str,
        name: str,
        text: str,
        create_time: datetime,
    ) -> Prompt | None:
        """Writes the version after the current one and returns it, or None
        (writing nothing) when the environment has no such prompt. Concurrent
        calls each write a version of their own, never the same one."""
        ...

    async def get_prompt(
        self, org_id: str, project_id: str, environment_id: str, name: str, version: int = 0
    ) -> Prompt | None:
        """Version `version` of the prompt, or its current one for 0."""
        ...

    async def list_prompts(self, org_id: str, project_id: str, environment_id: str) -> list[Prompt]:
        """The current version of each prompt of the environment, by name; in
        one read."""
        ...

    async def delete_prompt(
        self, org_id: str, project_id: str, environment_id: str, name: str
    ) -> bool:
        """Deletes every version of the prompt; False when it had none."""
        ...


class PromptManager:
    def __init__(
        self, store: PromptStore, control: ControlStore, auditor: Auditor, clock: Clock
    ) -> None:
        self._store = store
        self._control = control
        self._audit = auditor
        self._clock = clock

    async def create_prompt(
        self, caller: Caller, project_id: str, environment_id: str, name: str, text: str
    ) -> Prompt:
        """Writes version 1 of the environment's prompt `name`."""
        async with self._audit.action(
            caller,
            "prompt.create",
            target=name,
            project_id=project_id,
            environment_id=environment_id,
        ) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            _check(project_id, environment_id, name, text)
            await self._environment(p, project_id, environment_id)
            prompt = Prompt(p.org_id, project_id, environment_id, name, 1, text, self._clock.now())
            try:
                await self._store.create_prompt(prompt)
            except AlreadyExists:
                raise AlreadyExists(
                    f"environment {shown(environment_id)} already has the prompt '{name}'; "
                    "write a new version with UpdatePrompt"
                ) from None
            ev.details["version"] = "1"
            return prompt

    async def get_prompt(
        self, caller: Caller, project_id: str, environment_id: str, name: str, version: int = 0
    ) -> Prompt:
        """Version `version` of the prompt, or the current one for 0."""
        p = caller.admin(Scope.ADMIN_READ)
        v = _scope_violations(project_id, environment_id)
        _check_name(v, "name", name)
        if version < 0:
            v.add("version", "must be 0 (the current version) or a version number")
        v.raise_if_any()
        await self._environment(p, project_id, environment_id)
        prompt = await self._store.get_prompt(p.org_id, project_id, environment_id, name, version)
        if prompt is None:
            raise NotFound(_missing(environment_id, name, version))
        return prompt

    async def list_prompts(
        self, caller: Caller, project_id: str, environment_id: str
    ) -> list[Prompt]:
        """The current version of each prompt the environment has."""
        p = caller.admin(Scope.ADMIN_READ)
        _scope_violations(project_id, environment_id).raise_if_any()
        await self._environment(p, project_id, environment_id)
        return await self._store.list_prompts(p.org_id, project_id, environment_id)

    async def update_prompt(
        self, caller: Caller, project_id: str, environment_id: str, name: str, text: str
    ) -> Prompt:
        """Writes the next version of the environment's prompt `name`."""
        async with self._audit.action(
            caller,
            "prompt.update",
            target=name,
            project_id=project_id,
            environment_id=environment_id,
        ) as ev:
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            _check(project_id, environment_id, name, text)
            await self._environment(p, project_id, environment_id)
            prompt = await self._store.add_prompt_version(
                p.org_id, project_id, environment_id, name, text, self._clock.now()
            )
            if prompt is None:
                raise NotFound(_missing(environment_id, name) + "; create it with CreatePrompt")
            ev.details["version"] = str(prompt.version)
            return prompt

    async def delete_prompt(
        self, caller: Caller, project_id: str, environment_id: str, name: str
    ) -> None:
        """Deletes the prompt with all its versions."""
        async with self._audit.action(
            caller,
            "prompt.delete",
            target=name,
            project_id=project_id,
            environment_id=environment_id,
        ):
            p = caller.admin(Scope.ADMIN_WRITE)  # inside: refusals are audited too
            v = _scope_violations(project_id, environment_id)
            _check_name(v, "name", name)
            v.raise_if_any()
            await self._environment(p, project_id, environment_id)
            if not await self._store.delete_prompt(p.org_id, project_id, environment_id, name):
                raise NotFound(_missing(environment_id, name))

    async def prompt_set(self, org_id: str, project_id: str, environment_id: str) -> PromptSet:
        """The environment's own prompts for an operation it runs (no caller:
        the operation's tenant is trusted), with a version label for each,
        `extraction:<version>` / `decision:<version>`. One read."""
        current = {
            p.name: p for p in await self._store.list_prompts(org_id, project_id, environment_id)
        }
        own = [current[n] for n in PROMPT_NAMES if n in current]
        return PromptSet(
            extraction=current[EXTRACTION].text if EXTRACTION in current else None,
            decision=current[DECISION].text if DECISION in current else None,
            versions=tuple(f"{p.name}:{p.version}" for p in own),
        )

    async def _environment(self, p: Principal, project_id: str, environment_id: str) -> None:
        """NotFound unless the environment is in the project, in the caller's
        organization: the same answer whichever part is missing or foreign."""
        env = await self._control.get_environment(p.org_id, environment_id)
        if env is None or env.project_id != project_id:
            raise NotFound(
                f"environment {shown(environment_id)} of project {shown(project_id)} not found"
            )


def _scope_violations(project_id: str, environment_id: str) -> Violations:
    v = Violations()
    if not project_id:
        v.add("project_id", "is required")
    if not environment_id:
        v.add("environment_id", "is required")
    return v


def _check_name(v: Violations, field: str, name: str) -> None:
    if name not in PROMPT_NAMES:
        v.add(field, NAME_RULE if name else f"is required and {NAME_RULE}")


def _check(project_id: str, environment_id: str, name: str, text: str) -> None:
    """Raises InvalidArgument for every bad field of a prompt to write."""
    v = _scope_violations(project_id, environment_id)
    _check_name(v, "prompt.name", name)
    if not text:
        v.add("prompt.text", f"is required: 1 to {MAX_PROMPT_CHARS:,} characters")
    elif len(text) > MAX_PROMPT_CHARS:
        v.add("prompt.text", f"must be at most {MAX_PROMPT_CHARS:,} characters, not {len(text):,}")
    elif not text.strip():
        v.add("prompt.text", "must not be blank")
    elif "\x00" in text:
        v.add("prompt.text", "must not contain NUL characters")
    v.raise_if_any()


def _missing(environment_id: str, name: str, version: int = 0) -> str:
    if version:
        return (
            f"the prompt '{name}' of environment {shown(environment_id)} has no version {version}"
        )
    return f"environment {shown(environment_id)} has no prompt '{name}'"
