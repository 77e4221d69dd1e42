"""A synthetic two-hop world and the small GPT-2 jaxinterp trains on it (the built-in model).

`world` builds the seeded world and its sentences, `tokenizer` trains the BPE tokenizer, `train`
the model (optax, orbax checkpoints), `evaluate` the accuracy tables. `MODEL_DIR` is the shipped
model folder (`load_gpt2(MODEL_DIR)`, `load_tokenizer(MODEL_DIR)`), `PROMPTS_CSV` its prompt set.
"""

from jaxinterp.toyworld.world import (  # noqa: F401
    COMPOSITIONS, RELATIONS, Fact, PromptRow, TwoHop, World, WorldConfig, build_world, prompt_rows,
    training_sentences)

from jaxinterp.transformer.builtin import TOY_MODEL as MODEL_DIR  # noqa: E402
from jaxinterp.transformer.builtin import TOY_PROMPTS as PROMPTS_CSV  # noqa: E402
from jaxinterp.transformer.builtin import toy_model as default_model  # noqa: E402,F401

ASSETS = MODEL_DIR.parent
EVAL_JSON = ASSETS / "eval.json"
