"""The GPT-2 section of `jaxinterp demo`: attention patterns of every head on one prompt, and the
top tokens that each head's output promotes through the unembedding (the logit lens per head)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxinterp.transformer.builtin import TOY_MODEL, demo_model, toy_two_hop_prompt


def _default_prompt(path: Path, tok) -> str:
    """A two-hop prompt of the toy world (its first held-out composition), or tiny-model words."""
    if path == TOY_MODEL and toy_two_hop_prompt():
        return toy_two_hop_prompt()
    return " ".join(sorted(w for w in tok.get_vocab() if w.isalnum())[:8])


def head_logit_lens(params, result_last: np.ndarray, k: int) -> np.ndarray:
    """result_last [L, H, D] (each head's output at one position) -> top-k token ids [L, H, k]
    of result @ W_U, with processed weights (W_U after ln_final folding): the head's direct effect
    on the logits. Not + b_U: the bias is no head's output, and it is larger than one head's
    contribution (on the toy model its std is 0.79, a head's 0.07-0.19), so every head's list was
    mostly b_U's own top tokens (' is', ' was', ' in')."""
    logits = result_last @ np.asarray(params["lm_head"]["kernel"])
    return np.argsort(-logits, axis=-1)[..., :k]


def section(out_dir: Path, *, quick: bool = False, model: str | Path | None = None, prompt: str | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxinterp import report
    from jaxinterp.transformer import load_gpt2, load_tokenizer, run_with_cache

    path, described = (Path(model), str(model)) if model else demo_model()
    tok = load_tokenizer(path)
    if prompt is None:
        prompt = _default_prompt(path, tok)
    ids = tok(prompt)["input_ids"]
    if not ids:  # before the weights are read (an empty prompt was an IndexError in the plots)
        raise ValueError(f"prompt: expected text of at least one token, got {prompt!r}")
    params, config = load_gpt2(path, process_weights=True)
    ids = ids[: config.n_positions]
    names = [f"blocks.{l}.attn.{h}" for l in range(config.n_layer) for h in ("hook_pattern", "hook_result")]
    _, cache = run_with_cache(params, np.asarray([ids], np.int32), config=config, names=names)
    labels = [tok.decode([i]) for i in ids]

    L, H = config.n_layer, config.n_head
    fig, axes = plt.subplots(L, H, figsize=(2.0 * H, 2.0 * L), squeeze=False)
    for l in range(L):
        pattern = np.asarray(cache[f"blocks.{l}.attn.hook_pattern"][0])  # (H, Q, K)
        for h in range(H):
            ax = axes[l, h]
            ax.imshow(pattern[h], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"L{l}H{h}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
            if h == 0:  # token labels on the first column (queries) and the last row (keys)
                ax.set_yticks(range(len(labels)), labels, fontsize=6)
            if l == L - 1:
                ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
    fig.suptitle(f"attention pattern (query rows, key columns): {prompt!r}", fontsize=9)
    png = report.figure_png(fig, out_dir / "gpt2_attention_patterns.png")

    result_last = np.stack([np.asarray(cache[f"blocks.{l}.attn.hook_result"][0, -1]) for l in range(L)])  # (L, H, D)
    top = head_logit_lens(params, result_last, k=5)
    rows = [[f"L{l}H{h}"] + [" ".join(repr(tok.decode([int(t)])) for t in top[l, h])] for l in range(L) for h in range(H)]
    body = (report.paragraph(f"Model: {described}; prompt {prompt!r} ({len(ids)} tokens: {labels}).")
            + report.img(png, "attention patterns")
            + report.paragraph("Logit lens per head: the five tokens each head's output at the last position "
                               "promotes most directly (head result @ W_U, TransformerLens-processed weights; without b_U, "
                               "which is the same for every head and would outweigh it).")
            + report.table(["head", "top tokens"], rows))
    return report.Section("GPT-2: attention patterns and the logit lens per head", body)
