"""Demo section: train a layer's lenses for a few steps on built-in text, then show each head's top
tokens beside the plain logit lens, and the loss curve and a layers x heads heatmap.

Uses the built-in toy model (jaxinterp/assets/toyworld/model) when it is shipped, else the tiny random
test GPT-2 (tests/fixtures/tiny_gpt2), whose tokens mean nothing: the section then shows the machinery.
"""

from __future__ import annotations

from pathlib import Path

from jaxinterp.transformer.builtin import TOY_MODEL, demo_model, toy_two_hop_prompt



def _texts(tokenizer, model: Path, n: int) -> list[str]:
    """Built-in text: the toy world's corpus when shipped beside the model, else seeded vocabulary words."""
    import numpy as np

    for name in ("corpus.txt", "train.txt"):
        p = model.parent / name
        if p.is_file():
            lines = [t for t in p.read_text(encoding="utf-8").splitlines() if t.strip()]
            if lines:
                return lines[:n]
    vocab = [w for w in tokenizer.get_vocab() if not w.startswith("<")]
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(vocab, rng.integers(3, 16))) for _ in range(n)]


def section(out_dir, *, quick: bool = False, model: str | Path | None = None, layer: int | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from jaxinterp import report
    from jaxinterp.lens import data, lenses, readout, train
    from jaxinterp.transformer import load_gpt2, load_tokenizer

    model, described = (Path(model), str(model)) if model is not None else demo_model()
    params, config = load_gpt2(model, process_weights=True)
    tok = load_tokenizer(model)
    layer = config.n_layer // 2 if layer is None else layer
    lc = lenses.lens_config_for(config, layer)
    seq = min(32, config.n_positions)
    steps = 20 if quick else 100
    ex = data.tokenize(_texts(tok, model, 400), tok, seq)
    batches = data.Batches(ex, 8, seq, pad_id=tok.pad_token_id or 0)
    cfg = train.TrainConfig(steps=steps, batch_size=8, seq_len=seq, save_every=steps)
    res = train.train(params, config, lc, batches, cfg, progress=False)

    prompt = toy_two_hop_prompt() if Path(model) == TOY_MODEL else None
    if prompt is not None:  # the toy world: a held-out two-hop question, whose bridge heads should carry
        prompt_ids = list(tok(prompt)["input_ids"])
    else:
        prompt_ids = list(ex[0][: max(2, len(ex[0]) - 1)])
        prompt = tok.decode(prompt_ids)
    k = min(8, config.vocab_size)
    t = readout.head_topk(params, config, res.lens, lc, prompt_ids, k=min(50, config.vocab_size))
    lens_tok = readout.decode_ids(tok, t.lens_ids[:, :k])
    logit_tok = readout.decode_ids(tok, t.logit_ids[:, :k])
    share = readout.overlap_share(t.lens_ids, t.logit_ids)
    rows = readout.rows_for_table(layer, lens_tok, logit_tok, share)

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(res.losses) + 1), res.losses)
    ax.set_xlabel("step")
    ax.set_ylabel("KL(model || lens), last token")
    ax.set_title(f"layer {layer}: {config.n_head} lenses, Adam lr 1e-3")
    curve = report.figure_png(fig, Path(out_dir) / "lens_loss.png")
    heat = report.figure_png(readout.heatmap({"share of lens top-50 also in logit-lens top-50": share[None]},
                                             title="how far each head's lens moved from the logit lens",
                                             layers=[layer]), Path(out_dir) / "lens_heads.png")
    html = (report.paragraph(f"Model: {described} ({config.n_layer} layers, {config.n_head} heads, vocab "
                             f"{config.vocab_size}); the lenses of layer {layer} trained {steps} steps of batch 8 "
                             f"on built-in text (KL from {res.losses[0]:.4f} to {res.losses[-1]:.4f}).")
            + report.img(curve, "lens loss", width=480)
            + report.paragraph(f"Prompt {prompt!r}: each head's top-{k} tokens under its lens and under the "
                               f"plain logit lens (x_h @ W_U + b_U).")
            + report.table(["layer", "head", "lens", "logit lens", "top-50 overlap"], rows)
            + report.img(heat, "lens heatmap", width=520))
    return report.Section("Attention Lens", html)
