"""GPT-2 as a pure-functional Flax module with TransformerLens hook points."""

from jaxinterp.transformer.gpt2 import PRESETS, GPT2Config, forward, init, run_with_cache
from jaxinterp.transformer.hooks import Intervention, hook_names, intervene
from jaxinterp.transformer.weights import load_gpt2, load_tokenizer, process_weights

__all__ = ["GPT2Config", "PRESETS", "forward", "init", "run_with_cache", "Intervention", "hook_names",
           "intervene", "load_gpt2", "load_tokenizer", "process_weights"]
