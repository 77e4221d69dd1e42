"""The lenses of one GPT-2 layer: what they are, how they start, and the terms their logits sum.

Three kinds (params are plain dicts; `W` is stored [.., D, V] so x @ W needs no transpose):

* "lensa" (Sakarvadia et al., LensA): per head h a Linear D -> V with bias,
  lens_h(x) = x @ W[h] + b[h]; params W [H, D, V], b [H, V]. The paper's lens of a layer is the
  sum over heads, each head adding its own bias.
* "shared": one Linear for all heads of the layer: lens_h(x) = x @ W + b; params W [D, V], b [V].
* "resid": LensA plus a term of the residual stream entering the layer (hook_resid_pre):
  sum_h lens_h(x_h) + resid_pre @ W_resid; W_resid starts at zero, so it starts as LensA.

All start at the TransformerLens-processed unembedding (W_U, b_U): each head's lens starts as the
plain logit lens of that head's output.

Every lens logit is z = sum_i x_i @ W_i + b, the form `jaxinterp.kernels.chunked_vocab` takes:
`summed_terms` gives the terms of the layer's lens (sum over heads), `head_terms` those of each head.

Axis names: N rows, H heads, D d_model, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import Array

from jaxinterp.checks import is_integer

KINDS = ("lensa", "shared", "resid")


@dataclasses.dataclass(frozen=True)
class LensConfig:
    """Which lens of which layer, and the model shape it fits. Frozen: static under jit."""

    layer: int
    n_head: int
    d_model: int
    vocab_size: int
    kind: str = "lensa"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {list(KINDS)}, got {self.kind!r}")
        if not is_integer(self.layer) or self.layer < 0:
            raise ValueError(f"layer: expected a non-negative integer, got {self.layer!r}")
        for f in ("n_head", "d_model", "vocab_size"):
            if not is_integer(getattr(self, f)) or getattr(self, f) < 1:
                raise ValueError(f"{f}: expected a positive integer, got {getattr(self, f)!r}")
        # plain ints: checkpoints and lens files record the config as JSON (np.int64 trained, then
        # failed at the first checkpoint or at save_lens)
        for f in ("layer", "n_head", "d_model", "vocab_size"):
            object.__setattr__(self, f, int(getattr(self, f)))

    @property
    def needs_resid(self) -> bool:
        return self.kind == "resid"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        H, D, V = self.n_head, self.d_model, self.vocab_size
        if self.kind == "shared":
            return {"W": (D, V), "b": (V,)}
        shapes = {"W": (H, D, V), "b": (H, V)}
        if self.kind == "resid":
            shapes["W_resid"] = (D, V)
        return shapes


def lens_config_for(model_config, layer: int, kind: str = "lensa") -> LensConfig:
    """The LensConfig of `layer` of a GPT2Config; ValueError if the layer does not exist."""
    # numpy integers too (a layer from np.arange or a config array was refused as 'got 1'); not True
    if not is_integer(layer) or not 0 <= layer < model_config.n_layer:
        raise ValueError(f"layer: expected an integer in [0, {model_config.n_layer}) (the model has "
                         f"{model_config.n_layer} blocks), got {layer!r}")
    return LensConfig(int(layer), model_config.n_head, model_config.n_embd, model_config.vocab_size, kind)


def unembedding(model_params: dict, model_config) -> tuple[Array, Array]:
    """(W_U [D, V], b_U [V]) of a GPT-2's params: lm_head after weight processing, else wte.T."""
    if "lm_head" in model_params:
        return model_params["lm_head"]["kernel"], model_params["lm_head"]["bias"]
    W = model_params["wte"]["embedding"].T
    return W, jnp.zeros((model_config.vocab_size,), W.dtype)


def init(W_U: Array, b_U: Array, config: LensConfig) -> dict:
    """Every head's lens set to the unembedding (the paper's initialisation)."""
    D, V = config.d_model, config.vocab_size
    if tuple(W_U.shape) != (D, V) or tuple(b_U.shape) != (V,):
        raise ValueError(f"W_U, b_U: expected shapes {[D, V]} and {[V]}, got {list(W_U.shape)} and {list(b_U.shape)}")
    # copies (jnp.array), never the model's own buffers: asarray returned float32 W_U itself, so a shared
    # lens was the model's lm_head, and the train step, which donates the lens, refused (or clobbered) it
    W_U, b_U = jnp.array(W_U, jnp.float32), jnp.array(b_U, jnp.float32)
    if config.kind == "shared":
        return {"W": W_U, "b": b_U}
    H = config.n_head
    params = {"W": jnp.broadcast_to(W_U, (H, D, V)).copy(), "b": jnp.broadcast_to(b_U, (H, V)).copy()}
    if config.kind == "resid":
        params["W_resid"] = jnp.zeros((D, V), jnp.float32)
    return params


def check_params(lens: dict, config: LensConfig) -> None:
    """ValueError if the lens params do not have the shapes of `config` (another vocab or width)."""
    want = config.shapes()
    if set(lens) != set(want):
        raise ValueError(f"lens params: expected the entries {sorted(want)} of a {config.kind!r} lens, got {sorted(lens)}")
    for name, shape in want.items():
        if tuple(lens[name].shape) != shape:
            raise ValueError(f"lens params {name!r}: expected shape {list(shape)} (heads {config.n_head}, d_model "
                             f"{config.d_model}, vocab {config.vocab_size}), got {list(lens[name].shape)}")


def summed_terms(lens: dict, result: Array, resid_pre: Array | None, config: LensConfig):
    """Terms of the layer's lens, sum over heads: result [N, H, D], resid_pre [N, D] -> (xs, Ws, b)."""
    N, H, D = result.shape
    if config.kind == "shared":
        # sum_h (x_h @ W + b) = (sum_h x_h) @ W + H b
        return (result.sum(1),), (lens["W"],), lens["b"] * H
    # The heads stacked along the contraction axis: one [N, H*D] @ [H*D, V] matmul (a free reshape).
    xs, Ws = [result.reshape(N, H * D)], [lens["W"].reshape(H * D, -1)]
    if config.kind == "resid":
        xs.append(resid_pre)
        Ws.append(lens["W_resid"])
    return tuple(xs), tuple(Ws), lens["b"].sum(0)


def head_terms(lens: dict, result: Array, resid_pre: Array | None, config: LensConfig):
    """Terms of each head's own lens, stacked over heads (vmap over axis 0 of every leaf):
    result [N, H, D] -> (xs [H, N, *], Ws [H, *, V] or shared, b [H, V] or shared, in_axes)."""
    x = jnp.moveaxis(result, 1, 0)  # (H, N, D)
    if config.kind == "shared":
        return (x,), (lens["W"],), lens["b"], ((0,), (None,), None)
    if config.kind == "resid":
        return (x, resid_pre), (lens["W"], lens["W_resid"]), lens["b"], ((0, None), (0, None), 0)
    return (x,), (lens["W"],), lens["b"], ((0,), (0,), 0)


def per_head(fn, lens: dict, result: Array, resid_pre: Array | None, config: LensConfig):
    """vmaps fn(xs, Ws, b) over the heads' own lenses; leaves come back with a leading H axis."""
    xs, Ws, b, axes = head_terms(lens, result, resid_pre, config)
    return jax.vmap(fn, in_axes=axes)(xs, Ws, b)
