"""`jaxinterp gpt2 run`: a prompt through GPT-2, its next-token guesses and the activations asked for."""

from __future__ import annotations


def _run(args) -> int:
    import jax
    import numpy as np

    from jaxinterp.transformer import hooks, load_gpt2, load_tokenizer, run_with_cache
    from jaxinterp.transformer.weights import read_config

    # Bad input before the weights are read: a misspelt hook name, a prompt of no tokens; then, from the
    # config.json, a hook of a layer the model lacks and a prompt longer than its context (run_with_cache
    # refused those only after the whole model had been read)
    for name in args.cache or ():
        hooks.split_name(name)
    tok = load_tokenizer(args.model)
    ids = tok(args.prompt)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {args.prompt!r} tokenises to nothing")
    _, config = read_config(args.model)
    hooks.check_names(args.cache or (), config.n_layer)
    if len(ids) > config.n_positions:
        raise ValueError(f"prompt: expected at most n_positions = {config.n_positions} tokens, got {len(ids)}")
    if max(ids) >= config.vocab_size:  # a tokenizer of a larger vocabulary than the model's
        raise ValueError(f"prompt: expected token ids below the model's vocab_size = {config.vocab_size}, got "
                         f"{max(ids)} (is the tokenizer the model's?)")
    params, config = load_gpt2(args.model, process_weights=args.process_weights)
    logits, cache = run_with_cache(params, np.asarray([ids], np.int32), config=config, names=args.cache or ())
    probs = np.asarray(jax.nn.softmax(logits[0, -1]))
    top = np.argsort(-probs)[: args.top_k]
    print(f"{args.model}: {config.n_layer} layers, {config.n_head} heads, d_model {config.n_embd}; {len(ids)} tokens")
    for i in top:
        print(f"  {tok.decode([int(i)])!r:>20}  p={probs[i]:.4f}")
    for name, value in sorted(cache.items()):
        print(f"  {name}: shape {list(value.shape)}, mean {float(value.mean()):+.4f}, std {float(value.std()):.4f}")
    return 0


def add_parser(sub) -> None:
    from jaxinterp.cliargs import positive_int

    p = sub.add_parser("gpt2", help="run GPT-2 (Hugging Face folder or hub name) on a prompt")
    gsub = p.add_subparsers(dest="gpt2_command", metavar="SUBCOMMAND", required=True)
    r = gsub.add_parser("run", help="next-token probabilities and cached activations for one prompt")
    r.add_argument("--model", required=True, help="local Hugging Face folder or hub name")
    r.add_argument("--prompt", required=True)
    r.add_argument("--top-k", type=positive_int, default=5)  # a negative k sliced off the last -k tokens
    r.add_argument("--cache", nargs="*", metavar="HOOK", help="TransformerLens hook names to capture")
    r.add_argument("--process-weights", action="store_true", help="TransformerLens weight processing")
    r.set_defaults(func=_run)
