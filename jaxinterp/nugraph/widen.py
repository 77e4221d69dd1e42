"""Net2WiderNet (Chen et al., arXiv 1511.05641) for NuGraph2: a trained model made wider with the
same function, to warm-start a larger model from a smaller one.

Every planar feature is copied `factor` times (unit j' of the wide model copies unit j' mod F), and
so is every nexus feature; each weight that reads a copied feature is divided by `factor`, so the
sums it feeds are unchanged. NuGraph2 is exact under this map: its activations are elementwise
(tanh), its attention scores and messages are linear in the features, and nexus up / nexus down sum
and average them. Small Gaussian noise on the widened kernels (`noise` times each kernel's standard
deviation) breaks the symmetry between the copies, which would otherwise keep equal gradients.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxinterp.checks import is_integer
from jaxinterp.nugraph.model import NuGraph2Config, Params, check_params


def widen(params: Params, config: NuGraph2Config, *, factor: int = 2, noise: float = 0.0,
          seed: int = 0) -> tuple[Params, NuGraph2Config]:
    """params of `config` -> (params, config) with planar and nexus features times `factor`.

    noise = 0 gives exactly the same outputs (up to float rounding); a few percent breaks the copies'
    symmetry for training.
    """
    if not is_integer(factor) or factor < 1:
        raise ValueError(f"widen: factor must be an integer >= 1, got {factor!r}")
    if (not isinstance(noise, (int, float, np.integer, np.floating)) or isinstance(noise, (bool, np.bool_))
            or not 0 <= noise < np.inf):
        raise ValueError(f"widen: noise must be a finite number >= 0, got {noise!r}")  # NaN: NaN params
    if not is_integer(seed) or seed < 0:  # numpy's default_rng: its own ValueError (-1) or a TypeError (1.5)
        raise ValueError(f"widen: seed must be an integer >= 0, got {seed!r}")
    check_params(params, config, where="widen: params do not have the shapes of the config")
    # Python numbers: numpy scalars are not weak under NEP 50 (np.int64 factor, np.float64 noise made
    # the leaves they touch float64 beside float32 ones)
    factor, noise = int(factor), float(noise)
    F, Fn, D, P = config.planar_features, config.nexus_features, config.in_features, len(config.planes)
    f_idx, n_idx = np.tile(np.arange(F), factor), np.tile(np.arange(Fn), factor)
    rng = np.random.default_rng(seed)

    def jitter(k):
        # back in k's dtype: bfloat16 kernels came back float32 (numpy's std of them is float32)
        return (k + noise * k.std() * rng.standard_normal(k.shape).astype(k.dtype)).astype(k.dtype) if noise else k

    def read(k, blocks):
        """Rows (axis 1) of a kernel [C, I, ...] in input blocks (size, copied-or-not): copied
        blocks are widened and divided by factor."""
        out, at = [], 0
        for size, idx in blocks:
            part = k[:, at:at + size]
            out.append(part if idx is None else part[:, idx] / factor)
            at += size
        return np.concatenate(out, axis=1)

    def class_linear(w, blocks, out_idx=None):
        k, b = read(np.asarray(w["kernel"]), blocks), np.asarray(w["bias"])
        if out_idx is not None:
            k, b = k[..., out_idx], b[..., out_idx]
        return {"kernel": jitter(k), "bias": b}

    def message_net(w, blocks):
        return {"edge_net": class_linear(w["edge_net"], blocks), "node_net_0": class_linear(w["node_net_0"], blocks, f_idx),
                "node_net_1": class_linear(w["node_net_1"], [(F, f_idx)], f_idx)}

    plane_in = [(F, f_idx), (D, None), (F, f_idx), (D, None)]  # h_i, x_i, h_j, x_j
    down_in = [(F, f_idx), (Fn, n_idx)]  # h_i, n_k
    out: Params = {"encoder": {}, "plane_net": {}, "nexus_net": {"nexus_down": {}},
                   "semantic_decoder": {"temp": np.asarray(params["semantic_decoder"]["temp"])},
                   "filter_decoder": {"temp": np.asarray(params["filter_decoder"]["temp"])}}
    for p in config.planes:
        enc = params["encoder"][p]
        out["encoder"][p] = {"kernel": jitter(np.asarray(enc["kernel"])[..., f_idx]), "bias": np.asarray(enc["bias"])[..., f_idx]}
        out["plane_net"][p] = message_net(params["plane_net"][p], plane_in)
        out["nexus_net"]["nexus_down"][p] = message_net(params["nexus_net"]["nexus_down"][p], down_in)
        sem, fil = params["semantic_decoder"][p], params["filter_decoder"][p]
        out["semantic_decoder"][p] = {"kernel": read(np.asarray(sem["kernel"]), [(F, f_idx)]), "bias": np.asarray(sem["bias"])}
        out["filter_decoder"][p] = {"kernel": read(np.asarray(fil["kernel"]), [(F, f_idx)]), "bias": np.asarray(fil["bias"])}
    out["nexus_net"]["nexus_net_0"] = class_linear(params["nexus_net"]["nexus_net_0"], [(F, f_idx)] * P, n_idx)
    out["nexus_net"]["nexus_net_1"] = class_linear(params["nexus_net"]["nexus_net_1"], [(Fn, n_idx)], n_idx)
    wide = dataclasses.replace(config, planar_features=factor * F, nexus_features=factor * Fn)
    return out, wide

