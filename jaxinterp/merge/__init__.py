"""Model merging (every mergekit method and more) and loss-landscape geometry on params pytrees.

    from jaxinterp import merge as jm
    merged = jm.merge("ties", [ft_a, ft_b], base=pre, parameters={"weight": 1.0, "density": 0.5})
    path = jm.linear_path(loss_fn, params_a, params_b, batch)          # 25 alphas, both barriers
    aligned = jm.weight_matching(jm.mlp_permutation_spec(names), params_a, params_b).params

The names below are imported on first use (PEP 562), so `jaxinterp merge yaml` (which needs only
config, checkpoint, registry and stream) does not pay for optax (curves) or scipy (rebasin).
"""

import importlib

_WHERE = {
    "bezier": "curves", "curve_losses": "curves", "fit_bezier": "curves",
    "diagonal_fisher": "fisher", "fisher_merge": "fisher", "gram": "fisher", "regmean": "fisher",
    "barrier_chord": "landscape", "barrier_mean": "landscape", "filter_normalized_direction": "landscape",
    "linear_path": "landscape", "path_losses": "landscape", "plane_through": "landscape",
    "random_surface": "landscape",
    "merge": "tree_merge", "plan": "tree_merge",
    "PermutationSpec": "rebasin", "apply_permutation": "rebasin", "cnn_permutation_spec": "rebasin",
    "gpt2_permutation_spec": "rebasin", "mlp_permutation_spec": "rebasin", "weight_matching": "rebasin",
    "METHODS": "registry",
    "greedy_soup": "soups", "tsv_merge": "soups", "uniform_soup": "soups",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxinterp.merge' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxinterp.merge.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
