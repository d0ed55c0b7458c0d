"""Reading a document: what the knowledge job needs from the parsers and
the splitter (`memoryd.documents` implements both), as ports.

A document's bytes are on disk (an upload is spooled to a file as it
arrives; a URL's body is written there too), so a parser reads a path and
the whole file is never held in memory more than once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from memoryd.domain.errors import FailedPrecondition, FieldViolation, InvalidArgument

# The types a document may have. Anything else is refused.
PLAIN = "text/plain"
MARKDOWN = "text/markdown"
HTML = "text/html"
PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
CSV = "text/csv"
JSON = "application/json"
SUPPORTED_TYPES = frozenset({PLAIN, MARKDOWN, HTML, PDF, DOCX, CSV, JSON})


class UnsupportedType(InvalidArgument):
    """The bytes are of a type memoryd does not read (an image, an archive,
    an executable, binary data...). INVALID_ARGUMENT on `mime_type`, naming
    the detected type."""

    reason = "UNSUPPORTED_DOCUMENT_TYPE"

    def __init__(self, detected: str, message: str = "") -> None:
        text = message or (
            f"documents of type {detected} cannot be read; supported: "
            + ", ".join(sorted(SUPPORTED_TYPES))
        )
        super().__init__(text, [FieldViolation("mime_type", text)])
        self.detected = detected


class UnreadableDocument(FailedPrecondition):
    """The document is of a supported type but cannot be read: encrypted
    (reason DOCUMENT_ENCRYPTED), corrupt or truncated (DOCUMENT_CORRUPT),
    or without any text (DOCUMENT_EMPTY, e.g. a scanned PDF with no text
    layer). Its ingest operation fails with this reason."""


@dataclass(frozen=True)
class ParsedDocument:
    """A document's text as memoryd indexes it. Chunk offsets index into
    `text`. Headings are kept as Markdown headings (`#`...) whatever the
    source format, so the splitter can respect them."""

    text: str
    mime_type: str  # one of SUPPORTED_TYPES
    pages: int = 0  # PDF pages read (0 for other types)
    title: str = ""  # from the document when it names one


@dataclass(frozen=True)
class TextChunk:
    """One piece of a document's text: `text == document.text[start:end]`
    (character offsets)."""

    index: int
    start: int
    end: int
    text: str


class DocumentReader(Protocol):
    def detect(self, head: bytes, declared: str, name: str) -> str:
        """The type to read a document as, from its first bytes (at least
        8 KiB or the whole file), the declared MIME type (may be "") and its
        file name (may be ""). The bytes win over a declaration that
        contradicts them. Raises UnsupportedType."""
        ...

    def parse(
        self, path: Path, mime_type: str, on_page: Callable[[int], None] | None = None
    ) -> ParsedDocument:
        """Reads the file as `mime_type` (as `detect` answered). Blocking
        (call it off the event loop). `on_page(n)` reports PDF pages read so
        far. Raises UnreadableDocument."""
        ...


class Splitter(Protocol):
    def split(self, doc: ParsedDocument) -> Sequence[TextChunk]:
        """The document's chunks in order, each at most the embedder's
        input in tokens, consecutive chunks overlapping, boundaries at
        headings and paragraphs where possible. Blocking."""
        ...
