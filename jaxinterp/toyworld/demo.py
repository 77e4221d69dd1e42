"""Demo section: the toy world, the built-in model's accuracy, and its answers to a few prompts.

Reads the shipped model and its stated figures (jaxinterp/assets/toyworld); the live part is one
forward over a handful of prompts (single-hop, held-out two-hop, explicit form), showing the top
next tokens, so the reader sees what "held-out composition" means on this model.
"""

from __future__ import annotations

import json
from pathlib import Path


def section(out_dir, *, quick: bool = False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxinterp import report
    from jaxinterp.toyworld import EVAL_JSON, MODEL_DIR, default_model
    from jaxinterp.toyworld import tokenizer as toktools
    from jaxinterp.toyworld.world import (WorldConfig, build_world, explicit_prompts, fact_prompts,
                                          two_hop_prompts)
    from jaxinterp.transformer import forward, load_gpt2, load_tokenizer

    if default_model() is None:
        raise ValueError(f"the built-in toy-world model is not installed at {MODEL_DIR}")
    record = json.loads((MODEL_DIR.parent / "train.json").read_text())
    stated = json.loads(EVAL_JSON.read_text())
    world = build_world(WorldConfig(**record["world"]))
    params, config = load_gpt2(MODEL_DIR)
    tok = load_tokenizer(MODEL_DIR)

    # A few prompts of each kind, answered live.
    th = next(t for t in world.two_hops if not t.trained and t.relation1 == "birthplace")
    fact1 = next(f for f in world.facts if f.relation == "birthplace" and f.subject == th.subject)
    cases = [("single hop", fact_prompts(fact1)[0], fact1.object),
             ("explicit (bridge named)", explicit_prompts(th)[0], th.answer),
             ("held-out two hop", two_hop_prompts(th)[0], th.answer)]
    rows = []
    for label, prompt, answer in cases:
        ids = toktools.encode(tok, prompt)
        logits = np.asarray(forward(params, np.array([ids], np.int32), config=config))[0, -1]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:3]
        first = toktools.answer_ids(tok, answer)[0]
        rows.append([label, prompt, answer, f"{p[first]:.3f}",
                     ", ".join(f"{tok.convert_ids_to_tokens(int(t)).replace('Ġ', ' ')!r} {p[t]:.2f}" for t in top)])

    main = [r for r in stated["rows"] if r["kind"] == "all"]
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.barh([r["group"] for r in main], [r["greedy"] for r in main], color="#4c72b0", label="greedy")
    ax.barh([r["group"] for r in main], [r["candidate_choice"] or 0 for r in main], height=0.3, color="#dd8452",
            label="candidate choice")
    ax.axvline(np.mean([r["chance"] for r in main]), color="gray", ls=":", label="chance (mean)")
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()

    n_facts = len(world.facts)
    held = sum(not t.trained for t in world.two_hops)
    plural = {"person": "people", "city": "cities", "country": "countries", "company": "companies"}
    counts = ", ".join(f"{len(v)} {plural.get(k, k + 's')}" for k, v in world.entities.items())
    body = (f"<p>A seeded world of {counts}: "
            f"{n_facts} single-hop facts, {len(world.two_hops)} two-hop compositions of which {held} were never "
            f"in the training text. The model: GPT-2, {config.n_layer} layers, d_model {config.n_embd}, "
            f"{config.n_head} heads, vocabulary {config.vocab_size} (byte-level BPE), {record['n_params']:,} "
            f"parameters, trained {record['steps_done']} steps on the CPU "
            f"(<code>jaxinterp toyworld train</code>).</p>"
            + report.img(report.figure_png(fig, Path(out_dir) / "toyworld_accuracy.png"), "accuracy by prompt group")
            + report.table(["group", "kind", "prompts", "greedy", "candidate choice", "chance"],
                           [[r["group"], r["kind"], r["prompts"], f"{r['greedy']:.3f}",
                             "-" if r["candidate_choice"] is None else f"{r['candidate_choice']:.3f}",
                             f"{r['chance']:.3f}"] for r in stated["rows"]])
            + "<p>Live answers (top 3 next tokens):</p>"
            + report.table(["prompt kind", "prompt", "answer", "p(answer's first token)", "top 3"],
                           rows))
    return report.Section("Built-in model: a GPT-2 trained on a synthetic two-hop world", body)
