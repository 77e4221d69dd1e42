"""`jaxinterp inject sweep --model NAME_OR_PATH --data CSV --out DIR`: the layer x tau sweep of a prompt set.

Imports nothing heavy at module level (jax and transformers load inside the handler).
"""

from __future__ import annotations

from pathlib import Path

from jaxinterp.cliargs import non_negative_int, output_folder, positive_int
from jaxinterp.transformer.builtin import resolve_model  # noqa: F401 (part of this command's API)


# the sweeps' resumable states in the output folder (removed once the outputs are written: the main
# sweep's state stays while the baseline sweep runs, so an interruption there does not redo it)
STATE_FILES = (".sweep_state.npz", ".baseline_sweep_state.npz")


def _check_encoded(enc, config, kind: str, bos: int) -> None:
    """The sweep's checks of the prompts, explicit prompts and answers (`sweep.check_tokens`: length, ids;
    `sweep.check_answers`) and memory_vectors' of the memories (`memory.check_memories`: ids, and a "layer"
    memory's length with BOS), made from the config alone, before the model is loaded and the memories
    are computed (they refused a prompt after both, a memory or an answer id outside the vocabulary after
    the model had loaded)."""
    from jaxinterp.inject.memory import check_memories
    from jaxinterp.inject.sweep import check_answers, check_tokens

    check_tokens(enc.prompts, config, "prompts")
    check_tokens(enc.explicit, config, "explicit")
    check_answers(enc.answers, len(enc.prompts), config)
    check_memories(enc.memories, config=config, kind=kind, bos_id=bos)


def _check_layers(layers, n_layer: int) -> None:
    for L in layers:
        if not 0 <= L < n_layer:
            raise ValueError(f"--layers: expected 0..{n_layer - 1} for this {n_layer}-layer model, got {L}")


def run_sweep(model: str, data_path: str, out: str, *, layers=None, taus=None, kind: str = "unembed",
              limit: int | None = None, baseline_words: str | None = None, baseline_type: str = "Nouns",
              seed: int = 0, bucket: int = 8, skip_long: bool = False) -> dict:
    import math
    import time

    import numpy as np

    from jaxinterp.inject import data as dt
    from jaxinterp.inject import outputs
    from jaxinterp.inject.memory import check_memories, memory_vectors
    from jaxinterp.inject.metrics import aggregate
    from jaxinterp.inject.sweep import DEFAULT_TAUS, sweep
    from jaxinterp.transformer import load_gpt2, load_tokenizer
    from jaxinterp.transformer.weights import read_config

    # Every input is checked before the model is loaded and before anything is computed or written.
    prompts = dt.load_prompts(data_path, limit=limit)
    taus = list(DEFAULT_TAUS) if taus is None else list(taus)
    if not taus or not all(math.isfinite(t) for t in taus):
        raise ValueError(f"--taus: expected finite numbers, got {taus}")
    # config.json, read once (a hub name's downloaded here): its sizes check --layers, the prompts and the
    # memories before the weights are read, and they are the processed model's sizes too
    folder, config = read_config(model)
    layers = list(range(config.n_layer)) if layers is None else list(layers)
    _check_layers(layers, config.n_layer)
    words = dt.load_top_words(baseline_words) if baseline_words else None
    if words is not None:
        if baseline_type not in words:
            raise ValueError(f"--baseline-type: expected one of {list(words)}, got {baseline_type!r}")
        dt.random_words(words, baseline_type, 0)  # an empty column: refused now, not after the main sweep
    tok = load_tokenizer(folder)
    enc = dt.encode(tok, prompts)
    if skip_long:  # rows longer than the model's context are dropped (and counted) instead of refused
        keep = [i for i in range(len(enc.answers))
                if max(len(enc.prompts[i]), len(enc.explicit[i])) <= config.n_positions]
        if not keep:
            raise ValueError(f"--skip-long: every row is longer than the model's {config.n_positions} positions")
        if len(keep) < len(enc.answers):
            print(f"--skip-long: dropped {len(enc.answers) - len(keep)} of {len(enc.answers)} rows longer than "
                  f"{config.n_positions} tokens")
        prompts = dt.PromptSet(*([getattr(prompts, f)[i] for i in keep] for f in dt.PromptSet._fields[:5]),
                               prompts.source)
        enc = dt.encode(tok, prompts)
    bos = dt.bos_id(tok)
    _check_encoded(enc, config, kind, bos)
    rand = b_ids = b_mems = None
    if words is not None:  # drawn, tokenised and checked now: a bad word is refused before the model loads
        rand = dt.random_words(words, baseline_type, len(prompts.answer), seed=seed)
        b_ids = dt.encode(tok, prompts, memories=rand).memories
        check_memories(b_ids, config=config, kind=kind, bos_id=bos)
    params, config = load_gpt2(folder, process_weights=True)
    mems = memory_vectors(params, enc.memories, config=config, kind=kind, bos_id=bos)
    if b_ids is not None:
        b_mems = memory_vectors(params, b_ids, config=config, kind=kind, bos_id=bos)

    def run(mems, state):
        # one step per (prompt bucket, layer) with a progress bar; finished layers are kept in
        # `state` in the output folder, so an interrupted sweep started again resumes there
        t0 = time.perf_counter()
        res = sweep(params, enc.prompts, mems, layers, taus, config=config, answers=enc.answers,
                    explicit=enc.explicit, bucket=bucket, progress=True, state=Path(out) / state, keep_state=True)
        return res, time.perf_counter() - t0

    result, wall = run(mems, STATE_FILES[0])
    agg = aggregate(result)
    baseline = None
    if words is not None:
        b_res, _ = run(b_mems, STATE_FILES[1])
        b_agg = aggregate(b_res)
        baseline = {"word_type": baseline_type, "seed": seed, "words": rand,
                    "percent_increase": outputs.aggregate_json(b_agg)}
    meta = {"model": str(model), "data": str(data_path), "memory_kind": kind, "sweep_wall_s": round(wall, 3),
            "title": f"{Path(str(model)).name} on {Path(data_path).name} ({kind} memories)"}
    paths = outputs.write(out, prompts, result, agg, meta, baseline)
    for name in STATE_FILES:
        (Path(out) / name).unlink(missing_ok=True)
    best = agg.best
    print(f"{len(prompts.answer)} prompts, {len(layers)} layers x {len(taus)} taus in {wall:.2f} s "
          f"(compile included); mean p_before {np.mean(result.p_before):.4g}")
    for stat, b in best.items():
        print(f"best {stat:<12} layer {b.layer:>2} tau {b.tau:g}: {b.value:+.1f} %")
    for name, p in paths.items():
        print(f"wrote {p}")
    return {"result": result, "aggregate": agg, "paths": paths, "baseline": baseline}


def _command(args) -> int:
    model, note = resolve_model(args.model)
    if note:
        print(note)
    run_sweep(model, args.data, args.out, layers=args.layers, taus=args.taus, kind=args.memory_kind,
              limit=args.limit, baseline_words=args.baseline_words, baseline_type=args.baseline_type,
              seed=args.seed, bucket=args.bucket, skip_long=args.skip_long)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("inject", help="memory injection: sweep layers x tau over a multi-hop prompt CSV")
    inner = p.add_subparsers(dest="inject_command", metavar="SUBCOMMAND")
    s = inner.add_parser("sweep", help="p(answer) before/after injection for every layer x tau x prompt")
    s.add_argument("--model", help="local Hugging Face GPT-2 folder or hub name (default: the shipped toy model)")
    s.add_argument("--data", required=True, help="prompt CSV (explicit/obscure sentence, explicit entity, answer)")
    s.add_argument("--out", required=True, type=output_folder, help="output folder")
    s.add_argument("--layers", type=int, nargs="+", help="injection layers (default all)")
    s.add_argument("--taus", type=float, nargs="+", help="injection scales (default 1..15)")
    s.add_argument("--memory-kind", default="unembed", choices=["unembed", "embed", "layer"],
                   help="memory vector: multi-hot @ W_U.T (paper), @ W_E, or the memory's own attn_out")
    s.add_argument("--limit", type=positive_int, help="only the first N rows")
    s.add_argument("--baseline-words", help="top_word_types.csv: also sweep random-word memories")
    s.add_argument("--baseline-type", default="Nouns", help="column of the word list (default Nouns)")
    s.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random words")
    s.add_argument("--bucket", type=positive_int, default=8, help="prompt length bucket (default 8)")
    s.add_argument("--skip-long", action="store_true", help="drop rows longer than the model's context (else an error)")
    s.set_defaults(func=_command)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
