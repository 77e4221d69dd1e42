"""Review 11 findings on the GPT-2 core and memory injection, each failing on the code before its fix."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxinterp.inject.sweep import sweep
from jaxinterp.transformer import gpt2, load_gpt2

from conftest import TINY_GPT2


def test_float64_config_without_x64_is_refused(tiny_raw):
    """With jax_enable_x64 off every float64 array silently became float32 (a UserWarning at most):
    a float64 model ran in float32. Refused where the config is used, before anything is computed."""
    params, config = tiny_raw
    f64 = dataclasses.replace(config, dtype="float64")
    match = r"expected jax_enable_x64 on for float64 activations .*got it off"
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=match):
            load_gpt2(TINY_GPT2, dtype="float64")
        with pytest.raises(ValueError, match=match):
            gpt2.forward(params, np.zeros((1, 4), np.int32), config=f64)
        with pytest.raises(ValueError, match=match):
            gpt2.init(jax.random.PRNGKey(0), f64)
        with pytest.raises(ValueError, match=match):
            gpt2.unembed(params, np.zeros((1, config.n_embd), np.float32), config=f64)
        with pytest.raises(ValueError, match=match):
            sweep(params, [[0, 1, 2]], np.zeros((1, config.n_embd)), [0], [1.0], config=f64, answers=[3])


def test_float64_config_with_x64_computes_in_float64(gpt2_ref):
    """With x64 on, layer-norm statistics, attention scores and logits were still cast to float32:
    7.4e-8 off transformers' float64 logits. Now float64 throughout (2.2e-16 measured)."""
    with jax.enable_x64(True):
        params, config = load_gpt2(TINY_GPT2, dtype="float64")
        logits, cache = gpt2.run_with_cache(params, gpt2_ref["tokens"], config=config,
                                            names=("blocks.1.attn.hook_pattern", "blocks.2.ln2.hook_normalized"))
        assert logits.dtype == np.float64
        assert all(v.dtype == np.float64 for v in cache.values())
        np.testing.assert_allclose(np.asarray(logits), gpt2_ref["hf_logits"], atol=5e-15, rtol=0)  # was 1e-12


def _model_folder(tmp_path, state, extra=None):
    import shutil

    from safetensors.numpy import save_file

    out = tmp_path / "model"
    out.mkdir(parents=True)
    shutil.copy(TINY_GPT2 / "config.json", out / "config.json")
    save_file(state, str(out / "model.safetensors"))
    for name, tensors in (extra or {}).items():
        save_file(tensors, str(out / name))
    return out


def _state():
    from safetensors.numpy import load_file

    return load_file(str(TINY_GPT2 / "model.safetensors"))


def test_checkpoint_with_a_weight_twice_or_malformed_is_refused(tmp_path):
    """Malformed checkpoints that loaded silently: a tensor in two files (the last file's copy won), one
    weight under two names (with and without 'transformer.'; one dropped), a tied lm_head of any shape,
    integer weights (cast to float32)."""
    state = _state()
    wte = state["transformer.wte.weight"]
    cases = [
        (dict(state), {"model-00002.safetensors": {"transformer.wte.weight": np.zeros_like(wte)}},
         r"tensor 'transformer.wte.weight' is in both model-00002.safetensors and model.safetensors"),
        ({**state, "wte.weight": np.zeros_like(wte)}, None,
         r"tensors 'transformer.wte.weight' and 'wte.weight' are the same weight \(wte/embedding\)"),
        ({**state, "lm_head.weight": np.zeros((5, 3), np.float32)}, None,
         r"tensor 'lm_head.weight': expected shape \[97, 64\] \(tied to wte\), got \[5, 3\]"),
        ({**state, "transformer.h.0.ln_1.weight": np.ones(64, np.int32)}, None,
         r"tensor 'transformer.h.0.ln_1.weight': expected floating-point weights, got dtype int32"),
    ]
    for i, (st, extra, match) in enumerate(cases):
        with pytest.raises(ValueError, match=match):
            load_gpt2(_model_folder(tmp_path / str(i), st, extra))


def test_intervention_scale_and_masks_are_checked(tiny_raw):
    """A non-scalar scale broadcast into the activation ([P, 1]: a scale per position) or failed inside the
    trace ([2]: a TypeError); integer position/head indices were cast to bool ([3, 0, 0, 0] selected
    position 0, not 3)."""
    from jaxinterp.transformer import intervene

    params, config = tiny_raw
    tokens = np.zeros((1, 4), np.int32)
    vec = np.ones(config.n_embd, np.float32)
    for scale in (np.ones(2), np.ones((4, 1))):
        iv = intervene("blocks.0.hook_attn_out", vec, scale=scale)
        with pytest.raises(ValueError, match=rf"scale must be a scalar, got shape \{list(scale.shape)}"):
            gpt2.forward(params, tokens, config=config, interventions=[iv])
    with pytest.raises(ValueError, match=r"positions at 'blocks.0.hook_attn_out': expected a boolean mask .* got values \[3\]"):
        intervene("blocks.0.hook_attn_out", vec, positions=np.array([3, 0, 0, 0]))
    with pytest.raises(ValueError, match=r"heads at 'blocks.0.attn.hook_z': expected a boolean mask .* got values \[2\]"):
        intervene("blocks.0.attn.hook_z", mode="zero", heads=[2, 0, 0, 0])
    # 0/1 masks keep working, and mean what a boolean mask means
    a = gpt2.forward(params, tokens, config=config,
                     interventions=[intervene("blocks.0.hook_attn_out", vec, positions=np.array([0, 0, 0, 1]))])
    b = gpt2.forward(params, tokens, config=config,
                     interventions=[intervene("blocks.0.hook_attn_out", vec, positions=np.arange(4) == 3)])
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_injection_inputs_that_were_clamped_or_nan(tiny_processed):
    """A head read-out position past the prompt (jnp indexing clamped it to the last position), a BOS id
    outside the vocabulary for layer memories (the embedding gather clamped it), a NaN tau (every logit
    NaN) and a bool layer (True was layer 1 in a sweep) were accepted."""
    from jaxinterp.inject import heads
    from jaxinterp.inject.memory import inject_logits, layer_encodings

    params, config = tiny_processed
    tokens = np.array([0, 5, 6, 7], np.int32)
    for position in (4, -5, 1.0):
        with pytest.raises(ValueError, match=r"position: expected an index into the prompt's 4 tokens \(-4..3\)"):
            heads.head_top_tokens(params, tokens, config=config, k=2, position=position)
    top = heads.head_top_tokens(params, tokens, config=config, k=2, position=-4)
    assert top.ids.shape == (config.n_layer, config.n_head, 2)
    for bos in (97, -1):
        with pytest.raises(ValueError, match=rf"bos_id: expected a token id in \[0, 97\), got {bos}"):
            layer_encodings(params, [[5, 6]], config=config, bos_id=bos)
    with pytest.raises(ValueError, match="tau: expected a finite number, got nan"):
        inject_logits(params, tokens[None], np.ones(config.n_embd), config=config, layer=1, tau=float("nan"))
    with pytest.raises(ValueError, match=r"layer: expected an int in \[0, 3\).*got True"):
        inject_logits(params, tokens[None], np.ones(config.n_embd), config=config, layer=True, tau=1.0)
    with pytest.raises(ValueError, match="layers: layer True out of range"):
        sweep(params, [tokens], np.zeros((1, config.n_embd)), [True], [1.0], config=config, answers=[3])


def test_sweep_of_a_float64_config_computes_in_float64():
    """The sweep stacked every weight as float32 whatever the config: a float64 model (x64 on) was swept
    in float32, 5e-7 off its own float64 forward. Its taus, memories and probabilities were float32
    too (tau 0.1 was 0.1000000015, memories rounded: 1e-7 off), and `intervene` stored the scale as
    float32 (3.7e-9 in the logits): now the grid is float64 and equals one float64 run per cell."""
    from jaxinterp.inject.memory import inject_logits, memory_vectors

    with jax.enable_x64(True):
        params, config = load_gpt2(TINY_GPT2, dtype="float64", process_weights=True)
        rng = np.random.default_rng(0)
        prompts = [np.concatenate([[0], rng.integers(1, 97, size=n - 1)]).astype(np.int32) for n in (4, 9, 6)]
        answers = rng.integers(1, 97, size=3)
        mems = memory_vectors(params, [rng.integers(1, 97, size=k) for k in (1, 3, 2)], config=config)
        res = sweep(params, prompts, mems, None, [0.1, 7.5], config=config, answers=answers)
        assert res.p_after.dtype == res.taus.dtype == np.float64 and res.taus[0] == 0.1
        for i, tok in enumerate(prompts):
            p = jax.nn.softmax(gpt2.forward(params, tok[None], config=config)[0, -1])[answers[i]]
            np.testing.assert_allclose(res.p_before[i], p, rtol=1e-13)
            for li, layer in enumerate(res.layers):
                for ti, tau in enumerate(res.taus):
                    logits = inject_logits(params, tok[None], mems[i], config=config, layer=int(layer), tau=float(tau))
                    p = jax.nn.softmax(logits[0, -1])[answers[i]]
                    np.testing.assert_allclose(res.p_after[li, ti, i], p, rtol=1e-13)


def test_sweep_positions_must_be_integer_indices(tiny_processed):
    """`sweep` takes position indices while `injection` takes [P] boolean masks: a mask given to the sweep
    was read as indices (False, False, False, True -> positions 0, 0, 0, 1), and 2.7 was truncated to 2."""
    params, config = tiny_processed
    mem = np.ones((1, config.n_embd), np.float32)
    for pos in (np.array([False, False, False, True]), [2.7], [[3]]):
        with pytest.raises(ValueError, match="positions: row 0: expected a list of integer positions"):
            sweep(params, [[0, 5, 6, 7]], mem, [1], [5.0], config=config, answers=[3], positions=[pos])
    none = sweep(params, [[0, 5, 6, 7]], mem, [1], [5.0], config=config, answers=[3], positions=[[]])
    assert none.p_after[0, 0, 0] == pytest.approx(none.p_before[0], rel=1e-6)  # no position: no injection


def test_load_prompts_refuses_a_limit_below_one(tmp_path):
    """limit=-2 sliced rows[1:-1]: every row but the last two, silently; 0 said 'no data rows'."""
    from jaxinterp.inject.data import load_prompts

    path = tmp_path / "p.csv"
    rows = ["explicit_sentence,obscure_sentence,explicit_entity,answer"] + [f"e{i},o{i},m{i},a{i}" for i in range(5)]
    path.write_text("\n".join(rows) + "\n")
    assert len(load_prompts(path, limit=3).answer) == 3
    for limit in (-2, 0, 1.5):
        with pytest.raises(ValueError, match=rf"limit: expected a positive number of rows \(or None for all\), got {limit}"):
            load_prompts(path, limit=limit)


def test_sweep_refuses_a_memory_that_is_not_finite(tiny_processed):
    """A NaN in one memory gave NaN for every cell of that prompt (and NaN mean/median grids)."""
    params, config = tiny_processed
    mems = np.ones((2, config.n_embd), np.float32)
    mems[1, 3] = np.nan
    with pytest.raises(ValueError, match="memories: expected finite values, got NaN or inf in the memory of row 1"):
        sweep(params, [[0, 5, 6], [0, 7, 8]], mems, [1], [2.0], config=config, answers=[3, 4])
