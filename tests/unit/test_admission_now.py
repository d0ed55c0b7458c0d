"""RateLimitAdmission without a coroutine (`admit_now`): it decides when
nothing needs waiting for (the in-process limiter, a project already read),
exactly as `admit` would, and says None otherwise."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memoryd.domain.clock import ManualClock
from memoryd.domain.control import Project, ProjectSettings, Quotas, RateLimits
from memoryd.domain.errors import ResourceExhausted
from memoryd.domain.project_cache import Unknown
from memoryd.domain.tenancy import KeyKind, Principal
from memoryd.ratelimit import Limit, LocalRateLimiter
from memoryd.ratelimit.admission import RateLimitAdmission
from memoryd.ratelimit.gcra import Decision

_T = datetime(2026, 1, 1, tzinfo=UTC)
_METHOD = "/memoryd.v1.MemoryService/SearchMemories"
DATA = Principal("key_1", KeyKind.DATA, "org_1", frozenset(), "prj_1", "env_1")
ORG = Principal("key_o", KeyKind.ORG, "org_1", frozenset())


def _project(key_burst: int) -> Project:
    return Project(
        id="prj_1",
        org_id="org_1",
        name="app",
        display_name="app",
        settings=ProjectSettings(),
        rate_limits=RateLimits(key_requests_per_second=1.0, key_burst=key_burst),
        quotas=Quotas(),
        create_time=_T,
        update_time=_T,
    )


class Projects:
    """Known projects (`peek`), or none known until read (`get_project`)."""

    def __init__(self, project: Project | None, known: bool) -> None:
        self.project = project
        self.known = known
        self.reads = 0

    async def get_project(self, org_id: str, project_id: str) -> Project | None:
        self.reads += 1
        self.known = True
        return self.project

    def peek(self, org_id: str, project_id: str) -> Project | Unknown | None:
        return self.project if self.known else Unknown.UNKNOWN


class SlowLimiter:
    """A limiter with I/O (as Redis): only `check`, awaited."""

    backend_name = "slow"

    async def check(self, checks: object, cost: int = 1) -> Decision:
        return Decision(True, 1, 0, 1.0, 0.0)


def _admission(limiter: object, projects: Projects) -> RateLimitAdmission:
    return RateLimitAdmission(
        limiter,  # type: ignore[arg-type]
        projects,
        key_limit=Limit(100.0, 100),
        project_limit=Limit(100.0, 100),
    )


def test_a_project_not_yet_read_is_left_to_admit() -> None:
    projects = Projects(_project(key_burst=2), known=False)
    admission = _admission(LocalRateLimiter(ManualClock()), projects)
    assert admission.admit_now(DATA, _METHOD, 1) is None
    assert projects.reads == 0


def test_a_limiter_that_waits_is_left_to_admit() -> None:
    admission = _admission(SlowLimiter(), Projects(None, known=True))
    assert admission.admit_now(ORG, _METHOD, 1) is None
    assert admission.admit_now(DATA, _METHOD, 1) is None


async def test_admit_now_charges_the_same_buckets_as_admit() -> None:
    # the project's override (burst 2) holds whichever way the calls come
    projects = Projects(_project(key_burst=2), known=True)
    admission = _admission(LocalRateLimiter(ManualClock()), projects)
    first = admission.admit_now(DATA, _METHOD, 1)
    assert first is not None
    assert dict(first)["x-ratelimit-limit"] == "2"
    assert dict(first)["x-ratelimit-remaining"] == "1"
    await admission.admit(DATA, _METHOD, 1)
    with pytest.raises(ResourceExhausted) as refused:
        admission.admit_now(DATA, _METHOD, 1)
    assert refused.value.reason == "RATE_LIMITED"
    assert refused.value.trailers["retry-after"] == "1"


def test_a_changed_project_brings_its_new_limits() -> None:
    projects = Projects(_project(key_burst=2), known=True)
    admission = _admission(LocalRateLimiter(ManualClock()), projects)
    assert dict(admission.admit_now(DATA, _METHOD, 1) or ())["x-ratelimit-limit"] == "2"
    projects.project = _project(key_burst=5)  # a new read of it
    assert dict(admission.admit_now(DATA, _METHOD, 1) or ())["x-ratelimit-limit"] == "5"


def test_an_org_key_is_charged_on_its_own_bucket() -> None:
    admission = _admission(LocalRateLimiter(ManualClock()), Projects(None, known=False))
    for remaining in (99, 98):
        trailers = admission.admit_now(ORG, _METHOD, 1)
        assert trailers is not None
        assert dict(trailers)["x-ratelimit-remaining"] == str(remaining)
