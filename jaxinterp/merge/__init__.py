"""Model merging (every mergekit method and more) and loss-landscape geometry on params pytrees.

    from jaxinterp import merge as jm
    merged = jm.merge("ties", [ft_a, ft_b], base=pre, parameters={"weight": 1.0, "density": 0.5})
    path = jm.linear_path(loss_fn, params_a, params_b, batch)          # 25 alphas, both barriers
    aligned = jm.weight_matching(jm.mlp_permutation_spec(names), params_a, params_b).params
"""

from jaxinterp.merge.curves import bezier, curve_losses, fit_bezier
from jaxinterp.merge.fisher import diagonal_fisher, fisher_merge, gram, regmean
from jaxinterp.merge.landscape import (barrier_chord, barrier_mean, filter_normalized_direction, linear_path,
                                       path_losses, plane_through, random_surface)
from jaxinterp.merge.tree_merge import merge, plan
from jaxinterp.merge.rebasin import (PermutationSpec, apply_permutation, cnn_permutation_spec,
                                     gpt2_permutation_spec, mlp_permutation_spec, weight_matching)
from jaxinterp.merge.registry import METHODS
from jaxinterp.merge.soups import greedy_soup, tsv_merge, uniform_soup

__all__ = ["METHODS", "PermutationSpec", "apply_permutation", "barrier_chord", "barrier_mean", "bezier",
           "cnn_permutation_spec", "curve_losses", "diagonal_fisher", "filter_normalized_direction",
           "fisher_merge", "fit_bezier", "gpt2_permutation_spec", "gram", "greedy_soup", "linear_path", "merge",
           "mlp_permutation_spec", "path_losses", "plan", "plane_through", "random_surface", "regmean",
           "tsv_merge", "uniform_soup", "weight_matching"]
