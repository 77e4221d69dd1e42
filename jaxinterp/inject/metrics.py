"""Aggregates of a sweep: percent increase of p(answer), mean / median / trimmed mean, best cell.

percent increase = (p_after - p_before) / p_before * 100, per prompt, taken as
expm1(log p_after - log p_before) * 100 from a sweep's log-probabilities. The paper reported the mean,
which a few prompts with a tiny p_before dominate; the median and the trimmed mean say what a
typical prompt sees, so all three are reported.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxinterp.inject.sweep import SweepResult

STATS = ("mean", "median", "trimmed_mean")


class Best(NamedTuple):
    layer: int
    tau: float
    value: float  # percent increase


class Aggregate(NamedTuple):
    mean: np.ndarray  # [nL, nT] percent
    median: np.ndarray  # [nL, nT]
    trimmed_mean: np.ndarray  # [nL, nT]
    best: dict  # stat -> Best
    trim: float


def percent_increase(result: SweepResult) -> np.ndarray:
    """[nL, nT, N] percent increase of p(answer): expm1(logp_after - logp_before) * 100 from the result's
    log-probabilities (a sweep's); for a result without them, from p with p_before floored at the
    smallest normal number of its dtype."""
    if result.logp_before is not None and result.logp_after is not None:
        # a float32 p(answer) underflows to 0 below ~1e-45 (the floor below then read two underflowed
        # probabilities as -100%, and floored p_before made any ratio under it wrong); log p does not
        d = np.asarray(result.logp_after, np.float64) - np.asarray(result.logp_before, np.float64)
        return np.expm1(d) * 100.0
    # float32's floor for every dtype raised a float64 sweep's p_before of 1e-40 to 1.2e-38, so an
    # answer twice as likely after injection read as -98% (a decrease) instead of +100%
    floor = np.finfo(np.promote_types(np.asarray(result.p_before).dtype, np.float32)).tiny
    before = np.maximum(np.asarray(result.p_before, np.float64), floor)
    return (result.p_after - before) / before * 100.0


def trimmed_mean(x: np.ndarray, trim: float, axis: int = -1) -> np.ndarray:
    """Mean after dropping the `trim` fraction of values at each end (scipy.stats.trim_mean's rule)."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim: expected a fraction in [0, 0.5), got {trim}")
    x = np.sort(np.asarray(x, np.float64), axis=axis)
    n = x.shape[axis]
    cut = int(trim * n)
    return np.take(x, np.arange(cut, n - cut), axis=axis).mean(axis=axis)


def aggregate(result: SweepResult, *, trim: float = 0.1) -> Aggregate:
    pct = percent_increase(result)
    grids = {"mean": pct.mean(-1), "median": np.median(pct, -1), "trimmed_mean": trimmed_mean(pct, trim)}
    best = {}
    for name, g in grids.items():
        li, ti = np.unravel_index(int(np.argmax(g)), g.shape)
        best[name] = Best(int(result.layers[li]), float(result.taus[ti]), float(g[li, ti]))
    return Aggregate(grids["mean"], grids["median"], grids["trimmed_mean"], best, trim)
