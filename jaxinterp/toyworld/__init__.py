"""A synthetic two-hop world and the small GPT-2 jaxinterp trains on it (the built-in model).

`world` builds the seeded world and its sentences, `tokenizer` trains the BPE tokenizer, `train`
the model (optax, orbax checkpoints), `evaluate` the accuracy tables. `MODEL_DIR` is the shipped
model folder (`load_gpt2(MODEL_DIR)`, `load_tokenizer(MODEL_DIR)`), `PROMPTS_CSV` its prompt set.
"""

from pathlib import Path

from jaxinterp.toyworld.world import (  # noqa: F401
    COMPOSITIONS, RELATIONS, Fact, PromptRow, TwoHop, World, WorldConfig, build_world, prompt_rows,
    training_sentences)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toyworld"
MODEL_DIR = ASSETS / "model"
PROMPTS_CSV = ASSETS / "prompts.csv"
EVAL_JSON = ASSETS / "eval.json"


def default_model() -> Path | None:
    """The shipped model folder, or None when the package was installed without it."""
    return MODEL_DIR if (MODEL_DIR / "config.json").exists() else None
