"""`VerbatimExtractor`: each user message is one fact, always ADDed."""

from __future__ import annotations

from memoryd.domain.conversations.extraction import (
    Candidate,
    ChatMessage,
    Decision,
    Event,
    Extractor,
    Fact,
    PromptSet,
    TokenUsage,
)
from memoryd.extraction import VerbatimExtractor


async def test_each_non_blank_user_message_is_one_fact_and_other_roles_are_not() -> None:
    extractor: Extractor = VerbatimExtractor()
    usage = TokenUsage()
    messages = [
        ChatMessage("user", "  I am vegetarian.\n"),
        ChatMessage("assistant", "Noted, you are vegetarian."),
        ChatMessage("user", "   "),
        ChatMessage("system", "You are helpful."),
        ChatMessage("user", "My sister Ana lives in Porto.", name="bob"),
    ]
    context = [ChatMessage("user", "This earlier message is not a fact of this operation.")]

    facts = await extractor.extract(messages, context, PromptSet(), usage)

    assert facts == [
        Fact("I am vegetarian.", (0,)),
        Fact("My sister Ana lives in Porto.", (4,)),
    ]
    assert usage == TokenUsage()
    assert (extractor.name, extractor.version, extractor.needs_candidates) == (
        "verbatim",
        "1",
        False,
    )


async def test_every_fact_is_added_as_it_is_whatever_the_candidates_and_prompts() -> None:
    extractor = VerbatimExtractor()
    usage = TokenUsage()
    first, second = Fact("I am vegetarian.", (0,)), Fact("I live in Lyon.", (1,))
    items = [(first, [Candidate("c1", "I am vegetarian.")]), (second, [])]

    decisions = await extractor.decide(items, PromptSet(decision="ignored"), usage)

    assert decisions == [
        Decision(Event.ADD, first, text="I am vegetarian.", reason="stored verbatim"),
        Decision(Event.ADD, second, text="I live in Lyon.", reason="stored verbatim"),
    ]
    assert await extractor.extract([], [], PromptSet(), usage) == []
    assert await extractor.decide([], PromptSet(), usage) == []
    assert usage == TokenUsage()
