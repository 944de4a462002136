"""Real files of every kind sync reads, made with the libraries that read them (no fixtures to
go stale): a PDF with a text layer, a DOCX, an HTML page, and a folder mixing them with the
awkward cases (non-ASCII names, Latin-1, empty, oversized, binary)."""

from __future__ import annotations

from pathlib import Path


def make_pdf(path: Path, lines: list[str], title: str | None = None) -> Path:
    """A one-page PDF whose text layer holds `lines` (Helvetica, one text object per line)."""
    from pypdf import PdfWriter
    from pypdf.generic import (
        ArrayObject,
        DecodedStreamObject,
        DictionaryObject,
        NameObject,
        NumberObject,
    )

    writer = PdfWriter()
    page = writer.add_blank_page(width=612, height=792)
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
        }
    )
    page[NameObject("/Resources")] = DictionaryObject(
        {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
    )
    ops = []
    for i, line in enumerate(lines):
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"BT /F1 12 Tf 72 {720 - 18 * i} Td ({escaped}) Tj ET")
    stream = DecodedStreamObject()
    stream.set_data("\n".join(ops).encode("latin-1"))
    page[NameObject("/Contents")] = writer._add_object(stream)
    page[NameObject("/MediaBox")] = ArrayObject([NumberObject(n) for n in (0, 0, 612, 792)])
    if title:
        writer.add_metadata({"/Title": title})
    with path.open("wb") as f:
        writer.write(f)
    return path


def make_docx(
    path: Path,
    title: str,
    paragraphs: list[str],
    *,
    properties: bool = True,
    heading_level: int = 1,
) -> Path:
    """A DOCX whose title is in its core properties (unless not `properties`) and in a heading
    of `heading_level` before `paragraphs`, then a one-row table."""
    import docx

    document = docx.Document()
    if properties:
        document.core_properties.title = title
    else:
        document.add_paragraph("A plain first paragraph, not a heading.")
    document.add_heading(title, level=heading_level)
    for text in paragraphs:
        document.add_paragraph(text)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "Warranty"
    table.rows[0].cells[1].text = "five years"
    document.save(str(path))
    return path


HTML_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Returns policy</title>
<style>body { color: red } .secret-style { display: none }</style>
<script>var trackingSecret = "do-not-index";</script></head>
<body><nav>Home</nav><h1>Returns</h1>
<p>Return any item within <b>30 days</b> for a full refund.</p>
<script>console.log("inline-script-text")</script>
<ul><li>Keep the receipt</li><li>Use the original box</li></ul></body></html>
"""

LATIN1_TEXT = (
    "Le café est prêt. Les élèves étudient à l'école depuis des années; "
    "ils préfèrent les crêpes au beurre salé.\n"
)


def mixed_folder(root: Path) -> Path:
    """The folder of issue 11: every kind of file and every awkward case."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "guide.md").write_text("# Shipping guide\n\nOrders ship in two days.\n", "utf-8")
    (root / "notes.txt").write_text("Plain notes about the lamp.\n", "utf-8")
    (root / "manual.rst").write_text(
        "Lamp manual\n===========\n\nPress the button twice.\n", "utf-8"
    )
    (root / "README").write_text("A readme without an extension.\n", "utf-8")
    (root / "returns.html").write_text(HTML_PAGE, "utf-8")
    make_pdf(root / "leaflet.pdf", ["Aurora lamp leaflet", "Three colour temperatures."], "Leaflet")
    make_docx(root / "spec.docx", "Lamp specification", ["The lamp has a USB-C port."])
    (root / "日本語.txt").write_text("日本語のテキストです。\n", "utf-8")
    (root / "中文.txt").write_text("中文文本。\n", "utf-8")
    (root / "日本.txt").write_text("日本のテキスト。\n", "utf-8")
    (root / "café menu.md").write_text("# Menu\n\nCoffee and cake.\n", "utf-8")
    (root / "latin1.txt").write_bytes(LATIN1_TEXT.encode("latin-1"))
    (root / "empty.txt").write_text("", "utf-8")
    (root / "big.txt").write_text(("word " * 200 + "\n") * 5_200, "utf-8")  # 5.2 MB
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "deep.md").write_text("# Deep\n\nA nested file.\n", "utf-8")
    return root


def break_docx(path: Path, source: Path) -> Path:
    """A copy of the DOCX at `source` whose `word/document.xml` is cut in half: a real zip, a
    real package, and XML that lxml refuses (the `XMLSyntaxError` of a half-written file)."""
    import zipfile

    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "word/document.xml":
                data = data[: len(data) // 2]
            out.writestr(item, data)
    return path
