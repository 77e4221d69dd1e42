"""Pieces of the self-contained HTML report that `jaxinterp demo` writes.

Each capability contributes a section: a function `section(out_dir, *, quick) -> Section` listed in
`jaxinterp.demo.SECTIONS`. Images are embedded as data URIs so `index.html` stands alone; the PNG
files are also written beside it for people who want them.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from jaxinterp import atomic


class Section(NamedTuple):
    title: str
    html: str  # body of the section (no <h2>; the report adds it)


def figure_png(fig, path: str | Path | None = None, *, dpi: int = 110) -> bytes:
    """Renders a matplotlib figure to PNG bytes (and writes them atomically to `path` if given)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        atomic.write_bytes(path, data)
    return data


def img(png: bytes, alt: str, *, width: int | None = None) -> str:
    """An <img> tag holding the PNG as a data URI."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    style = f' style="max-width:{width}px"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="{uri}"{style}>'


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain HTML table; floats (numpy's too) are shown with 4 significant digits, None (a figure
    strict JSON stored as null: not measured, or 0/0) and NaN or inf (the same figure before it was
    stored, e.g. the efficiency of a class with no hits) as n/a."""

    def cell(v: object) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, (float, np.floating)):
            return f"{v:.4g}" if math.isfinite(v) else "n/a"
        return html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } img { max-width: 100%; display: block; margin: 1em 0; }
.err { color: #a00; white-space: pre-wrap; font-family: monospace; }
"""


def render(title: str, sections: Sequence[Section], footer: str = "") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    toc = "".join(f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections))
    parts.append(f"<ul>{toc}</ul>")
    for i, s in enumerate(sections):
        parts.append(f"<h2 id='s{i}'>{html.escape(s.title)}</h2>{s.html}")
    parts.append(f"<hr><p><small>{html.escape(footer)}</small></p></body></html>")
    return "".join(parts)
