"""Shared pieces of the benchmark scripts in `benchmarks/`: timing, the machine, the JSON rows.

Every benchmark prints its figures and, with `--json PATH`, writes

    {"benchmark": NAME, "machine": {...}, "rows": [ROW, ...]}

where a ROW is {"workload", "figure", "unit", "goal", "reference", "met"}; `jaxinterp bench`
gathers the rows of every script into one table and `bench.json`. The JSON is strict: a figure that
could not be measured (a run killed at its memory budget, a ratio with nothing to divide) is null,
not NaN, which json.dumps would write and other readers (jq, JavaScript) refuse.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from typing import Any, Callable, NamedTuple

from jaxinterp import atomic
from jaxinterp.checks import is_integer
from jaxinterp.cliargs import output_file


class Timing(NamedTuple):
    compile_s: float  # first call (trace + compile + one run)
    median_s: float  # median of `repeats` later calls
    min_s: float
    repeats: int


def block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def time_fn(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1,
            clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Times `fn()` (which must return device arrays): first call apart, then the median of repeats.

    `warmup`: untimed calls before the repeats, the first (compiling) one included.
    `clock`: wall time by default; `time.process_time` gives the process's CPU time (all threads),
    steadier than wall time on a shared machine."""
    _check_repeats(repeats)
    # before the first (compiling) call too: 2.5 was a TypeError from range() after it, and 0 or -1
    # were taken silently as 1 (the first call is always one untimed call)
    if not is_integer(warmup) or warmup < 1:
        raise ValueError(f"warmup: expected a positive integer (untimed calls, the compiling first one "
                         f"included), got {warmup!r}")
    t0 = clock()
    block(fn())
    compile_s = clock() - t0
    for _ in range(warmup - 1):
        block(fn())
    times = []
    for _ in range(repeats):
        t0 = clock()
        block(fn())
        times.append(clock() - t0)
    return Timing(compile_s, statistics.median(times), min(times), repeats)


def time_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int = 5) -> dict[str, Timing]:
    """Times several functions round-robin (a, b, c, a, b, c, ...), first calls apart, medians each.

    On a shared machine the load drifts over seconds; interleaving gives every function the same
    drift, so their ratios stay meaningful where back-to-back blocks of repeats would not.
    """
    _check_repeats(repeats)
    compile_s = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        block(fn())
        compile_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(compile_s[name], statistics.median(t), min(t), repeats) for name, t in times.items()}


def _check_repeats(repeats) -> None:
    # before the first (compiling) call: 0 timed calls was statistics' "no median for empty data"
    # after it, and 2.5 a TypeError from range()
    if not is_integer(repeats) or repeats < 1:
        raise ValueError(f"repeats: expected a positive integer, got {repeats!r}")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine a figure was measured on: CPU, cores, accelerators, library versions."""
    import jax
    import jaxlib

    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        # what this process may run on (taskset, a container's cpuset): XLA's threads follow it
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": devices[0].platform,
        "devices": [d.device_kind for d in devices],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "python": platform.python_version(),
    }


def machine_line() -> str:
    """One line: "AMD EPYC (2 cores), jax 0.10.2 on the CPU" or "..., jax 0.10.2 on gpu: NVIDIA H100"."""
    m = machine()
    n = len(m["devices"])
    if m["platform"] == "cpu":
        where = "the CPU" + (f" ({n} host devices)" if n > 1 else "")
    else:
        where = f"{m['platform']}: {', '.join(m['devices'])}"
    cores = f"{m['cores']} cores" if m["cores_usable"] == m["cores"] else f"{m['cores_usable']} of {m['cores']} cores"
    return f"{m['cpu']} ({cores}), jax {m['jax']} on {where}"


def row(workload: str, figure: float | None, unit: str, *, goal: str | None = None,
        reference: str | None = None, met: bool | None = None) -> dict[str, Any]:
    """One row; a figure that was not measured (None, NaN or inf) is stored as null, and so is its
    verdict: a goal cannot be met or missed by a figure that does not exist (NaN >= 3 is False, so a
    ratio with a killed run in it read "NOT met")."""
    figure = None if figure is None or not math.isfinite(float(figure)) else float(figure)
    met = None if figure is None or met is None else bool(met)
    return {"workload": workload, "figure": figure, "unit": unit, "goal": goal, "reference": reference, "met": met}


def figure_text(figure: float | None) -> str:
    """A row's figure for a table: 5 significant digits, or "n/a" where it was not measured."""
    return "n/a" if figure is None else f"{figure:.5g}"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", metavar="PATH", type=output_file, help="write the rows and the machine as JSON here")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    return p


def report(name: str, rows: list[dict[str, Any]], json_path: str | None) -> None:
    """Prints the rows as a table and writes the JSON (atomically) when asked."""
    print(f"# {name} on {machine_line()}")
    for r in rows:
        met = {True: "met", False: "NOT met", None: ""}[r["met"]]
        goal = f"goal {r['goal']}" if r["goal"] else ""
        ref = f"ref {r['reference']}" if r["reference"] else ""
        print(f"{r['workload']:<58} {figure_text(r['figure']):>12} {r['unit']:<10} {goal:<22} {ref:<24} {met}")
    if json_path:
        atomic.write_text(json_path, json.dumps({"benchmark": name, "machine": machine(), "rows": rows}, indent=2,
                                                allow_nan=False))
