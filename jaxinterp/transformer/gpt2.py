"""GPT-2 as a pure-functional Flax linen module with TransformerLens hook points.

The whole network in one file, bottom-up: config, Conv1D, LayerNorm, attention, MLP, block, model,
then the pure entry points `init`, `forward`, `run_with_cache`. Parameter names copy the Hugging Face
checkpoint (`wte`, `wpe`, `h_{i}`, `ln_1`, `attn.c_attn`, `attn.c_proj`, `ln_2`, `mlp.c_fc`,
`mlp.c_proj`, `ln_f`); HF's Conv1D stores weights [in, out], which is already the layout of a
kernel here, so nothing is transposed. `lm_head` exists only when the unembedding is untied (after
TransformerLens weight processing, W_U is no longer wte.T).

Axis names: B batch, P positions (Q queries, K keys), H heads, E d_head, D d_model, M d_mlp,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxinterp.checks import check_x64, is_integer
from jaxinterp.transformer import hooks
from jaxinterp.transformer.hooks import Intervention

ACTIVATIONS = {
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),  # GPT-2's tanh approximation
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_fast": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """A GPT-2's shape (defaults: GPT-2 small). Frozen and hashable: a static argument under jit."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # d_mlp; None means 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    dtype: str = "float32"  # activations; "bfloat16" on accelerators (params stay float32)

    def __post_init__(self):
        # A malformed config.json arrives here: refuse it by name, not with a TypeError or
        # ZeroDivisionError from the arithmetic below (bool is an int to Python, not a size).
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner"):
            value = getattr(self, name)
            if value is None and name == "n_inner":
                continue
            least = 0 if name == "n_layer" else 1  # a zero-layer model (embed, unembed) is a bigram model
            if not is_integer(value) or value < least:
                raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")
        eps = self.layer_norm_epsilon
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating)) or not eps > 0:
            raise ValueError(f"layer_norm_epsilon must be a positive number, got {eps!r}")
        for name in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx", "tie_word_embeddings"):
            # config.json's "false" (a string) was truthy: a tied model, scaled attention, silently
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {sorted(ACTIVATIONS)}, got {self.activation_function!r}")
        if self.dtype not in ("float32", "bfloat16", "float16", "float64"):
            raise ValueError(f"dtype must be float32, bfloat16, float16 or float64, got {self.dtype!r}")

    @property
    def compute_dtype(self):
        """Where low precision would hurt (layer-norm statistics, attention scores, logits): float32,
        or float64 when the activations are float64."""
        return jnp.promote_types(jnp.dtype(self.dtype), jnp.float32)

    @property
    def d_head(self) -> int:
        return self.n_embd // self.n_head

    @property
    def d_mlp(self) -> int:
        return self.n_inner or 4 * self.n_embd

    def site_shape(self, site: str, n_pos: int) -> tuple[int, ...]:
        return hooks.site_shape(site, n_positions=n_pos, n_embd=self.n_embd, n_head=self.n_head,
                                d_head=self.d_head, d_mlp=self.d_mlp)


def check_dtype(config: GPT2Config) -> None:
    """Raises ValueError for a float64 config while JAX runs in 32-bit mode: every float64 array
    would silently become float32 (with a warning at most), so the model would not be what was asked."""
    check_x64(config.dtype, "dtype", "activations")


PRESETS: dict[str, GPT2Config] = {
    "gpt2": GPT2Config(),
    "distilgpt2": GPT2Config(n_layer=6),
    "gpt2-medium": GPT2Config(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": GPT2Config(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": GPT2Config(n_embd=1600, n_layer=48, n_head=25),
}


class _Hooked(nn.Module):
    """Base of the modules that own hook points: `hook` applies interventions, then captures."""

    config: GPT2Config
    layer: int = hooks.NO_LAYER
    capture: frozenset = frozenset()

    def hook(self, site: str, x: Array, ivs: Sequence[Intervention]) -> Array:
        x = hooks.apply(ivs, site, self.layer, x)
        name = site if self.layer == hooks.NO_LAYER else f"blocks.{self.layer}.{site}"
        if name in self.capture:
            self.sow("intermediates", name, x)
        return x

    @property
    def dtype(self):
        return jnp.dtype(self.config.dtype)


class Conv1D(nn.Module):
    """HF GPT-2's Conv1D: y = x @ kernel + bias with kernel [in, out]."""

    n_in: int
    n_out: int
    dtype: Any = jnp.float32
    init_std: float = 0.02

    def setup(self):
        self.kernel = self.param("kernel", nn.initializers.normal(self.init_std), (self.n_in, self.n_out))
        self.bias = self.param("bias", nn.initializers.zeros, (self.n_out,))

    def __call__(self, x: Array) -> Array:
        return x @ self.kernel.astype(self.dtype) + self.bias.astype(self.dtype)


class LayerNorm(_Hooked):
    """LayerNorm with TransformerLens's hooks: `hook_scale` [B, P, 1], `hook_normalized` (after w, b)."""

    prefix: str = "ln1"

    @nn.compact
    def __call__(self, x: Array, ivs: Sequence[Intervention]) -> Array:
        d = x.shape[-1]
        scale_p = self.param("scale", nn.initializers.ones, (d,))
        bias_p = self.param("bias", nn.initializers.zeros, (d,))
        x = x.astype(self.config.compute_dtype)  # statistics in float32 at least (float64 stays float64)
        x = x - x.mean(-1, keepdims=True)
        scale = self.hook(f"{self.prefix}.hook_scale",
                          jnp.sqrt((x * x).mean(-1, keepdims=True) + self.config.layer_norm_epsilon), ivs)
        x = x / scale * scale_p + bias_p
        return self.hook(f"{self.prefix}.hook_normalized", x.astype(self.dtype), ivs)


class Attention(_Hooked):
    """Causal multi-head self-attention, one hook per intermediate (q, k, v, scores, pattern, z, result)."""

    need_result: bool = False  # compute per-head outputs [B, P, H, D] (captured or intervened)

    def setup(self):
        c = self.config
        self.c_attn = Conv1D(c.n_embd, 3 * c.n_embd, self.dtype)
        self.c_proj = Conv1D(c.n_embd, c.n_embd, self.dtype, init_std=0.02 / (2 * c.n_layer) ** 0.5)

    def __call__(self, x: Array, allowed: Array, ivs: Sequence[Intervention]) -> Array:
        """x [B, P, D] (after ln_1); allowed [B, 1, Q, K] bool: which keys each query may attend to."""
        c = self.config
        B, P, _ = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)  # 3 x (B, P, D)
        q = self.hook("attn.hook_q", q.reshape(B, P, c.n_head, c.d_head), ivs)  # (B, P, H, E)
        k = self.hook("attn.hook_k", k.reshape(B, P, c.n_head, c.d_head), ivs)
        v = self.hook("attn.hook_v", v.reshape(B, P, c.n_head, c.d_head), ivs)
        scale = 1.0
        if c.scale_attn_weights:
            scale /= c.d_head ** 0.5
        if c.scale_attn_by_inverse_layer_idx:
            scale /= self.layer + 1
        scores = jnp.einsum("bqhe,bkhe->bhqk", q, k).astype(c.compute_dtype) * scale  # (B, H, Q, K)
        # The most negative finite value rather than -inf: a fully masked row (a padding query)
        # becomes uniform instead of NaN, and a real row is unchanged (exp underflows to 0).
        scores = self.hook("attn.hook_attn_scores", jnp.where(allowed, scores, jnp.finfo(jnp.float32).min), ivs)
        pattern = self.hook("attn.hook_pattern", jax.nn.softmax(scores, axis=-1), ivs)
        z = self.hook("attn.hook_z", jnp.einsum("bhqk,bkhe->bqhe", pattern.astype(self.dtype), v), ivs)
        b_O = self.c_proj.bias.astype(self.dtype)
        if self.need_result:
            W_O = self.c_proj.kernel.astype(self.dtype).reshape(c.n_head, c.d_head, c.n_embd)  # (H, E, D)
            # Same FLOPs as c_proj, but H times the output. One matmul per head, stacked on axis 2:
            # on XLA:CPU the batched einsum ('bqhe,hed->bqhd') was 2-3x slower, transposing to
            # head-major and back (BUILD_NOTES.md, "hook_result on a CPU").
            # Each product kept in the compute dtype and summed there, rounded once, as c_proj's matmul
            # accumulates: summed in bfloat16, the rounded heads made a captured hook_result change the
            # model's logits (3e-3 on a tiny model; the lens's target with them), which capture must not.
            acc = c.compute_dtype
            heads = [jnp.matmul(z[:, :, h], W_O[h], preferred_element_type=acc) for h in range(c.n_head)]
            stacked = jnp.stack(heads, axis=2).astype(self.dtype)
            result = self.hook("attn.hook_result", stacked, ivs)  # (B, P, H, D)
            if result is stacked:  # not intervened on: sum the small per-head products, not the stack
                return functools.reduce(jnp.add, heads).astype(self.dtype) + b_O
            return result.astype(acc).sum(axis=2).astype(self.dtype) + b_O
        return self.c_proj(z.reshape(B, P, c.n_embd))


class MLP(_Hooked):
    def setup(self):
        c = self.config
        self.c_fc = Conv1D(c.n_embd, c.d_mlp, self.dtype)
        self.c_proj = Conv1D(c.d_mlp, c.n_embd, self.dtype, init_std=0.02 / (2 * c.n_layer) ** 0.5)

    def __call__(self, x: Array, ivs: Sequence[Intervention]) -> Array:
        pre = self.hook("mlp.hook_pre", self.c_fc(x), ivs)  # (B, P, M)
        post = self.hook("mlp.hook_post", ACTIVATIONS[self.config.activation_function](pre), ivs)
        return self.c_proj(post)  # (B, P, D)


class Block(_Hooked):
    need_result: bool = False

    def setup(self):
        kw = dict(config=self.config, layer=self.layer, capture=self.capture)
        self.ln_1 = LayerNorm(prefix="ln1", **kw)
        self.attn = Attention(need_result=self.need_result, **kw)
        self.ln_2 = LayerNorm(prefix="ln2", **kw)
        self.mlp = MLP(**kw)

    def __call__(self, resid: Array, allowed: Array, ivs: Sequence[Intervention]) -> Array:
        resid = self.hook("hook_resid_pre", resid, ivs)
        attn_out = self.hook("hook_attn_out", self.attn(self.ln_1(resid, ivs), allowed, ivs), ivs)
        resid = self.hook("hook_resid_mid", resid + attn_out, ivs)
        mlp_out = self.hook("hook_mlp_out", self.mlp(self.ln_2(resid, ivs), ivs), ivs)
        return self.hook("hook_resid_post", resid + mlp_out, ivs)


class GPT2(_Hooked):
    """GPT-2 LM. Methods `embed`, `blocks` and `unembed` let callers run a slice of the network."""

    all_results: bool = False  # every block forms per-head results (an intervention at hook_result)

    def setup(self):
        c = self.config
        kw = dict(config=c, capture=self.capture)
        self.wte = nn.Embed(c.vocab_size, c.n_embd, embedding_init=nn.initializers.normal(0.02))
        # HF's _init_weights gives every nn.Embedding normal(initializer_range = 0.02), wpe too
        # (OpenAI's TensorFlow code used 0.01 for wpe; transformers does not)
        self.wpe = nn.Embed(c.n_positions, c.n_embd, embedding_init=nn.initializers.normal(0.02))
        result_captured = {int(n.split(".")[1]) for n in self.capture if n.endswith("attn.hook_result")}
        self.h = [Block(layer=i, need_result=(i in result_captured) or self.all_results, name=f"h_{i}", **kw)
                  for i in range(c.n_layer)]
        self.ln_f = LayerNorm(prefix="ln_final", **kw)
        if not c.tie_word_embeddings:
            self.lm_head = Conv1D(c.n_embd, c.vocab_size, c.compute_dtype)

    def embed(self, tokens: Array, attention_mask: Array, ivs: Sequence[Intervention]) -> Array:
        """tokens [B, P] -> resid_pre of block 0 [B, P, D]. Positions count real tokens only, so a
        left-padded prompt sees the positions it would see unpadded."""
        ivs = hooks.with_mask(ivs, attention_mask)
        positions = jnp.clip(jnp.cumsum(attention_mask, axis=-1) - 1, 0, None)
        embed = self.hook("hook_embed", self.wte(tokens).astype(self.dtype), ivs)
        pos_embed = self.hook("hook_pos_embed", self.wpe(positions).astype(self.dtype), ivs)
        return embed + pos_embed

    def blocks(self, resid: Array, attention_mask: Array, ivs: Sequence[Intervention],
               start: int = 0, stop: int | None = None) -> Array:
        """Runs blocks [start, stop) on resid [B, P, D]."""
        ivs = hooks.with_mask(ivs, attention_mask)
        P = resid.shape[1]
        causal = jnp.tril(jnp.ones((P, P), bool))
        allowed = causal[None, None] & attention_mask[:, None, None, :].astype(bool)  # (B, 1, Q, K)
        for block in self.h[start:stop]:
            resid = block(resid, allowed, ivs)
        return resid

    def unembed(self, resid: Array, ivs: Sequence[Intervention]) -> Array:
        """resid [..., D] (after the last block) -> logits [..., V] in float32 (float64 for float64 activations)."""
        dtype = self.config.compute_dtype
        x = self.ln_f(resid, ivs).astype(dtype)
        if self.config.tie_word_embeddings:
            return x @ self.wte.embedding.T.astype(dtype)
        return self.lm_head(x)

    def __call__(self, tokens: Array, attention_mask: Array, ivs: Sequence[Intervention] = ()) -> Array:
        ivs = hooks.with_mask(ivs, attention_mask)  # the ln_final sites' "mean" too (unembed takes no mask)
        resid = self.blocks(self.embed(tokens, attention_mask, ivs), attention_mask, ivs)
        return self.unembed(resid, ivs)


# ----------------------------------------------------------------------------------------------
# Pure entry points: params first, config keyword-only and static.

def module(config: GPT2Config, names: Sequence[str] = (), interventions: Sequence[Intervention] = ()) -> GPT2:
    """The linen module that captures `names` and can apply `interventions` (their sites decide
    whether per-head results must be formed)."""
    check_dtype(config)
    result_iv = any(iv.site == "attn.hook_result" for iv in interventions)
    return GPT2(config, capture=frozenset(names), all_results=result_iv)


def init(rng: Array, config: GPT2Config) -> dict:
    """Random GPT-2 params (HF's initialisation: wte, wpe and every kernel normal(0.02), the residual
    projections (attn and mlp c_proj) normal(0.02 / sqrt(2 n_layer)), biases 0, layer norms 1 and 0)."""
    check_dtype(config)
    return _init_jit(config)(rng)


@functools.cache
def _init_jit(config: GPT2Config):
    # Jitted: run eagerly, init dispatches ~90 small programs (one per initializer), ~10 s on 2 cores.
    # One jit per config: a new one per call compiled again every time (GPT-2 small: ~2 s each).
    def init_params(key):
        tokens = jnp.zeros((1, min(8, config.n_positions)), jnp.int32)
        return module(config).init(key, tokens, jnp.ones_like(tokens))["params"]

    return jax.jit(init_params)


@functools.cache
def param_shapes(config: GPT2Config) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The shape of every parameter of a GPT-2 of `config`, by its path ('h_0', 'attn', 'c_attn', 'kernel')."""
    tree = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), config))
    return {path: tuple(leaf.shape) for path, leaf in flax.traverse_util.flatten_dict(tree).items()}


@functools.cache
def _param_layout(config: GPT2Config) -> tuple[Any, tuple[tuple[int, ...], ...]]:
    tree = jax.eval_shape(lambda: init(jax.random.PRNGKey(0), config))
    return jax.tree.structure(tree), tuple(tuple(leaf.shape) for leaf in jax.tree.leaves(tree))


def check_params(params: Any, config: GPT2Config) -> None:
    """Raises ValueError for params that are not those of a GPT-2 of `config`. linen reads the
    parameters it needs and ignores the rest: 3-layer params under a 2-layer config ran two blocks,
    processed params (their lm_head) under the tied config they came from unembedded with wte."""
    leaves, treedef = jax.tree.flatten(params)
    if (treedef, tuple(getattr(x, "shape", None) or np.shape(x) for x in leaves)) == _param_layout(config):
        return  # the usual case, ~0.1 ms for GPT-2 small; below, paths for a message (or a FrozenDict)

    def flat(tree, prefix=()):
        for key, value in tree.items():
            if isinstance(value, Mapping):
                yield from flat(value, prefix + (key,))
            else:
                yield prefix + (key,), tuple(np.shape(value))

    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a nested dict of arrays (gpt2.init, load_gpt2), got {type(params).__name__}")
    expected, got = param_shapes(config), dict(flat(params))
    if got != expected:
        wrong = [p for p in expected if p in got and got[p] != expected[p]]
        raise ValueError(
            "params do not fit the config (n_layer {}, n_embd {}, vocab_size {}, tie_word_embeddings {}): "
            "missing {}, unexpected {}, wrong shape {}".format(
                config.n_layer, config.n_embd, config.vocab_size, config.tie_word_embeddings,
                ["/".join(map(str, p)) for p in expected if p not in got][:3],
                ["/".join(map(str, p)) for p in got if p not in expected][:3],
                [f"{'/'.join(p)}: expected {list(expected[p])}, got {list(got[p])}" for p in wrong][:3]))


def check_inputs(tokens: Array, attention_mask: Array | None, interventions: Sequence[Intervention],
                 config: GPT2Config) -> None:
    """Raises ValueError for inputs the model cannot take (shapes always; token values when concrete)."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape [batch, positions], got shape {list(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    B, P = tokens.shape
    if P > config.n_positions:
        raise ValueError(f"cannot forward a sequence of length {P}: n_positions is only {config.n_positions}")
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:
        host = np.asarray(tokens)  # numpy: under an outer jit, jnp ops on a constant would be traced
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {config.vocab_size}) (the vocabulary size), "
                             f"got ids from {lo} to {hi}")
    if attention_mask is not None:
        if tuple(np.shape(attention_mask)) != (B, P):
            raise ValueError(f"attention_mask must have the shape of tokens {[B, P]}, got {list(np.shape(attention_mask))}")
        if not isinstance(attention_mask, jax.core.Tracer):
            # Positions are the cumulative sum of the mask: a 2 would skip a position, a 0.5 (cast
            # to int) would turn a real token into padding.
            bad = np.setdiff1d(np.asarray(attention_mask), [0, 1])
            if bad.size:
                raise ValueError(f"attention_mask must hold only 0 (padding) and 1 (real token), got {bad[:5].tolist()}")
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise ValueError(f"interventions must be Intervention objects (see hooks.intervene), got {type(iv).__name__}")
        hooks.check_intervention(iv, config.site_shape(iv.site, P), config.n_layer, batch=B)


def _run(params: dict, tokens: Array, attention_mask: Array, interventions: tuple, *,
         config: GPT2Config, names: tuple[str, ...]) -> tuple[Array, dict[str, Array]]:
    logits, state = module(config, names, interventions).apply(
        {"params": params}, tokens, attention_mask, interventions, mutable=["intermediates"])
    cache = {}
    for path, value in flax.traverse_util.flatten_dict(state.get("intermediates", {})).items():
        cache[path[-1]] = value[0]  # sow keeps a tuple per name
    return logits, cache


@functools.cache
def _run_jit():
    # Built on first use (nothing is compiled at import). config and names are static; a new
    # (config, names, intervention sites) compiles once, later calls reuse it.
    return jax.jit(_run, static_argnames=("config", "names"))


def run_with_cache(params: dict, tokens: Array, *, config: GPT2Config, names: Sequence[str] = (),
                   attention_mask: Array | None = None,
                   interventions: Sequence[Intervention] = ()) -> tuple[Array, dict[str, Array]]:
    """Logits [B, P, V] (float32; float64 for a float64 config) and the activations at the hook points `names` (nothing else is kept).

    Args:
      params: GPT-2 params (`init`, `load_gpt2`).
      tokens: [B, P] token ids.
      names: TransformerLens hook names, e.g. ("blocks.3.attn.hook_result",).
      attention_mask: [B, P], 1 for real tokens and 0 for padding (left or right); None means all real.
        At real positions the logits equal those of the unpadded prompt.
      interventions: `hooks.intervene(...)` objects, applied in order at their hook points.
    """
    if not isinstance(tokens, jax.Array):
        # Checked as given: jnp.asarray would wrap int64 ids past 2**31 (x64 off) into the vocabulary.
        tokens = np.asarray(tokens)
    interventions = tuple(interventions)
    check_dtype(config)
    check_params(params, config)
    check_inputs(tokens, attention_mask, interventions, config)
    tokens = jnp.asarray(tokens)
    names = hooks.check_names(names, config.n_layer)
    mask = jnp.ones(tokens.shape, jnp.int32) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    return _run_jit()(params, tokens, mask, interventions, config=config, names=names)


def forward(params: dict, tokens: Array, *, config: GPT2Config, attention_mask: Array | None = None,
            interventions: Sequence[Intervention] = ()) -> Array:
    """Logits [B, P, V]; see `run_with_cache` for the arguments."""
    return run_with_cache(params, tokens, config=config, attention_mask=attention_mask, interventions=interventions)[0]



# Slices of the network, for callers that reuse the lower layers (a sweep that injects at layer L
# runs blocks [0, L) once and only blocks [L, n) per intervention). Pure and jittable; no checks of
# the arrays' values (the caller's), only of shapes and static arguments (free under jit: at trace time).

def embed(params: dict, tokens: Array, attention_mask: Array, *, config: GPT2Config,
          interventions: Sequence[Intervention] = ()) -> Array:
    """tokens [B, P] -> resid_pre of block 0 [B, P, D]."""
    check_params(params, config)
    return module(config, (), interventions).apply({"params": params}, tokens, attention_mask, tuple(interventions),
                                                   method=GPT2.embed)


def blocks(params: dict, resid: Array, attention_mask: Array, *, config: GPT2Config, start: int = 0,
           stop: int | None = None, interventions: Sequence[Intervention] = (),
           names: Sequence[str] = ()) -> tuple[Array, dict[str, Array]]:
    """Blocks [start, stop) on resid [B, P, D] -> (resid_post of block stop-1, captured activations)."""
    stop_ = config.n_layer if stop is None else stop
    # Python's slice of the blocks would take start=-1 as the last block, start=5 of 3 as none
    if not (is_integer(start) and is_integer(stop_) and 0 <= start <= stop_ <= config.n_layer):
        raise ValueError(f"blocks: expected 0 <= start <= stop <= n_layer ({config.n_layer}), got start {start!r}, "
                         f"stop {stop!r}")
    check_params(params, config)
    names = hooks.check_names(names, config.n_layer)
    outside = [n for n in names if not start <= hooks.split_name(n)[1] < stop_]
    if outside:  # never met by these blocks: the cache would lack them
        raise ValueError(f"blocks: names must be hook points of blocks {start}..{stop_ - 1}, got {outside}")
    out, state = module(config, names, interventions).apply(
        {"params": params}, resid, attention_mask, tuple(interventions), start, stop,
        method=GPT2.blocks, mutable=["intermediates"])
    return out, {path[-1]: v[0] for path, v in flax.traverse_util.flatten_dict(state.get("intermediates", {})).items()}


def unembed(params: dict, resid: Array, *, config: GPT2Config) -> Array:
    """resid [..., D] after the last block -> logits [..., V] (ln_f, then W_U)."""
    check_params(params, config)
    return module(config).apply({"params": params}, resid, (), method=GPT2.unembed)
