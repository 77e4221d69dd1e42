"""PNG figures of the landscape: loss along paths, and contour maps of surfaces."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np


def path_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, ylabel: str = "loss", title: str = ""):
    """One line per named (x [A], y [A]) curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker=".", label=name)
    ax.set_xlabel("alpha (0: model A, 1: model B)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def surface_figure(surface, *, title: str = "", labels: tuple[str, ...] = ("A", "B", "C"), log: bool = True):
    """Contour map of a `landscape.Surface` with the defining models marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.log10(np.maximum(surface.losses, 1e-6)) if log else surface.losses
    fig, ax = plt.subplots(figsize=(5, 4.2))
    cs = ax.contourf(surface.a, surface.b, z, levels=30, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10 loss" if log else "loss")
    for (x, y), lab in zip(surface.points, labels):
        ax.plot(x, y, "r*", ms=12)
        ax.annotate(lab, (x, y), color="w", xytext=(4, 4), textcoords="offset points")
    ax.set_title(title)
    return fig


def save_png(fig, path: str | Path) -> bytes:
    from jaxinterp import report

    return report.figure_png(fig, path)
