"""The two renderers of a report's sections: Markdown (``README.md`` with image files beside it) and a
self-contained HTML page (``index.html``). They draw the view model of :mod:`harness.report.model` and decide
nothing about content."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from harness.report.images import scaled_height
from harness.report.model import Cell, Figure, ImageGrid, Section, Table, Text, slug

__all__ = ["render_html", "render_markdown"]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(title: str, sections: list[Section], source: str, out_dir: Path) -> str:
    """The report as Markdown; figures and sample crops are written as files under ``out_dir`` (a README on
    GitHub cannot show ``data:`` URIs)."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"{'#' * section.level} {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                if block.title and block.title != section.title:
                    lines += [f"**{block.title}**", ""]
                header = [_md_cell(c) or " " for c in block.columns]
                lines.append("| " + " | ".join(header) + " |")
                align = "--:" if block.align == "right" else "---"
                lines.append("|" + "|".join(["---"] + [align] * (len(header) - 1)) + "|")
                for row in block.rows:
                    label = f"*{row.label}*" if row.kind in ("reference", "summary") else row.label
                    cells = [f"**{_md_cell(c.text)}**" if c.bold and c.text else _md_cell(c.text) for c in row.cells]
                    lines.append("| " + " | ".join([_md_cell(label), *cells]) + " |")
                lines.append("")
                if block.notes:
                    lines += [*(f"{note}  " for note in block.notes), ""]
            elif isinstance(block, Figure):
                path = out_dir / "figures" / f"{block.id}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(block.png)
                lines += [f"![{block.title}](figures/{block.id}.png)", ""]
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
            elif isinstance(block, ImageGrid):
                lines += [f"**{block.title}**", ""]
                lines.append("| " + " | ".join(c or "method" for c in block.columns) + " |")
                lines.append("|" + "|".join(["---"] * len(block.columns)) + "|")
                for label, images in block.rows:
                    cells = []
                    for column, (name, png) in zip(block.columns[1:], images, strict=False):
                        if png is None:
                            cells.append("–")
                            continue
                        path = out_dir / name
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_bytes(png)
                        cells.append(f"![{label}, {column}]({name})")
                    lines.append("| " + " | ".join([_md_cell(label), *cells]) + " |")
                lines.append("")
                lines += [f"{note}  " for note in block.notes]
                lines.append("")
    lines += ["---", "", f"Source: {source}", ""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1150px;color:#222;
padding:0 1em;line-height:1.45}
h1{border-bottom:2px solid #4c72b0;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;
text-align:right;vertical-align:middle;white-space:nowrap}table.left td,table.left th{text-align:left;white-space:normal}th{background:#eef2f8}td.label,th.label{text-align:left;white-space:nowrap}
tr.reference td{background:#f7f7f7;font-style:italic}tr.summary td{background:#eef2f8;font-style:italic}tr.trial td{font-family:monospace}
p.note{font-size:.85em;color:#555;margin:.2em 0}figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
figure img{max-width:100%;border:1px solid #eee}img.sample{image-rendering:pixelated;height:auto;width:auto;
min-height:40px;transform-origin:left top}td.img{text-align:center;background:#fff}table.samples th{text-align:center}
nav{font-size:.9em;background:#f5f7fa;padding:.6em 1em;border-radius:4px}nav a{margin-right:1em}
footer{font-size:.8em;color:#666;margin-top:3em;border-top:1px solid #ddd;padding-top:.5em}
details summary{cursor:pointer;font-weight:600;margin:.6em 0}code{background:#f3f3f3;padding:0 .2em}
"""

_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{{ title|e }}</title><style>{{ css }}</style></head>
<body>
<h1>{{ title|e }}</h1>
<nav>{% for s in sections %}<a href="#{{ s.anchor }}">{{ s.title|e }}</a>{% endfor %}</nav>
{% for s in sections %}
<section id="{{ s.anchor }}"><h2>{{ s.title|e }}</h2>
{% for b in s.blocks %}{{ b }}
{% endfor %}</section>
{% endfor %}
<footer>Source: {{ source|e }}</footer>
</body></html>
"""


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** in escaped HTML."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _html_cell(cell: Cell) -> str:
    title = ' title="' + html.escape(cell.title, quote=True) + '"' if cell.title else ""
    text = _inline(cell.text)
    return f"<td{title}>{'<strong>' + text + '</strong>' if cell.bold and cell.text else text}</td>"


def _html_block(block: Any, section_title: str) -> str:
    if isinstance(block, Text):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Figure):
        caption = f"<figcaption>{_inline(block.caption)}</figcaption>" if block.caption else ""
        return (f'<figure id="{block.id}"><img src="{_data_uri(block.png)}" alt="{html.escape(block.title)}">'
                f"{caption}</figure>")
    if isinstance(block, Table):
        head = "".join(f'<th class="label">{_inline(c)}</th>' if i == 0 else f"<th>{_inline(c)}</th>"
                       for i, c in enumerate(block.columns))
        body = []
        for row in block.rows:
            cells = "".join(_html_cell(c) for c in row.cells)
            body.append(f'<tr class="{row.kind}" data-label="{html.escape(row.label, quote=True)}">'
                        f'<td class="label">{html.escape(row.label)}</td>{cells}</tr>')
        notes = "".join(f'<p class="note">{_inline(n)}</p>' for n in block.notes)
        title = f"<h3>{_inline(block.title)}</h3>" if block.title and block.title != section_title else ""
        thead = f"<thead><tr>{head}</tr></thead>" if any(block.columns) else ""
        table = f'<table id="{block.id}" class="{block.align}">{thead}<tbody>{"".join(body)}</tbody></table>'
        if block.collapsed:
            return f"<details><summary>{_inline(block.title)}</summary>{table}{notes}</details>"
        return f"{title}{table}{notes}"
    if isinstance(block, ImageGrid):
        head = "".join(f"<th>{html.escape(c)}</th>" for c in block.columns)
        body = []
        for label, images in block.rows:
            cells = "".join(
                f'<td class="img"><img class="sample" src="{_data_uri(png)}" alt="{html.escape(label)}, '
                f'{html.escape(column)}" style="height:{scaled_height(png)}px"></td>'
                if png is not None else "<td>–</td>" for column, (name, png) in zip(block.columns[1:], images,
                                                                                     strict=False))
            body.append(f'<tr data-label="{html.escape(label, quote=True)}"><td class="label">{html.escape(label)}'
                        f"</td>{cells}</tr>")
        notes = "".join(f'<p class="note">{_inline(n)}</p>' for n in block.notes)
        return (f'<h3>{html.escape(block.title)}</h3><table id="{block.id}" class="samples"><thead><tr>{head}</tr>'
                f'</thead><tbody>{"".join(body)}</tbody></table>{notes}')
    raise TypeError(type(block))


def render_html(title: str, sections: list[Section], source: str) -> str:
    """The report as one self-contained HTML page: CSS inline, every image a ``data:`` URI, no network access
    (the Content-Security-Policy forbids any)."""
    import jinja2

    env = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)
    rendered = [{"title": s.title, "anchor": slug(s.title),
                 "blocks": [_html_block(b, s.title) for b in s.blocks]} for s in sections]
    return env.from_string(_HTML).render(title=title, css=_CSS, sections=rendered, source=source)
