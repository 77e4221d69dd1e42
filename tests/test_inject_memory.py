"""Memory vectors and single-run injection: fixture parity, definitions, bad input."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.inject import heads
from jaxinterp.inject.memory import inject_logits, layer_encoding, memory_vector, memory_vectors
from jaxinterp.transformer import forward, load_gpt2, run_with_cache

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def model():
    return load_gpt2(FIX / "tiny_gpt2", process_weights=True)


@pytest.fixture(scope="module")
def ref():
    return np.load(FIX / "gpt2_reference.npz")


@pytest.mark.parametrize("kind,key", [("unembed", "inject/unembed_logits"), ("embed", "inject/embed_logits")])
@pytest.mark.parametrize("head", [None, 2])
def test_fixture_parity(model, ref, kind, key, head):
    """TransformerLens's hook_attn_out += tau * memory at layer 1, tau 3, memory {5, 17, 42}.
    Injecting into one head's hook_result (the paper's hook) gives the same logits."""
    params, config = model
    m = memory_vector(params, ref["inject/memory_ids"], config=config, kind=kind)
    logits = inject_logits(params, ref["tokens"], m, config=config, layer=int(ref["inject/layer"]),
                           tau=float(ref["inject/tau"]), head=head)
    np.testing.assert_allclose(np.asarray(logits), ref[key], atol=2e-6, rtol=0)


def test_memory_definitions(model, ref):
    params, config = model
    # multi-hot: a repeated token counts once; W_U.T rows are W_U's columns
    a = memory_vector(params, [5, 5, 17], config=config)
    np.testing.assert_allclose(np.asarray(a), ref["tl_W_U"][:, [5, 17]].sum(1), rtol=0, atol=1e-7)  # measured 1.9e-9
    b = memory_vector(params, [42, 5], config=config, kind="embed")
    np.testing.assert_allclose(np.asarray(b), ref["tl_W_E"][[5, 42]].sum(0), rtol=0, atol=1e-7)  # 4.7e-9
    assert memory_vectors(params, [[1, 2], [3]], config=config).shape == (2, config.n_embd)


def test_layer_encoding(model):
    params, config = model
    enc = layer_encoding(params, [7, 9], config=config, bos_id=0)
    names = [f"blocks.{i}.hook_attn_out" for i in range(config.n_layer)]
    _, cache = run_with_cache(params, jnp.array([[0, 7, 9]]), config=config, names=names)
    np.testing.assert_allclose(np.asarray(enc), np.stack([cache[n][0, -1] for n in names]), rtol=0, atol=1e-7)  # 7.5e-9
    assert memory_vectors(params, [[7, 9]], config=config, kind="layer", bos_id=0).shape == (1, 3, config.n_embd)


class _Compiles:
    """Counts XLA compilations (any program, eager ops included) while active."""

    def __enter__(self):
        self.n = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, *_, **__):
        if event == "/jax/core/compile/backend_compile_duration":
            self.n += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)


@pytest.mark.parametrize("bos_id", [0, None])
def test_layer_memories_of_several_lengths_compile_once(model, bos_id):
    """Memories of 1..7 tokens run right-padded in one program and equal their own unpadded runs;
    other memories of other lengths (and another count) compile nothing more."""
    params, config = model
    names = [f"blocks.{i}.hook_attn_out" for i in range(config.n_layer)]

    def one_at_a_time(ids):  # the per-memory forward at its own shape [1, len (+1)]
        tokens = ([bos_id] if bos_id is not None else []) + list(ids)
        _, cache = run_with_cache(params, jnp.array([tokens]), config=config, names=names)
        return np.stack([cache[n][0, -1] for n in names])

    first = [[7], [3, 1, 4, 1, 5], [7, 9], [2, 6, 5, 3, 5, 8, 9], [11, 12, 13]]
    second = [[40, 41, 42, 43], [9, 9, 8, 8, 7, 7], [60]]
    with _Compiles() as c1:
        got1 = memory_vectors(params, first, config=config, kind="layer", bos_id=bos_id)
    with _Compiles() as c2:
        got2 = memory_vectors(params, second, config=config, kind="layer", bos_id=bos_id)
    assert c1.n <= 1 and c2.n == 0, (c1.n, c2.n)
    assert got1.shape == (5, config.n_layer, config.n_embd) and got2.shape == (3, config.n_layer, config.n_embd)
    for ids_list, got in ((first, got1), (second, got2)):
        for row, ids in enumerate(ids_list):
            np.testing.assert_allclose(np.asarray(got[row]), one_at_a_time(ids), atol=2e-7, rtol=0)  # measured 1.5e-8


@pytest.mark.parametrize("kind", ["unembed", "embed"])
def test_hot_memories_are_one_gather_for_any_count_and_lengths(model, ref, kind):
    """multi_hot @ W for every memory in one compiled call (distinct ids, repeats once): equal to the
    sum of the table's rows, and another count or other lengths in the same buckets compile nothing."""
    params, config = model
    table = ref["tl_W_U"].T if kind == "unembed" else ref["tl_W_E"]  # [V, D]
    first = [[5, 5, 17], [42], [1, 2, 3, 4, 5, 6, 7]]
    second = [[9, 8], [96, 0, 96], [3], [60, 61, 62]]
    memory_vectors(params, [[1]], config=config, kind=kind)  # the program for these buckets
    with _Compiles() as c:
        got1 = memory_vectors(params, first, config=config, kind=kind)
        got2 = memory_vectors(params, second, config=config, kind=kind)
    assert c.n == 0, c.n
    for ids_list, got in ((first, got1), (second, got2)):
        assert got.shape == (len(ids_list), config.n_embd)
        for row, ids in enumerate(ids_list):
            np.testing.assert_allclose(np.asarray(got[row]), table[sorted(set(ids))].sum(0), rtol=0, atol=2e-7)  # 1.4e-8


def test_chosen_positions(model):
    """Injection at the last position only leaves the earlier positions' logits untouched."""
    params, config = model
    tokens = jnp.array([[0, 4, 8, 15, 16]])
    m = memory_vector(params, [3], config=config)
    pos = np.array([False, False, False, False, True])
    out = inject_logits(params, tokens, m, config=config, layer=0, tau=5.0, positions=pos)
    base = forward(params, tokens, config=config)
    np.testing.assert_allclose(np.asarray(out[0, :4]), np.asarray(base[0, :4]), rtol=0, atol=1e-6)  # measured 0
    assert float(jnp.abs(out[0, 4] - base[0, 4]).max()) > 1e-3


@pytest.mark.parametrize("call,match", [
    # each message whole (the matches were a word or two: "empty memory", "memory kind", "head")
    (lambda p, c: memory_vector(p, [], config=c), r"memory of row 0: memory ids: expected a non-empty 1-D list of token ids, "
                                                  r"got shape \[0\] \(an empty memory carries nothing to inject\)$"),
    (lambda p, c: memory_vector(p, [3, 500], config=c), r"memory of row 0: memory ids: ids must lie in \[0, 97\), got 3..500$"),
    (lambda p, c: memory_vectors(p, [[1], []], config=c), r"memory of row 1: memory ids: expected a non-empty 1-D list of token ids, "
                                                          r"got shape \[0\] \(an empty memory carries nothing to inject\)$"),
    (lambda p, c: memory_vectors(p, [[1]], config=c, kind="bogus"),
     r"memory kind must be one of \('unembed', 'embed', 'layer'\), got 'bogus'$"),
    (lambda p, c: memory_vectors(p, [[1], [2] * 32], config=c, kind="layer", bos_id=0),
     "memory of row 1: 33 tokens with BOS, the model takes at most n_positions=32"),
    (lambda p, c: memory_vectors(p, [[1], [500]], config=c, kind="layer"),
     r"memory of row 1: memory ids: ids must lie in \[0, 97\), got 500..500$"),
    (lambda p, c: inject_logits(p, jnp.array([[0, 1]]), jnp.ones(64), config=c, layer=3, tau=1.0),
     r"layer: expected an int in \[0, 3\) \(the model has 3 blocks\), got 3$"),
    (lambda p, c: inject_logits(p, jnp.array([[0, 1]]), jnp.ones(64), config=c, layer=0, tau=1.0, head=4),
     r"head: expected an int in \[0, n_head\) with n_head given, got head=4, n_head=4$"),
])
def test_bad_input(model, call, match):
    params, config = model
    with pytest.raises(ValueError, match=match):
        call(params, config)


def test_head_top_tokens(model):
    params, config = model
    tokens = [0, 4, 8, 15]
    top = heads.head_top_tokens(params, tokens, config=config, k=5)
    assert top.ids.shape == (config.n_layer, config.n_head, 5)
    names = ["blocks.2.attn.hook_result"]
    _, cache = run_with_cache(params, jnp.array([tokens]), config=config, names=names)
    lg = cache[names[0]][0, -1, 1] @ params["lm_head"]["kernel"] + params["lm_head"]["bias"]
    np.testing.assert_array_equal(top.ids[2, 1], np.asarray(jax.lax.top_k(lg, 5)[1]))
    # any lens callable (e.g. a trained Attention Lens) replaces the logit lens
    fixed = heads.head_top_tokens(params, tokens, config=config, k=1,
                                  lens=lambda layer, x: jnp.zeros((x.shape[0], config.vocab_size)).at[:, 7].set(1.0))
    assert (fixed.ids == 7).all()
    assert heads.heads_with_tokens(fixed, [7]) == [(l, h) for l in range(3) for h in range(4)]
    with pytest.raises(ValueError, match=r"k: expected an int in 1..97, got 0$"):
        heads.head_top_tokens(params, tokens, config=config, k=0)
