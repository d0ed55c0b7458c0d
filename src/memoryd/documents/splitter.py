"""Cutting a document's text into chunks the embedder takes whole:
semantic-text-splitter (headings, then paragraphs, sentences and words as
boundaries), sized in the embedding model's own tokens, with overlap.

`TokenSplitter` implements `memoryd.domain.knowledge.reading.Splitter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semantic_text_splitter import MarkdownSplitter, TextSplitter

from memoryd.domain.knowledge.reading import (
    DOCX,
    HTML,
    MARKDOWN,
    ParsedDocument,
    TextChunk,
)

# Documents whose text keeps Markdown headings (see `ParsedDocument`).
_MARKDOWN_TYPES = frozenset({MARKDOWN, HTML, DOCX})
# Special tokens the model adds around every input ([CLS], [SEP]).
_SPECIAL_TOKENS = 2
# Characters per token when no tokenizer is known (an OpenAI model).
_CHARS_PER_TOKEN = 4


class TokenSplitter:
    def __init__(self, tokenizer: Any | None, capacity: int, overlap: int) -> None:
        """`tokenizer`: a `tokenizers.Tokenizer` (None: sized in
        characters, `_CHARS_PER_TOKEN` per token)."""
        if not 0 <= overlap < capacity:
            raise ValueError(f"the overlap ({overlap}) must be below the capacity ({capacity})")
        self.capacity = capacity
        self.overlap = overlap
        self._tokenizer = tokenizer
        if tokenizer is None:
            size, over = capacity * _CHARS_PER_TOKEN, overlap * _CHARS_PER_TOKEN
            self._text = TextSplitter(size, overlap=over)
            self._markdown = MarkdownSplitter(size, overlap=over)
        else:
            self._text = TextSplitter.from_huggingface_tokenizer(
                tokenizer, capacity, overlap=overlap
            )
            self._markdown = MarkdownSplitter.from_huggingface_tokenizer(
                tokenizer, capacity, overlap=overlap
            )

    def split(self, doc: ParsedDocument) -> Sequence[TextChunk]:
        splitter = self._markdown if doc.mime_type in _MARKDOWN_TYPES else self._text
        return [
            TextChunk(i, start, start + len(text), text)
            for i, (start, text) in enumerate(splitter.chunk_indices(doc.text))
        ]

    def tokens(self, text: str) -> int:
        """`text`'s length in this splitter's unit (tokens, or characters
        over `_CHARS_PER_TOKEN`)."""
        if self._tokenizer is None:
            return -(-len(text) // _CHARS_PER_TOKEN)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def splitter_for(model_dir: Path | None, capacity: int, overlap: int) -> TokenSplitter:
    """A splitter sized by the tokenizer of the model in `model_dir` (its
    `tokenizer.json`); `capacity` 0 takes the model's input limit. Without
    a tokenizer file, chunks are sized in characters."""
    tokenizer = None
    limit = 256
    path = model_dir / "tokenizer.json" if model_dir else None
    if path is not None and path.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        if tokenizer.truncation:
            limit = int(tokenizer.truncation["max_length"])
        # counts must be of the text alone, never padded or cut
        tokenizer.no_padding()
        tokenizer.no_truncation()
    size = capacity or limit - _SPECIAL_TOKENS
    return TokenSplitter(tokenizer, size, min(overlap, size // 2))
