"""Review findings (session 11) on the Attention Lens package: each test failed before its fix."""

import numpy as np
import pytest

from jaxinterp.lens import data, lenses, train


def _examples():
    return [np.array([5, 20, 7], np.int32), np.array([3, 4], np.int32), np.array([9, 1, 2, 8], np.int32)]


def test_a_pad_id_outside_the_vocabulary_does_not_change_training(tiny_processed):
    """Padding is masked, yet a pad id past the vocabulary (a tokenizer's added pad token) embedded as
    NaN, and NaN values times 0 attention weight made every loss and the whole lens NaN."""
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=8)
    runs = [train.train(params, cfg, lc, data.Batches(_examples(), 2, 8, pad_id=pad), tc, progress=False)
            for pad in (0, cfg.vocab_size)]
    assert np.isfinite(runs[1].losses).all()
    assert runs[1].losses == runs[0].losses
    for k in runs[0].lens:
        np.testing.assert_array_equal(runs[1].lens[k], runs[0].lens[k])


@pytest.mark.parametrize("bad_id", [97, 200, -3])
def test_token_ids_outside_the_vocabulary_are_refused_before_anything_is_written(tiny_processed, tmp_path, bad_id):
    """They trained to NaN losses and a NaN lens (checkpointed) without a word."""
    params, cfg = tiny_processed
    lc = lenses.lens_config_for(cfg, 1)
    ex = _examples() + [np.array([1, bad_id, 2], np.int32)]
    tc = train.TrainConfig(steps=2, batch_size=2, seq_len=8)
    with pytest.raises(ValueError, match=rf"batches: expected token ids in \[0, 97\).*got ids from {min(bad_id, 1)} "
                                         rf"to {max(bad_id, 20)}"):
        train.train(params, cfg, lc, data.Batches(ex, 2, 8), tc, ckpt_dir=tmp_path / "ck", progress=False)
    assert not (tmp_path / "ck").exists()
