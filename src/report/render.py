"""The report's content as a list of blocks, written out as Markdown or as one self-contained
HTML file (inline CSS, pictures as data: URIs, no script, nothing fetched)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Text:
    text: str
    callout: bool = False


@dataclass
class Bullets:
    items: list


@dataclass
class Table:
    header: list
    rows: list
    row_classes: list = field(default_factory=list)  # one CSS class per row (HTML only)
    numeric: set = field(default_factory=set)  # column indices to right-align


@dataclass
class Image:
    path: str  # relative to the report, for Markdown
    png: bytes
    alt: str


@dataclass
class Code:
    text: str


def markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Text):
            out.append("> " + block.text if block.callout else block.text)
        elif isinstance(block, Bullets):
            out.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            out.append(markdown_table(block))
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.path})")
        elif isinstance(block, Code):
            out.append(f"```\n{block.text}\n```")
    return "\n\n".join(out) + "\n"


def markdown_table(table: Table) -> str:
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")
    align = ["---:" if i in table.numeric else "---" for i in range(len(table.header))]
    lines = ["| " + " | ".join(cell(h) for h in table.header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1d2330;
       max-width: 1400px; margin: 24px auto; padding: 0 20px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 30px; border-bottom: 1px solid #dde2ea; }
h3 { font-size: 15px; margin-top: 20px; }
.callout { background: #f3f6fb; border-left: 4px solid #3b6fd8; padding: 10px 14px; font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 12.5px; }
th, td { border: 1px solid #dde2ea; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f5f7fa; position: sticky; top: 0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.failed td { background: #fdecec; } tr.incomplete td, tr.running td, tr.stopped td { background: #fff6e0; }
tr.event td { background: #fff9f2; } tr.unknown td, tr.logged td { background: #f7f7f7; }
.scroll { overflow-x: auto; max-height: 720px; overflow-y: auto; }
img { max-width: 100%; border: 1px solid #eef1f5; margin: 6px 0 14px; }
pre { background: #f5f7fa; padding: 8px 12px; overflow-x: auto; }
"""


def html_page(title: str, blocks: list) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"]
    for block in blocks:
        parts.append(html_block(block))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def html_block(block) -> str:
    e = html.escape
    if isinstance(block, Heading):
        return f"<h{block.level}>{e(block.text)}</h{block.level}>"
    if isinstance(block, Text):
        return f'<p class="callout">{e(block.text)}</p>' if block.callout else f"<p>{e(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{e(str(item))}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{e(str(h))}</th>" for h in block.header)
        rows = []
        for i, row in enumerate(block.rows):
            cls = f' class="{e(block.row_classes[i])}"' if i < len(block.row_classes) and block.row_classes[i] else ""
            cells = "".join(f'<td class="num">{e(str(v))}</td>' if j in block.numeric else f"<td>{e(str(v))}</td>"
                            for j, v in enumerate(row))
            rows.append(f"<tr{cls}>{cells}</tr>")
        return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    if isinstance(block, Image):
        data = base64.b64encode(block.png).decode("ascii")
        return f'<img alt="{e(block.alt)}" src="data:image/png;base64,{data}">'
    if isinstance(block, Code):
        return f"<pre>{e(block.text)}</pre>"
    raise TypeError(f"unknown block {type(block).__name__}")
