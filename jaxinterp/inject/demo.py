"""Demo section: memory injection on the shipped toy model (or, without it, a random tiny GPT-2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxinterp.transformer.builtin import TOY_PROMPTS, toy_model


def section(out_dir, *, quick: bool = False):
    from jaxinterp import report
    from jaxinterp.inject import data as dt
    from jaxinterp.inject import heads, outputs
    from jaxinterp.inject.memory import memory_vectors
    from jaxinterp.inject.metrics import aggregate
    from jaxinterp.inject.sweep import DEFAULT_TAUS, sweep
    from jaxinterp.transformer import load_gpt2, load_tokenizer

    out = Path(out_dir) / "inject"
    model_dir, csv_path = toy_model(), TOY_PROMPTS
    if model_dir is None or not csv_path.is_file():
        return _random_section(out, quick=quick)
    params, config = load_gpt2(model_dir, process_weights=True)
    tok = load_tokenizer(model_dir)
    prompts = dt.load_prompts(csv_path, limit=24 if quick else None)
    enc = dt.encode(tok, prompts)
    taus = [1.0, 2.0, 4.0, 6.0, 8.0, 11.0, 15.0] if quick else list(DEFAULT_TAUS)
    mems = memory_vectors(params, enc.memories, config=config)
    res = sweep(params, enc.prompts, mems, None, taus, config=config, answers=enc.answers, explicit=enc.explicit)
    agg = aggregate(res)
    png = report.figure_png(outputs.heatmap(agg, res.layers, res.taus, "toy model, unembed memories"),
                            out / "heatmap.png")
    b = agg.best["median"]
    li, ti = list(res.layers).index(b.layer), list(res.taus).index(b.tau)
    rows = [[prompts.obscure[i], prompts.memory[i], prompts.answer[i], float(res.p_before[i]),
             float(res.p_after[li, ti, i]), float(res.p_explicit[i])] for i in range(min(8, len(prompts.answer)))]
    # Per-head reading of the first prompt: which heads carry the bridge entity's tokens.
    k = 10
    head_rows = []
    for label, toks in (("explicit", enc.explicit[0]), ("obscure", enc.prompts[0])):
        top = heads.head_top_tokens(params, toks, config=config, k=k)
        hits = heads.heads_with_tokens(top, enc.memories[0])
        head_rows.append([label, ", ".join(f"L{a}H{h}" for a, h in hits) or "none"])
    body = [
        report.paragraph(f"Shipped toy GPT-2 ({config.n_layer} layers), {len(prompts.answer)} two-hop prompts of "
                         f"{csv_path.name}: the explicit entity's tokens, multi-hot @ W_U.T, added with scale tau to "
                         "the attention output of one layer at every position. Percent increase of p(answer):"),
        report.img(png, "layer x tau heatmap"),
        report.table(["statistic", "best layer", "best tau", "% increase"],
                     [[s, v.layer, v.tau, v.value] for s, v in agg.best.items()]),
        report.paragraph(f"p(answer) before, after (layer {b.layer}, tau {b.tau:g}) and with the explicit prompt:"),
        report.table(["obscure prompt", "memory", "answer", "before", "after", "explicit"], rows),
        report.paragraph(f"Heads whose logit-lens top-{k} at the last position holds a memory token "
                         f"(first prompt, memory {prompts.memory[0]!r}):"),
        report.table(["prompt", "heads"], head_rows),
    ]
    return report.Section("Memory injection", "".join(body))


def _random_section(out: Path, *, quick: bool):
    """Without the toy model: the machinery on a random tiny GPT-2 (the numbers mean nothing)."""
    import jax

    from jaxinterp import report
    from jaxinterp.inject import outputs
    from jaxinterp.inject.memory import memory_vectors
    from jaxinterp.inject.metrics import aggregate
    from jaxinterp.inject.sweep import sweep
    from jaxinterp.transformer import GPT2Config, init

    config = GPT2Config(vocab_size=256, n_positions=32, n_embd=64, n_layer=4, n_head=4)
    params = init(jax.random.PRNGKey(0), config)
    rng = np.random.default_rng(0)
    count = 8 if quick else 16
    prompts = [np.concatenate([[0], rng.integers(1, 256, size=n)]) for n in rng.integers(5, 14, size=count)]
    mems = memory_vectors(params, [rng.integers(1, 256, size=2) for _ in prompts], config=config)
    taus = [1.0, 4.0] if quick else [1.0, 2.0, 4.0, 8.0]
    res = sweep(params, prompts, mems, None, taus, config=config, answers=rng.integers(1, 256, size=count))
    agg = aggregate(res)
    png = report.figure_png(outputs.heatmap(agg, res.layers, res.taus, "random tiny GPT-2"), out / "heatmap.png")
    return report.Section("Memory injection", report.paragraph(
        "No shipped toy model found: the sweep on a random tiny GPT-2 (shows the machinery only).")
        + report.img(png, "layer x tau heatmap"))
