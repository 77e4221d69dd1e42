"""GPT-2 as a pure-functional Flax module with TransformerLens hook points.

The names below load on first use (PEP 562), so light submodules (`builtin`, used by the CLI's
argument parsers) import without flax and jax.
"""

import importlib

_EXPORTS = {
    "GPT2Config": "gpt2", "PRESETS": "gpt2", "forward": "gpt2", "init": "gpt2", "run_with_cache": "gpt2",
    "Intervention": "hooks", "hook_names": "hooks", "intervene": "hooks",
    "load_gpt2": "weights", "load_tokenizer": "weights", "process_weights": "weights",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
