"""A report as data, rendered twice: a single self-contained ``report.html`` (styles inline,
charts as embedded SVG images, no network request of any kind) and ``report.md`` for terminals
and issue trackers (the same text and tables; the charts are named, with the HTML beside it).

The HTML marks itself when opened: a few lines of inline script count the charts the browser
actually decoded and set ``data-charts-rendered`` / ``data-charts-failed`` on ``<body>`` (the
headless-browser test reads them), and show the count in the footer.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field


@dataclass
class Chart:
    """An SVG chart with a caption."""

    title: str
    svg: str
    caption: str = ""


@dataclass
class Table:
    """A table of already formatted cells; ``links`` maps (row, column) to a relative href."""

    headers: list[str]
    rows: list[list[str]]
    title: str = ""
    links: dict[tuple[int, int], str] = field(default_factory=dict)


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


@dataclass
class Document:
    title: str
    verdict: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    footer: str = ""
    #: The verdict is bad news (a hang, a crash, a failed start): shown in red.
    bad: bool = False

    @property
    def charts(self) -> list[Chart]:
        return [c for s in self.sections for c in s.charts]


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#1b1f24;line-height:1.45}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
.verdict{font-size:1.05rem;background:#f6f8fa;border-left:4px solid #0969da;padding:.6rem .8rem}
.verdict.bad{border-left-color:#cf222e}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-size:.85rem}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;text-align:right;vertical-align:top}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
.facts td{text-align:left}.caption{font-size:.8rem;color:#57606a}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1rem}
figure{margin:0}figure img{width:100%;height:auto;border:1px solid #eaeef2}
.sig{color:#cf222e;font-weight:600}.noise{color:#57606a}
footer{margin-top:2rem;font-size:.8rem;color:#57606a}
"""

_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img[data-chart]");
  var ok = 0;
  imgs.forEach(function (img) { if (img.complete && img.naturalWidth > 0) ok++; });
  document.body.setAttribute("data-charts-rendered", String(ok));
  document.body.setAttribute("data-charts-failed", String(imgs.length - ok));
  var out = document.getElementById("chart-check");
  if (out) out.textContent = ok + " of " + imgs.length + " charts rendered";
});
"""


def _cell(text: str, href: str | None) -> str:
    body = html.escape(text)
    if text in ("significant",):
        body = f'<span class="sig">{body}</span>'
    elif text in ("noise",):
        body = f'<span class="noise">{body}</span>'
    return f'<a href="{html.escape(href)}">{body}</a>' if href else body


def _html_table(table: Table, css: str = "") -> str:
    parts = [f"<table{f' class={css!r}' if css else ''}>"]
    if table.headers:
        parts.append(
            "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.headers) + "</tr>"
        )
    for r, row in enumerate(table.rows):
        cells = "".join(f"<td>{_cell(v, table.links.get((r, c)))}</td>" for c, v in enumerate(row))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def render_html(doc: Document) -> str:
    """The single-file HTML report."""
    bad = doc.bad
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(doc.title)}</h1>",
        f'<p class="verdict{" bad" if bad else ""}">{html.escape(doc.verdict)}</p>',
    ]
    if doc.facts:
        out.append(_html_table(Table([], [[k, v] for k, v in doc.facts]), "facts"))
    for n, section in enumerate(doc.sections):
        out.append(f'<h2 id="s{n}">{html.escape(section.title)}</h2>')
        out += [f"<p>{html.escape(p)}</p>" for p in section.paragraphs]
        for table in section.tables:
            if table.title:
                out.append(f"<h3>{html.escape(table.title)}</h3>")
            out.append(_html_table(table))
        if section.charts:
            out.append('<div class="charts">')
        for chart in section.charts:
            data = base64.b64encode(chart.svg.encode()).decode("ascii")
            out.append(
                f'<figure><img data-chart="{html.escape(chart.title)}" '
                f'alt="{html.escape(chart.title)}" src="data:image/svg+xml;base64,{data}">'
                + (
                    f'<figcaption class="caption">{html.escape(chart.caption)}</figcaption>'
                    if chart.caption
                    else ""
                )
                + "</figure>"
            )
        if section.charts:
            out.append("</div>")
    out.append(
        f'<footer>{html.escape(doc.footer)} <span id="chart-check"></span></footer>'
        f"<script>{_SCRIPT}</script></body></html>"
    )
    return "\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    lines = []
    if table.title:
        lines += [f"**{table.title}**", ""]
    headers = table.headers or ["", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for r, row in enumerate(table.rows):
        cells = []
        for c, value in enumerate(row):
            href = table.links.get((r, c))
            cells.append(f"[{_md_escape(value)}]({href})" if href else _md_escape(value))
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_markdown(doc: Document) -> str:
    """The same report as Markdown (charts named; they are in report.html)."""
    lines = [f"# {doc.title}", "", f"**{doc.verdict}**", ""]
    if doc.facts:
        lines += _md_table(Table(["", ""], [[k, v] for k, v in doc.facts]))
    for section in doc.sections:
        lines += [f"## {section.title}", ""]
        for p in section.paragraphs:
            lines += [p, ""]
        for table in section.tables:
            lines += _md_table(table)
        if section.charts:
            names = ", ".join(c.title for c in section.charts)
            lines += [f"Charts in report.html: {names}.", ""]
    if doc.footer:
        lines += ["---", doc.footer, ""]
    return "\n".join(lines)
