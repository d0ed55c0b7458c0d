"""The extractor without a model: each user message is one fact, stored as
it was said."""

from __future__ import annotations

from collections.abc import Sequence

from memoryd.domain.conversations.extraction import (
    Candidate,
    ChatMessage,
    Decision,
    Event,
    Fact,
    PromptSet,
    TokenUsage,
)


class VerbatimExtractor:
    """`extract`: every `user` message with non-blank content becomes one
    fact (its content, stripped); other roles are not facts about the user.
    `decide`: ADD each fact as it is. No model, no network, no tokens, so it
    reads no candidates and ignores the prompts."""

    @property
    def name(self) -> str:
        return "verbatim"

    @property
    def version(self) -> str:
        return "1"

    @property
    def needs_candidates(self) -> bool:
        return False

    async def extract(
        self,
        messages: Sequence[ChatMessage],
        context: Sequence[ChatMessage],
        prompts: PromptSet,
        usage: TokenUsage,
    ) -> list[Fact]:
        return [
            Fact(message.content.strip(), (index,))
            for index, message in enumerate(messages)
            if message.role == "user" and message.content.strip()
        ]

    async def decide(
        self,
        items: Sequence[tuple[Fact, Sequence[Candidate]]],
        prompts: PromptSet,
        usage: TokenUsage,
    ) -> list[Decision]:
        return [
            Decision(Event.ADD, fact, text=fact.text, reason="stored verbatim")
            for fact, _candidates in items
        ]
