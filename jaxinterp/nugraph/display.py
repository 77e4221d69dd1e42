"""Pictures of NuGraph2 results: event displays and confusion matrices (matplotlib, Agg).

An event display shows each wire plane as wire (cm) against drift time (cm), one point per hit,
coloured by semantic class; background hits (true label -1, or predicted filter <= threshold) are
grey. With predictions it has two rows: truth on top, prediction below.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jaxinterp.nugraph.event import PLANES, SEMANTIC_CLASSES, Event

CLASS_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")  # MIP, HIP, shower, michel, diffuse
BACKGROUND_COLOUR = "#b0b0b0"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _colours(labels: np.ndarray) -> np.ndarray:
    table = np.array(list(CLASS_COLOURS) + [BACKGROUND_COLOUR])
    return table[np.where(labels < 0, len(CLASS_COLOURS), labels)]


def predicted_labels(semantic_probs: np.ndarray, filter_probs: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """Class index per hit from the two decoders: argmax of semantic `[..., N, C]`, -1 where filter
    `[..., N]` <= threshold (kept only above it, as `metrics.Counts.add` counts it)."""
    semantic_probs, filter_probs = np.asarray(semantic_probs), np.asarray(filter_probs)
    if semantic_probs.ndim < 1 or semantic_probs.shape[:-1] != filter_probs.shape:
        # a [N] semantic vector would argmax to one class for every hit
        raise ValueError(f"semantic_probs: expected shape [..., N, C] with [..., N] = filter_probs' "
                         f"{list(filter_probs.shape)}, got {list(semantic_probs.shape)}")
    return np.where(filter_probs > threshold, np.argmax(semantic_probs, axis=-1), -1)


def _check_labels(name: str, labels: np.ndarray, n: int) -> None:
    """ValueError unless labels is [n] integers below the number of classes (negative: background)."""
    if np.shape(labels) != (n,):
        raise ValueError(f"{name}: expected shape [{n}], got {list(np.shape(labels))}")
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected integer class labels, got dtype {labels.dtype}")
    if labels.size and labels.max() >= len(CLASS_COLOURS):
        # label 5 was drawn in the background's grey, larger ones an IndexError
        raise ValueError(f"{name}: expected labels below {len(CLASS_COLOURS)} ({', '.join(SEMANTIC_CLASSES)}; "
                         f"negative for background), got {int(labels.max())}")


def event_display(event: Event, predicted: dict[str, np.ndarray] | None = None, *,
                  planes: Sequence[str] = PLANES, title: str | None = None, marker_size: float = 3.0):
    """A matplotlib figure of `event` (truth from y_semantic) and optionally `predicted[p]` [N] labels."""
    absent = [p for p in planes if p not in event.planes]
    if absent:
        raise ValueError(f"planes: the event has no plane(s) {absent} (it has {list(event.planes)})")
    for p in planes:
        if event.planes[p].y_semantic is not None:
            _check_labels(f"event plane {p!r} y_semantic", event.planes[p].y_semantic, event.planes[p].pos.shape[0])
    rows = [("true", {p: event.planes[p].y_semantic for p in planes})]
    if predicted is not None:
        missing = [p for p in planes if p not in predicted]
        if missing:
            raise ValueError(f"predicted: missing plane(s) {missing}")
        for p in planes:
            _check_labels(f"predicted[{p!r}]", predicted[p], event.planes[p].pos.shape[0])
        rows.append(("predicted", predicted))
    plt = _plt()
    fig, axes = plt.subplots(len(rows), len(planes), figsize=(4.2 * len(planes), 3.4 * len(rows)), squeeze=False)
    for r, (kind, labels) in enumerate(rows):
        for c, p in enumerate(planes):
            ax = axes[r, c]
            pos = np.asarray(event.planes[p].pos)
            lab = labels[p]
            lab = np.full(pos.shape[0], -1) if lab is None else np.asarray(lab)
            bg = lab < 0  # background underneath, so the classes stay visible
            ax.scatter(pos[bg, 0], pos[bg, 1], s=marker_size, c=BACKGROUND_COLOUR, linewidths=0)
            ax.scatter(pos[~bg, 0], pos[~bg, 1], s=marker_size, c=_colours(lab[~bg]), linewidths=0)
            ax.set_title(f"plane {p}: {kind}", fontsize=9)
            ax.set_xlabel("wire (cm)", fontsize=8)
            if c == 0:
                ax.set_ylabel("time (cm)", fontsize=8)
            ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], marker="o", ls="", color=col, label=name)
               for name, col in zip(list(SEMANTIC_CLASSES) + ["background"], list(CLASS_COLOURS) + [BACKGROUND_COLOUR])]
    height = fig.get_figheight()
    top = 1 - (0.75 if title else 0.4) / height  # inches above the panels: the title, then the legend
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, bbox_to_anchor=(0.5, top), frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / height, va="top")
    return fig


def confusion_figure(matrix: np.ndarray, *, classes: Sequence[str] = SEMANTIC_CLASSES, normalise: str = "truth",
                     title: str | None = None):
    """Heatmap of a confusion matrix [true, predicted] (counts), normalised by 'truth' (rows: recall)
    or 'prediction' (columns: precision)."""
    if normalise not in ("truth", "prediction"):
        raise ValueError(f"normalise: expected 'truth' or 'prediction', got {normalise!r}")
    m = np.asarray(matrix, np.float64)
    k = len(classes)
    if m.shape != (k, k):
        raise ValueError(f"matrix: expected shape [{k}, {k}], got {list(m.shape)}")
    axis = 1 if normalise == "truth" else 0
    total = m.sum(axis=axis, keepdims=True)
    frac = np.divide(m, total, out=np.zeros_like(m), where=total > 0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 4.0))
    im = ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{frac[i, j]:.3f}", ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), classes, rotation=30, fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"normalised by {normalise}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
