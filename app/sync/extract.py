"""Text out of files: Markdown, plain text, reStructuredText, HTML, PDF, DOCX, those gzipped
(`notes.md.gz`), and any other file that holds text (`README`, `data.json`). A file that yields no text raises `Unreadable` with the reason
the operator is shown.

Plain text in UTF-8 (with or without a BOM) is read as such; anything else is given to
charset-normalizer, so a Latin-1 or Windows-1252 file is read rather than refused. The parsers
are imported when first needed: a sync of Markdown never loads pypdf.
"""

from __future__ import annotations

import codecs
import errno
import functools
import io
import logging
import os
import re
import stat
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bs4 import BeautifulSoup
    from docx.document import Document

TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".text", ".rst"})
HTML_SUFFIXES = frozenset({".html", ".htm"})
#: Suffixes that name a format (left out of a title taken from the file name).
_KNOWN_SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | {".pdf", ".docx"}
SUPPORTED = "md, markdown, txt, text, rst, html, htm, pdf, docx, any .gz of those, or text"
#: Files larger than this are not read at all: no plan takes a document that large.
MAX_READ_BYTES = 64 * 1024 * 1024
#: HTML elements whose text is not content.
_DROP = ("script", "style", "noscript", "template", "svg", "iframe", "object")
_BLOCKS = [
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "aside",
    "main",
    "pre",
    "blockquote",
    "dd",
    "dt",
    "dl",
    "figure",
    "figcaption",
    "hr",
    "form",
    "fieldset",
    "details",
    "summary",
]
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\f\v\r\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")
_WESTERN = ("cp1252", "latin_1", "iso8859_15")
_RST_RULE = re.compile(r"^([=\-~^\"'`#*+:._<>!$%&,/;?@\\|])\1{2,}\s*$")
_RST_TITLE_DIRECTIVE = re.compile(r"^\.\.\s+title::\s*(\S.*)$")
_FRONT_TITLE = re.compile(r"^title\s*:\s*(.*?)\s*$", re.IGNORECASE)
#: CommonMark: up to 3 spaces of indent; 4 make a code block.
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))??(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
#: A word broken at a line end by a hyphen, continued in lowercase: "recog-\nnition".
_HYPHENATED = re.compile(r"(?<=[^\W\d_])-\n(?=[^\W\d_])")
#: What PDF producers put in /Title when the author put nothing.
_JUNK_PDF_TITLE = re.compile(
    r"^(untitled.*|microsoft (word|powerpoint|excel) - .*|.*\.(docx?|pptx?|xlsx?|odt|tex|dvi|pdf|indd|qxd|rtf))$",
    re.IGNORECASE,
)


class Unreadable(Exception):
    """The file has no text to upload; the message says why. `group` is the message without
    what is particular to this file, so that a report can list files by reason (a folder of
    images gives one "unsupported type" line, not the list of supported types per image)."""

    def __init__(self, message: str, *, group: str | None = None) -> None:
        super().__init__(message)
        self.group = group


@dataclass(frozen=True, slots=True)
class Extracted:
    text: str
    title: str | None


def extract(path: Path, *, identity: tuple[int, int] | None = None) -> Extracted:
    """The text and title of the file at `path`; `identity` (see `read_bytes`) if listed."""
    return extract_data(path.name, read_bytes(path, identity=identity))


def read_bytes(path: Path, *, identity: tuple[int, int] | None = None) -> bytes:
    """The bytes of the regular file at `path`, never through a link.

    `identity` is the file's `(st_dev, st_ino)` when it was listed: a file replaced since (by a
    link to elsewhere, or under a folder swapped for a link, which O_NOFOLLOW alone does not
    see) is refused rather than read, so a sync reads only what it listed inside its folder.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    # Non-blocking: a file swapped for a FIFO must not hang the sync on open().
    flags |= getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: FreeBSD's O_NOFOLLOW answer
            raise Unreadable("replaced by a link since it was listed, not followed") from exc
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Unreadable("not a regular file")
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            raise Unreadable("replaced since it was listed, not read")
        if st.st_size > MAX_READ_BYTES:
            raise Unreadable(_too_large(st.st_size))
        data = f.read(MAX_READ_BYTES + 1)
    if len(data) > MAX_READ_BYTES:  # grown since fstat
        raise Unreadable(_too_large(len(data)))
    return data


def _too_large(size: int) -> str:
    return f"{size / 2**20:.0f} MB, over the {MAX_READ_BYTES // 2**20} MB read limit"


def extract_data(name: str, data: bytes) -> Extracted:
    """The text and title of `data`, the content of a file called `name`. `x.md.gz` is read as
    the Markdown it holds. A known suffix picks the parser; any other file is read by what it
    holds: a PDF by its signature, text if it is text, else it is an unsupported type."""
    if name.lower().endswith(".gz"):
        data, name = _gunzip(data), name[:-3]
    suffix = PurePath(name).suffix.lower()
    if suffix in TEXT_SUFFIXES or (not suffix and not data.startswith(b"%PDF-")):
        kind, parse = "text", lambda: _text(data, suffix)
    elif suffix in HTML_SUFFIXES:
        kind, parse = "HTML", lambda: _html(data)
    elif suffix == ".pdf" or not suffix:
        kind, parse = "PDF", lambda: _pdf(data)
    elif suffix == ".docx":
        kind, parse = "DOCX", lambda: _docx(data)
    elif (plain := _utf8_text(data)) is not None:
        kind, parse = "text", functools.partial(Extracted, plain, None)
    else:
        raise Unreadable(
            f"unsupported type {suffix} (sync reads {SUPPORTED})",
            group=f"unsupported type (sync reads {SUPPORTED})",
        )
    found = _guarded(kind, parse)
    text = found.text.replace("\x00", "")
    if not text.strip():
        raise Unreadable("no text in it (a scanned PDF?)" if kind == "PDF" else "empty")
    title = (found.title or "").strip()[:512] or None
    return Extracted(text, title)


def file_title(name: str) -> str:
    """A title for a file that has none: its name without the suffixes of a known format
    (`notes.md.gz` -> notes); any other suffix is part of the name (`README.Debian`)."""
    bare = name[:-3] if name.lower().endswith(".gz") else name
    path = PurePath(bare)
    if path.suffix.lower() in _KNOWN_SUFFIXES:
        return path.stem or name
    return bare or name


def _gunzip(data: bytes) -> bytes:
    """The content of a gzip file, at most the read limit of it (a small file can unpack to
    gigabytes)."""
    import gzip
    import zlib

    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
            inner = f.read(MAX_READ_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise Unreadable(f"not a readable gzip ({exc.__class__.__name__}: {exc})") from exc
    if len(inner) > MAX_READ_BYTES:
        raise Unreadable(f"over the {MAX_READ_BYTES // 2**20} MB read limit once uncompressed")
    return inner


def _utf8_text(data: bytes) -> str | None:
    """`data` as text if it is UTF-8 (or has a UTF-16 BOM) without control characters.
    Stricter than `decode`: with an unknown suffix, a few bytes of a binary format would
    pass for Windows-1252."""
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        else:
            text = data.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


def _guarded(kind: str, parse: Callable[[], Extracted]) -> Extracted:
    """`parse()`, with whatever a parser raises on a damaged file as `Unreadable`.

    pypdf, python-docx (lxml, zipfile), bs4 and charset-normalizer each fail in their own ways
    (XMLSyntaxError, a zip with no Word document in it, struct.error on a truncated PDF,
    RecursionError on absurd nesting): listing those would always miss one, and one bad file
    must never abort the sync of a whole folder. The bytes are already read, so an OSError
    here is a parser's too.
    """
    try:
        # A damaged file makes parsers warn as well as fail; the skip reason says enough, and
        # a warning must not turn into an error where warnings are errors.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return parse()
    except Unreadable:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160]
        name = exc.__class__.__name__
        raise Unreadable(
            f"not a readable {kind} ({name}: {detail})"
            if detail
            else f"not a readable {kind} ({name})"
        ) from exc


def _text(data: bytes, suffix: str) -> Extracted:
    text = decode(data)
    if suffix in (".md", ".markdown"):
        return Extracted(text, markdown_title(text))
    if suffix == ".rst":
        return Extracted(text, rst_title(text))
    return Extracted(text, None)


def decode(data: bytes) -> str:
    """Bytes of a text file as text: UTF-8 if it is, else what charset-normalizer finds."""
    # NUL bytes are valid UTF-8 but no text file has them (UTF-16 aside, which has a BOM).
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if b"\x00" in data[:8192] and not utf16:
        raise Unreadable("binary, not text")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = from_bytes(data)
    best = matches.best()
    if best is None:
        raise Unreadable("binary, or text in an encoding that could not be recognised")
    # Short text fits several single-byte encodings about equally ("Café crème" reads as
    # Polish cp1257 too). Among near-equal fits take the Western one, by far the commonest
    # legacy encoding of the files people sync.
    western = next(
        (m for m in matches if m.encoding in _WESTERN and m.chaos <= best.chaos + 0.1), None
    )
    return str(western or best)


def markdown_title(text: str) -> str | None:
    """A YAML front matter's `title:`, else the first heading of the highest level (`#` or
    `===` underline), never a `#` line of a fenced or indented code block (a shell comment)."""
    lines = text.splitlines()
    start = 0
    if lines and lines[0].rstrip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].rstrip() in ("---", "...")), 0)
        if end:
            for line in lines[1:end]:
                if m := _FRONT_TITLE.match(line):
                    title = m.group(1).strip()
                    if len(title) > 1 and title[0] == title[-1] and title[0] in "\"'":
                        title = title[1:-1]
                    if title and title not in ("|", ">"):
                        return title
            start = end + 1
    best: tuple[int, str] | None = None
    fence: str | None = None  # the opening fence while inside a fenced block
    paragraph: str | None = None  # the paragraph line a setext underline would make a heading
    for line in lines[start:]:
        if fence is not None:
            m = _FENCE.match(line)
            closing = m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence)
            if closing and m and not m.group(2).strip():
                fence = None
            continue
        heading: tuple[int, str] | None = None
        if (m := _FENCE.match(line)) and not (m.group(1)[0] == "`" and "`" in m.group(2)):
            fence, paragraph = m.group(1), None
            continue
        if not line.strip():
            paragraph = None
            continue
        if paragraph is None and (line.startswith("    ") or line.startswith("\t")):
            continue  # indented code: only a paragraph continues onto an indented line
        if m := _ATX.match(line):
            heading = (len(m.group(1)), (m.group(2) or "").strip())
        elif paragraph is not None and (m := _SETEXT.match(line)):
            heading = (1 if m.group(1)[0] == "=" else 2, paragraph.strip())
        else:
            paragraph = line
            continue
        paragraph = None
        level, title = heading
        if title and (best is None or level < best[0]):
            best = heading
            if level == 1:
                break
    return best[1] if best is not None else None


def rst_title(text: str) -> str | None:
    """A `.. title::` directive, else the first section title: an unindented line (indented
    if overlined) underlined with punctuation at least as long, after a blank line. An
    underline inside a literal block is indented, so not one."""
    lines = [line.rstrip() for line in text.splitlines()]
    for line in lines:
        if m := _RST_TITLE_DIRECTIVE.match(line):
            return m.group(1).strip()
    for i in range(len(lines) - 1):
        line, under = lines[i], lines[i + 1]
        title = line.strip()
        if not title or _RST_RULE.match(line) or not _RST_RULE.match(under):
            continue
        above = lines[i - 1] if i > 0 else ""
        overlined = bool(_RST_RULE.match(above)) and above[0] == under[0]
        if above and not overlined:
            continue  # the last line of a paragraph, not a title
        if line[0].isspace() and not overlined:
            continue
        if len(under) >= len(title):
            return title
    return None


def _tidy(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def _html(data: bytes) -> Extracted:
    from bs4 import BeautifulSoup

    # The stdlib parser: no compiled dependency, and tolerant of the HTML found in the wild.
    soup = BeautifulSoup(data, "html.parser")
    for tag in soup(_DROP):
        tag.decompose()
    title = html_title(soup)
    if soup.head is not None:
        soup.head.decompose()
    # Line breaks around block elements only, so `Hello <b>world</b>` stays one line.
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before("\n")
        tag.insert_after("\n")
    return Extracted(_tidy(soup.get_text()), title)


def html_title(soup: BeautifulSoup) -> str | None:
    """The page's `<title>` (of the document, not of an inline `<svg>`), else its first `<h1>`:
    the first that has text."""
    for tag in (soup.head.find("title") if soup.head is not None else None, soup.find("h1")):
        if tag is not None and (title := tag.get_text(" ", strip=True)):
            return title
    return None


def _pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader

    # pypdf logs every oddity of a damaged file as a warning; the skip reason says enough.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted and not reader.decrypt(""):
        raise Unreadable("encrypted PDF")
    pages = [page.extract_text() or "" for page in reader.pages]
    meta = reader.metadata.title if reader.metadata is not None else None
    text = _HYPHENATED.sub(_join_hyphenated, _tidy("\n\n".join(pages)))
    first = _HYPHENATED.sub(_join_hyphenated, _tidy(pages[0])) if pages else ""
    return Extracted(text, pdf_title(meta, first))


def _join_hyphenated(m: re.Match[str]) -> str:
    # Only before a lowercase letter: "USB-\nC" is a hyphenated name, not a broken word.
    return "" if m.string[m.end()].islower() else m.group(0)


def pdf_title(meta: str | None, first_page: str) -> str | None:
    """The metadata /Title unless a producer's placeholder (`Microsoft Word - x.docx`), else
    the first page's first line if it reads like a heading: short, no sentence punctuation."""
    meta = " ".join((meta or "").split())
    if meta and not _JUNK_PDF_TITLE.match(meta):
        return meta
    first = next((line.strip() for line in first_page.splitlines() if line.strip()), "")
    heading_like = (
        3 <= len(first) <= 120
        and any(c.isalpha() for c in first)
        and not first.endswith((".", ",", ";", ":"))
    )
    return first if heading_like else None


def _docx(data: bytes) -> Extracted:
    import docx

    document = docx.Document(io.BytesIO(data))
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text.strip() for cell in row.cells))
    return Extracted(_tidy("\n".join(parts)), docx_title(document))


def docx_title(document: Document) -> str | None:
    """The core properties' title, else the first paragraph styled Title, else the first of the
    highest heading level."""
    title = " ".join((document.core_properties.title or "").split())
    if title:
        return title
    best: tuple[int, str] | None = None
    for p in document.paragraphs:
        name = p.style.name if p.style is not None else None
        text = " ".join(p.text.split())
        if not name or not text:
            continue
        level = 0 if name == "Title" else _heading_level(name)
        if level is not None and (best is None or level < best[0]):
            best = (level, text)
            if level <= 1:
                break
    return best[1] if best is not None else None


def _heading_level(style: str) -> int | None:
    m = re.fullmatch(r"Heading ([1-9])", style)
    return int(m.group(1)) if m else None
