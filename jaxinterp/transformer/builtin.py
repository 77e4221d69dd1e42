"""The GPT-2s that come with jaxinterp, and which one a command uses when none is named.

The toy-world model (`jaxinterp/assets/toyworld/model`, trained by `jaxinterp toyworld`) is the
default of the lens and injection commands and of the demo; a source checkout also has the tiny
random model of the test fixtures, which the demo falls back to (its tokens mean nothing).
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
TOY_MODEL = ASSETS / "toyworld" / "model"
TOY_PROMPTS = ASSETS / "toyworld" / "prompts.csv"
TINY_GPT2 = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "tiny_gpt2"


def toy_model() -> Path | None:
    """The shipped toy-world model folder, or None when the package was installed without it."""
    return TOY_MODEL if (TOY_MODEL / "config.json").is_file() else None


def demo_model() -> tuple[Path, str]:
    """The model a demo section shows, and how to describe it: the toy model, else the tiny one."""
    if toy_model():
        return TOY_MODEL, "the shipped toy-world GPT-2 (trained by jaxinterp)"
    return TINY_GPT2, "the tiny random GPT-2 of tests/fixtures (its tokens mean nothing)"


def resolve_model(name: str | None) -> tuple[str, str | None]:
    """(model to load, a note to print when the toy model stands in for a missing --model)."""
    if name:
        return name, None
    if toy_model():
        return str(TOY_MODEL), f"no --model given: using the shipped toy model {TOY_MODEL}"
    raise ValueError(f"--model: expected a local Hugging Face GPT-2 folder or hub name; none given and no "
                     f"shipped toy model at {TOY_MODEL}")


def toy_two_hop_prompt() -> str | None:
    """The first held-out two-hop question of the toy world (its obscure sentence), if shipped."""
    if not TOY_PROMPTS.is_file():
        return None
    import csv

    with open(TOY_PROMPTS, newline="", encoding="utf-8") as f:
        return next(csv.DictReader(f))["obscure_sentence"]
