"""`jaxinterp lens train|show`: train the lenses of one GPT-2 layer; read lenses out on a prompt.

Nothing heavy is imported at module level (jax etc. load inside the handlers).
"""

from __future__ import annotations

import sys
from pathlib import Path

from jaxinterp.cliargs import non_negative_int, output_file, output_folder, positive_int


def resolve_model(name: str | None) -> str:
    """--model, or the built-in toy model when it is omitted (and say so)."""
    from jaxinterp.transformer.builtin import resolve_model as resolve

    model, note = resolve(name)
    if note:
        print(note, file=sys.stderr)
    return model


def _train(args) -> int:
    from jaxinterp.lens import data, lenses, objective, train
    from jaxinterp.lens.io import save_lens
    from jaxinterp.transformer import load_gpt2, load_tokenizer
    from jaxinterp.transformer.weights import read_config

    cfg = train.TrainConfig(steps=args.steps, batch_size=args.batch_size, accum=args.accum, seq_len=args.seq_len,
                            lr=args.lr, save_every=args.save_every, seed=args.seed, bfloat16=args.bf16,
                            shard_vocab=args.shard_vocab, adam_moments=args.adam_moments)
    obj = objective.Objective(mode=args.mode, chunk=args.chunk)
    texts = data.read_texts(args.data, text_field=args.text_field)  # empty data fails here, before any work
    model = resolve_model(args.model)
    folder, config = read_config(model)  # layer, lens and length checks before the weights are read
    lens_config = lenses.lens_config_for(config, args.layer, args.kind)  # a layer out of range fails here
    if cfg.seq_len > config.n_positions:
        raise ValueError(f"seq_len: expected at most the model's n_positions = {config.n_positions}, got {cfg.seq_len}")
    # where the run writes, checked before the model loads: a folder at the lens file's name failed its
    # rename after every step had run, a file at checkpoints/ inside orbax after the first save
    lens_path = Path(args.out) / f"lens_layer{lens_config.layer}.safetensors"
    if lens_path.is_dir():
        raise ValueError(f"out: expected {lens_path} to be free for the lens file, got a folder there")
    if (Path(args.out) / "checkpoints").exists() and not (Path(args.out) / "checkpoints").is_dir():
        raise ValueError(f"out: expected {Path(args.out) / 'checkpoints'} to be a folder of checkpoints, got a file")
    # the data tokenised and its ids checked before the weights are read (a tokenizer of more ids than the
    # model's vocabulary, or texts that give no token, were refused only after the model had loaded)
    tok = load_tokenizer(folder)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batches = data.Batches(data.tokenize(texts, tok, cfg.seq_len), cfg.batch_size, cfg.seq_len, pad_id=pad_id,
                           seed=cfg.seed)
    train.check_ids(batches, config)
    # a folder of another run's checkpoints (another layer, data or setting): refused before the weights
    # are read (train() refused it only after the model had loaded; it also checks the model's weights)
    train.check_resume_settings(Path(args.out) / "checkpoints", config, lens_config, batches, cfg, objective=obj)
    params, config = load_gpt2(folder, process_weights=True)
    out = Path(args.out)
    result = train.train(params, config, lens_config, batches, cfg, objective=obj, ckpt_dir=out / "checkpoints",
                         progress=not args.no_progress)
    path = save_lens(lens_path, result.lens, lens_config,
                     extra={"model": model, "steps": result.steps, "mode": args.mode})
    print(f"trained steps {result.start_step}..{result.steps}; final loss "
          f"{result.losses[-1] if result.losses else float('nan'):.5f}; wrote {path}")
    return 0


def _show(args) -> int:
    import numpy as np

    from jaxinterp import atomic, report
    from jaxinterp.lens import readout
    from jaxinterp.lens.io import load_lens
    from jaxinterp.transformer import load_gpt2, load_tokenizer
    from jaxinterp.transformer.weights import read_config

    if args.k < 1 or args.score_k < 1:
        raise ValueError(f"k, score-k: expected positive integers, got {args.k} and {args.score_k}")
    words = readout.read_words(args.words) if args.words else None
    model = resolve_model(args.model)
    folder, config = read_config(model)
    # k beyond the vocabulary, a prompt too long and lenses that do not fit fail before the model's
    # weights are read.
    if max(args.k, args.score_k) > config.vocab_size:
        raise ValueError(f"k, score-k: expected at most the model's vocab_size = {config.vocab_size}, got "
                         f"{args.k} and {args.score_k}")
    tok = load_tokenizer(folder)
    ids = tok(args.prompt, add_special_tokens=False)["input_ids"]
    readout.check_prompt(ids, config)
    # --layer is the PyTorch files' layer; a .safetensors lens records its own (checked against --layer
    # only when no PyTorch file needs it: an own lens of layer 1 beside a PyTorch one of layer 2 was refused)
    own = [Path(p).suffix == ".safetensors" for p in args.lens]
    loaded = [load_lens(p, model_config=config, layer=None if is_own and not all(own) else args.layer)
              for p, is_own in zip(args.lens, own)]
    layers = sorted({c.layer for _, c in loaded})
    if len(layers) != len(loaded):
        raise ValueError(f"lens: expected one lens per layer, got layers {[c.layer for _, c in loaded]}")
    params, config = load_gpt2(folder, process_weights=True)

    kk = max(args.k, args.score_k)
    score_name = f"share of top-{args.score_k} in {Path(args.words).name}" if words else \
        f"share of lens top-{args.score_k} also in logit-lens top-{args.score_k}"
    lens_score = np.full((len(layers), config.n_head), np.nan)
    logit_score = np.full((len(layers), config.n_head), np.nan)
    rows = []
    for lens, lc in sorted(loaded, key=lambda x: x[1].layer):
        t = readout.head_topk(params, config, lens, lc, ids, k=kk, chunk=args.chunk)
        i = layers.index(lc.layer)
        lens_tok = readout.decode_ids(tok, t.lens_ids[:, :kk])  # the table shows k, the score reads score_k
        logit_tok = readout.decode_ids(tok, t.logit_ids[:, :kk])
        if words:
            lens_score[i] = readout.word_share([r[:args.score_k] for r in lens_tok], words)
            logit_score[i] = readout.word_share([r[:args.score_k] for r in logit_tok], words)
        else:
            lens_score[i] = readout.overlap_share(t.lens_ids[:, :args.score_k], t.logit_ids[:, :args.score_k])
        rows += readout.rows_for_table(lc.layer, [r[:args.k] for r in lens_tok], [r[:args.k] for r in logit_tok],
                                       lens_score[i])
    header = ["layer", "head", f"lens top-{args.k}", f"logit lens top-{args.k}", score_name]
    print(f"prompt: {args.prompt!r} ({len(ids)} tokens), last token {tok.decode([ids[-1]])!r}")
    for r in rows:
        print(f"L{r[0]:<3} H{r[1]:<3} score {r[4]:.3f}\n    lens:       {r[2]}\n    logit lens: {r[3]}")
    if args.csv:
        atomic.write_text(args.csv, readout.csv_text(header, rows))
        print(f"wrote {args.csv}")
    if args.heatmap:
        panels = {f"lens: {score_name}": lens_score}
        if words:
            panels[f"logit lens: {score_name}"] = logit_score
        report.figure_png(readout.heatmap(panels, title=f"prompt {args.prompt[:60]!r}", layers=layers), args.heatmap)
        print(f"wrote {args.heatmap}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("lens", help="Attention Lens: train per-head lenses of a GPT-2 layer, read them out")
    lsub = p.add_subparsers(dest="lens_command", metavar="SUBCOMMAND", required=True)

    t = lsub.add_parser("train", help="train the lenses of one layer (resumes from OUT/checkpoints)")
    t.add_argument("--model", help="local Hugging Face GPT-2 folder or hub name (default: the built-in toy model)")
    t.add_argument("--layer", type=int, required=True, help="layer whose heads get lenses")
    t.add_argument("--data", required=True, help=".txt (a text per line), .jsonl, a folder of them, or a HF dataset name")
    t.add_argument("--out", required=True, type=output_folder, help="output folder: checkpoints/ and lens_layer<L>.safetensors")
    t.add_argument("--kind", default="lensa", choices=["lensa", "shared", "resid"], help="lens kind (default lensa)")
    t.add_argument("--mode", default="last", choices=["last", "all", "per_head"],
                   help="rows of the KL: last real token (paper), all real positions, or each head alone")
    t.add_argument("--steps", type=positive_int, default=100)
    t.add_argument("--batch-size", type=positive_int, default=4)
    t.add_argument("--accum", type=positive_int, default=1, help="micro-batches per optimiser step")
    t.add_argument("--seq-len", type=positive_int, default=128, help="tokens per example (longer texts are truncated)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    t.add_argument("--save-every", type=positive_int, default=50, help="orbax checkpoint every N steps")
    t.add_argument("--seed", type=non_negative_int, default=0)
    t.add_argument("--bf16", action="store_true", help="bfloat16 activations and lens matmuls (params stay float32)")
    t.add_argument("--adam-moments", default="float32", choices=["float32", "bfloat16"],
                   help="dtype Adam's two moments are stored in; bfloat16 (stochastically rounded) halves the "
                        "optimiser state (default float32)")
    t.add_argument("--shard-vocab", action="store_true", help="split lens params along the vocabulary over devices")
    t.add_argument("--chunk", type=positive_int, default=8192, help="vocabulary chunk width")
    t.add_argument("--text-field", default="text", help="field of .jsonl records / HF datasets (default text)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    s = lsub.add_parser("show", help="per-head top-k of lenses beside the plain logit lens, on a prompt")
    s.add_argument("--model", help="local Hugging Face GPT-2 folder or hub name (default: the built-in toy model)")
    s.add_argument("--lens", nargs="+", required=True,
                   help="lens files (.safetensors from `lens train`, or PyTorch LensA .pt/.ckpt with --layer)")
    s.add_argument("--layer", type=int, help="layer of the PyTorch lens files (which do not record it); with "
                                             ".safetensors lenses only, a check of their layer")
    s.add_argument("--prompt", required=True)
    s.add_argument("--k", type=positive_int, default=10, help="tokens shown per head")
    s.add_argument("--words", help="word list (one per line): score = share of each head's top tokens in it")
    s.add_argument("--score-k", type=positive_int, default=50, help="top tokens scored per head (default 50)")
    s.add_argument("--csv", type=output_file, help="write the table as CSV here")
    s.add_argument("--heatmap", type=output_file, help="write a layers x heads heatmap PNG of the score here")
    s.add_argument("--chunk", type=positive_int, default=8192, help="vocabulary chunk width")
    s.set_defaults(func=_show)
