"""Attention Lens training step: jaxinterp's (chunked vocabulary, heads stacked in one matmul, last
token only) against a straightforward one (a Python loop over heads materialising every head's
logits at every position, [B, P, H, V], then the KL at the last position, as the original
LensA/LightningLens did; its backward pass and its Adam step are two jits, as `loss.backward()`
and `optimizer.step()` are), both with optax Adam and donated state. jaxinterp also runs with Adam's
moments stored in bfloat16 (`lens train --adam-moments bfloat16`; weights and arithmetic float32).

GPT-2 small architecture with random weights (the hub is out of reach), the 12 lenses of layer 6,
batch 4 x 128 tokens. Each implementation runs in its own subprocess so that its peak memory (peak
RSS, ru_maxrss) is its own. --quick: a small GPT-2 (vocab 8192, d_model 256, 4 heads), batch 2 x 64;
its figures are shown, the goals (set for GPT-2 small) judged on the full run only.
"""

from __future__ import annotations

import json
import subprocess
import sys

IMPLS = ("jaxinterp", "jaxinterp_bf16_moments", "jaxinterp_all_positions", "straightforward")


def _sizes(quick: bool):
    from jaxinterp.transformer import gpt2

    if quick:
        return gpt2.GPT2Config(vocab_size=8192, n_positions=128, n_embd=256, n_layer=2, n_head=4), 1, 2, 64
    return gpt2.GPT2Config(), 6, 4, 128  # GPT-2 small, layer 6, batch 4 x 128


def naive_step(model_config, layer, tx):
    """The straightforward step: per-head logits at every position, stacked, summed, KL at the last one.

    As the original runs it: the backward pass (one jit: GPT-2 forward, the Python loop over heads,
    the gradient) and then the optimiser step (a second jit, updating the lens and Adam state in
    place), like `loss.backward(); optimizer.step()`. In one jit, XLA:CPU fuses Adam into the twelve
    per-head weight gradients and keeps 20.9 GiB of temporaries (GPT-2 small): more than this
    machine has, which measures XLA's scheduling rather than the algorithm.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jaxinterp.transformer import gpt2

    def backward(lens, model_params, tokens, mask):
        name = f"blocks.{layer}.attn.hook_result"
        resid = gpt2.embed(model_params, tokens, mask, config=model_config)
        final, cache = gpt2.blocks(model_params, resid, mask, config=model_config, names=(name,))
        logits = jax.lax.stop_gradient(gpt2.unembed(model_params, final, config=model_config))  # (B, P, V)
        result = jax.lax.stop_gradient(cache[name])  # (B, P, H, D)

        def loss_fn(lens):
            heads = [result[:, :, h] @ lens["W"][h] + lens["b"][h] for h in range(model_config.n_head)]
            lens_logits = jnp.stack(heads, axis=2).sum(2)  # (B, P, H, V) -> (B, P, V)
            logp = jax.nn.log_softmax(logits[:, -1], -1)
            logq = jax.nn.log_softmax(lens_logits[:, -1], -1)
            return (jnp.exp(logp) * (logp - logq)).sum(-1).mean()  # KLDivLoss(batchmean, log_target)

        return jax.value_and_grad(loss_fn)(lens)

    def update(state, grads):
        lens, opt_state = state
        updates, opt_state = tx.update(grads, opt_state, lens)
        return optax.apply_updates(lens, updates), opt_state

    backward, update = jax.jit(backward), jax.jit(update, donate_argnums=(0, 1))

    def step(state, model_params, tokens, mask):
        loss, grads = backward(state[0], model_params, tokens, mask)
        return update(state, grads), loss

    step.parts = (backward, update)
    return step


def child(impl: str, quick: bool) -> dict:
    """Runs in a subprocess: times one implementation's step and reports its peak RSS."""
    import resource
    import time

    import jax
    import numpy as np

    from jaxinterp import benchtools
    from jaxinterp.lens import lenses, objective, train
    from jaxinterp.transformer import gpt2

    cfg, layer, B, P = _sizes(quick)
    params = gpt2.init(jax.random.key(0), cfg)
    lc = lenses.lens_config_for(cfg, layer)
    # `lens train --adam-moments bfloat16`: Adam's moments in bfloat16 (stochastically rounded)
    tx = train.optimizer(1e-3, "bfloat16" if impl.endswith("bf16_moments") else "float32")
    lens = lenses.init(*lenses.unembedding(params, cfg), lc)
    state = (lens, tx.init(lens))
    rng = np.random.default_rng(0)
    tokens = jax.numpy.asarray(rng.integers(0, cfg.vocab_size, (B, P)), jax.numpy.int32)
    mask = jax.numpy.ones((B, P), jax.numpy.int32)
    if impl == "straightforward":
        step = naive_step(cfg, layer, tx)
        call = lambda s: step(s, params, tokens, mask)  # noqa: E731
    else:
        mode = "all" if impl.endswith("all_positions") else "last"
        step = jax.jit(train.make_step(cfg, lc, objective.Objective(mode), tx, 1, fused_adam_lr=1e-3),
                       donate_argnums=(0,))  # as `jaxinterp lens train` runs it: Adam inside the backward pass
        w = jax.numpy.ones((B,), jax.numpy.float32)
        state = train.TrainState(*state)
        call = lambda s: step(s, params, tokens, mask, w)  # noqa: E731

    t0 = time.perf_counter()
    if impl == "straightforward":  # two jits: the backward pass, then Adam on its gradient
        backward, update = step.parts
        grads = jax.eval_shape(backward, state[0], params, tokens, mask)[1]
        compiled = [backward.lower(state[0], params, tokens, mask).compile(), update.lower(state, grads).compile()]
    else:
        compiled = [step.lower(state, params, tokens, mask, w).compile()]
    compile_s = time.perf_counter() - t0
    analyses = [c.memory_analysis() for c in compiled]
    xla_gib = None
    if None not in analyses:
        live = [ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes
                for ma in analyses]
        if impl == "straightforward":  # the Adam state stays alive while the backward pass runs
            live[0] += sum(np.size(x) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state[1]))
        xla_gib = max(live) / 2**30
    print("XLA" + json.dumps({"xla_gib": xla_gib}), flush=True)  # reaches the parent even if the run is killed
    holder = [state]

    def run():
        holder[0], loss = call(holder[0])
        return loss

    t = benchtools.time_fn(run, repeats=5 if not quick else 3)  # a median of 5 (two would be their mean)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"impl": impl, "step_s": t.median_s, "compile_s": compile_s, "peak_gib": peak_gib, "xla_gib": xla_gib,
            "lens_params": int(sum(np.size(x) for x in jax.tree.leaves(lens))), "platform": jax.devices()[0].platform}


def main() -> None:
    from jaxinterp import benchtools
    from jaxinterp.cliargs import positive_float

    p = benchtools.parser(__doc__.splitlines()[0])
    p.add_argument("--child", choices=IMPLS, help=argparse_help())
    p.add_argument("--max-gib", type=positive_float, help="stop a run past this RSS (default 85%% of available memory)")
    args = p.parse_args()
    if args.child:
        print("RESULT" + json.dumps(child(args.child, args.quick)))
        return
    budget = args.max_gib or 0.85 * _available_gib()
    res = {impl: _run_child(impl, args.quick, budget) for impl in IMPLS}
    ours, all_pos, naive = res["jaxinterp"], res["jaxinterp_all_positions"], res["straightforward"]
    half = res["jaxinterp_bf16_moments"]
    what = "GPT-2 small, 12 lenses of layer 6, 4x128" if not args.quick else "quick GPT-2, 4 lenses, 2x64"
    speedup = naive["step_s"] / ours["step_s"]
    # None where XLA gave no memory analysis (or a run was stopped before it printed one): not measured
    xla_ratio = ours["xla_gib"] / naive["xla_gib"] if ours["xla_gib"] and naive["xla_gib"] else None
    killed = " (killed at the memory budget: a lower bound)" if naive.get("killed") else ""

    def judged(ok: bool | None) -> bool | None:
        """The goals are set for GPT-2 small's 12 lenses at 4x128: --quick's small model is shown, not
        judged by them (its peak RSS is mostly the runtime's own, so <= 0.5x could never be met)."""
        return None if args.quick or ok is None else bool(ok)

    # peak RSS is host memory: on an accelerator the step's memory is the device's, which the XLA
    # buffer rows measure (and judge); there the RSS rows are shown for information only
    on_host = ours.get("platform", "cpu") == "cpu"
    host_note = "" if on_host else " (host memory; the device's: XLA buffers)"

    def rss_ratio(num: dict, den: dict) -> tuple[float, str, bool | None]:
        """num's peak RSS / den's, the note on what it is, and the <= 0.5 verdict where the figures
        decide it. A run stopped at the memory budget reached at least its peak: stopped in the
        denominator the ratio is an upper bound (a figure above 0.5 decides nothing; it read NOT met),
        in the numerator a lower bound (one at or below 0.5 decides nothing), in both neither."""
        r = num["peak_gib"] / den["peak_gib"]
        upper, lower = bool(den.get("killed")), bool(num.get("killed"))
        note = {(True, False): " (straightforward stopped at the memory budget: an upper bound)",
                (False, True): " (jaxinterp stopped at the memory budget: a lower bound)",
                (True, True): " (both stopped at the memory budget: not measured)"}.get((upper, lower), "")
        ok = r <= 0.5
        decided = not (upper and lower) and (ok if upper else not ok if lower else True)
        return r, note, judged(ok if decided and on_host else None)

    mem_ratio, mem_note, mem_met = rss_ratio(ours, naive)
    half_ratio, half_note, half_met = rss_ratio(half, naive)

    rows = [
        benchtools.row(f"lens train step, jaxinterp ({what})", ours["step_s"], "s/step"),
        benchtools.row(f"lens train step, straightforward ({what}){killed}", naive["step_s"], "s/step"),
        benchtools.row("lens train step speed-up vs straightforward", speedup, "x", goal=">= 3x",
                       met=judged(None if killed else speedup >= 3)),
        benchtools.row(f"lens train peak RSS, jaxinterp ({what})", ours["peak_gib"], "GiB"),
        benchtools.row(f"lens train peak RSS, straightforward ({what}){killed}", naive["peak_gib"], "GiB"),
        benchtools.row(f"lens train peak RSS, jaxinterp / straightforward{host_note}{mem_note}", mem_ratio, "ratio",
                       goal="<= 0.5", met=mem_met),
        benchtools.row(f"lens train XLA buffers (args+temp+out), jaxinterp ({what})", ours["xla_gib"], "GiB"),
        benchtools.row(f"lens train XLA buffers (args+temp+out), straightforward ({what})", naive["xla_gib"], "GiB"),
        benchtools.row("lens train XLA buffers, jaxinterp / straightforward", xla_ratio, "ratio", goal="<= 0.5",
                       met=judged(None if xla_ratio is None else xla_ratio <= 0.5)),
        benchtools.row(f"lens train step, jaxinterp, bfloat16 Adam moments ({what})", half["step_s"], "s/step"),
        benchtools.row("lens train step speed-up vs straightforward, bfloat16 Adam moments",
                       naive["step_s"] / half["step_s"], "x", goal=">= 3x",
                       met=judged(None if killed else naive["step_s"] / half["step_s"] >= 3)),
        benchtools.row(f"lens train peak RSS, jaxinterp, bfloat16 Adam moments ({what})", half["peak_gib"], "GiB"),
        benchtools.row(f"lens train peak RSS, jaxinterp with bfloat16 Adam moments / straightforward{host_note}"
                       f"{half_note}", half_ratio, "ratio", goal="<= 0.5", met=half_met),
        benchtools.row(f"lens train step, jaxinterp all positions ({what})", all_pos["step_s"], "s/step"),
        benchtools.row(f"lens train peak RSS, jaxinterp all positions ({what})", all_pos["peak_gib"], "GiB"),
        benchtools.row("lens train compile, jaxinterp", ours["compile_s"], "s", goal="< 30 s",
                       met=judged(ours["compile_s"] < 30)),
    ]
    benchtools.report("lens_train", rows, args.json)


def _available_gib() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) / 2**20
    return 16.0


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _run_child(impl: str, quick: bool, budget_gib: float) -> dict:
    """Runs one implementation in a subprocess, watching its RSS: past `budget_gib` it is stopped
    (rather than letting the kernel's OOM killer pick a process of this shared machine)."""
    import tempfile
    import time

    cmd = [sys.executable, __file__, "--child", impl] + (["--quick"] if quick else [])
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
        peak, killed = 0.0, False
        while proc.poll() is None:
            peak = max(peak, _rss_gib(proc.pid))
            if peak > budget_gib:
                proc.kill()
                killed = True
            time.sleep(0.05)
        out.seek(0)
        text = out.read()
    r = _tagged(text, "RESULT")
    if r is not None:
        r["peak_gib"] = max(r["peak_gib"], peak)
        return r
    if not killed:
        raise SystemExit(f"{impl} failed:\n{text[-4000:]}")
    xla = (_tagged(text, "XLA") or {}).get("xla_gib")
    print(f"# {impl}: stopped at {peak:.1f} GiB RSS (budget {budget_gib:.1f} GiB)", file=sys.stderr)
    return {"impl": impl, "step_s": float("nan"), "compile_s": float("nan"), "peak_gib": peak, "xla_gib": xla,
            "killed": True}


def _tagged(text: str, tag: str) -> dict | None:
    """The JSON object the child printed after `tag` ("RESULT{...}", "XLA{...}"), or None.

    Found by `tag{`, to the end of its line: the child's stderr is in the same text, and a log line
    that merely mentions XLA (JAX's warnings about XLA_FLAGS, a GPU's "XLA service ... initialized")
    came first and was parsed instead (a JSONDecodeError in place of the killed run's figures)."""
    i = text.find(tag + "{")
    return None if i < 0 else json.loads(text[i + len(tag):].splitlines()[0])


def argparse_help() -> str:
    return "internal: run one implementation and print its figures"


if __name__ == "__main__":
    main()
