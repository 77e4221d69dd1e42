"""Review 14 of the NuGraph2 package (convert, metrics, training, evaluation): each test pins one
defect found and fixed."""

from __future__ import annotations

import numpy as np
import pytest

from jaxinterp.nugraph import display, metrics


def test_filter_keeps_a_hit_only_above_the_threshold():
    """torchmetrics' binary metrics (the official filter recall/precision) keep a hit when
    `preds > threshold`; ours kept filter probability 0.5 too (`>=`), counting it as kept signal
    (efficiency) and kept background (purity). A probability of exactly 0.5 is now dropped, as the
    event display draws it, and one just above is kept."""
    y = np.array([0, 1, -1, -1, 2])  # signal, signal, background, background, signal
    sem = np.eye(5)[[0, 1, 0, 0, 2]]
    fil = np.array([0.5, np.nextafter(0.5, 1.0), 0.5, 0.75, 0.25], np.float64)
    c = metrics.Counts.zeros().add(y, sem, fil)
    # rows: true background / signal; columns: dropped / kept
    np.testing.assert_array_equal(c.filter, [[1, 1], [2, 1]])
    m = metrics.compute(c)
    assert m.filter_efficiency == pytest.approx(1 / 3) and m.filter_purity == pytest.approx(1 / 2)
    for dtype in (np.float32, np.float64):  # 0.5 is exact in both
        c = metrics.Counts.zeros().add(np.array([0]), np.eye(5)[[0]], np.array([0.5], dtype))
        np.testing.assert_array_equal(c.filter, [[0, 0], [1, 0]])
    labels = display.predicted_labels(sem, fil)
    np.testing.assert_array_equal(labels, [-1, 1, -1, 0, -1])  # kept where the metrics keep it
