"""NuGraph2's figures of merit: filter efficiency/purity and semantic efficiency/purity.

- Filter: a hit is kept when x_filter > threshold (0.5), strictly, as torchmetrics' binary metrics
  the official code uses decide (`preds > threshold`: a probability of exactly 0.5 is not kept).
  Efficiency (recall) = kept signal / all signal hits; purity (precision) = kept signal / kept hits.
  Signal = true label != -1.
- Semantic: over the hits whose true label is a class (background ignored, as the official
  torchmetrics use ignore_index=-1), predicted class = argmax. Per class c: efficiency = recall_c,
  purity = precision_c. Overall efficiency is hit-weighted (the paper's "94.9% efficiency"; with
  one prediction per hit it equals the overall purity and the accuracy); the macro averages over
  classes are given beside, with torchmetrics' rule for classes without hits (`_macro`).

Every figure here is pooled: the counts of all hits of the whole set (every event, every plane) are
summed first (`Counts.add`), and each ratio is taken once from the totals, so a set's figures do not
depend on how it was batched. The official validation logs are not computed this way and need not
equal these figures: nugraph's `validation_step` logs each batch's torchmetrics value (filter recall
and precision of that batch's hits; semantic recall and precision macro-averaged over classes by
`_macro`'s rule applied to that batch alone) and Lightning's epoch value is the mean of those per-batch values weighted by
each batch's number of events. Ours weighs every hit equally and averages classes once over the
whole set; theirs weighs batches by events, and a class rare in one batch moves that batch's macro
mean as much as a common one. The two agree for a set evaluated as one batch.

Counts accumulate over batches (`Counts.add`), so metrics of a large set never hold it in memory.

Axis names: H hits, C classes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxinterp.nugraph.event import SEMANTIC_CLASSES


class Counts(NamedTuple):
    semantic: np.ndarray  # [C, C] int: hits by (true class, predicted class), true background excluded
    filter: np.ndarray  # [2, 2] int: hits by (true signal?, kept?)

    @staticmethod
    def zeros(num_classes: int = len(SEMANTIC_CLASSES)) -> "Counts":
        return Counts(np.zeros((num_classes, num_classes), np.int64), np.zeros((2, 2), np.int64))

    def add(self, y: np.ndarray, semantic: np.ndarray, filter_prob: np.ndarray, *,
            threshold: float = 0.5) -> "Counts":
        """Adds hits: y [H] true labels (-1 background), semantic [H, C] scores, filter_prob [H]
        (a hit is kept when filter_prob > threshold, strictly, as torchmetrics decides)."""
        y = np.asarray(y).reshape(-1)
        semantic = np.asarray(semantic)
        filter_prob = np.asarray(filter_prob).reshape(-1)
        C = self.semantic.shape[0]
        if semantic.shape != (y.size, C):
            raise ValueError(f"semantic: expected shape [{y.size}, {C}], got {list(semantic.shape)}")
        if filter_prob.shape != (y.size,):
            raise ValueError(f"filter_prob: expected shape [{y.size}], got {list(filter_prob.shape)}")
        if y.size and y.dtype.kind not in "iu":  # bincount's bare TypeError (float), or 0.7 taken as class 0
            raise ValueError(f"y: expected integer labels in [-1, {C - 1}], got dtype {y.dtype}")
        if y.size and (y.min() < -1 or y.max() >= C):
            raise ValueError(f"y: labels must lie in [-1, {C - 1}], got [{int(y.min())}, {int(y.max())}]")
        sig = y >= 0
        pred = np.argmax(semantic, axis=-1)
        sem = self.semantic + np.bincount(y[sig] * C + pred[sig], minlength=C * C).reshape(C, C)
        kept = filter_prob > threshold  # torchmetrics: `preds > threshold`
        fil = self.filter + np.bincount(sig.astype(np.int64) * 2 + kept, minlength=4).reshape(2, 2)
        return Counts(sem, fil)

    def __add__(self, other: "Counts") -> "Counts":  # type: ignore[override]
        return Counts(self.semantic + other.semantic, self.filter + other.filter)


class Metrics(NamedTuple):
    filter_efficiency: float
    filter_purity: float
    semantic_efficiency: float  # hit-weighted over all classes (= overall purity = accuracy)
    semantic_purity: float
    semantic_efficiency_macro: float
    semantic_purity_macro: float
    efficiency: dict  # class name -> recall
    purity: dict  # class name -> precision
    hits: int  # true-signal hits the semantic figures count

    def as_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in self._asdict().items()}

    def line(self) -> str:
        return (f"filter eff {self.filter_efficiency:.2%} pur {self.filter_purity:.2%} | semantic eff "
                f"{self.semantic_efficiency:.2%} (macro {self.semantic_efficiency_macro:.2%}) pur macro "
                f"{self.semantic_purity_macro:.2%}")


def _ratio(a, b) -> float:
    return float(a / b) if b else float("nan")


def _macro(scores: list[float], m: np.ndarray) -> float:
    """torchmetrics' macro average: a class counts when it has a true or a predicted hit
    (tp + fp + fn > 0), its 0/0 score as 0; a class seen nowhere is left out (NaN if all are).
    A class never predicted thus drags the purity mean down instead of dropping out of it."""
    seen = (m.sum(0) + m.sum(1)) > 0
    if not seen.any():
        return float("nan")
    return float(np.nan_to_num(np.asarray(scores))[seen].mean())


def compute(counts: Counts, classes: tuple[str, ...] = SEMANTIC_CLASSES) -> Metrics:
    """Efficiencies and purities from accumulated counts (NaN where a denominator is 0)."""
    m = counts.semantic
    if len(classes) != m.shape[0]:  # zip would drop names, the macro mean index past them (IndexError)
        raise ValueError(f"classes: expected {m.shape[0]} names (the counts' classes), got {len(classes)}: "
                         f"{list(classes)}")
    tp = np.diag(m)
    rec = [_ratio(tp[c], m[c].sum()) for c in range(len(classes))]
    prec = [_ratio(tp[c], m[:, c].sum()) for c in range(len(classes))]
    f = counts.filter
    overall = _ratio(tp.sum(), m.sum())
    return Metrics(
        filter_efficiency=_ratio(f[1, 1], f[1].sum()),
        filter_purity=_ratio(f[1, 1], f[:, 1].sum()),
        semantic_efficiency=overall,
        semantic_purity=overall,
        semantic_efficiency_macro=_macro(rec, m),
        semantic_purity_macro=_macro(prec, m),
        efficiency=dict(zip(classes, rec)),
        purity=dict(zip(classes, prec)),
        hits=int(m.sum()),
    )
