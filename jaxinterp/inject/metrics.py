"""Aggregates of a sweep: percent increase of p(answer), mean / median / trimmed mean, best cell.

percent increase = (p_after - p_before) / p_before * 100, per prompt, taken as
expm1(log p_after - log p_before) * 100 from a sweep's log-probabilities; past float64's range (a log p
rise over ~702) it is inf, and JSON writes null: each best cell also records its statistic as a log
ratio, log(1 + percent / 100), which stays finite. The paper reported the mean,
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
    value: float  # percent increase (inf past float64's range: a log p rise over ~702)
    # log(1 + value / 100), the statistic as a log ratio of p(answer): finite where `value` is not
    log_ratio: float = float("nan")


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
        with np.errstate(over="ignore"):  # a rise over ~702 is past float64: inf, the value (no warning)
            return np.expm1(d) * 100.0
    # float32's floor for every dtype raised a float64 sweep's p_before of 1e-40 to 1.2e-38, so an
    # answer twice as likely after injection read as -98% (a decrease) instead of +100%
    floor = np.finfo(np.promote_types(np.asarray(result.p_before).dtype, np.float32)).tiny
    before = np.maximum(np.asarray(result.p_before, np.float64), floor)
    with np.errstate(over="ignore"):
        return (result.p_after - before) / before * 100.0


def log_ratio(result: SweepResult) -> np.ndarray:
    """[nL, nT, N] log(p_after / p_before) = log(1 + percent increase / 100), as `percent_increase` takes
    it (from the log-probabilities, else from p with the same floor): finite where the percent is inf."""
    if result.logp_before is not None and result.logp_after is not None:
        return np.asarray(result.logp_after, np.float64) - np.asarray(result.logp_before, np.float64)
    floor = np.finfo(np.promote_types(np.asarray(result.p_before).dtype, np.float32)).tiny
    with np.errstate(divide="ignore"):  # p_after 0: -inf, a decrease of 100%
        return np.log(np.asarray(result.p_after, np.float64)) - np.log(
            np.maximum(np.asarray(result.p_before, np.float64), floor))


def _log_stats(d: np.ndarray, trim: float) -> dict[str, np.ndarray]:
    """The three statistics of 1 + percent / 100 = exp(d), as logs ([nL, nT] from d [nL, nT, N]): each
    is a mean of exp(d) over some of the sorted d (all; the middle one or two; the untrimmed), so
    log-mean-exp of those, which float64 holds where the percent itself overflows."""
    d = np.sort(d, axis=-1)
    n = d.shape[-1]
    lme = lambda x: np.logaddexp.reduce(x, axis=-1) - np.log(x.shape[-1])  # noqa: E731
    cut = int(trim * n)
    mid = d[..., (n - 1) // 2:n // 2 + 1]
    return {"mean": lme(d), "median": lme(mid), "trimmed_mean": lme(d[..., cut:n - cut])}


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
    with np.errstate(over="ignore"):  # a mean past float64's largest: inf, as the percent itself
        grids = {"mean": pct.mean(-1), "median": np.median(pct, -1), "trimmed_mean": trimmed_mean(pct, trim)}
    logs = _log_stats(log_ratio(result), trim)
    best = {}
    for name, g in grids.items():
        # cells whose statistic overflowed to inf tie in `g` (argmax took the first, whatever the others
        # held); their log ratios do not, and order every cell as the statistic does
        key = logs[name] if np.isposinf(g).any() else g
        li, ti = np.unravel_index(int(np.argmax(key)), g.shape)
        best[name] = Best(int(result.layers[li]), float(result.taus[ti]), float(g[li, ti]),
                          float(logs[name][li, ti]))
    return Aggregate(grids["mean"], grids["median"], grids["trimmed_mean"], best, trim)
