"""`jaxinterp merge ...`: mergekit YAML merges, and loss barriers between digits MLPs.

    jaxinterp merge yaml CONFIG.yml --out DIR [--seed 0]        merge HF safetensors checkpoints
    jaxinterp merge check CONFIG.yml                             validate only (no weight is read, only integer buffers)
    jaxinterp merge train-mlp --seed 1 --out a.safetensors       a digits MLP (for barrier)
    jaxinterp merge barrier a.safetensors b.safetensors [--align] [--num 25] [--devices N] [--png P] [--json P]
"""

from __future__ import annotations

from jaxinterp.cliargs import non_negative_int, output_file, output_folder, positive_int


def _tokenizer_line(result, d: dict) -> str:
    """What the output's tokenizer is: the source's files, copied; never merged (config module doc)."""
    copied = [f for f in result.side_files if f not in ("config.json", "generation_config.json")]
    src = result.side_source
    what = (f"copied unchanged from {src} ({', '.join(copied)})" if copied
            else f"none written ({src} has no tokenizer files)")
    kept = result.kept_side_files
    if kept:  # "none written" while an earlier merge's tokenizer sat beside the new weights
        what += (f"; {', '.join(kept)} in {result.out_dir} remain from an earlier run, not written by this merge "
                 f"(loaders read them with these weights: remove them if they do not fit)")
    tmpl = "; chat_template not applied" if d.get("chat_template") is not None else ""
    return f"tokenizer: {what}; jaxinterp writes merged tensors only{tmpl}"


def _yaml(args) -> int:
    from jaxinterp.merge import checkpoint, config
    from jaxinterp.checks import check_seed

    check_seed(args.seed, "--seed")  # before the config is read
    d = config.read_dict(args.config)
    cfg = config.from_dict(d)
    r = checkpoint.run_config(cfg, args.out, seed=args.seed, progress=not args.quiet)
    print(f"wrote {r.n_tensors} tensors ({r.n_bytes / 1e6:.1f} MB) to {r.out_dir}")
    if r.removed:
        print(f"removed {len(r.removed)} stale file(s) of an earlier sharded checkpoint in {r.out_dir}, which "
              f"loaders would read instead of or beside the new model.safetensors: {', '.join(r.removed)}")
    print(_tokenizer_line(r, d))
    return 0


def _check(args) -> int:
    from jaxinterp.merge import checkpoint, config

    cfg = config.read(args.config)
    jobs, indices, n_layers = checkpoint.prepare(cfg)
    checkpoint.check_buffers(jobs, indices)  # as `merge yaml` does before it writes
    checkpoint.side_files(cfg, n_layers)  # the source's config.json, which the output's is
    layers = f", {n_layers} layers" if n_layers is not None else ""
    print(f"ok: {cfg.merge_method} of {len(indices)} checkpoints, {len(jobs)} tensors{layers}")
    return 0


def _save_params(params, path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    from jaxinterp import atomic
    from jaxinterp.merge import tree

    with atomic.atomic_path(path) as tmp:
        save_file({k: np.asarray(v) for k, v in tree.named_leaves(params).items()}, str(tmp))


def _load_mlp(path):
    from pathlib import Path

    from safetensors.numpy import load_file

    from jaxinterp.merge import checkpoint

    if not Path(path).is_file():
        raise ValueError(f"model: expected a .safetensors file written by `merge train-mlp`, got {path!r}")
    # the header and size first: a file that is not safetensors, or a truncated one, was a SafetensorError traceback
    checkpoint.read_file_index(Path(path), path)
    flat = load_file(path)
    out: dict = {}
    for k, v in flat.items():
        layer, dot, leaf = k.partition(".")
        if not dot or "." in leaf:  # was 'not enough values to unpack (expected 2, got 1)'
            raise ValueError(f"model: expected tensors named layer.leaf (Dense_0.kernel, as `merge train-mlp` "
                             f"writes them), got {k!r} in {path}")
        out.setdefault(layer, {})[leaf] = v
    return out


def _train_mlp(args) -> int:
    import jax

    from jaxinterp.merge import mlp
    from jaxinterp.checks import check_seed

    # PRNGKey keeps 32 bits: --seed 2**32 + 1 initialised seed 1's weights (with other batches)
    check_seed(args.seed, "--seed")
    d = mlp.load_digits()
    p = mlp.train(mlp.init(jax.random.PRNGKey(args.seed)), d.x_train, d.y_train, steps=args.steps, seed=args.seed)
    _save_params(p, args.out)
    print(f"{d.name}: test accuracy {float(mlp.accuracy(p, d.x_test, d.y_test)):.4f}; wrote {args.out}")
    return 0


def _check_outputs(outputs: dict, inputs: dict) -> None:
    """ValueError for an output path that is an input model's file or another output's: `--json
    a.safetensors` wrote the JSON over model a (after reading it), `--png p --json p` kept only the JSON."""
    import os

    from jaxinterp import atomic

    seen = {}
    for opt, path in outputs.items():
        if path is None:
            continue
        key = os.path.realpath(atomic.write_target(path))  # the file the write lands in, through links
        for arg, model in inputs.items():
            if os.path.realpath(model) == key:
                raise ValueError(f"{opt}: expected a file other than the models read, got {path!r}, which is "
                                 f"model {arg} ({model!r}); it would be overwritten")
        if key in seen:
            raise ValueError(f"{opt}: expected a file other than {seen[key][0]}'s, got {path!r} for both "
                             f"(one would overwrite the other)")
        seen[key] = (opt, path)


def _devices_mesh(n):
    """`parallel.make_mesh` over the first `n` devices (None: no mesh, one device); a ValueError where
    JAX sees fewer."""
    import jax

    from jaxinterp import parallel

    if n is None:
        return None
    devices = jax.devices()
    if n > len(devices):
        raise ValueError(f"--devices: expected at most {len(devices)} (the {devices[0].platform} devices JAX sees; "
                         f"XLA_FLAGS=--xla_force_host_platform_device_count=N makes N of a CPU), got {n}")
    return parallel.make_mesh(devices[:n])


def _barrier(args) -> int:
    import jax.numpy as jnp

    from jaxinterp.merge import landscape, mlp, plots, rebasin, tree

    # before the models are read or aligned (weight matching ran first, then linear_path refused it)
    landscape._check_count("num", args.num, 2, "at least 2 alphas (the two endpoints)")
    _check_outputs({"--png": args.png, "--json": args.json}, {"a": args.a, "b": args.b})
    mesh = _devices_mesh(args.devices)
    pa, pb = _load_mlp(args.a), _load_mlp(args.b)
    d = mlp.load_digits()
    for arg, p in (("a", pa), ("b", pb)):  # before anything is computed: a wrong MLP gave a NaN barrier
        mlp.check_params(p, d.x_test.shape[1], int(d.y_train.max()) + 1, f"model {arg} ({getattr(args, arg)})")
    batch = (jnp.asarray(d.x_test), jnp.asarray(d.y_test))
    runs = [("naive", pb)]
    if args.align:
        spec = rebasin.mlp_permutation_spec(tree.natural_sorted(pa))  # Dense_2 before Dense_10
        runs.append(("weight matching", rebasin.weight_matching(spec, pa, pb).params))
    results = {}
    for name, b in runs:
        r = landscape.linear_path(mlp.loss, pa, b, batch, num=args.num, mesh=mesh)
        results[name] = r
        print(f"{name}: barrier (max - mean of ends) {r.barrier_mean:.4f}, (max - chord) {r.barrier_chord:.4f}")
    if args.png:
        curves = {name: (r.alphas, r.losses) for name, r in results.items()}
        plots.save_png(plots.path_figure(curves, ylabel="test loss"), args.png)
        print(f"wrote {args.png}")
    if args.json:
        from jaxinterp import atomic

        out = {"data": d.name, "loss": "mean cross-entropy on the test split",
               "paths": {name: {"alphas": r.alphas.tolist(), "losses": r.losses.tolist(),
                                "barrier_mean": r.barrier_mean, "barrier_chord": r.barrier_chord}
                         for name, r in results.items()}}
        atomic.write_json(args.json, out, indent=1)
        print(f"wrote {args.json}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("merge", help="model merging (mergekit YAML) and loss barriers")
    s = p.add_subparsers(dest="merge_command", metavar="SUBCOMMAND")
    y = s.add_parser("yaml", help="merge the checkpoints of a mergekit YAML config")
    y.add_argument("config")
    y.add_argument("--out", required=True, type=output_folder, help="output folder")
    y.add_argument("--seed", type=non_negative_int, default=0, help="seed of random methods (dare, della)")
    y.add_argument("--quiet", action="store_true", help="no progress bar")
    y.set_defaults(func=_yaml)
    c = s.add_parser("check", help="validate a mergekit YAML config, the checkpoint headers "
                     "and their integer buffers")
    c.add_argument("config")
    c.set_defaults(func=_check)
    t = s.add_parser("train-mlp", help="train a digits MLP and save it as safetensors")
    t.add_argument("--seed", type=non_negative_int, default=0)
    t.add_argument("--steps", type=positive_int, default=1000)
    t.add_argument("--out", required=True, type=output_file)
    t.set_defaults(func=_train_mlp)
    b = s.add_parser("barrier", help="loss barrier on the linear path between two digits MLPs")
    b.add_argument("a")
    b.add_argument("b")
    b.add_argument("--num", type=int, default=25, help="number of alphas (default 25)")
    b.add_argument("--align", action="store_true", help="also after weight matching B to A")
    b.add_argument("--devices", type=positive_int, help="split the alphas over the first N devices "
                   "(default: one device)")
    b.add_argument("--png", type=output_file, help="write the path plot here")
    b.add_argument("--json", type=output_file, help="write every path's alphas, losses and barriers here")
    b.set_defaults(func=_barrier)
    p.set_defaults(func=lambda args: p.print_help() or 2)
