"""Which checks of a round trip share one script call: those whose buckets
hash to one Redis Cluster slot, by Redis's own hash-tag rule."""

from __future__ import annotations

from memoryd.ratelimit import api_key_bucket, project_bucket
from memoryd.ratelimit.redis_limiter import _script_call, _slot_groups, _slot_key


def test_the_slot_key_is_what_redis_cluster_hashes() -> None:
    assert _slot_key("memoryd:rl:{p:proj_1}key:k_1") == "p:proj_1"
    assert _slot_key("x{a}y{b}") == "a"  # the first tag only
    assert _slot_key("x{}y{b}") == "x{}y{b}"  # an empty first tag: the whole key
    assert _slot_key("x{a") == "x{a"
    assert _slot_key("plain") == "plain"


def test_one_projects_buckets_share_a_slot() -> None:
    assert _slot_key(api_key_bucket("p1", "k1")) == _slot_key(project_bucket("p1"))
    assert _slot_key(project_bucket("p1")) != _slot_key(project_bucket("p2"))


def test_checks_are_grouped_by_slot_in_arrival_order() -> None:
    def pending(project: str, cost: int) -> tuple[list[str], list[str | int], None]:
        keys = [api_key_bucket(project, "k"), project_bucket(project)]
        return keys, [2, cost, "0.1", 10, "0.01", 100], None

    batch = [pending("a", 1), pending("b", 2), pending("a", 3), pending("c", 4), pending("b", 5)]
    groups = _slot_groups(batch)  # type: ignore[arg-type]
    assert groups == [[0, 2], [1, 4], [3]]
    keys, args = _script_call(batch, groups[0])  # type: ignore[arg-type]
    assert keys == batch[0][0] + batch[2][0]
    assert args == [2, 2, 1, "0.1", 10, "0.01", 100, 2, 3, "0.1", 10, "0.01", 100]
