"""Model soups (Wortsman et al. 2022) and TSV-merge (Gargiulo et al. 2025).

* uniform soup: the mean of the models (summed in float32, in their dtype; integer leaves copied when
  equal).
* greedy soup: models sorted by held-out score (best first, ties in the given order, nan last);
  each is added to the soup when the average with it scores at least as well as without it (`>=`,
  the paper's rule).
* TSV-merge ("Task Singular Vectors"): for each matrix leaf, each task vector tau_i = U_i S_i V_i^T
  keeps its top `k = max(1, int(rank / T * sv_reduction_scale))` singular triplets (1/T of the rank
  for T tasks); the kept U's and V's are concatenated and whitened (U -> P Q^T from the SVD
  U = P S Q^T, which removes the interference between tasks), and
  theta = base + alpha * U_perp diag(S) V_perp^T. Leaves that are not matrices take the mean task
  vector. alpha defaults to 1.0.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.merge import tree


def uniform_soup(models: Sequence[Any]) -> Any:
    if not models:
        raise ValueError("models: expected at least one params tree, got none")
    tree.check_same_structure(list(models), "models")
    names = tree.leaf_names(models[0])
    leaves = [jax.tree_util.tree_leaves(m) for m in models]
    out = [tree.mean_leaf([lv[i] for lv in leaves], n) for i, n in enumerate(names)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(models[0]), out)


class GreedySoup(NamedTuple):
    params: Any
    selected: list[int]  # indices into models, in the order they were added
    scores: list[float]  # held-out score of each model alone


def _score(score_fn: Callable[[Any], float], params: Any, what: str) -> float:
    """score_fn(params) as a float; ValueError unless it is one real number (a score per example or
    class was a TypeError from float(), or for one element taken as the score, silently)."""
    s = score_fn(params)
    shape, dtype = np.shape(s), getattr(s, "dtype", np.asarray(s).dtype)
    if shape != () or not any(jnp.issubdtype(dtype, k) for k in (jnp.floating, jnp.integer, jnp.bool_)):
        raise ValueError(f"score_fn: expected one real score (higher is better) for {what}, got "
                         f"{type(s).__name__} of shape {shape} and dtype {dtype}")
    return float(s)


def greedy_soup(models: Sequence[Any], score_fn: Callable[[Any], float]) -> GreedySoup:
    """Greedy soup; `score_fn(params)` is a held-out score where higher is better (accuracy)."""
    if not models:
        raise ValueError("models: expected at least one params tree, got none")
    tree.check_same_structure(list(models), "models")
    scores = [_score(score_fn, m, f"models[{i}]") for i, m in enumerate(models)]
    if all(np.isnan(scores)):
        raise ValueError(f"score_fn: expected a score for at least one model, got nan for all {len(models)}")
    # best first; ties keep the models' order (the paper's stable sort) and a nan score (a diverged
    # fine-tune) ranks last: argsort puts nan last, so the reversed order put it first as the "best"
    order = sorted(range(len(models)), key=lambda i: (np.isnan(scores[i]), -scores[i]))
    selected = [int(order[0])]
    best = scores[order[0]]
    for i in order[1:]:
        cand = uniform_soup([models[j] for j in selected + [int(i)]])
        s = _score(score_fn, cand, "a soup")
        if s >= best:
            selected.append(int(i))
            best = s
    return GreedySoup(uniform_soup([models[j] for j in selected]), selected, scores)


def _tsv_matrix(taus: list[jax.Array], sv_reduction_scale: float) -> jax.Array:
    T = len(taus)
    rank = min(taus[0].shape)
    k = max(1, int(rank / T * sv_reduction_scale))
    us, ss, vs = [], [], []
    for t in taus:
        u, s, vt = jnp.linalg.svd(t.astype(jnp.float32), full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vs.append(vt[:k].T)
    U, S, V = jnp.concatenate(us, 1), jnp.concatenate(ss), jnp.concatenate(vs, 1)

    def whiten(m):
        p, _, qt = jnp.linalg.svd(m, full_matrices=False)
        return p @ qt

    return (whiten(U) * S) @ whiten(V).T


def tsv_merge(models: Sequence[Any], base: Any, *, alpha: float = 1.0, sv_reduction_scale: float = 1.0) -> Any:
    """TSV-merge of fine-tuned `models` of `base` (see the module docstring)."""
    if not models:
        raise ValueError("models: expected at least one fine-tuned params tree, got none")
    if not np.isfinite(alpha):  # every leaf came out NaN or inf
        raise ValueError(f"alpha: expected a finite scale of the merged task vector, got {alpha}")
    if not 0 < sv_reduction_scale <= len(models):
        raise ValueError(f"sv_reduction_scale: expected a value in (0, {len(models)}], got {sv_reduction_scale}")
    tree.check_same_structure(list(models) + [base], "models+[base]")

    def one(name, b, *xs):
        if not all(jnp.issubdtype(tree.leaf_dtype(x), jnp.inexact) for x in (b, *xs)):  # a buffer: copied when equal
            return tree.mean_leaf([b, *xs], name, "[base, *models]")
        # task vectors in float32: in bfloat16 each difference and the running mean would round.
        # Returned in the inputs' common dtype (as `tree_merge.merge`, `uniform_soup`): the base's
        # rounded float32 fine-tunes of a bfloat16 base to bfloat16
        dtype = jnp.result_type(*(tree.leaf_dtype(x) for x in (b, *xs)))  # dtypes: no weak types
        work = jnp.float64 if dtype == jnp.float64 else jnp.float32
        b32 = jnp.asarray(b, work)
        taus = [jnp.asarray(x, work) - b32 for x in xs]
        if b.ndim == 2 and min(b.shape) > 1:
            delta = _tsv_matrix(taus, sv_reduction_scale)
        else:
            delta = sum(taus) / len(taus)
        return (b32 + alpha * delta).astype(dtype)

    names = tree.leaf_names(base)
    leaves = [jax.tree_util.tree_leaves(t) for t in [base, *models]]
    out = [one(n, *(lv[i] for lv in leaves)) for i, n in enumerate(names)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(base), out)
