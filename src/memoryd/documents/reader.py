"""Reading documents with maintained parsers: pypdf (PDF text layer),
python-docx (DOCX), trafilatura (an HTML page's main content, as Markdown),
charset-normalizer (the encoding of text files).

`Reader` implements `memoryd.domain.knowledge.reading.DocumentReader`.
Every library error is caught at this boundary and becomes
`UnreadableDocument` with a reason: a document that cannot be read fails
its operation with a message, never with a library's traceback.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from charset_normalizer import from_bytes

from memoryd.domain.knowledge.reading import (
    CSV,
    DOCX,
    HTML,
    JSON,
    MARKDOWN,
    PDF,
    PLAIN,
    ParsedDocument,
    UnreadableDocument,
    UnsupportedType,
)

log = logging.getLogger("memoryd.documents")

# Binary signatures of types memoryd does not read: refused naming the type.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x1f\x8b", "application/gzip"),
    (b"\x7fELF", "application/x-executable"),
    (b"MZ", "application/x-msdownload"),
    (b"BZh", "application/x-bzip2"),
    (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (b"Rar!", "application/vnd.rar"),
    (b"ID3", "audio/mpeg"),
    (b"OggS", "audio/ogg"),
    (b"fLaC", "audio/flac"),
    (b"\xd0\xcf\x11\xe0", "application/x-ole-storage"),  # .doc, .xls
)
_BY_EXTENSION = {
    ".txt": PLAIN,
    ".text": PLAIN,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".pdf": PDF,
    ".docx": DOCX,
    ".csv": CSV,
    ".json": JSON,
}
_DECLARED = {
    "text/plain": PLAIN,
    "text/markdown": MARKDOWN,
    "text/x-markdown": MARKDOWN,
    "text/html": HTML,
    "application/xhtml+xml": HTML,
    "application/pdf": PDF,
    DOCX: DOCX,
    "text/csv": CSV,
    "application/json": JSON,
}
_WESTERN = ("cp1252", "latin_1", "iso8859_15")
# Text larger than this is not sniffed as JSON by parsing it whole.
_SNIFF_JSON_BYTES = 8 * 1024 * 1024


class Reader:
    """Detects a document's type and reads its text."""

    def detect(self, head: bytes, declared: str, name: str) -> str:
        if head.startswith(b"%PDF-"):
            return PDF
        if head.startswith(b"PK\x03\x04"):
            if b"word/" in head or _declared(declared, name) == DOCX:
                return DOCX
            raise UnsupportedType("application/zip")
        if head[4:12] in (b"ftypisom", b"ftypmp42", b"ftypM4A ") or head[4:8] == b"ftyp":
            raise UnsupportedType("video/mp4")
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            raise UnsupportedType("image/webp")
        for magic, kind in _SIGNATURES:
            if head.startswith(magic):
                raise UnsupportedType(kind)
        if not _looks_like_text(head):
            raise UnsupportedType("application/octet-stream")
        kind = _declared(declared, name)
        if kind in (PDF, DOCX):  # declared so, but the bytes are text
            kind = ""
        if kind:
            return kind
        text = head.lstrip().lower()
        if text.startswith((b"<!doctype html", b"<html")) or b"<body" in text[:2048]:
            return HTML
        if text[:1] in (b"{", b"["):
            return JSON if _is_json(head) else PLAIN
        return PLAIN

    def parse(
        self, path: Path, mime_type: str, on_page: Callable[[int], None] | None = None
    ) -> ParsedDocument:
        try:
            if mime_type == PDF:
                return _pdf(path, on_page)
            if mime_type == DOCX:
                return _docx(path)
            text = _decode(path.read_bytes())
            if mime_type == HTML:
                return _html(text)
            if mime_type == JSON:
                return _json(text)
            if mime_type == CSV:
                return _csv(text)
            return _checked(ParsedDocument(text, MARKDOWN if mime_type == MARKDOWN else PLAIN))
        except (UnreadableDocument, UnsupportedType):
            raise
        except MemoryError:
            raise
        except Exception as err:  # a parser's own failure, whatever its type
            log.info("document unreadable as %s: %r", mime_type, err)
            raise UnreadableDocument(
                f"the document could not be read as {mime_type}: it looks corrupt or "
                "truncated; check the file and upload it again",
                reason="DOCUMENT_CORRUPT",
            ) from None


def _declared(declared: str, name: str) -> str:
    kind = _DECLARED.get(declared.split(";")[0].strip().lower(), "")
    if kind:
        return kind
    return _BY_EXTENSION.get(Path(name).suffix.lower(), "") if name else ""


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return True
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or _utf16_without_bom(head):
        return True
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as err:
        if err.start >= len(head) - 3 and err.reason == "unexpected end of data":
            return True  # the head ends inside a character
    return from_bytes(head).best() is not None


def _utf16_without_bom(head: bytes) -> str:
    """ "utf-16-le" or "utf-16-be" when the bytes read as such (Latin text:
    every other byte zero), else ""."""
    sample = head[: len(head) - len(head) % 2][:4096]
    if len(sample) < 4:
        return ""
    even, odd = sample[0::2], sample[1::2]
    if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return ""


def _is_json(head: bytes) -> bool:
    if len(head) > _SNIFF_JSON_BYTES:
        return False
    try:
        json.loads(_decode(head))
    except (ValueError, UnreadableDocument):
        return False
    return True


def _decode(data: bytes) -> str:
    """The text of `data` in its own encoding (BOMs honoured, else guessed)."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    if utf16 := _utf16_without_bom(data):
        return data.decode(utf16, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise UnsupportedType("application/octet-stream")
    # short Western text reads about as well as Central European: prefer
    # Windows-1252 / Latin-1 then (è stays è, not č)
    for m in matches:
        if m.encoding in _WESTERN and m.chaos <= best.chaos + 0.05:
            return str(m)
    return str(best)


def _checked(doc: ParsedDocument) -> ParsedDocument:
    if not doc.text.strip():
        raise UnreadableDocument(
            "the document holds no text (an empty file, or a scan without a text layer)",
            reason="DOCUMENT_EMPTY",
        )
    return doc


def _pdf(path: Path, on_page: Callable[[int], None] | None) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        # a PDF with an owner password only opens with the empty user password
        encrypted = reader.is_encrypted and not reader.decrypt("")
    except PdfReadError:
        raise UnreadableDocument(
            "the PDF is corrupt or truncated; check the file and upload it again",
            reason="DOCUMENT_CORRUPT",
        ) from None
    if encrypted:
        raise UnreadableDocument(
            "the PDF is encrypted: remove its password and upload it again",
            reason="DOCUMENT_ENCRYPTED",
        )
    pages: list[str] = []
    for i, page in enumerate(reader.pages, start=1):
        pages.append((page.extract_text() or "").strip())
        if on_page is not None:
            on_page(i)
    title = ""
    if reader.metadata is not None and reader.metadata.title:
        title = str(reader.metadata.title)
    text = "\n\n".join(p for p in pages if p)
    return _checked(ParsedDocument(text, PDF, pages=len(pages), title=title))


def _docx(path: Path) -> ParsedDocument:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(str(path))
    except (zipfile.BadZipFile, KeyError, ValueError) as err:
        raise UnreadableDocument(
            f"the DOCX file is corrupt ({err}); check the file and upload it again",
            reason="DOCUMENT_CORRUPT",
        ) from None
    parts: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Paragraph):
            text = block.text.strip()
            if text:
                parts.append(_heading(block.style.name if block.style else "", text))
        elif isinstance(block, Table):
            rows = [" | ".join(c.text.strip() for c in row.cells) for row in block.rows]
            parts.append("\n".join(rows))
    title = document.core_properties.title or ""
    return _checked(ParsedDocument("\n\n".join(parts), DOCX, title=title))


def _heading(style: str, text: str) -> str:
    """A paragraph, as a Markdown heading when its style is one."""
    if style == "Title":
        return "# " + text
    if style.startswith("Heading "):
        level = style.removeprefix("Heading ").strip()
        if level.isdigit():
            return "#" * min(int(level), 6) + " " + text
    return text


def _html(text: str) -> ParsedDocument:
    import trafilatura

    main = trafilatura.extract(
        text, output_format="markdown", include_tables=True, include_comments=False
    )
    title = ""
    meta = trafilatura.extract_metadata(text)
    if meta is not None and meta.title:
        title = meta.title
    if not main:  # no main content found: the page's whole text
        main = trafilatura.html2txt(text) or ""
    return _checked(ParsedDocument(main.strip(), HTML, title=title))


def _json(text: str) -> ParsedDocument:
    try:
        value: Any = json.loads(text)
    except ValueError as err:
        raise UnreadableDocument(
            f"the JSON is not valid ({err}); fix it or upload it as text/plain",
            reason="DOCUMENT_CORRUPT",
        ) from None
    return _checked(ParsedDocument(json.dumps(value, indent=2, ensure_ascii=False), JSON))


def _csv(text: str) -> ParsedDocument:
    """Rows as `header: value` lines, a blank line between rows, so a chunk
    of rows still says what each value is."""
    rows: Iterator[list[str]] = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None:
        return _checked(ParsedDocument("", CSV))
    out = []
    for row in rows:
        pairs = [f"{h.strip()}: {v.strip()}" for h, v in zip(header, row, strict=False) if v]
        if pairs:
            out.append("\n".join(pairs))
    if not out:  # a single line: the text as it is
        return _checked(ParsedDocument(text.strip(), CSV))
    return _checked(ParsedDocument("\n\n".join(out), CSV))
