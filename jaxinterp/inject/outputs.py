"""What `jaxinterp inject sweep` writes: per-prompt CSVs, a summary JSON, a layer x tau heatmap.

  per_prompt.csv  one row per (prompt, layer, tau): p_before, p_after, p_explicit, percent increase
  prompts.csv     one row per prompt: p_before, p_explicit, p_after at the best (layer, tau) by median
  summary.json    the run's settings, the three aggregate grids, the best cells, timings, baselines
  heatmap.png     mean / median / trimmed mean of the percent increase over layers x tau
Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp import atomic
from jaxinterp.inject.data import PromptSet
from jaxinterp.inject.metrics import STATS, Aggregate, percent_increase
from jaxinterp.inject.sweep import SweepResult


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def aggregate_json(agg: Aggregate) -> dict:
    return {"trim": agg.trim, **{s: np.round(getattr(agg, s), 4).tolist() for s in STATS},
            "best": {s: b._asdict() for s, b in agg.best.items()}}


def heatmap(agg: Aggregate, layers, taus, title: str = ""):
    """A matplotlib figure: one panel per statistic, layers down, taus across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 0.35 * len(layers) + 2.2))
    for ax, stat in zip(axes, STATS):
        g = getattr(agg, stat)
        # from the finite cells: an inf cell (a percent past float64, see metrics) made the limits +-inf,
        # which matplotlib replaced by +-0.1, so every other cell showed saturated; an inf cell is drawn
        # at the end of the scale (matplotlib drew it blank, as a missing value)
        finite = np.abs(g[np.isfinite(g)])
        lim = max(float(finite.max()) if finite.size else 0.0, 1e-9)
        im = ax.imshow(np.clip(g, -lim, lim), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(taus)), [f"{t:g}" for t in taus], fontsize=7)
        ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=7)
        ax.set_xlabel("tau")
        ax.set_ylabel("injection layer")
        ax.set_title(f"{stat.replace('_', ' ')} % increase of p(answer)", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def write(out_dir: str | Path, data: PromptSet, result: SweepResult, agg: Aggregate, meta: dict,
          baseline: dict | None = None) -> dict[str, Path]:
    from jaxinterp.report import figure_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pct = percent_increase(result)
    N = len(result.p_before)
    p_exp = result.p_explicit if result.p_explicit is not None else np.full(N, np.nan)
    rows = [["row", "obscure_sentence", "memory", "answer", "layer", "tau", "p_before", "p_after", "p_explicit",
             "percent_increase"]]
    for i in range(N):
        for li, L in enumerate(result.layers):
            for ti, tau in enumerate(result.taus):
                rows.append([i, data.obscure[i], data.memory[i], data.answer[i], int(L), f"{tau:g}",
                             f"{result.p_before[i]:.6g}", f"{result.p_after[li, ti, i]:.6g}", f"{p_exp[i]:.6g}",
                             f"{pct[li, ti, i]:.6g}"])
    b = agg.best["median"]
    # Best holds float(taus[ti]): looked up as Python floats (np.float32(tau) is not a float64 sweep's 0.1)
    li, ti = [int(x) for x in result.layers].index(b.layer), [float(x) for x in result.taus].index(b.tau)
    prow = [["row", "obscure_sentence", "memory", "answer", "p_before", "p_explicit",
             f"p_after_layer{b.layer}_tau{b.tau:g}", "percent_increase"]]
    for i in range(N):
        prow.append([i, data.obscure[i], data.memory[i], data.answer[i], f"{result.p_before[i]:.6g}",
                     f"{p_exp[i]:.6g}", f"{result.p_after[li, ti, i]:.6g}", f"{pct[li, ti, i]:.6g}"])
    summary = {**meta, "n_prompts": N, "layers": [int(x) for x in result.layers],
               "taus": [float(x) for x in result.taus], "mean_p_before": float(result.p_before.mean()),
               "mean_p_explicit": None if result.p_explicit is None else float(result.p_explicit.mean()),
               "percent_increase": aggregate_json(agg)}
    if baseline is not None:
        summary["baseline"] = baseline
    paths = {"per_prompt": out / "per_prompt.csv", "prompts": out / "prompts.csv",
             "summary": out / "summary.json", "heatmap": out / "heatmap.png"}
    atomic.write_text(paths["per_prompt"], _csv(rows))
    atomic.write_text(paths["prompts"], _csv(prow))
    atomic.write_json(paths["summary"], summary)
    figure_png(heatmap(agg, result.layers, result.taus, meta.get("title", "")), paths["heatmap"])
    return paths
