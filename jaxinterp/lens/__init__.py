"""Attention Lens: per-head lenses from GPT-2 attention-head outputs to the vocabulary.

`lenses` (kinds, init, terms), `objective` (rows, KL loss), `train` (steps, driver), `data` (text
batches), `io` (save/load, PyTorch import), `readout` (top-k tables, heatmaps).
"""
