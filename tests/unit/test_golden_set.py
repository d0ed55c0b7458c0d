"""The golden set of the evaluation (evaluation/golden.py): regenerating it
gives the committed files byte for byte, and every question's answers are
memories of the tenant that asks it."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evaluation import golden


@pytest.fixture(scope="module")
def committed() -> golden.GoldenSet:
    return golden.read()


def _assert_same_files(written: Path) -> None:
    committed = sorted(p.name for p in golden.GOLDEN_DIR.glob("*.jsonl"))
    assert committed == sorted(p.name for p in written.glob("*.jsonl"))
    for name in committed:
        assert (written / name).read_bytes() == (golden.GOLDEN_DIR / name).read_bytes(), name


def test_regenerating_gives_the_committed_files_byte_for_byte(tmp_path: Path) -> None:
    golden.write(golden.generate(), tmp_path)
    _assert_same_files(tmp_path)


def test_the_regenerate_command_does_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    # A set or a dict keyed by hash order would make the files differ per process.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-m", "evaluation", "--regenerate", "--golden-dir", str(tmp_path)],
        env=env,
        check=True,
        capture_output=True,
    )
    _assert_same_files(tmp_path)


def test_reading_the_files_gives_the_generated_set(committed: golden.GoldenSet) -> None:
    assert golden.generate() == committed


def test_every_family_is_present_and_knowledge_is_pending(committed: golden.GoldenSet) -> None:
    for family in golden.FAMILIES:
        part = committed.of(family)
        assert part.memories and part.questions, family
    assert "knowledge" in golden.PENDING_FAMILIES
    assert not committed.of("knowledge").questions
    # the shape of the outside replay the issue quotes: 100 users x 100 facts, 500 questions
    paraphrase = committed.of("paraphrase")
    assert len({m.tenant for m in paraphrase.memories}) == 100
    assert all(sum(m.tenant == t for m in paraphrase.memories) == 100 for t in range(100))
    assert len(paraphrase.questions) == 500
    exact = committed.of("exact_term")
    assert all(sum(m.tenant == t for m in exact.memories) == 300 for t in range(5))


def test_gids_and_qids_are_unique(committed: golden.GoldenSet) -> None:
    gids = [m.gid for m in committed.memories]
    qids = [q.qid for q in committed.questions]
    assert len(gids) == len(set(gids)) and len(qids) == len(set(qids))


def test_every_answer_is_a_memory_of_the_tenant_asking(committed: golden.GoldenSet) -> None:
    memories = {m.gid: m for m in committed.memories}
    for q in committed.questions:
        assert q.expected, q
        for gid in q.expected + q.superseded:
            assert gid in memories, q
            assert (memories[gid].family, memories[gid].tenant) == (q.family, q.tenant), q
        # the right answer holds now; a superseded one stopped holding when it began
        for gid in q.expected:
            assert not memories[gid].invalid_time, q
        if q.superseded and q.family == "current_truth":
            (old,), (new,) = q.superseded, q.expected
            since, until = memories[old].valid_time, memories[old].invalid_time
            assert since < until == memories[new].valid_time, q
            assert datetime.fromisoformat(until) < datetime.now(UTC), q
    assert any(q.superseded for q in committed.of("current_truth").questions)


def test_each_recency_question_wants_the_latest_of_its_kind(committed: golden.GoldenSet) -> None:
    recency = committed.of("recency")
    memories = {m.gid: m for m in recency.memories}
    assert recency.questions
    for q in recency.questions:
        (latest,) = q.expected
        assert len(q.superseded) == 2, q
        # the same kind of fact, all still valid: only the times tell the latest
        kind = latest.rsplit("-", 1)[0]
        times = [memories[gid].valid_time for gid in (*q.superseded, latest)]
        assert all(gid.rsplit("-", 1)[0] == kind for gid in q.superseded), q
        assert not any(memories[gid].invalid_time for gid in (*q.superseded, latest)), q
        assert times == sorted(times) and len(set(times)) == 3, q
        assert datetime.fromisoformat(times[-1]) < datetime.now(UTC), q


def test_each_exact_term_question_names_a_term_of_its_answer_alone(
    committed: golden.GoldenSet,
) -> None:
    exact = committed.of("exact_term")
    for q in exact.questions:
        others = [m.content for m in exact.memories if m.tenant == q.tenant]
        answer = next(m.content for m in exact.memories if m.gid == q.expected[0])
        words = re.findall(r"[\w-]+", q.question)
        spans = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
        assert any(
            re.search(rf"\b{re.escape(s)}\b", answer)
            and sum(bool(re.search(rf"\b{re.escape(s)}\b", c)) for c in others) == 1
            for s in spans
        ), q
