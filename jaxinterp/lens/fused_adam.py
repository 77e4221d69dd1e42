"""Adam applied inside the backward pass, one vocabulary chunk at a time.

A lens of one GPT-2-small layer holds 464M weights; Adam keeps two more copies (mu, nu). A plain
step (`jax.grad`, then `optax.adam`) also holds the whole gradient, a fourth copy (1.7 GiB), between
the backward pass and the update. Here the KL's gradient is formed chunk by chunk of the vocabulary,
exactly as `chunked_vocab.kl_div`'s backward pass forms it, and each chunk's gradient goes straight
into Adam's moments for that chunk (in place, in a `fori_loop` over donated buffers); the weights
then take their update in one elementwise pass. No gradient larger than one chunk ever exists. For GPT-2 large (20 heads x 1280 x
50257 = 1.29B weights) that is the difference between 20.6 GB and 15.4 GB: a layer fits in 24 GB.

The result is optax.adam's update (same formulas, same state layout: `(ScaleByAdamState(count, mu,
nu), EmptyState())`), so checkpoints and resumption are unchanged; tests compare the two step by
step. Moments stored in bfloat16 (`bf16_moments`: uint16 leaves) are rounded as
`bf16_moments.adam` rounds them, element for element. Objectives "last" and "all" (the lens summed
over heads); "per_head" uses the plain step.

Axis names: N rows, V vocabulary, C chunk width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

from jaxinterp.kernels import chunked_vocab
from jaxinterp.lens import bf16_moments, lenses
from jaxinterp.lens.bf16_moments import B1, B2  # optax.adam's defaults (and torch.optim.Adam's)
from jaxinterp.lens.lenses import LensConfig
from jaxinterp.lens.objective import Objective, Rows


def supports(objective: Objective, shard_vocab: bool = False) -> bool:
    """Whether the fused update applies: the summed-lens objectives on an unsharded vocabulary."""
    return objective.mode != "per_head" and not shard_vocab


def _chunk_logits(lens_chunk: dict, r: Rows, lens_config: LensConfig, compute_dtype) -> Array:
    """z[:, chunk] [N, C] from a lens whose vocabulary axis is sliced to the chunk."""
    xs, Ws, b = lenses.summed_terms(lens_chunk, r.result, r.resid_pre, lens_config)
    acc = jnp.promote_types(jnp.float32, b.dtype)
    z = b.astype(acc)
    for x, W in zip(xs, Ws):
        dt = compute_dtype or jnp.result_type(x.dtype, W.dtype)
        z = z + jnp.matmul(x.astype(dt), W.astype(dt), preferred_element_type=acc)
    return z


def _chunk_grad(lens_chunk: dict, r: Rows, lens_config: LensConfig, compute_dtype, dz: Array) -> dict:
    """d loss / d lens_chunk from dz = d loss / d z[:, chunk] [N, C].

    Each weight's gradient is x^T dz from inputs in the compute dtype, accumulated in float32, as
    `chunked_vocab.kl_div`'s backward pass forms it; a vjp through the forward's `astype` would
    round the whole weight gradient to bfloat16 under a bfloat16 compute dtype. The lens's own
    layout (heads stacked along the contraction, biases summed, H b for a shared lens) is then
    pulled back by its vjp: reshapes and sums, exact in float32.
    """
    xs, Ws, b = lenses.summed_terms(lens_chunk, r.result, r.resid_pre, lens_config)
    _, pull = jax.vjp(lambda lc: lenses.summed_terms(lc, r.result, r.resid_pre, lens_config)[1:], lens_chunk)
    dWs = []
    for x, W in zip(xs, Ws):
        dt = compute_dtype or jnp.result_type(x.dtype, W.dtype)
        acc = jnp.promote_types(jnp.float32, W.dtype)
        dWs.append(jnp.matmul(x.T.astype(dt), dz.astype(dt), preferred_element_type=acc).astype(W.dtype))
    (grad,) = pull((tuple(dWs), dz.sum(0).astype(b.dtype)))
    return grad


def step(lens: dict, opt_state, r: Rows, *, lens_config: LensConfig, objective: Objective, lr: float):
    """One Adam step on the weighted mean KL of `r`: (lens, opt_state, rows) -> (lens, opt_state, loss).

    opt_state is `optax.adam(lr).init(lens)`'s layout (or `bf16_moments.adam(lr)`'s); the result
    equals that optimiser's update of `jax.grad(objective.loss)(lens, r)` applied to lens.
    """
    if not supports(objective):
        raise ValueError(f"objective.mode: the fused Adam step supports 'last' and 'all', got {objective.mode!r}")
    cd = None if objective.compute_dtype is None else jnp.dtype(objective.compute_dtype)
    xs, Ws, b = lenses.summed_terms(lens, r.result, r.resid_pre, lens_config)
    kl, lse_z, lse_t = chunked_vocab.kl_div_stats(xs, Ws, b, r.target, chunk=objective.chunk, compute_dtype=cd)
    denom = jnp.maximum(r.weight.sum(), 1.0)
    loss = (kl * r.weight).sum() / denom
    g = r.weight / denom  # d loss / d KL_n

    adam, rest = opt_state
    count = optax.safe_increment(adam.count)
    V = lens_config.vocab_size
    starts, fresh, C = chunked_vocab.chunk_layout(V, objective.chunk)

    def body(i, carry):  # the moments, chunk by chunk, from each chunk's gradient
        mu, nu = carry
        start, ok = jnp.asarray(starts)[i], jnp.asarray(fresh)[i]
        cut = lambda a: lax.dynamic_slice_in_dim(a, start, C, axis=a.ndim - 1)  # noqa: E731
        lens_c = jax.tree.map(cut, lens)
        z = _chunk_logits(lens_c, r, lens_config, cd)
        logp = lax.dynamic_slice_in_dim(r.target, start, C, axis=1).astype(z.dtype) - lse_t[:, None]
        dz = jnp.where(ok, g[:, None].astype(z.dtype) * (jnp.exp(z - lse_z[:, None]) - jnp.exp(logp)), 0.0)
        grad_c = _chunk_grad(lens_c, r, lens_config, cd, dz)

        def moment(a, new, seed):  # columns of the overlapping last chunk that an earlier chunk did stay
            a_c = cut(a)
            a_new = bf16_moments.store(new(bf16_moments.load(a_c)), a_c, seed, start)
            return lax.dynamic_update_slice_in_dim(a, jnp.where(ok, a_new, a_c), start, axis=a.ndim - 1)

        # optax.scale_by_adam's moment updates (float32, stored in the moments' dtype as
        # bf16_moments stores them); each reads only its own buffer, so XLA updates both in place
        grads, treedef = jax.tree.flatten(grad_c)
        mu, nu = treedef.flatten_up_to(mu), treedef.flatten_up_to(nu)
        mu = [moment(m, lambda m_c: (1 - B1) * gr + B1 * m_c, bf16_moments.leaf_seed(i, bf16_moments.MU, count))
              for i, (m, gr) in enumerate(zip(mu, grads))]
        nu = [moment(v, lambda v_c: (1 - B2) * (gr * gr) + B2 * v_c, bf16_moments.leaf_seed(i, bf16_moments.NU, count))
              for i, (v, gr) in enumerate(zip(nu, grads))]
        return jax.tree.unflatten(treedef, mu), jax.tree.unflatten(treedef, nu)

    mu, nu = lax.fori_loop(0, len(starts), body, (adam.mu, adam.nu))

    # then the weights, in one elementwise pass (optax: bias correction, -lr, apply_updates). Updating
    # them inside the loop as well would make each chunk's update read three buffers while writing
    # them, and XLA then copies a whole moment buffer per chunk.
    def weight(p, m, v):
        return (p + (-lr * bf16_moments.direction(m, v, count)).astype(p.dtype)).astype(p.dtype)

    lens = jax.tree.map(weight, lens, mu, nu)
    return lens, (adam._replace(count=count, mu=mu, nu=nu), rest), loss
