"""Every `jaxinterp demo` section but the transformer one (tests/test_cli.py), in quick mode, read as a
user reads the report: the section ran, its figures are written as PNGs and embedded in index.html,
its tables carry the headings and figures it promises, and every number shown is finite and equals
the same figure recomputed here by another path (a plain forward pass, numpy counting, the stored
JSON) where that is cheap, else lies in a range justified beside the case.

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
from typing import Callable, NamedTuple

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
    ranges: dict[str, tuple[float, float]]  # table column -> [lo, hi] of every number in it, for the
    # figures not recomputed by `figures` (each bound justified where the case is listed)
    figures: Callable  # checks the numbers shown against an independent recomputation, where one is cheap
    slow: bool = False  # over 20 s on a 2-core CPU even in quick mode


# ---- independent recomputations of the figures a section shows --------------------------------------
# Each takes the report and checks the numbers it shows against the same figure computed here from the
# section's inputs by another path (a plain forward pass, numpy counting, the stored JSON); only what
# cannot be recomputed cheaply (lens training, the merge section's training runs, timings) keeps a range.


def _rows(r, first_header: str) -> list[list[str]]:
    """The body rows of the report's table whose first column is `first_header`."""
    found = [rows for header, rows in _Tables(r.html).tables if header and header[0] == first_header]
    assert len(found) == 1, (first_header, [h for h, _ in _Tables(r.html).tables])
    return [row for row in found[0] if row]


def _shows(cell: str, x: float, what) -> None:
    """`cell` shows x at report.table's 4 significant digits (or n/a for a NaN): within half a unit of
    the 4th digit, plus 1e-6 relative for float32 rounding of x computed by another path."""
    if math.isnan(x):
        assert cell == "n/a", (what, cell)
        return
    half_unit = 0.5 * 10 ** (math.floor(math.log10(abs(x))) - 3) if x else 0.0
    assert abs(float(cell) - x) <= half_unit + 1e-6 * abs(x), (what, cell, x)


def _softmax_last(params, config, ids, interventions=()):
    """float64 next-token probabilities after the last of `ids` [N] (one unpadded forward)."""
    import numpy as np

    from jaxinterp.transformer import forward

    logits = np.asarray(forward(params, np.asarray([ids], np.int32), config=config, interventions=interventions),
                        np.float64)[0, -1]
    p = np.exp(logits - logits.max())
    return p / p.sum()


def _toyworld_figures(r):
    import json

    import numpy as np

    from jaxinterp.toyworld import EVAL_JSON, MODEL_DIR
    from jaxinterp.toyworld import tokenizer as toktools
    from jaxinterp.transformer import load_gpt2, load_tokenizer

    # the accuracy table: eval.json's rows, each figure at 3 decimals
    stated = json.loads(EVAL_JSON.read_text())["rows"]
    assert _rows(r, "group") == [[s["group"], s["kind"], str(s["prompts"]), f"{s['greedy']:.3f}",
                                  "-" if s["candidate_choice"] is None else f"{s['candidate_choice']:.3f}",
                                  f"{s['chance']:.3f}"] for s in stated]
    # the live answers: p(answer's first token) and the top 3, from a forward pass on the prompt shown
    params, config = load_gpt2(MODEL_DIR)
    tok = load_tokenizer(MODEL_DIR)
    live = _rows(r, "prompt kind")
    assert [row[0] for row in live] == ["single hop", "explicit (bridge named)", "held-out two hop"]
    for kind, prompt, answer, p_answer, top3 in live:
        p = _softmax_last(params, config, toktools.encode(tok, prompt))
        assert abs(float(p_answer) - p[toktools.answer_ids(tok, answer)[0]]) <= 5e-4 + 1e-6, kind  # 3 decimals
        top = np.argsort(-p, kind="stable")[:3]
        names = [tok.convert_ids_to_tokens(int(t)).replace("Ġ", " ") for t in top]
        assert [n for n, _ in re.findall(r"('[^']*'|\"[^\"]*\") (\d\.\d\d)", top3)] == [repr(n) for n in names], kind
        for (_, shown), t in zip(re.findall(r"('[^']*'|\"[^\"]*\") (\d\.\d\d)", top3), top):
            assert abs(float(shown) - p[t]) <= 5e-3 + 1e-6, (kind, shown, p[t])  # 2 decimals


def _lens_figures(r):
    import numpy as np

    from jaxinterp.lens import lenses
    from jaxinterp.transformer import gpt2, load_gpt2, load_tokenizer
    from jaxinterp.transformer.builtin import demo_model

    model, _ = demo_model()
    params, config = load_gpt2(model, process_weights=True)
    tok = load_tokenizer(model)
    layer = config.n_layer // 2
    prompt = re.search(r"Prompt '(.*?)': each head's top-8", r.text).group(1)
    rows = _rows(r, "layer")
    assert [row[:2] for row in rows] == [[str(layer), str(h)] for h in range(config.n_head)]
    # the logit-lens column: each head's output at the last token times the unembedding, top 8
    name = f"blocks.{layer}.attn.hook_result"
    _, cache = gpt2.run_with_cache(params, np.asarray([tok(prompt)["input_ids"]], np.int32), config=config,
                                   names=[name])
    x = np.asarray(cache[name], np.float64)[0, -1]  # [H, D]
    W_U, b_U = (np.asarray(a, np.float64) for a in lenses.unembedding(params, config))
    z = x @ W_U + b_U
    s = -np.sort(-z, axis=-1)
    assert (s[:, :8] - s[:, 1:9]).min() > 1e-5  # no near-tie in the order shown (float32 rounding is ~1e-6)
    top = np.argsort(-z, axis=-1, kind="stable")[:, :8]
    assert [row[3] for row in rows] == [" ".join(repr(tok.decode([int(i)])) for i in t) for t in top]
    # the lens column needs the 20 trained steps (not recomputed here); its overlap is a share of 50 ids
    for row in rows:
        share = float(row[4])
        assert 0 <= share <= 1 and abs(share * 50 - round(share * 50)) < 1e-9, row


def _nugraph_reference_figures(r):
    import numpy as np

    from jaxinterp.nugraph.demo import FIXTURES

    ref = np.load(FIXTURES / "nugraph2_reference.npz")
    rows = _rows(r, "event")
    assert [row[:3] for row in rows] == [[f"ev{i}", p, str(ref[f"ev{i}/{p}/x"].shape[0])]
                                         for i in (0, 1) for p in "uvy"]


def _nugraph_events_figures(r):
    """The figures of merit, counted here in numpy from the section's own events and forward pass (the
    compiled forward is the section's, cached: no compile), the held-out column from model.json."""
    import jax
    import numpy as np

    from jaxinterp.nugraph import demo_events, evaluate, graph
    from jaxinterp.nugraph.predict import forward

    model = evaluate.load_model()
    mc = model.config
    events = evaluate.to_events(demo_events.raw_events(quick=True), model)
    sizes = graph.BatchSizes(*np.max([tuple(graph.pick_sizes([e], planes=mc.planes)) for e in events], axis=0))
    params = jax.tree.map(jax.numpy.asarray, model.params)
    C = mc.num_classes
    conf, fil = np.zeros((C, C), np.int64), np.zeros((2, 2), np.int64)  # (true, predicted); (signal, kept)
    for e in events:
        probs, filt = (np.asarray(a) for a in forward(mc)(params, graph.pad_batch([e], sizes, planes=mc.planes)))
        for i, p in enumerate(mc.planes):
            y = e.planes[p].y_semantic
            k = y.shape[0]
            for t, q in zip(y[y >= 0], probs[i, :k][y >= 0].argmax(-1)):
                conf[t, q] += 1
            for sig, kept in zip(y >= 0, filt[i, :k] > 0.5):
                fil[int(sig), int(kept)] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        eff, pur = np.diag(conf) / conf.sum(1), np.diag(conf) / conf.sum(0)
    seen = (conf.sum(0) + conf.sum(1)) > 0  # torchmetrics' macro: classes with a true or predicted hit, 0/0 as 0
    want = {"filter efficiency": fil[1, 1] / fil[1].sum(), "filter purity": fil[1, 1] / fil[:, 1].sum(),
            "semantic efficiency (hit-weighted)": np.trace(conf) / conf.sum(),
            "semantic efficiency (class mean)": np.nan_to_num(eff)[seen].mean(),
            "semantic purity (class mean)": np.nan_to_num(pur)[seen].mean()}
    held = model.meta["test_metrics"]
    keys = {"filter efficiency": "filter_efficiency", "filter purity": "filter_purity",
            "semantic efficiency (hit-weighted)": "semantic_efficiency",
            "semantic efficiency (class mean)": "semantic_efficiency_macro",
            "semantic purity (class mean)": "semantic_purity_macro"}
    paper = {"filter efficiency": "0.98", "semantic efficiency (hit-weighted)": "0.949"}
    rows = _rows(r, "figure")
    assert [row[0] for row in rows] == list(want)
    for name, these, test_set, in_paper in rows:
        _shows(these, float(want[name]), name)
        _shows(test_set, float(held[keys[name]]), name)
        assert in_paper == paper.get(name, "n/a"), name
    classes = _rows(r, "class")
    assert [row[0] for row in classes] == list(mc.semantic_classes)
    for c, (name, e_cell, p_cell) in enumerate(classes):
        _shows(e_cell, float(eff[c]), name)
        _shows(p_cell, float(pur[c]), name)
    latency = _rows(r, "latency, batch 1")
    assert [row[:2] for row in latency[1:]] == [["paper, official code on a CPU", "0.12"]]


def _merge_figures(r):
    """The merge section trains its MLPs (nothing recomputed cheaply): what holds by construction and
    what the section exists to show."""
    rows = _rows(r, "path")
    assert [row[0] for row in rows] == ["naive", "weight matching"]
    naive, matched = ([float(x) for x in row[1:4]] for row in rows)
    # weight matching (Ainsworth et al.) lowers the barrier of the naive path: measured 0.20 against 0.95
    assert matched[0] < naive[0] and matched[1] < naive[1], rows
    accuracies = dict(_rows(r, "model / merge"))
    assert {"base", "fine-tune 0", "fine-tune 1", "fine-tune 2", "linear", "ties", "fisher", "regmean",
            "greedy soup", "uniform soup", "tsv"} <= set(accuracies), sorted(accuracies)


def _inject_figures(r):
    """p(answer) before, after the best median injection and with the explicit prompt, and the best
    (layer, tau) of each statistic, from plain forward passes with the intervention (not the sweep)."""
    import numpy as np

    from jaxinterp.inject import data as dt
    from jaxinterp.inject.metrics import trimmed_mean
    from jaxinterp.transformer import forward, intervene, load_gpt2, load_tokenizer
    from jaxinterp.transformer.builtin import TOY_PROMPTS, toy_model

    params, config = load_gpt2(toy_model(), process_weights=True)
    tok = load_tokenizer(toy_model())
    prompts = dt.load_prompts(TOY_PROMPTS, limit=24)
    enc = dt.encode(tok, prompts)
    taus = [1.0, 2.0, 4.0, 6.0, 8.0, 11.0, 15.0]  # the section's quick grid
    N, T = len(enc.prompts), len(taus)
    W_U = np.asarray(params["lm_head"]["kernel"], np.float64)  # [D, V]: multi-hot @ W_U.T
    mems = np.stack([W_U[:, np.unique(m)].sum(1) for m in enc.memories])  # [N, D]
    # one batch per layer (one compiled shape): the prompts at tau 0 (the plain model: + 0.0 changes
    # nothing) and at each tau, then the first 8 explicit prompts with nothing added
    seqs = [*enc.prompts * (T + 1), *enc.explicit[:8]]
    values = np.concatenate([(np.asarray([0.0, *taus])[:, None, None] * mems[None]).reshape((T + 1) * N, -1),
                             np.zeros((8, mems.shape[1]))])  # [rows, D]: tau * memory, rows as in seqs
    answers = np.concatenate([np.tile(enc.answers, T + 1), enc.answers[:8]])
    tokens = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    mask = np.zeros_like(tokens)
    for i, t in enumerate(seqs):  # right-padded: causal attention keeps padding out of real positions
        tokens[i, :len(t)], mask[i, :len(t)] = t, 1
    last = mask.sum(1) - 1
    by_layer = []
    for L in range(config.n_layer):
        iv = intervene(f"blocks.{L}.hook_attn_out", values[:, None].astype(np.float32))
        logits = np.asarray(forward(params, tokens, config=config, attention_mask=mask, interventions=[iv]),
                            np.float64)[np.arange(len(seqs)), last]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        by_layer.append((p / p.sum(-1, keepdims=True))[np.arange(len(seqs)), answers])
    before, explicit = by_layer[0][:N], by_layer[0][(T + 1) * N:]
    assert all(np.array_equal(p[:N], before) for p in by_layer)  # tau 0 at any layer: the plain model
    after = np.stack([p[N:(T + 1) * N].reshape(T, N) for p in by_layer])  # [L, T, N]
    pct = (after - np.maximum(before, np.finfo(np.float32).tiny)) / np.maximum(before, np.finfo(np.float32).tiny) * 100
    grids = {"mean": pct.mean(-1), "median": np.median(pct, -1), "trimmed_mean": trimmed_mean(pct, 0.1)}
    best = {}
    for stat, layer, tau, value in _rows(r, "statistic"):
        li, ti = int(layer), taus.index(float(tau))
        g = grids[stat]
        # the cell shown is the grid's best (to float32 noise: the sweep's probabilities are float32)
        assert g[li, ti] >= g.max() - 1e-5 * abs(g.max()), (stat, layer, tau, g.max())
        _shows(value, g[li, ti], stat)
        best[stat] = (li, ti)
    assert set(best) == {"mean", "median", "trimmed_mean"}
    bl, bt = best["median"]  # the "after" column's injection
    shown = _rows(r, "obscure prompt")
    assert len(shown) == 8
    for i, (obscure, memory, answer, b, a, e) in enumerate(shown):
        assert (obscure, memory, answer) == (prompts.obscure[i], prompts.memory[i], prompts.answer[i])
        _shows(b, before[i], ("before", i))
        _shows(a, after[bl, bt, i], ("after", i))
        _shows(e, explicit[i], ("explicit", i))


CASES = [
    Case("jaxinterp.toyworld.demo:section", "Built-in model: a GPT-2 trained on a synthetic two-hop world",
         ("toyworld_accuracy.png",), 1,
         ("two-hop held-out", "explicit held-out", "Live answers (top 3 next tokens)", "held-out two hop",
          "single hop", "trained 1200 steps", "cities", "countries", "companies"),
         {}, figures=_toyworld_figures),  # every figure recomputed (eval.json, a forward pass)
    Case("jaxinterp.lens.demo:section", "Attention Lens", ("lens_loss.png", "lens_heads.png"), 2,
         ("Model: the shipped toy-world GPT-2", "trained 20 steps of batch 8", "KL from", "The birthplace of",
          "logit lens"),
         # the overlap needs the 20 trained steps: 20 Adam steps at lr 1e-3 from the logit lens move each
         # lens weight by at most 0.02, so a head keeps most of its top-50 (measured 0.90 to 1); below 0.5
         # the lens left its start further than those steps can (or the columns are mixed up)
         {"top-50 overlap": (0.5, 1)}, figures=_lens_figures),
    Case("jaxinterp.merge.demo:section", "Model merging and loss landscape",
         ("merge/path.png", "merge/path_error.png", "merge/plane.png"), 3,
         ("scikit-learn digits", "naive", "weight matching", "ties", "dare_ties", "model_stock", "fisher",
          "regmean", "greedy soup", "tsv"),
         # the section trains its models (not recomputed here). A barrier is >= 0 (the ends lie on the
         # path; no upper bound: a midpoint can be worse than chance); an error rate lies in [0, 1]; the
         # accuracies measured 0.927 to 0.976 (digits MLPs reach ~0.95): a merge that breaks the model
         # lands near chance (0.1), a poor one below 0.85
         {"loss barrier (max - mean of ends)": (0, math.inf), "loss barrier (max - chord)": (0, math.inf),
          "max test error": (0, 1), "test accuracy": (0.85, 1)},
         slow=True, figures=_merge_figures),
    Case("jaxinterp.nugraph.demo:section", "NuGraph2: official checkpoint, parity, predictions",
         ("nugraph_reference_event.png",), 1,
         ("ev0", "ev1", "read without torch", "360,890 parameters"),
         # the parity the section exists to show: float32 beside the official PyTorch code, within the
         # suite's float32 tolerance on the same outputs (tests/test_nugraph_reference.py, TOL: 1e-6;
         # measured 3e-8 and 6e-8); hits are recomputed from the fixture
         {"max |d prob| semantic": (0, 1e-6), "max |d| filter": (0, 1e-6)},
         figures=_nugraph_reference_figures),
    Case("jaxinterp.nugraph.demo_events:section", "NuGraph2: LArTPC hit filtering and labelling",
         ("nugraph/display_r7_sr1_evt0.png", "nugraph/display_r7_sr1_evt1.png"), 2,  # 3 events, 2 shown
         ("filter efficiency", "semantic efficiency (hit-weighted)", "semantic purity (class mean)", "MIP",
          "michel", "paper, official code on a CPU", "arXiv 2403.11872"),
         # the figures of merit are recomputed; the latency is a timing: measured 0.023 s on a 2-core
         # CPU; at least 0.1 ms (5 message-passing iterations over ~400 hits per plane on a CPU), at
         # most 1 s (8x the paper's official code on a CPU, for a model half its width)
         {"seconds/event": (1e-4, 1.0)}, figures=_nugraph_events_figures),
    Case("jaxinterp.inject.demo:section", "Memory injection", ("inject/heatmap.png",), 1,
         ("Shipped toy GPT-2 (4 layers), 24 two-hop prompts", "median", "trimmed_mean", "Heads whose logit-lens"),
         {}, figures=_inject_figures),  # every figure recomputed (forward passes with the injection)
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


def test_figures_equal_an_independent_recomputation(case):
    """Where a figure can be recomputed here cheaply from the section's inputs by another path, the
    report shows exactly that figure (to its printed precision), not merely one in range."""
    c, r = case
    c.figures(r)


def test_inject_section_without_the_shipped_model_shows_the_machinery(monkeypatch, tmp_path):
    """A package without the toy model (a trimmed install) still gets a memory-injection section."""
    import jaxinterp.inject.demo as inject_demo

    monkeypatch.setattr(inject_demo, "toy_model", lambda: None)
    sec = inject_demo.section(tmp_path, quick=True)
    assert sec.title == "Memory injection" and "No shipped toy model found" in sec.html
    data = (tmp_path / "inject" / "heatmap.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and base64.b64encode(data).decode("ascii") in sec.html
