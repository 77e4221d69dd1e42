"""Every `jaxinterp demo` section but the transformer one (tests/test_cli.py), in quick mode, read as a
user reads the report: the section ran, its figures are written as PNGs and embedded in index.html,
its tables carry the headings and figures it promises, and every number shown is finite and in range.

Each section runs once (a module-scoped fixture per case); on a 2-core CPU the six take about a minute,
two thirds of it the merge section (quick mode still compiles 17 merge kernels; `-m "not slow"` skips it).
"""

from __future__ import annotations

import base64
import html
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import NamedTuple

import pytest

from jaxinterp import demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TESTED_ELSEWHERE = {"jaxinterp.transformer.demo:section"}  # tests/test_cli.py
NOT_A_NUMBER = {"-", "n/a"}  # what a table shows where a figure does not apply


class Case(NamedTuple):
    spec: str  # the demo.SECTIONS entry, passed whole to `only` (a part like "nugraph" matches two)
    title: str
    pngs: tuple[str, ...]  # written beside index.html, relative to the output folder
    n_images: int  # <img> tags in the section
    texts: tuple[str, ...]  # headings and labels the reader must see
    ranges: dict[str, tuple[float, float]]  # table column -> [lo, hi] of every number in it
    slow: bool = False  # over 20 s on a 2-core CPU even in quick mode


CASES = [
    Case("jaxinterp.toyworld.demo:section", "Built-in model: a GPT-2 trained on a synthetic two-hop world",
         ("toyworld_accuracy.png",), 1,
         ("two-hop held-out", "explicit held-out", "Live answers (top 3 next tokens)", "held-out two hop",
          "single hop", "trained 1200 steps", "cities", "countries", "companies"),
         {"greedy": (0, 1), "candidate choice": (0, 1), "chance": (0, 1), "p(answer's first token)": (0, 1)}),
    Case("jaxinterp.lens.demo:section", "Attention Lens", ("lens_loss.png", "lens_heads.png"), 2,
         ("Model: the shipped toy-world GPT-2", "trained 20 steps of batch 8", "KL from", "The birthplace of",
          "logit lens"),
         {"top-50 overlap": (0, 1), "head": (0, 7)}),
    Case("jaxinterp.merge.demo:section", "Model merging and loss landscape",
         ("merge/path.png", "merge/path_error.png", "merge/plane.png"), 3,
         ("scikit-learn digits", "naive", "weight matching", "ties", "dare_ties", "model_stock", "fisher",
          "regmean", "greedy soup", "tsv"),
         {"loss barrier (max - mean of ends)": (0, math.inf), "max test error": (0, 1),
          "test accuracy": (0.5, 1)},  # digits MLPs reach ~0.95; a broken merge lands near 0.1
         slow=True),
    Case("jaxinterp.nugraph.demo:section", "NuGraph2: official checkpoint, parity, predictions",
         ("nugraph_reference_event.png",), 1,
         ("ev0", "ev1", "read without torch", "360,890 parameters"),
         # the parity the section exists to show: float32 beside the official PyTorch code
         {"hits": (1, math.inf), "max |d prob| semantic": (0, 1e-5), "max |d| filter": (0, 1e-5)}),
    Case("jaxinterp.nugraph.demo_events:section", "NuGraph2: LArTPC hit filtering and labelling",
         ("nugraph/display_r7_sr1_evt0.png", "nugraph/display_r7_sr1_evt1.png"), 2,  # 3 events, 2 shown
         ("filter efficiency", "semantic efficiency (hit-weighted)", "semantic purity (class mean)", "MIP",
          "michel", "paper, official code on a CPU", "arXiv 2403.11872"),
         {"these 3 events": (0, 1), "held-out test set": (0, 1), "efficiency": (0, 1), "purity": (0, 1),
          "seconds/event": (1e-6, 10)}),
    Case("jaxinterp.inject.demo:section", "Memory injection", ("inject/heatmap.png",), 1,
         ("Shipped toy GPT-2 (4 layers), 24 two-hop prompts", "median", "trimmed_mean", "Heads whose logit-lens"),
         {"best layer": (0, 3), "before": (0, 1), "after": (0, 1), "explicit": (0, 1)}),
]


class _Tables(HTMLParser):
    """The report's tables as (header, rows) of unescaped cell text."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append(([], []))
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("th", "td") and self._cell is not None:
            header, rows = self.tables[-1]
            (header if tag == "th" else rows[-1]).append("".join(self._cell))
            self._cell = None

    def columns(self) -> dict[str, list[str]]:
        cols: dict[str, list[str]] = {}
        for header, rows in self.tables:
            for row in rows:
                for name, cell in zip(header, row):
                    cols.setdefault(name, []).append(cell)
        return cols


def _number(cell: str) -> float | None:
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None


class Report(NamedTuple):
    out: Path
    failed: list[str]
    html: str
    text: str  # unescaped, without the data URIs


@pytest.fixture(scope="module", params=[
    pytest.param(c, id=c.spec.split(":")[0].removeprefix("jaxinterp."), marks=[pytest.mark.slow] if c.slow else [])
    for c in CASES])
def case(request, tmp_path_factory):
    c = request.param
    out = tmp_path_factory.mktemp(c.spec.split(":")[0].replace(".", "_"))
    index, failed = demo.run(out, quick=True, only=[c.spec])
    page = index.read_text()
    return c, Report(out, failed, page, html.unescape(re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)))


def test_every_section_but_the_transformer_is_tested_here():
    assert {c.spec for c in CASES} == set(demo.SECTIONS) - TESTED_ELSEWHERE


def test_section_runs_into_a_self_contained_report(case):
    c, r = case
    assert r.failed == [] and "class='err'" not in r.html
    assert f"<h2 id='s0'>{html.escape(c.title)}</h2>" in r.html and "<h2 id='s1'>" not in r.html
    srcs = re.findall(r"""\b(?:src|href)=["']([^"']*)""", r.html)
    assert srcs and all(s.startswith(("data:image/png;base64,", "#")) for s in srcs)  # nothing fetched
    assert "<link" not in r.html and "<script" not in r.html


def test_figures_are_png_files_and_embedded(case):
    c, r = case
    assert r.html.count("<img ") == c.n_images
    written = sorted(str(p.relative_to(r.out)) for p in r.out.rglob("*.png"))
    assert written == sorted(c.pngs)
    for name in c.pngs:
        data = (r.out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
        assert "data:image/png;base64," + base64.b64encode(data).decode("ascii") in r.html, name
    for uri in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", r.html):
        assert base64.b64decode(uri).startswith(PNG_MAGIC)


def test_tables_show_the_promised_figures_all_finite_and_in_range(case):
    c, r = case
    for t in c.texts:
        assert t in r.text, t
    cols = _Tables(r.html).columns()
    for name, (lo, hi) in c.ranges.items():
        assert name in cols, f"no column {name!r}; columns: {sorted(cols)}"
        numbers = [_number(v) for v in cols[name] if v not in NOT_A_NUMBER]
        assert numbers and all(x is not None and lo <= x <= hi for x in numbers), (name, cols[name])
    for name, cells in cols.items():  # every figure shown, in any column
        assert all(math.isfinite(x) for x in map(_number, cells) if x is not None), (name, cells)
    prose = " ".join(re.findall(r"<p>(.*?)</p>", html.unescape(r.html), flags=re.S))
    assert not re.search(r"(?<![\w'])[-+]?(nan|inf)(?![\w'])", prose, flags=re.I), prose


def test_inject_section_without_the_shipped_model_shows_the_machinery(monkeypatch, tmp_path):
    """A package without the toy model (a trimmed install) still gets a memory-injection section."""
    import jaxinterp.inject.demo as inject_demo

    monkeypatch.setattr(inject_demo, "toy_model", lambda: None)
    sec = inject_demo.section(tmp_path, quick=True)
    assert sec.title == "Memory injection" and "No shipped toy model found" in sec.html
    data = (tmp_path / "inject" / "heatmap.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and base64.b64encode(data).decode("ascii") in sec.html
