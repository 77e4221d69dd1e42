"""Lens files: LensA state dicts saved by real torch (.pt, Lightning .ckpt) read without torch give
torch's top-k tokens; jaxinterp's own files round-trip; lenses that do not fit the model are refused."""

import re

import numpy as np
import pytest

from jaxinterp.lens import io, lenses, readout

from conftest import FIXTURES


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(FIXTURES / "lens_tiny_expected.npz"))


@pytest.mark.parametrize("name", ["lens_tiny_layer1.pt", "lens_tiny_layer1.ckpt"])
def test_torch_lens_gives_torchs_top_k(tiny_processed, gpt2_ref, expected, name):
    params, cfg = tiny_processed
    lens, lc = io.load_lens(FIXTURES / name, model_config=cfg, layer=1)
    assert lc == lenses.LensConfig(1, 4, 64, 97, "lensa")
    t = readout.head_topk(params, cfg, lens, lc, gpt2_ref["tokens"][0].tolist(), k=10, chunk=32)
    np.testing.assert_array_equal(t.lens_ids, expected["topk_ids"])
    np.testing.assert_array_equal(t.logit_ids, expected["logit_topk_ids"])
    assert (t.lens_ids != t.logit_ids).any()  # the fixture lens is not the logit lens
    assert np.all(np.diff(t.lens_logprob, axis=1) <= 0) and np.all(t.lens_logprob < 0)
    # torch's values too, up to each row's constant (measured 1.8e-7): the ids alone would pass
    # any monotone distortion of the scores
    lp, tv = np.asarray(t.lens_logprob, np.float64), expected["topk_values"].astype(np.float64)
    np.testing.assert_allclose(lp - lp[:, :1], tv - tv[:, :1], rtol=0, atol=1e-6)


def test_own_format_round_trips(tmp_path):
    lens, lc = io.load_lens(FIXTURES / "lens_tiny_layer1.pt", layer=1)
    io.save_lens(tmp_path / "l.safetensors", lens, lc)
    back, bc = io.load_lens(tmp_path / "l.safetensors")
    assert bc == lc
    np.testing.assert_array_equal(back["W"], lens["W"])


@pytest.mark.parametrize("mutate,match", [
    # each message whole (the matches were a few words: "layer 5 out of range", "vocab 50257, but ...")
    (lambda c: c.__class__(1, 4, 64, 50257),
     "lens file: made for heads 4, d_model 64, vocab 50257, but the model has heads 4, d_model 64, vocab 97$"),
    (lambda c: c.__class__(1, 4, 32, 97),
     "lens file: made for heads 4, d_model 32, vocab 97, but the model has heads 4, d_model 64, vocab 97$"),
    (lambda c: c.__class__(5, 4, 64, 97), "lens file: layer 5 out of range, the model has 3 blocks$"),
])
def test_lens_that_does_not_fit_the_model(tiny_processed, mutate, match):
    with pytest.raises(ValueError, match=match):
        io.check_fits(mutate(lenses.LensConfig(1, 4, 64, 97)), tiny_processed[1])


def _zeros(config):
    return {k: np.zeros(s, np.float32) for k, s in config.shapes().items()}


FITS = lenses.LensConfig(1, 4, 64, 97)
VOCAB50, WIDTH32 = lenses.LensConfig(1, 4, 64, 50), lenses.LensConfig(1, 4, 32, 97)


@pytest.mark.parametrize("lens,config,kw,match", [
    # a lens for another vocabulary of the same width used to run and return ids of that vocabulary
    (_zeros(VOCAB50), VOCAB50, {}, "vocab 50, but the model has .*vocab 97"),
    (_zeros(WIDTH32), WIDTH32, {}, "d_model 32, .*but the model has .*d_model 64"),
    (_zeros(VOCAB50), FITS, {}, r"lens params 'W': expected shape \[4, 64, 97\] .*got \[4, 64, 50\]"),
    (_zeros(FITS), lenses.LensConfig(5, 4, 64, 97), {}, "layer 5 out of range, the model has 3 blocks"),
    (_zeros(FITS), FITS, {"ids": []}, "prompt: expected at least one token"),
    # an id past the vocabulary gave ids [0, 1, 2] with NaN scores; a negative one wrapped to id 96
    (_zeros(FITS), FITS, {"ids": [5, 200]}, r"prompt: expected integer token ids in \[0, 97\), got \[200\]"),
    (_zeros(FITS), FITS, {"ids": [5, -1]}, r"prompt: expected integer token ids in \[0, 97\), got \[-1\]"),
    (_zeros(FITS), FITS, {"k": 98}, r"k: expected 1 <= k <= 97, got 98"),
    (_zeros(FITS), FITS, {"chunk": 0}, "chunk: expected a positive integer .*got 0"),
])
def test_head_topk_refuses_before_computing(tiny_processed, monkeypatch, lens, config, kw, match):
    monkeypatch.setattr(readout, "_head_topk_jit", lambda: pytest.fail("computed before the bad input was refused"))
    params, cfg = tiny_processed
    kw = {"ids": [1, 2, 3], **kw}
    with pytest.raises(ValueError, match=match):
        readout.head_topk(params, cfg, lens, config, kw.pop("ids"), **kw)


@pytest.mark.parametrize("config,meta,match", [
    (VOCAB50, None, "vocab 50, but the model has .*vocab 97"),
    (WIDTH32, None, "d_model 32, .*but the model has .*d_model 64"),
    (lenses.LensConfig(4, 4, 64, 97), None, "layer 4 out of range"),
    # metadata that fits, tensors that do not: refused from the header's shapes
    (VOCAB50, FITS, r"lens params 'W': expected shape \[4, 64, 97\] .*got \[4, 64, 50\]"),
])
def test_own_lens_file_that_does_not_fit(tmp_path, tiny_processed, config, meta, match):
    if meta is None:
        path = io.save_lens(tmp_path / "l.safetensors", _zeros(config), config)
    else:  # a file whose metadata and tensors disagree (save_lens refuses to write one)
        import json

        from safetensors.numpy import save_file

        path = tmp_path / "l.safetensors"
        save_file(_zeros(config), str(path), metadata={"lens_config": json.dumps(meta.__dict__), "extra": "{}"})
    with pytest.raises(ValueError, match=match):
        io.load_lens(path, model_config=tiny_processed[1])


def test_bad_lens_files(tmp_path, tiny_processed):
    # each message whole (the matches were a few words: "does not exist", "linears.1 has weight")
    with pytest.raises(ValueError, match="layer: a PyTorch lens file does not record its layer; pass the layer it "
                                         "was trained on$"):
        io.load_lens(FIXTURES / "lens_tiny_layer1.pt")
    with pytest.raises(ValueError, match=re.escape(f"lens: {tmp_path / 'nope.pt'} does not exist") + "$"):
        io.load_lens(tmp_path / "nope.pt", layer=1)
    with pytest.raises(ValueError, match=r"lens: no `linears.<head>.weight` tensors in the state dict \(first names: "
                                         r"\['model.wte.weight'\]\)$"):
        io.from_torch_state_dict({"model.wte.weight": np.zeros((3, 2))}, layer=0)
    bad = {"linears.0.weight": np.zeros((97, 64)), "linears.0.bias": np.zeros(97),
           "linears.1.weight": np.zeros((97, 32)), "linears.1.bias": np.zeros(97)}
    with pytest.raises(ValueError, match=r"lens: linears.1 has weight \[97, 32\] and bias \[97\], expected \[97, 64\] "
                                         r"and \[97\] like head 0$"):
        io.from_torch_state_dict(bad, layer=0)
    with pytest.raises(ValueError, match="prompt: 33 tokens is longer than the model's context of 32 positions$"):
        readout.check_prompt([1] * 33, tiny_processed[1])


def test_head_topk_pads_prompts_compiles_once_and_reads_the_last_real_token(tiny_processed):
    """Prompts of 3, 6 and 8 tokens share one compiled shape (padded to 8 outside jit; they compiled
    once per length), and each gives the top-k of full logits at its own last token, unpadded."""
    import jax

    from jaxinterp.transformer import gpt2

    params, cfg = tiny_processed
    lens, lc = io.load_lens(FIXTURES / "lens_tiny_layer1.pt", model_config=cfg, layer=1)
    W_U, b_U = (np.asarray(a) for a in lenses.unembedding(params, cfg))
    rng = np.random.default_rng(0)
    sizes = []
    for n in (3, 6, 8):
        ids = rng.integers(1, 97, n).tolist()
        t = readout.head_topk(params, cfg, lens, lc, ids, k=5, chunk=32)
        name = "blocks.1.attn.hook_result"
        _, cache = gpt2.run_with_cache(params, np.asarray([ids], np.int32), config=cfg, names=[name])
        x = np.asarray(cache[name])[0, -1]  # (H, D) at the last token of the unpadded prompt
        for logits, got_ids, got_lp in ((np.einsum("hd,hdv->hv", x, lens["W"]) + lens["b"], t.lens_ids, t.lens_logprob),
                                        (x @ W_U + b_U, t.logit_ids, t.logit_logprob)):
            lp = np.asarray(jax.nn.log_softmax(logits, -1))
            np.testing.assert_array_equal(got_ids, np.argsort(-lp, axis=-1, kind="stable")[:, :5])
            np.testing.assert_allclose(got_lp, np.take_along_axis(lp, got_ids, -1), rtol=0, atol=1e-5)
        sizes.append(readout._head_topk_jit()._cache_size())
    assert sizes[1:] == sizes[:1] * 2  # no compile after the first prompt