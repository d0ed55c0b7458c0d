"""The counters other parts keep, as Prometheus families read at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from memoryd.api.observe import COUNTERS, CallbackCounters


def _registry(counters: CallbackCounters) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(counters)
    return registry


def test_a_counter_is_read_at_each_scrape() -> None:
    hits = [0]
    registry = _registry(CallbackCounters({"memoryd_key_cache_hits": lambda: hits[0]}))
    assert registry.get_sample_value("memoryd_key_cache_hits_total") == 0
    hits[0] = 7
    assert registry.get_sample_value("memoryd_key_cache_hits_total") == 7


def test_every_family_is_exported_and_one_without_a_reader_reads_zero() -> None:
    registry = _registry(CallbackCounters({"memoryd_key_cache_hits": lambda: 3}))
    values = {name: registry.get_sample_value(f"{name}_total") for name in COUNTERS}
    assert values.pop("memoryd_key_cache_hits") == 3
    assert set(values.values()) == {0}


def test_a_counter_not_in_the_table_is_refused() -> None:
    with pytest.raises(ValueError, match="memoryd_made_up"):
        CallbackCounters({"memoryd_made_up": lambda: 1})
