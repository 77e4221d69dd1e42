"""Memory injection and Attention Lens on the built-in model: does injecting the bridge repair
held-out two-hop prompts, and which heads carry the bridge entity?

    python -m jaxinterp.toyworld.analysis --out DIR [--words top_word_types.csv] [--lens-layers 2 3]

1. Injection sweep (jaxinterp.inject.sweep) over every layer x tau 1..15 on the held-out prompt set
   of the model's own world (for the shipped model, its prompts.csv; or --prompts): the memory is the bridge entity (unembedding memory, as the paper).
   Baselines swept the same way: a random other entity of the bridge's kind (a wrong memory of the
   right type) and, when a part-of-speech word list is given, random words (the paper's baseline).
2. Attention Lens (jaxinterp.lens) trained on one or two layers over the world's training text;
   then, on each held-out obscure prompt, whether the bridge entity's first token is among each
   head's top-k tokens, through the trained lens and through the plain logit lens; the same on the
   explicit prompts as a contrast. A head that carries the bridge on obscure prompts is where the
   model composes.

Writes DIR/summary.json, DIR/heatmap_*.png (one per memory swept) and DIR/summary.md, the markdown
tables it prints (and DIR/prompts.csv, the prompts used, when --prompts is not given). The files a run
writes are listed in DIR/analysis_manifest.json; a later run into DIR removes the listed files it does
not write again (never one it reads, nor one changed since).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from jaxinterp.cliargs import output_folder, positive_int


# The files a run wrote (jaxinterp.manifest): a re-run into the folder with fewer sweeps (--no-inject,
# no --words) left the earlier run's heatmap_*.png beside a summary that no longer had them.
MANIFEST = "analysis_manifest.json"

# the part-of-speech columns of the paper's word list swept as random-word baselines
BASELINE_WORD_TYPES = ("Nouns", "Verbs", "Adjectives")


def load_baseline_words(words_csv) -> dict[str, list[str]]:
    """The word list's columns for the random-word baselines; ValueError naming a missing or empty one."""
    from jaxinterp.inject import data as idata

    words = idata.load_top_words(words_csv)
    for wt in BASELINE_WORD_TYPES:
        idata.random_words(words, wt, 0)
    return words


def _sweep_summary(res, name: str) -> dict:
    # the sweep's own statistics (inject.metrics): from log p, so an answer whose float32 p underflows
    # before and after injection is not read as -100% (a floor of 1e-12 on p_before did that)
    from jaxinterp.inject import metrics

    agg = metrics.aggregate(res, trim=0.1)
    s = {"mean": agg.mean, "median": agg.median, "trimmed_mean": agg.trimmed_mean}  # each [nL, nT]
    li, ti = np.unravel_index(np.argmax(s["median"]), s["median"].shape)
    best_after = res.p_after[li, ti]
    return {"memory": name, "p_before_mean": float(res.p_before.mean()),
            "p_explicit_mean": None if res.p_explicit is None else float(res.p_explicit.mean()),
            "best_layer": int(res.layers[li]), "best_tau": float(res.taus[ti]),
            "best_median_pct": float(s["median"][li, ti]), "best_mean_pct": float(s["mean"][li, ti]),
            "best_trimmed_mean_pct": float(s["trimmed_mean"][li, ti]),
            "best_p_after_mean": float(best_after.mean()),
            "best_share_improved": float((best_after > res.p_before).mean()),
            # the grids' axes: the values swept, which the tables and heatmaps label and look up by
            "layers": [int(L) for L in res.layers], "taus": [float(t) for t in res.taus],
            "median_pct_grid": np.round(s["median"], 2).tolist(),
            "p_after_mean_grid": np.round(res.p_after.mean(-1), 4).tolist()}


def model_world(model_dir: str | Path):
    """The world a toy-world model was trained on: from the train.json beside its model folder (a
    `toyworld train` run folder holds model/ and train.json, as the shipped assets do)."""
    from jaxinterp.toyworld.world import build_world, run_world_config, train_json_path

    config = run_world_config(model_dir)
    if config is None:
        raise ValueError(f"model: expected a toy-world model folder with train.json beside it (its world), "
                         f"found no {train_json_path(model_dir)} recording one")
    return build_world(config)


def _check_memories(memories, world, where) -> None:
    """Every memory (bridge) must be an entity of the model's world: its baselines draw from its kind."""
    known = {n for names in world.entities.values() for n in names}
    unknown = [m for m in memories if m not in known]
    if unknown:
        raise ValueError(f"prompts: expected memories that are entities of the model's world, got "
                         f"{sorted(set(unknown))[:5]} in {where} (prompts of another world?)")
    kind_of = {n: k for k, names in world.entities.items() for n in names}
    alone = sorted({kind_of[m] for m in memories if len(world.entities[kind_of[m]]) < 2})
    if alone:  # the controls draw another entity of the bridge's kind (numpy's 'high <= 0' otherwise)
        raise ValueError(f"prompts: expected at least 2 entities of each bridge's kind (the random-entity "
                         f"controls draw another), got 1 {alone[0]} in the model's world ({where})")


def injection(params, config, tok, prompts_csv, *, world=None, words_csv=None, seed: int = 0) -> tuple[dict, dict]:
    """`world`: the model's (`model_world`); default the shipped model's."""
    from jaxinterp.inject import data as idata
    from jaxinterp.inject.memory import memory_vectors
    from jaxinterp.inject.sweep import sweep
    from jaxinterp.toyworld import MODEL_DIR

    ps = idata.load_prompts(prompts_csv)
    world = model_world(MODEL_DIR) if world is None else world
    _check_memories(ps.memory, world, prompts_csv)
    kind_of = {n: k for k, names in world.entities.items() for n in names}
    rng = np.random.default_rng(seed)
    wrong = []
    for m in ps.memory:
        pool = [n for n in world.entities[kind_of[m]] if n != m]
        wrong.append(pool[rng.integers(len(pool))])
    memories = {"bridge entity": ps.memory, "random entity of the bridge's kind": wrong}
    if words_csv:
        words = load_baseline_words(words_csv)
        for wt in BASELINE_WORD_TYPES:
            memories[f"random {wt.lower()} (paper's baseline)"] = idata.random_words(words, wt, len(ps.memory), seed=seed)
    summaries, raw = [], {}
    for name, mem in memories.items():
        enc = idata.encode(tok, ps, memories=mem)
        vecs = memory_vectors(params, enc.memories, config=config, kind="unembed")
        res = sweep(params, enc.prompts, vecs, config=config, answers=enc.answers, explicit=enc.explicit)
        summaries.append(_sweep_summary(res, name))
        raw[name] = res
    return {"prompts": len(ps.memory), "sweeps": summaries}, raw


def lens_heads(params, config, tok, prompts_csv, corpus: list[str], layers, *, world, steps: int = 300, k: int = 10,
               seed: int = 0) -> dict:
    """Per head: the share of prompts whose bridge entity (its first token, with or without the
    leading space) is among the head's top-k tokens, through a trained lens and the logit lens.
    Controls: a random other entity of the bridge's kind (a head that promotes, say, cities in
    general scores about as high on it), and the answer itself."""
    from jaxinterp.inject import data as idata
    from jaxinterp.lens import data as ldata, lenses, objective, readout, train as ltrain
    from jaxinterp.toyworld import tokenizer as toktools

    ps = idata.load_prompts(prompts_csv)
    _check_memories(ps.memory, world, prompts_csv)
    kind_of = {n: kd for kd, names in world.entities.items() for n in names}
    rng = np.random.default_rng(seed + 1)
    control = []
    for m in ps.memory:
        pool = [n for n in world.entities[kind_of[m]] if n != m]
        control.append(pool[rng.integers(len(pool))])

    def first_ids(name):
        return {toktools.answer_ids(tok, name)[0], toktools.encode(tok, name, bos=False)[0]}

    examples = [np.asarray(toktools.encode(tok, s), np.int32) for s in corpus]
    seq = max(len(e) for e in examples)
    out = {}
    for L in layers:
        lc = lenses.lens_config_for(config, L)
        batches = ldata.Batches(examples, 16, seq, pad_id=tok.pad_token_id or 0, seed=seed)
        cfg = ltrain.TrainConfig(steps=steps, batch_size=16, seq_len=seq, lr=1e-3, save_every=steps, seed=seed)
        res = ltrain.train(params, config, lc, batches, cfg, objective=objective.Objective(mode="all"), progress=False)
        table = {}
        for form, sentences in (("obscure", ps.obscure), ("explicit", ps.explicit)):
            hits = {(t, v): np.zeros(config.n_head) for t in ("bridge", "control", "answer")
                    for v in ("lens", "logit_lens")}
            for i, sent in enumerate(sentences):
                top = readout.head_topk(params, config, res.lens, lc, toktools.encode(tok, sent), k=k)
                targets = {"bridge": first_ids(ps.memory[i]), "control": first_ids(control[i]),
                           "answer": first_ids(ps.answer[i])}
                for t, ids in targets.items():
                    hits[t, "lens"] += [bool(ids & set(r.tolist())) for r in top.lens_ids]
                    hits[t, "logit_lens"] += [bool(ids & set(r.tolist())) for r in top.logit_ids]
            table[form] = {f"{t}/{v}": (h / len(sentences)).round(3).tolist() for (t, v), h in hits.items()}
        out[L] = {"final_loss": float(res.losses[-1]), "initial_loss": float(res.losses[0]), "k": k,
                  "in_top_k": table}
    return out


def _values(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _cell(summary: dict, layer, tau) -> tuple[int, int]:
    """The (row, column) of the grids of `summary` (one `_sweep_summary`) at this layer and tau."""
    layers, taus = list(summary["layers"]), list(summary["taus"])
    if layer not in layers or tau not in taus:
        raise ValueError(f"summary: expected a sweep over layer {layer} and tau {tau:g} (the bridge memory's best "
                         f"cell), got {summary['memory']!r} over layers {layers} and taus {taus}")
    return layers.index(layer), taus.index(tau)


def markdown(inj: dict, heads: dict | None) -> str:
    sweeps = inj.get("sweeps", []) if inj else []
    axes = "" if not sweeps else (f"layers {_values(sweeps[0]['layers'])} x tau {_values(sweeps[0]['taus'])}; ")
    lines = [] if not inj else [f"Injection sweep on {inj['prompts']} held-out two-hop prompts ({axes}percent "
             "increase of p(answer's first token); best (layer, tau) by median):", "",
             "| memory | p before | p explicit | best layer, tau | p after (best) | median % | mean % | trimmed mean % | share improved |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in inj.get("sweeps", []):
        pe = "-" if s["p_explicit_mean"] is None else f"{s['p_explicit_mean']:.3f}"
        lines.append(f"| {s['memory']} | {s['p_before_mean']:.3f} | {pe} | {s['best_layer']}, {s['best_tau']:g} | "
                     f"{s['best_p_after_mean']:.3f} | {s['best_median_pct']:.1f} | {s['best_mean_pct']:.1f} | "
                     f"{s['best_trimmed_mean_pct']:.1f} | {s['best_share_improved']:.2f} |")
    if inj.get("sweeps"):
        ref = inj["sweeps"][0]  # the true memory: compare every memory in its best cell
        # the cell's row and column among the values swept (they were taken as layer and tau - 1,
        # which holds only for the default sweep of every layer over taus 1..15)
        li, ti = _cell(ref, ref["best_layer"], ref["best_tau"])
        lines += ["", f"In the bridge memory's best cell (layer {ref['best_layer']}, tau {ref['best_tau']:g}), median % "
                  "increase and mean p(answer):", "",
                  "| memory | median % | mean p after | highest mean p after anywhere |", "| --- | ---: | ---: | ---: |"]
        for s in inj["sweeps"]:
            i, j = _cell(s, ref["best_layer"], ref["best_tau"])
            lines.append(f"| {s['memory']} | {s['median_pct_grid'][i][j]:.1f} | {s['p_after_mean_grid'][i][j]:.3f} | "
                         f"{np.max(s['p_after_mean_grid']):.3f} |")
    if heads:
        for L, h in heads.items():
            lines += ["", f"Layer {L} lenses (KL {h['initial_loss']:.3f} -> {h['final_loss']:.3f}): share of prompts whose "
                      f"entity's first token is in a head's top {h['k']} (lens / logit lens):", "",
                      "| head | obscure: bridge | obscure: control entity | obscure: answer | explicit: bridge | explicit: answer |",
                      "| --- | --- | --- | --- | --- | --- |"]
            t = h["in_top_k"]
            for i in range(len(t["obscure"]["bridge/lens"])):
                cells = [f"{t[f][f'{w}/lens'][i]:.2f} / {t[f][f'{w}/logit_lens'][i]:.2f}"
                         for f, w in (("obscure", "bridge"), ("obscure", "control"), ("obscure", "answer"),
                                      ("explicit", "bridge"), ("explicit", "answer"))]
                lines.append(f"| {i} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxinterp import report

    grid = np.asarray(summary["median_pct_grid"])
    fig, ax = plt.subplots(figsize=(6, 2.4))
    im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-max(abs(grid).max(), 1), vmax=max(abs(grid).max(), 1))
    ax.set_xlabel("tau")
    ax.set_ylabel("layer")
    # labelled with the values swept (they were 1..N and 0..L-1 whatever the sweep's taus and layers)
    ax.set_xticks(range(grid.shape[1]), [f"{t:g}" for t in summary["taus"]])
    ax.set_yticks(range(grid.shape[0]), [str(L) for L in summary["layers"]])
    ax.set_title(f"median % increase of p(answer): {summary['memory']}", fontsize=9)
    fig.colorbar(im, ax=ax)
    report.figure_png(fig, path)


def main(argv=None) -> int:
    from jaxinterp import atomic, manifest
    from jaxinterp.inject import data as idata
    from jaxinterp.lens.lenses import lens_config_for
    from jaxinterp.toyworld import MODEL_DIR
    from jaxinterp.toyworld.world import prompt_rows, training_sentences, write_prompts_csv
    from jaxinterp.transformer import load_gpt2, load_tokenizer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=output_folder)
    p.add_argument("--model", default=str(MODEL_DIR))
    p.add_argument("--prompts", help="prompt CSV (default: the held-out two-hop prompts of the model's own world, "
                                     "written to OUT/prompts.csv)")
    p.add_argument("--words", help="top_word_types.csv for the paper's random-word baselines")
    p.add_argument("--lens-layers", type=int, nargs="*", default=None, help="default: the last two layers")
    p.add_argument("--lens-steps", type=positive_int, default=300)
    p.add_argument("--no-inject", action="store_true", help="lenses only")
    args = p.parse_args(argv)
    out = Path(args.out)
    world = model_world(args.model)  # the model's own world, not the shipped one's
    params, config = load_gpt2(args.model, process_weights=True)  # the paper's TransformerLens weights
    layers = args.lens_layers if args.lens_layers is not None else list(range(max(0, config.n_layer - 2), config.n_layer))
    for L in layers:  # a layer out of range fails here, before the sweep and before anything is written
        lens_config_for(config, L)
    if len(set(layers)) != len(layers):  # a layer named twice trained its lens twice, one result kept
        raise ValueError(f"lens-layers: expected distinct layers, got {layers}")
    # The model's own held-out prompts: the shipped prompts.csv belongs to the shipped world, and for a
    # run of another world (or train_fraction) named entities it does not know, or compositions it was
    # trained on, as "held out".
    rows = prompt_rows(world, held_out_only=True) if args.prompts is None else None
    if args.prompts is not None:
        _check_memories(idata.load_prompts(args.prompts).memory, world, args.prompts)
    else:
        if not rows:  # train_fraction 1: an empty prompts.csv, refused by the sweep after it was written
            raise ValueError(f"model: expected held-out two-hop prompts in its world, got none (train_fraction "
                             f"{world.config.train_fraction}); name a prompt set with --prompts")
        _check_memories([r.explicit_entity for r in rows], world, "its held-out prompts")
    if args.words:  # a missing file or column failed in the sweeps, after OUT/prompts.csv was written
        load_baseline_words(args.words)
    out.mkdir(parents=True, exist_ok=True)
    tracked = manifest.begin(out, MANIFEST)
    inputs = [p for p in (args.prompts, args.words, args.model) if p is not None]  # never removed, even if listed
    if rows is not None:
        args.prompts = str(out / "prompts.csv")
        write_prompts_csv(rows, args.prompts)
    tok = load_tokenizer(args.model)
    inj, _ = (injection(params, config, tok, args.prompts, world=world, words_csv=args.words)
              if not args.no_inject else ({}, {}))
    for i, s in enumerate(inj.get("sweeps", [])):
        heatmap(s, out / f"heatmap_{i}.png")
    heads = lens_heads(params, config, tok, args.prompts, training_sentences(world), layers, world=world,
                       steps=args.lens_steps) if layers else None
    atomic.write_json(out / "summary.json", {"injection": inj, "lens": heads})
    md = markdown(inj, heads)
    atomic.write_text(out / "summary.md", md)
    removed = manifest.finish(tracked, keep=inputs)
    print(md)
    if removed:
        print(f"removed {len(removed)} file(s) an earlier analysis wrote into {out} and this run did not: "
              f"{', '.join(removed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
