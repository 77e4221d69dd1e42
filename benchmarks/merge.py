"""Merge benchmark: (a) mergekit YAML merges of GPT-2-small-sized safetensors checkpoints, wall time
and peak memory, beside mergekit on the same files when its CLI is available; (b) loss barrier at 25
alphas on an MLP, one vmapped call against a Python loop of jitted calls.

    python benchmarks/merge.py [--quick] [--json PATH] [--mergekit PATH/TO/mergekit-yaml] [--workdir DIR]

Each merge runs in its own subprocess (`jaxinterp merge yaml`, or `mergekit-yaml`); wall time is
measured around it and peak memory is that child's ru_maxrss (os.wait4), so both tools are
measured the same way. mergekit is found via --mergekit, $MERGEKIT_YAML, or PATH. The goals
(3x faster than mergekit, less memory) are judged only against mergekit run here, at full size:
PERF_NOTES' figures (another run, another load) are shown as the reference, not judged against, and
--quick's tiny models (mergekit's start-up dominates) are shown unjudged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from jaxinterp import atomic, benchtools
from jaxinterp.cliargs import output_folder

# mergekit 0.1.5 on the project's 2-core machine (shared/PERF_NOTES.md): base + 3 GPT-2 small, f32
MERGEKIT_REF = {"ties": (82.8, 4.42), "linear": (10.1, 2.37)}


def gpt2_shapes(n_layer: int, d: int, vocab: int, n_pos: int) -> dict[str, tuple[int, ...]]:
    s = {"transformer.wte.weight": (vocab, d), "transformer.wpe.weight": (n_pos, d)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        s.update({p + "ln_1.weight": (d,), p + "ln_1.bias": (d,), p + "attn.c_attn.weight": (d, 3 * d),
                  p + "attn.c_attn.bias": (3 * d,), p + "attn.c_proj.weight": (d, d), p + "attn.c_proj.bias": (d,),
                  p + "ln_2.weight": (d,), p + "ln_2.bias": (d,), p + "mlp.c_fc.weight": (d, 4 * d),
                  p + "mlp.c_fc.bias": (4 * d,), p + "mlp.c_proj.weight": (4 * d, d), p + "mlp.c_proj.bias": (d,)})
    s.update({"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,)})
    return s


def make_checkpoints(root: Path, n_layer: int, d: int, vocab: int, n_pos: int) -> list[Path]:
    """base + 3 fine-tunes (base + small noise). A later run with the same --workdir reuses them, so
    each file is written atomically, model.safetensors last: a run killed while writing leaves no
    half-written checkpoint for the next one to merge."""
    from safetensors.numpy import save_file

    shapes = gpt2_shapes(n_layer, d, vocab, n_pos)
    cfg = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_layer": n_layer, "n_embd": d,
           "n_head": max(1, d // 64), "n_positions": n_pos, "n_ctx": n_pos, "vocab_size": vocab,
           "torch_dtype": "float32"}
    dirs = [root / name for name in ("base", "ft0", "ft1", "ft2")]
    if all((p / "model.safetensors").is_file() for p in dirs):
        return dirs
    base = {k: np.random.default_rng(zlib.crc32(k.encode())).normal(0, 0.02, s).astype(np.float32)
            for k, s in shapes.items()}
    for j, p in enumerate(dirs):
        p.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(100 + j)
        t = base if j == 0 else {k: v + rng.normal(0, 0.002, v.shape).astype(np.float32) for k, v in base.items()}
        atomic.write_text(p / "config.json", json.dumps(cfg))
        with atomic.atomic_path(p / "model.safetensors") as tmp:
            save_file(t, str(tmp), metadata={"format": "pt"})
    return dirs


def config_yaml(method: str, dirs: list[Path]) -> str:
    base, fts = dirs[0], dirs[1:]
    if method == "slerp":
        return (f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {fts[0]}\n"
                f"parameters:\n  t: [0.0, 0.5, 1.0]\ndtype: float32\n")
    if method == "linear":
        return "merge_method: linear\nmodels:\n" + "".join(f"  - model: {p}\n    parameters: {{weight: 1.0}}\n"
                                                          for p in fts) + "dtype: float32\n"
    return (f"merge_method: {method}\nbase_model: {base}\nmodels:\n"
            + "".join(f"  - model: {p}\n    parameters: {{weight: 1.0, density: 0.5}}\n" for p in fts)
            + "dtype: float32\n")


def run_child(cmd: list[str]) -> tuple[float, float, int]:
    """(wall s, peak RSS GB of that child, return code)."""
    with tempfile.TemporaryFile() as errf:  # not a pipe: nobody reads it during wait4, a full one would hang the child
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)
        except OSError as e:  # a mergekit-yaml whose interpreter is gone (its venv removed): a failed
            # run, as one that exits non-zero, not an end of the whole benchmark after the merges it timed
            print(f"command failed to start ({e}): {' '.join(cmd)}", file=sys.stderr)
            return float("nan"), float("nan"), 127
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        errf.seek(0)
        err = errf.read().decode(errors="replace")
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}", file=sys.stderr)
    return wall, ru.ru_maxrss * 1024 / 1e9, proc.returncode  # ru_maxrss is in KiB on Linux


def find_mergekit(opt: str | None) -> str | None:
    for cand in (opt, os.environ.get("MERGEKIT_YAML"), shutil.which("mergekit-yaml")):
        if cand and _runnable(cand):
            return cand
    return None


def _runnable(path: str) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


def bench_merges(args, rows: list) -> None:
    if args.workdir:
        merge_in(Path(args.workdir), args, rows)
        return
    # at full size the checkpoints and merged models take up to ~6 GB: not left behind in the temp folder
    with tempfile.TemporaryDirectory(prefix="merge_bench_") as work:
        merge_in(Path(work), args, rows)


def merge_in(work: Path, args, rows: list) -> None:
    """Writes the checkpoints into `work` (or reuses them), merges them with each tool, adds the rows."""
    quick = args.quick
    dims = dict(n_layer=2, d=256, vocab=8000, n_pos=256) if quick else dict(n_layer=12, d=768, vocab=50257, n_pos=1024)
    size = "GPT-2-like tiny (2x256)" if quick else "GPT-2 small"
    # heavy work of this process (writing checkpoints, comparing outputs) runs in helper children:
    # a child's ru_maxrss starts from this process's resident set at fork (Linux copies the
    # pre-exec high-water mark), so a large parent would inflate every measured peak
    root = work / ("quick" if quick else "full")
    subprocess.run([sys.executable, __file__, "--_make", str(root), json.dumps(dims)], check=True)
    dirs = [root / name for name in ("base", "ft0", "ft1", "ft2")]
    mk = find_mergekit(args.mergekit)
    print(f"checkpoints in {work}; mergekit: {mk or 'not available (give --mergekit or $MERGEKIT_YAML)'}")
    methods = ["ties", "dare_ties", "slerp", "linear"]
    for m in methods:
        # atomically, as the checkpoints: a run killed mid-write left a truncated config in --workdir
        cfg = atomic.write_text(work / f"{m}.yml", config_yaml(m, dirs))
        out = work / f"out_jax_{m}"
        wall, rss, rc = run_child([sys.executable, "-m", "jaxinterp.cli", "merge", "yaml", str(cfg),
                                   "--out", str(out), "--quiet"])
        if rc:  # a merge that failed measured nothing: its rows read n/a, not the time it took to fail
            wall = rss = float("nan")
        ref = MERGEKIT_REF.get(m) if not quick else None
        mk_wall = mk_rss = None
        if mk:
            mk_out = work / f"out_mk_{m}"
            # mergekit writes into the folder without emptying it: an earlier run's shards (another
            # shard size, another mergekit) stayed beside this run's and --_diff compared them
            _remove_tree(mk_out)
            mk_wall, mk_rss, mk_rc = run_child([mk, str(cfg), str(mk_out), "--quiet"])
            if mk_rc:
                mk_wall = mk_rss = None
            elif not rc and m in ("ties", "slerp", "linear"):  # deterministic methods: the outputs must agree
                diff = subprocess.run([sys.executable, __file__, "--_diff", str(out), str(mk_out)],
                                      capture_output=True, text=True)
                if diff.returncode:  # an output the comparison cannot read ended the whole run, rows unreported
                    print(f"{m}: jaxinterp's and mergekit's outputs could not be compared:\n{diff.stderr[-2000:]}",
                          file=sys.stderr)
                else:
                    print(f"{m}: max |jaxinterp - mergekit| = {float(diff.stdout.strip()):.3g}")
        base_wall = mk_wall or (ref[0] if ref else None)
        base_rss = mk_rss or (ref[1] if ref else None)
        src = "mergekit same run" if mk_wall else ("mergekit PERF_NOTES" if ref else None)
        # judged only against mergekit in this run at full size: PERF_NOTES' figure is another run's
        # (its machine's load then), and --quick's tiny merge measures mergekit's start-up, not a merge
        judged = not rc and not quick and mk_wall is not None
        met_t = wall * 3 <= mk_wall if judged else None
        met_m = rss < mk_rss if judged else None
        models = {"slerp": "2 models", "linear": "3 models"}.get(m, "base+3")  # what config_yaml merges
        rows.append(benchtools.row(f"merge {m}, {size}, {models} f32 (jaxinterp)", wall, "s",
                                   goal="3x faster than mergekit", met=met_t,
                                   reference=f"{base_wall:.1f} s ({src})" if base_wall else None))
        rows.append(benchtools.row(f"merge {m} peak RSS (jaxinterp)", rss, "GB", goal="below mergekit", met=met_m,
                                   reference=f"{base_rss:.2f} GB ({src})" if base_rss else None))
        if mk_wall:
            rows.append(benchtools.row(f"merge {m} (mergekit-yaml, same run)", mk_wall, "s"))
            rows.append(benchtools.row(f"merge {m} peak RSS (mergekit-yaml, same run)", mk_rss, "GB"))
        if ref:
            rows.append(benchtools.row(f"merge {m} (mergekit 0.1.5, PERF_NOTES)", ref[0], "s"))
            rows.append(benchtools.row(f"merge {m} peak RSS (mergekit 0.1.5, PERF_NOTES)", ref[1], "GB"))


def _remove_tree(path: Path) -> None:
    """Removes the benchmark's own output folder `path` (a link or file of that name: the entry only)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def max_abs_diff(a: Path, b: Path) -> float:
    """max |a - b| over a's model.safetensors against every tensor of the files in folder b; a
    ValueError when a tensor is in two of b's files (which one is this run's is unknown)."""
    from safetensors import safe_open

    worst = 0.0
    fb = atomic.visible_files(b, "*.safetensors")  # not a killed write's hidden temporary
    with safe_open(str(a / "model.safetensors"), framework="numpy") as fa:
        handles = [safe_open(str(f), framework="numpy") for f in fb]
        where: dict = {}
        for f, h in zip(fb, handles):
            for k in h.keys():
                if k in where:
                    raise ValueError(f"{b}: expected each tensor in one file, got {k!r} in {where[k][0].name} "
                                     f"and {f.name} (shards of another run?)")
                where[k] = (f, h)
        where = {k: h for k, (_, h) in where.items()}
        if not where:
            raise ValueError(f"{b}: expected mergekit's merged model (*.safetensors files), found no tensors")
        for k in fa.keys():
            kb = k if k in where else k.removeprefix("transformer.")
            if kb not in where:
                kb = "transformer." + k
            if kb not in where:
                raise ValueError(f"{b}: expected the tensor {k!r} (or {k.removeprefix('transformer.')!r}) of {a}, "
                                 f"not in its files")
            x, y = fa.get_tensor(k), where[kb].get_tensor(kb)
            if x.shape != y.shape:  # numpy broadcast [D] against [N, D] and compared something
                raise ValueError(f"{b}: expected {kb!r} of shape {list(x.shape)} as in {a}, got {list(y.shape)}")
            worst = max(worst, float(np.max(np.abs(x - y))))
    return worst


GOAL_MLP = ((64, 128, 128, 10), 450)  # the demo's digits MLP on its 450 test examples


def barrier_workload(sizes: tuple[int, ...], n: int):
    """Two MLPs, a batch of n examples, 25 alphas, and the loop a researcher writes (Li et al.'s
    loss-landscape code does this): interpolate the params in Python, op by op, then evaluate a
    jitted loss."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.merge import mlp

    pa, pb = mlp.init(jax.random.PRNGKey(0), sizes), mlp.init(jax.random.PRNGKey(1), sizes)
    rng = np.random.default_rng(0)
    batch = (jnp.asarray(rng.normal(size=(n, 64)), jnp.float32), jnp.asarray(rng.integers(0, 10, n), jnp.int32))
    loss = jax.jit(mlp.loss)

    def eager_loop():
        out = []
        for a in np.linspace(0.0, 1.0, 25, dtype=np.float32):
            p = jax.tree.map(lambda x, y: (1 - a) * x + a * y, pa, pb)
            out.append(loss(p, batch))
        return jnp.stack(out)

    return pa, pb, batch, jnp.linspace(0.0, 1.0, 25), eager_loop


def barrier_mesh_child(quick: bool) -> None:
    """In a process whose CPU is split into one host device per core (set before JAX starts): the
    compiled call on one device, the alphas split over all of them (`mesh=`; params and batch as
    created, on device 0, and placed on every device beforehand with `parallel.replicate`), and the
    eager loop, interleaved; prints RESULT{json} of their medians in ms."""
    from jaxinterp import hostmem, parallel

    hostmem.retain_freed_memory(one_arena=False)  # an arena per device thread (hostmem says why)
    from jaxinterp.merge import landscape, mlp

    pa, pb, batch, alphas, eager_loop = barrier_workload(*GOAL_MLP)
    mesh = parallel.make_mesh()
    placed = parallel.replicate((pa, pb, batch, alphas), mesh)
    t = benchtools.time_interleaved({
        "vm": lambda: landscape.path_losses(mlp.loss, pa, pb, batch, alphas),
        "mesh": lambda: landscape.path_losses(mlp.loss, pa, pb, batch, alphas, mesh=mesh),
        "mesh_placed": lambda: landscape.path_losses(mlp.loss, *placed, mesh=mesh),
        "eager": eager_loop}, repeats=5 if quick else 20)
    print("RESULT" + json.dumps({"devices": mesh.devices.size, **{k: v.median_s * 1e3 for k, v in t.items()}}))


def bench_barrier_mesh(args, rows: list) -> None:
    """The goal workload with the alphas split over one host device per core (`jaxinterp.parallel`),
    in a child process: XLA's compiled call runs on one core, so this is how it uses the CPU."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    wl = f"barrier, 25 alphas, MLP {'-'.join(map(str, GOAL_MLP[0]))}, {GOAL_MLP[1]} examples"
    if cores < 2:
        return
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={cores}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, __file__, "--_barrier_mesh"] + (["--quick"] if args.quick else []),
                         env=env, capture_output=True, text=True)
    if out.returncode or "RESULT" not in out.stdout:
        print(f"barrier mesh child failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return
    r = json.loads(out.stdout.split("RESULT", 1)[1].splitlines()[0])
    d = r["devices"]
    rows.append(benchtools.row(f"{wl}: one compiled call, alphas split over {d} host devices (mesh=)",
                               r["mesh"], "ms"))
    rows.append(benchtools.row(f"{wl}: the same, params and batch placed on every device beforehand "
                               "(parallel.replicate)", r["mesh_placed"], "ms"))
    rows.append(benchtools.row(f"{wl}: the same process, one compiled call on one device", r["vm"], "ms"))
    rows.append(benchtools.row(f"{wl}: the same process, eager-interpolation loop", r["eager"], "ms"))
    sp = r["eager"] / r["mesh_placed"]
    rows.append(benchtools.row(f"{wl}: speed-up over the eager-interpolation loop, alphas over {d} host devices "
                               "(placed)", sp, "x", goal=">= 5x", met=sp >= 5))


def bench_barrier(args, rows: list) -> None:
    """Landscape-sized workload (the demo's digits MLP on the 450 test examples) with the goal, and a
    compute-bound one for information: there no call structure can beat the arithmetic."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.merge import landscape, mlp

    for (sizes, n), goal in ((GOAL_MLP, True), (((64, 512, 512, 10), 4096), False)):
        pa, pb, batch, alphas, eager_loop = barrier_workload(sizes, n)
        reps = 5 if args.quick else 20
        one = jax.jit(lambda a: mlp.loss(landscape.lerp(pa, pb, a), batch))  # interpolation inside the jit
        # interleaved (vm, eager, loop, vm, ...): the speed-ups are ratios of these, and timed one block
        # after the other they compared the machine's load in one second with its load in another
        t = benchtools.time_interleaved({
            "vm": lambda: landscape.path_losses(mlp.loss, pa, pb, batch, alphas),
            "eager": eager_loop,
            "loop": lambda: jnp.stack([one(a) for a in alphas])}, repeats=reps)
        vm, eager, loop = t["vm"], t["eager"], t["loop"]
        wl = f"barrier, 25 alphas, MLP {'-'.join(map(str, sizes))}, {n} examples"
        rows.append(benchtools.row(f"{wl}: one compiled call (landscape.path_losses)", vm.median_s * 1e3, "ms"))
        rows.append(benchtools.row(f"{wl}: Python loop, eager tree_map interpolation + jitted loss",
                                   eager.median_s * 1e3, "ms"))
        rows.append(benchtools.row(f"{wl}: Python loop of fully jitted per-alpha calls (interpolation + loss)",
                                   loop.median_s * 1e3, "ms"))
        sp = eager.median_s / vm.median_s
        rows.append(benchtools.row(f"{wl}: speed-up over the eager-interpolation loop", sp, "x",
                                   goal=">= 5x" if goal else None, met=(sp >= 5) if goal else None))
        rows.append(benchtools.row(f"{wl}: speed-up over the fully jitted loop (dispatch only; not the goal)",
                                   loop.median_s / vm.median_s, "x"))


def main() -> None:
    if sys.argv[1:2] == ["--_make"]:  # helper child: write the checkpoints
        make_checkpoints(Path(sys.argv[2]), **json.loads(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--_diff"]:  # helper child: max |a - b| over every tensor
        print(max_abs_diff(Path(sys.argv[2]), Path(sys.argv[3])))
        return
    if sys.argv[1:2] == ["--_barrier_mesh"]:  # helper child: the barrier over host devices
        barrier_mesh_child(quick="--quick" in sys.argv[2:])
        return
    p = benchtools.parser(__doc__.splitlines()[0])
    p.add_argument("--mergekit", help="path to mergekit's `mergekit-yaml` (or set $MERGEKIT_YAML)")
    p.add_argument("--workdir", type=output_folder,
                   help="folder for the checkpoints (kept between runs); default a temp folder, removed after the run")
    p.add_argument("--skip-merges", action="store_true", help="only the barrier part")
    args = p.parse_args()
    # else silently measured without mergekit (its goals then unjudged)
    # a file that is not executable failed with PermissionError after jaxinterp's merges had run
    for what, path in (("argument --mergekit", args.mergekit),
                       ("$MERGEKIT_YAML", None if args.mergekit else os.environ.get("MERGEKIT_YAML"))):
        if path and not _runnable(path):
            why = "not executable" if Path(path).is_file() else "no such file"
            p.error(f"{what}: expected the path of mergekit-yaml, got {path} ({why})")
    rows: list = []
    if not args.skip_merges:
        bench_merges(args, rows)
    bench_barrier(args, rows)
    bench_barrier_mesh(args, rows)
    benchtools.report("merge", rows, args.json)


if __name__ == "__main__":
    main()
