"""The scores of the evaluation (evaluation/metrics.py) on hand-made
rankings, and the table they are printed as."""

from __future__ import annotations

import math

import pytest

from evaluation.metrics import (
    Answer,
    Row,
    markdown_table,
    ndcg_at,
    recall_at,
    reciprocal_rank,
    score,
)

RANKING = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")


def test_recall_counts_the_relevant_found_within_k() -> None:
    assert recall_at(RANKING, {"c"}, 1) == 0.0
    assert recall_at(RANKING, {"c"}, 3) == 1.0
    assert recall_at(RANKING, {"a"}, 1) == 1.0
    assert recall_at(RANKING, {"b", "z"}, 5) == 0.5
    assert recall_at(("a", "a"), {"a", "b"}, 5) == 0.5  # a duplicate counts once
    assert recall_at((), {"a"}, 5) == 0.0


def test_reciprocal_rank_is_that_of_the_first_relevant() -> None:
    assert reciprocal_rank(RANKING, {"a"}) == 1.0
    assert reciprocal_rank(RANKING, {"d", "b"}) == 0.5
    assert reciprocal_rank(RANKING, {"j"}) == pytest.approx(0.1)
    assert reciprocal_rank(RANKING, {"z"}) == 0.0


def test_ndcg_discounts_by_rank_against_the_ideal_order() -> None:
    assert ndcg_at(RANKING, {"a"}, 10) == 1.0
    assert ndcg_at(RANKING, {"b"}, 10) == pytest.approx(1 / math.log2(3))
    assert ndcg_at(RANKING, {"a", "c"}, 10) == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    assert ndcg_at(RANKING, {"a", "b"}, 10) == pytest.approx(1.0)
    assert ndcg_at((*RANKING, "k"), {"k"}, 10) == 0.0  # beyond the cut
    # a duplicate counts once (twice would score as the ideal order)
    assert ndcg_at(("b", "b"), {"b", "z"}, 10) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_a_question_without_relevant_answers_is_refused() -> None:
    with pytest.raises(ValueError):
        recall_at(RANKING, set(), 1)
    with pytest.raises(ValueError):
        ndcg_at(RANKING, set(), 10)
    with pytest.raises(ValueError):
        score([])


def test_scores_are_means_over_questions_with_the_median_latency() -> None:
    answers = [
        Answer(("x", "y"), ("x",), (), 10.0),  # found first
        Answer(("y", "x"), ("x",), (), 30.0),  # found second
        Answer(("y", "z"), ("x",), (), 20.0),  # not found
        Answer(("w", "v", "u", "t", "s", "x"), ("x",), (), 99.0),  # found sixth
    ]
    s = score(answers)
    assert s.questions == 4
    assert s.recall_at_1 == 0.25
    assert s.recall_at_5 == 0.5
    assert s.mrr == pytest.approx((1 + 1 / 2 + 0 + 1 / 6) / 4)
    assert s.ndcg_at_10 == pytest.approx((1 + 1 / math.log2(3) + 0 + 1 / math.log2(7)) / 4)
    assert s.p50_ms == 25.0
    assert s.superseded_at_1 is None


def test_a_superseded_memory_on_top_is_counted_and_is_not_a_hit() -> None:
    answers = [
        Answer(("old", "new"), ("new",), ("old",), 1.0),
        Answer(("new", "old"), ("new",), ("old",), 1.0),
        Answer(("other", "new"), ("new",), ("old",), 1.0),
        Answer(("x",), ("x",), (), 1.0),  # no superseded answer: not in that share
    ]
    s = score(answers)
    assert s.superseded_at_1 == pytest.approx(1 / 3)
    assert s.recall_at_1 == 0.5


def test_the_table_has_a_cell_per_column_and_says_what_is_pending() -> None:
    scores = score([Answer(("a",), ("a",), ("b",), 12.34)])
    table = markdown_table(
        [
            Row("exact_term", "SEMANTIC", scores),
            Row("exact_term", "HYBRID", pending="pending (needs SearchMemoriesRequest.mode)"),
        ]
    ).splitlines()
    assert table[0].startswith("| family | mode | questions | recall@1")
    assert len({line.count("|") for line in table}) == 1
    assert table[2] == (
        "| exact_term | SEMANTIC | 1 | 1.000 | 1.000 | 1.000 | 1.000 | 0.000 | 12.3 |"
    )
    assert "| exact_term | HYBRID | pending (needs SearchMemoriesRequest.mode) |" in table[3]
