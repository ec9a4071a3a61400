"""The report renders to one self-contained HTML file and to Markdown."""

from __future__ import annotations

import re

from harness.report import charts
from harness.report.document import Chart, Document, Section, Table, render_html, render_markdown


def doc() -> Document:
    svg = charts.cdf({"tp1": [1.0, 2.0, 3.0], "tp2": [2.0, 3.0, 5.0]}, title="TTFT", xlabel="ms")
    table = Table(
        ["cell", "p50"],
        [["tp1", "2.0"], ["tp2 | x", "3.0"]],
        links={(0, 0): "cells/a/r1/server.log"},
    )
    return Document(
        "compare X",
        "tp2 vs tp1: ttft x1.5",
        facts=[("model", "/m")],
        sections=[Section("Cells", ["text <b>"], [table], [Chart("TTFT CDF", svg, "caption")])],
        footer="harness",
        bad=True,
    )


def test_html_is_self_contained() -> None:
    html = render_html(doc())
    # No reference to anything outside the file: no URL, no external script, font or sheet.
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "http://" not in html and "https://" not in html.replace("http://www.w3.org", "")
    assert html.count('data-chart="') == 1
    assert 'src="data:image/svg+xml;base64,' in html
    assert "text &lt;b&gt;" in html  # escaped
    assert 'href="cells/a/r1/server.log"' in html
    assert 'class="verdict bad"' in html


def test_charts_are_deterministic_svg_without_fonts() -> None:
    a = charts.timeline({"x": [(0.0, 1.0), (1.0, 2.0)]}, title="t", ylabel="y", marks=[(0.5, "#1")])
    b = charts.timeline({"x": [(0.0, 1.0), (1.0, 2.0)]}, title="t", ylabel="y", marks=[(0.5, "#1")])
    assert a == b
    assert a.lstrip().startswith("<?xml") and "<svg" in a
    assert "font-family" not in a  # text drawn as paths
    empty = charts.intervals(["a"], [(None, None, None)], title="t", ylabel="y")
    assert "<svg" in empty


def test_markdown_has_the_same_tables() -> None:
    md = render_markdown(doc())
    assert md.startswith("# compare X")
    assert "| cell | p50 |" in md
    assert "[tp1](cells/a/r1/server.log)" in md
    assert "tp2 \\| x" in md
    assert "Charts in report.html: TTFT CDF." in md
