"""Reading documents with the real parsers, on files the tests make
themselves: a multi-page PDF (fpdf2), an encrypted and a truncated one
(pypdf), a DOCX with headings and a table (python-docx), an HTML page with
navigation chrome, CSV, JSON, Latin-1 and UTF-16 text; binary types refused
by name; and the splitter's invariants on any text (offsets, token
capacity, coverage) with the model's own tokenizer."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memoryd.documents import Reader, TokenSplitter, splitter_for
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

MODEL_DIR = Path(os.environ.get("MEMORYD_TEST_MODEL_DIR", "models/all-MiniLM-L6-v2"))
reader = Reader()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read(tmp_path: Path, name: str, data: bytes, declared: str = "") -> ParsedDocument:
    kind = reader.detect(data[:8192], declared, name)
    return reader.parse(write(tmp_path, name, data), kind)


def pdf_bytes(pages: list[str], title: str = "") -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


# --- formats ----------------------------------------------------------------------------


def test_a_multi_page_pdf_keeps_each_pages_text_in_order(tmp_path: Path) -> None:
    pages = [f"Page {i}: the quarterly report for region number {i}." for i in range(1, 6)]
    data = pdf_bytes(pages, title="Quarterly")
    seen: list[int] = []
    kind = reader.detect(data[:8192], "", "report.pdf")
    doc = reader.parse(write(tmp_path, "r.pdf", data), kind, seen.append)
    assert kind == PDF and doc.mime_type == PDF and doc.pages == 5
    assert seen == [1, 2, 3, 4, 5] and doc.title == "Quarterly"
    positions = [doc.text.index(f"region number {i}") for i in range(1, 6)]
    assert positions == sorted(positions)


def test_an_encrypted_pdf_is_refused_saying_so(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(pdf_bytes(["secret"]))).pages:
        writer.add_page(page)
    writer.encrypt("hunter2")
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(UnreadableDocument) as err:
        read(tmp_path, "locked.pdf", out.getvalue())
    assert err.value.reason == "DOCUMENT_ENCRYPTED" and "password" in err.value.message


def test_a_pdf_with_an_owner_password_only_is_read(tmp_path: Path) -> None:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(io.BytesIO(pdf_bytes(["open to read, locked to edit"]))).pages:
        writer.add_page(page)
    writer.encrypt(user_password="", owner_password="owner-secret")
    out = io.BytesIO()
    writer.write(out)
    assert "open to read" in read(tmp_path, "owner.pdf", out.getvalue()).text


def test_a_truncated_pdf_is_corrupt(tmp_path: Path) -> None:
    data = pdf_bytes(["one", "two"])
    with pytest.raises(UnreadableDocument) as err:
        read(tmp_path, "cut.pdf", data[: len(data) // 3])
    assert err.value.reason in ("DOCUMENT_CORRUPT", "DOCUMENT_EMPTY")


def test_a_pdf_without_text_is_empty(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()  # nothing written: as a scan without a text layer
    with pytest.raises(UnreadableDocument) as err:
        read(tmp_path, "scan.pdf", bytes(pdf.output()))
    assert err.value.reason == "DOCUMENT_EMPTY"


def test_a_docx_keeps_headings_paragraphs_and_tables_in_order(tmp_path: Path) -> None:
    import docx

    d = docx.Document()
    d.add_heading("Handbook", level=1)
    d.add_paragraph("Welcome to the team.")
    d.add_heading("Holidays", level=2)
    d.add_paragraph("Everyone has twenty-five days a year.")
    table = d.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Country", "Days"
    table.cell(1, 0).text, table.cell(1, 1).text = "Portugal", "22"
    d.add_paragraph("Ask your manager first.")
    out = io.BytesIO()
    d.save(out)
    doc = read(tmp_path, "handbook.docx", out.getvalue())
    assert doc.mime_type == DOCX
    assert doc.text.index("# Handbook") < doc.text.index("## Holidays")
    assert "Country | Days\nPortugal | 22" in doc.text
    assert doc.text.index("Portugal | 22") < doc.text.index("Ask your manager first.")


def test_a_corrupt_docx_is_refused(tmp_path: Path) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("word/document.xml", "<not really/>")
    with pytest.raises(UnreadableDocument) as err:
        read(tmp_path, "bad.docx", out.getvalue())
    assert err.value.reason == "DOCUMENT_CORRUPT"


def test_html_keeps_the_main_content_not_the_navigation(tmp_path: Path) -> None:
    article = " ".join(
        f"Paragraph {i} explains how the recycling bins are sorted by colour and material."
        for i in range(12)
    )
    page = f"""<!DOCTYPE html><html><head><title>Recycling</title></head><body>
    <header><a href="/">Home</a> <a href="/shop">Shop</a> <a href="/careers">Careers</a></header>
    <nav><ul><li>Products</li><li>Pricing</li><li>Contact us</li></ul></nav>
    <div class="cookie-banner">We use cookies. Accept all cookies?</div>
    <article><h1>Sorting waste</h1><p>{article}</p></article>
    <footer>Copyright 2026 Example Corp. Privacy policy. Terms of use.</footer>
    </body></html>"""
    doc = read(tmp_path, "page.html", page.encode())
    assert doc.mime_type == HTML and "recycling bins are sorted" in doc.text
    for chrome in ("Careers", "Pricing", "Accept all cookies", "Privacy policy"):
        assert chrome not in doc.text


def test_csv_rows_say_what_each_value_is(tmp_path: Path) -> None:
    doc = read(tmp_path, "staff.csv", b"name,desk\nAna,3F\nRui,2B\n")
    assert doc.mime_type == CSV and "name: Ana\ndesk: 3F" in doc.text


def test_json_is_read_as_readable_text(tmp_path: Path) -> None:
    doc = read(tmp_path, "conf.json", b'{"office":{"city":"Lisbon","floors":4}}')
    assert doc.mime_type == JSON and '"city": "Lisbon"' in doc.text
    with pytest.raises(UnreadableDocument):
        reader.parse(write(tmp_path, "bad.json", b'{"a": '), JSON)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            (
                "Le café du coin sert une crème brûlée délicieuse. Les garçons préparent "
                "les tables à l'extérieur dès que le soleil se lève, et les habitués "
                "commandent leur café à la carte. Très français, très élégant."
            ).encode("latin-1"),
            "crème brûlée délicieuse",
        ),
        ("Plain UTF-16 text: naïve façade".encode("utf-16"), "naïve façade"),
        (b"\xef\xbb\xbfBOM first line", "BOM first line"),
        ("日本語のテキスト、そして絵文字 🎉".encode(), "日本語のテキスト"),
    ],
)
def test_text_in_any_encoding(tmp_path: Path, data: bytes, expected: str) -> None:
    doc = read(tmp_path, "notes.txt", data)
    assert doc.mime_type == PLAIN and expected in doc.text


def test_utf8_cut_inside_a_character_and_utf16_without_bom(tmp_path: Path) -> None:
    cjk = ("日本語のテキストです。" * 2000).encode()
    # the head the type is sniffed from ends inside a three-byte character
    assert reader.detect(cjk[:8191], "", "notes.txt") == PLAIN
    assert "テキスト" in read(tmp_path, "notes.txt", cjk).text
    le = "Plain text written as UTF-16 without a byte order mark.".encode("utf-16-le")
    assert "without a byte order mark" in read(tmp_path, "u16.txt", le).text


def test_markdown_by_name_or_declaration(tmp_path: Path) -> None:
    assert read(tmp_path, "a.md", b"# Title\n\ntext").mime_type == MARKDOWN
    assert read(tmp_path, "a", b"# Title\n\ntext", "text/markdown").mime_type == MARKDOWN


@pytest.mark.parametrize(
    ("data", "name", "declared", "detected"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "photo.txt", "text/plain", "image/png"),
        (b"\xff\xd8\xff\xe0" + bytes(100), "x.pdf", "application/pdf", "image/jpeg"),
        (b"\x1f\x8b\x08" + bytes(100), "a.txt", "", "application/gzip"),
        (b"\x7fELF" + bytes(100), "run", "", "application/x-executable"),
        (bytes(range(256)) * 8, "blob.txt", "", "application/octet-stream"),
    ],
)
def test_binary_types_are_refused_by_name(
    data: bytes, name: str, declared: str, detected: str
) -> None:
    with pytest.raises(UnsupportedType) as err:
        reader.detect(data, declared, name)
    assert err.value.detected == detected and detected in err.value.message
    assert err.value.violations[0].field == "mime_type"


def test_a_zip_that_is_not_a_docx_is_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedType) as err:
        reader.detect(out.getvalue(), "", "archive.zip")
    assert err.value.detected == "application/zip"


def test_the_bytes_win_over_a_declared_type(tmp_path: Path) -> None:
    data = pdf_bytes(["declared as text"])
    assert reader.detect(data[:8192], "text/plain", "a.txt") == PDF
    assert reader.detect(b"just words", "application/pdf", "a.pdf") == PLAIN


# --- the splitter -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def splitter() -> TokenSplitter:
    return splitter_for(MODEL_DIR, 40, 8)


def test_the_splitter_is_sized_by_the_models_tokenizer() -> None:
    default = splitter_for(MODEL_DIR, 0, 24)
    assert default.capacity == 126  # the model reads 128 tokens, 2 are its own
    without = splitter_for(None, 100, 10)
    assert without.capacity == 100 and without.tokens("abcdefgh") == 2


def test_markdown_chunks_break_at_headings(splitter: TokenSplitter) -> None:
    sections = [
        f"## Section {i}\n\n" + " ".join(f"word{i}_{j}" for j in range(12)) for i in range(6)
    ]
    text = "# Guide\n\n" + "\n\n".join(sections)
    chunks = splitter.split(ParsedDocument(text, MARKDOWN))
    assert len(chunks) > 1
    # a heading only ever starts a chunk, never sits inside one
    assert all(c.text.find("## Section") in (-1, 0) for c in chunks), [c.text for c in chunks]
    assert sum(c.text.startswith("## Section") for c in chunks) >= 6


def test_a_large_document_splits_in_linear_pieces(splitter: TokenSplitter) -> None:
    text = "\n\n".join(f"Paragraph {i}. " + "lorem ipsum dolor sit amet " * 8 for i in range(5000))
    assert len(text) > 1_000_000
    chunks = splitter.split(ParsedDocument(text, PLAIN))
    assert len(chunks) > 1000 and [c.index for c in chunks] == list(range(len(chunks)))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",)),
        min_size=1,
        max_size=3000,
    )
)
def test_chunks_index_the_text_fit_the_capacity_and_cover_it(
    splitter: TokenSplitter, text: str
) -> None:
    chunks = splitter.split(ParsedDocument(text, PLAIN))
    covered = [False] * len(text)
    for i, c in enumerate(chunks):
        assert c.index == i and c.text and text[c.start : c.end] == c.text
        assert splitter.tokens(c.text) <= splitter.capacity
        for p in range(c.start, c.end):
            covered[p] = True
    assert all(covered[p] for p, ch in enumerate(text) if not ch.isspace())
