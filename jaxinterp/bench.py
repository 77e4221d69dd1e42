"""`jaxinterp bench [--quick] [--out DIR]`: every script in benchmarks/ on the devices present.

Each script runs in its own process (so one's compile caches and memory do not colour another's)
with `--json`; their rows are gathered into one table and DIR/bench.json, with the machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from jaxinterp.cliargs import output_folder


def benchmarks_dir() -> Path:
    here = Path(__file__).resolve().parents[1] / "benchmarks"
    if not here.is_dir():
        raise ValueError(f"benchmarks/ not found: expected it at {here} (run from a source checkout)")
    return here


def scripts(only: list[str] | None = None) -> list[Path]:
    from jaxinterp.checks import select_by_parts

    found = {p.stem: p for p in sorted(benchmarks_dir().glob("*.py")) if not p.name.startswith("_")}
    return [found[name] for name in select_by_parts(only, list(found), "script")]


def _check_own_file(path: Path, keys: set[str]) -> None:
    """A ValueError unless `path` is absent or the JSON an earlier bench run wrote there (a dict with
    `keys`): the run removes each script's JSON and replaces bench.json, and a file of the user's of
    the same name (merge.json in the folder given as --out) was deleted or replaced without a word."""
    if not path.exists():
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        data = None
    if not isinstance(data, dict) or not keys <= data.keys():
        raise ValueError(f"out_dir: expected a new folder or one an earlier `jaxinterp bench` wrote, got "
                         f"{path.parent} holding a {path.name} that is not a benchmark result (it would be "
                         f"replaced: move it, or give another --out)")


def run(out_dir: str | Path, *, quick: bool, only: list[str] | None = None, progress: bool = True) -> dict:
    """Runs the scripts (those whose name contains a part of `only`), each in a process of its own,
    with a progress bar over them on stderr (`progress`); writes out_dir/<script>.json and bench.json."""
    from tqdm import tqdm

    from jaxinterp import atomic, benchtools

    todo = scripts(only)  # bad `only` refused before the folder is made
    out_dir = Path(out_dir)
    # before any script runs: the files this run removes or replaces are an earlier run's, or absent
    _check_own_file(out_dir / "bench.json", {"machine", "benchmarks"})
    for script in todo:
        _check_own_file(out_dir / f"{script.stem}.json", {"benchmark", "machine", "rows"})
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"machine": None, "quick": quick, "benchmarks": []}
    # the suite runs for minutes with nothing else telling how far it is (stderr: stdout is the table)
    bar = tqdm(total=len(todo), desc="bench", unit="script", file=sys.stderr, disable=not progress)
    for script in todo:
        bar.set_postfix_str(script.stem, refresh=False)
        json_path = out_dir / f"{script.stem}.json"
        # a previous run's file would be read as this run's figures (or left beside a FAILED entry)
        json_path.unlink(missing_ok=True)
        cmd = [sys.executable, str(script), "--json", str(json_path)] + (["--quick"] if quick else [])
        tqdm.write(f"== {script.name}", file=sys.stdout)  # above the bar, not through it
        sys.stdout.flush()  # before the script's own output
        bar.clear()  # which starts on a line of its own, not after the bar's
        t0 = time.perf_counter()
        proc = subprocess.run(cmd)
        entry = {"script": script.name, "returncode": proc.returncode, "wall_s": time.perf_counter() - t0}
        if proc.returncode == 0 and json_path.exists():
            entry.update(json.loads(json_path.read_text()))
        results["benchmarks"].append(entry)
        bar.update(1)  # redrawn below the script's output: scripts done, time taken, time left
    bar.close()
    # read once the scripts are done: naming the devices starts JAX's backend in this process, and
    # on a GPU that preallocates 75% of its memory, which every script would then run without
    results["machine"] = benchtools.machine()
    atomic.write_text(out_dir / "bench.json", json.dumps(results, indent=2, allow_nan=False))
    return results


def table(results: dict) -> str:
    from jaxinterp import benchtools

    lines = [f"{'workload':<58} {'figure':>12} {'unit':<10} {'goal':<22} {'reference':<26} met"]
    for b in results["benchmarks"]:
        if b["returncode"] != 0:
            lines.append(f"{b['script']:<58} FAILED (exit {b['returncode']})")
        elif "rows" not in b:
            lines.append(f"{b['script']:<58} FAILED (exit 0, but no JSON written)")
        for r in b.get("rows", []):
            met = {True: "yes", False: "NO", None: "-"}[r["met"]]
            lines.append(f"{r['workload']:<58} {benchtools.figure_text(r['figure']):>12} {r['unit']:<10} "
                         f"{r['goal'] or '-':<22} "
                         f"{r['reference'] or '-':<26} {met}")
    return "\n".join(lines)


def _command(args) -> int:
    results = run(args.out, quick=args.quick, only=args.only)
    from jaxinterp import benchtools

    print(f"\n# jaxinterp bench on {benchtools.machine_line()}")
    print(table(results))
    print(f"\nwrote {Path(args.out) / 'bench.json'}")
    return 1 if any(b["returncode"] != 0 or "rows" not in b for b in results["benchmarks"]) else 0


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run the benchmark suite; print one table; write bench.json")
    p.add_argument("--quick", action="store_true", help="small sizes; under 3 minutes on 2 cores")
    p.add_argument("--out", default="bench_out", type=output_folder, help="output folder (default bench_out)")
    # nargs "+": `--only` with no name (an empty shell variable) is refused, not a run of the whole suite
    p.add_argument("--only", nargs="+", help="only the scripts whose name contains one of these")
    p.set_defaults(func=_command)
