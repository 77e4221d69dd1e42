"""Evaluating a trained NuGraph2: metrics, confusion matrices and event displays, and the shipped model.

A trained model is two files: `model.npz` (params, flat 'a/b/c' names) and `model.json` (the
NuGraph2Config, the per-plane feature norm of its training file, provenance, and `npz_sha256`, the
hash of the model.npz written with it). `train` writes them into its run folder, `convert` from an
official checkpoint (with the norm of a processed file, `--norm`); the package ships one in
`jaxinterp/assets/nugraph2/` (`load_model()`); a model.json from before the hash loads unchecked.

Events are normalised with the model's own norm (what it was trained with), so a model applies to
any file or freshly simulated events alike.

Axis names: N hits of a plane, C classes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import time
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from jaxinterp import atomic
from jaxinterp.nugraph import hdf5, metrics
from jaxinterp.nugraph.event import NUM_FEATURES, Event
from jaxinterp.nugraph.model import NuGraph2Config

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "nugraph2"


class Model(NamedTuple):
    params: dict
    config: NuGraph2Config
    norm: dict  # plane -> [2, 4] (mean, std) of (wire cm, time cm, integral, rms)
    meta: dict  # everything else model.json holds (training command, held-out metrics, ...)
    npz_sha256: str | None = None  # sha256 of the model.npz load_model read: what an evaluation records


def load_model(path: str | Path | None = None, *, arg: str = "params") -> Model:
    """Loads model.npz + model.json from a folder (a train run, or the shipped asset folder by default).

    arg: the argument `path` came from, which each error names (`train --init` passes "--init": its
    errors named "params", an argument that command does not have)."""
    folder = ASSET_DIR if path is None else Path(path)
    if folder.is_file():
        folder = folder.parent
    npz, js = folder / "model.npz", folder / "model.json"
    for f in (npz, js):
        if not f.exists() and (folder / "run.json").is_file():
            # a run still training, stopped (--max-steps, killed) or killed between its model's two files:
            # "expected model.npz in RUN (a `nugraph train` run folder)" of a run folder said nothing of that
            ckpts = folder / "checkpoints"
            steps = sorted(int(c.name) for c in ckpts.iterdir() if c.name.isdigit()) if ckpts.is_dir() else []
            last = f"its last checkpoint is at step {steps[-1]}" if steps else "it has no checkpoint yet"
            raise ValueError(f"{arg}: expected {f.name} in {folder}, not found: it is a `nugraph train` run folder "
                             f"whose run has not finished ({last}); run the same `nugraph train` command again "
                             f"to finish it (it resumes from its last checkpoint)")
        if not f.exists():
            raise ValueError(f"{arg}: expected {f.name} in {folder} (a `nugraph train` run folder), not found")
    try:
        desc = json.loads(js.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{arg}: {js} is not valid JSON ({e})") from None
    missing = [k for k in ("config", "norm") if not isinstance(desc, dict) or not isinstance(desc.get(k), dict)]
    if missing:
        raise ValueError(f"{arg}: {js} must hold the objects 'config' and 'norm' (as `nugraph train` and "
                         f"`nugraph convert` write them), missing or not an object: {missing}"
                         + (" (the norm is the per-plane feature mean and std the model was trained with; an "
                            "official checkpoint carries none: `jaxinterp nugraph convert CKPT OUT --norm "
                            "FILE.gnn.h5` takes it from the processed file)" if "norm" in missing else ""))
    data = npz.read_bytes()  # read once: the bytes hashed are the bytes loaded
    recorded, got = desc.pop("npz_sha256", None), hashlib.sha256(data).hexdigest()
    if recorded is not None and recorded != got:  # None: a model.json written before the hash existed
        raise ValueError(f"{arg}: {npz} and {js.name} do not belong together: {js.name} records model.npz "
                         f"sha256 {recorded}, the file has {got} (a save interrupted between the two files, "
                         f"or one of them copied from another run)")
    cfg = desc.pop("config")
    fields = {f.name for f in dataclasses.fields(NuGraph2Config)}
    if set(cfg) - fields:
        raise ValueError(f"{arg}: {js} config has unknown keys {sorted(set(cfg) - fields)}; expected among "
                         f"{sorted(fields)}")
    try:  # NuGraph2Config's own error named neither the file nor that it came from its config
        config = NuGraph2Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    except (ValueError, TypeError) as e:
        raise ValueError(f"{arg}: {js} config: {e}") from None
    norm = {}
    for p, v in desc.pop("norm").items():
        try:  # numpy's "could not convert string to float" named neither the file nor the plane
            norm[p] = np.asarray(v, np.float32)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{arg}: {js} norm[{p!r}]: expected a [2, {NUM_FEATURES}] (mean, std) array of "
                             f"numbers, got {str(v)[:60]} ({e})") from None
    bad = [p for p in config.planes if p not in norm or norm[p].shape != (2, NUM_FEATURES)]
    if bad:
        raise ValueError(f"{arg}: {js} norm must hold a [2, {NUM_FEATURES}] (mean, std) array for each plane "
                         f"{list(config.planes)}; missing or misshapen: {bad}")
    for p in config.planes:  # std 0 or NaN (null) divided every event's features into inf/NaN, which
        # predict then blamed on the event ("field 'x': expected finite values")
        hdf5._check_norm_plane(norm[p], f"{arg}: {js} norm[{p!r}]")
    params: dict = {}
    with np.load(io.BytesIO(data)) as z:
        for name in z.files:
            node = params
            *parents, leaf = name.split("/")
            for k in parents:
                node = node.setdefault(k, {})
            arr = z[name]
            # a NaN (a diverged run's params) ran through predict without a word: every hit's scores
            # NaN, argmax class 0 and no hit kept, so eval printed MIP efficiency 100%, filter 0%
            if arr.dtype.kind != "f":
                raise ValueError(f"{arg}: {npz} entry {name!r}: expected floating-point values, got dtype {arr.dtype}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{arg}: {npz} entry {name!r}: expected finite values, got "
                                 f"{int(np.size(arr) - np.isfinite(arr).sum())} non-finite of {arr.size} "
                                 f"(a diverged training run?)")
            node[leaf] = arr
    from jaxinterp.nugraph.model import check_params

    check_params(params, config, where=f"{arg}: {npz} does not hold NuGraph2 params of the config in {js.name}")
    return Model(params, config, norm, desc, got)


def to_events(raws: Sequence[hdf5.RawEvent], model: Model) -> list[Event]:
    """The raw events normalised with the model's own norm (what it was trained with)."""
    if isinstance(raws, (hdf5.RawEvent, str, bytes, dict)) or not isinstance(raws, Iterable):
        raise ValueError(f"raws: expected a list of hdf5.RawEvent, got {type(raws).__name__}")
    raws = list(raws)
    for i, r in enumerate(raws):
        if not isinstance(r, hdf5.RawEvent):  # an AttributeError from to_event before
            raise ValueError(f"raws: expected hdf5.RawEvent records (read_events'), got {type(r).__name__} at index {i}")
    return [hdf5.to_event(r, model.norm, planes=model.config.planes) for r in raws]


class EvalResult(NamedTuple):
    metrics: metrics.Metrics
    counts: metrics.Counts
    predictions: list  # predict.Prediction per event
    # the jitted forward alone on the first batch (padded as predict pads it), per event, a median of
    # 3 calls: compile, checks, padding, the params' copy to the devices and the copy back excluded
    seconds_per_event: float


def evaluate(model: Model, events: Sequence[Event], *, batch_size: int = 32, progress: bool = False) -> EvalResult:
    """Runs the model on `events` (with labels) and accumulates the figures of merit (`progress`: a
    tqdm bar over the events)."""
    from jaxinterp.nugraph.predict import _checked_events, predict

    if not isinstance(model, Model):  # an AttributeError from inside before
        raise ValueError(f"model: expected an evaluate.Model (as load_model returns it), got {type(model).__name__}")
    events = _checked_events(events, model.config, "evaluate")
    if not events:
        raise ValueError("events: expected at least one event to evaluate, got none")
    for e in events:  # before the model runs over the set (a missing plane is predict's error)
        for p in model.config.planes:
            if p in e.planes and e.planes[p].y_semantic is None:
                raise ValueError(f"events: event {e.name!r}, plane {p!r} has no y_semantic labels to evaluate against")
    preds = predict(model.params, events, config=model.config, batch_size=batch_size, progress=progress)
    dt = _forward_seconds_per_event(model, events[:batch_size])
    counts = metrics.Counts.zeros(model.config.num_classes)
    for e, pr in zip(events, preds):
        for p in model.config.planes:
            counts = counts.add(e.planes[p].y_semantic, pr.semantic[p], pr.filter[p])
    return EvalResult(metrics.compute(counts, model.config.semantic_classes), counts, preds, dt)


def _forward_seconds_per_event(model: Model, chunk: list[Event]) -> float:
    """Wall seconds per event of the jitted forward on `chunk` (one of predict's chunks), padded to
    predict's bucket (compiled by its run) with params already on the devices: after one untimed
    call, the median of 3.

    A re-run of `predict` on the chunk counted its checks of every event and the params, the params'
    copy to the devices, the host-side padding and the copy back as inference."""
    import jax
    import jax.numpy as jnp

    from jaxinterp import benchtools, parallel
    from jaxinterp.nugraph import predict as _predict

    config = model.config
    mesh = parallel.make_mesh()
    d = mesh.devices.size
    params = parallel.replicate(jax.tree.map(jnp.asarray, model.params), mesh)
    dtype = np.dtype(jnp.promote_types(jnp.float32, jnp.result_type(*jax.tree.leaves(params))))  # as predict
    sizes = _predict._bucket_sizes([_predict._needed_sizes(chunk, d, config.planes)], config.planes, d)[0]
    batch = _predict.prepare(chunk, config=config, mesh=mesh, dtype=dtype, sizes=sizes, check=False)
    fn = _predict.forward(config)
    # compiled by predict's run: one warm call, then a median of 3 (one call slowed by another process
    # on a shared machine was the figure)
    t = benchtools.time_fn(lambda: fn(params, batch), repeats=3, clock=time.perf_counter)
    return t.median_s / len(chunk)


def predicted_labels(pred, planes: Sequence[str], *, threshold: float = 0.5) -> dict[str, np.ndarray]:
    from jaxinterp.nugraph.display import predicted_labels as labels

    return {p: labels(pred.semantic[p], pred.filter[p], threshold=threshold) for p in planes}


def check_out_dir(out_dir: str | Path, inputs: dict | None) -> None:
    """ValueError unless `write_outputs` may write into `out_dir` without losing anything saved there:
    the folder is new, or holds none of the files an evaluation writes (metrics.json, confusion_*.png,
    display_*.png), or holds those of an evaluation of the same `inputs` (file, split, model, limit:
    its metrics.json records them, the file with its size and mtime_ns), whose figures this one repeats. A training run's folder (run.json:
    its metrics.json is the validation history), another evaluation's figures or files of those names
    are refused, naming what is there."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():  # mkdir's bare FileExistsError in write_outputs before
        raise ValueError(f"out: expected a folder for metrics.json and the PNGs, got the file {out}")
    if not out.is_dir():
        return
    if (out / "run.json").exists():  # its metrics.json (now or once validated) is the run's history
        raise ValueError(f"out: {out} is a `nugraph train` run folder (it holds run.json), whose metrics.json is "
                         f"the run's validation history; expected a new folder or one an evaluation of the same "
                         f"inputs wrote (use a new --out folder)")
    ours = sorted(f.name for f in out.iterdir() if f.name == "metrics.json"
                  or (f.suffix == ".png" and f.name.startswith(("confusion_", "display_"))))
    if not ours:
        return
    before = None
    if (out / "metrics.json").is_file():
        try:
            before = json.loads((out / "metrics.json").read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    if not (isinstance(before, dict) and "semantic_counts" in before):
        what = "a training run's validation history" if isinstance(before, list) else "not an evaluation's"
        raise ValueError(f"out: {out} holds {ours[:5]}{' ...' if len(ours) > 5 else ''} ({what}), which this "
                         f"evaluation would overwrite; expected a new folder or one an evaluation of the same "
                         f"inputs wrote (use a new --out folder)")
    if before.get("inputs") != inputs:
        raise ValueError(f"out: {out} holds the results of another evaluation (inputs {before.get('inputs')}), this "
                         f"one's are {inputs}; its files would be overwritten (use a new --out folder)")


def display_file_name(event_name: str, taken: set[str]) -> str:
    """display_{name}.png for an event, one file name in the output folder: characters other than
    letters, digits, '.', '_' and '-' become '_' (a '/' in the name wrote into a subfolder, '../' out
    of the folder), long names are cut, and a name already in `taken` (which it joins) gets _2, _3, ...
    (two events whose names differ in such characters overwrote one display)."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", str(event_name or "event"))[:200]
    name, k = f"display_{stem}.png", 1
    while name in taken:
        k += 1
        name = f"display_{stem}_{k}.png"
    taken.add(name)
    return name


def write_outputs(out_dir: str | Path, model: Model, events: Sequence[Event], result: EvalResult, *,
                  displays: int = 3, extra: dict | None = None) -> list[Path]:
    """metrics.json, the semantic and filter confusion matrices (by truth, by prediction) and
    `displays` event displays, as PNGs in out_dir. Returns the written paths.

    `extra["inputs"]` (what was evaluated) is kept in metrics.json; a folder holding another
    evaluation's or command's files is a ValueError before anything is written (`check_out_dir`)."""
    from jaxinterp import report
    from jaxinterp.nugraph import display

    from jaxinterp.checks import is_integer

    if not is_integer(displays) or displays < 0:  # -1 drew every display but the last
        raise ValueError(f"displays: expected a non-negative integer, got {displays!r}")
    check_out_dir(out_dir, (extra or {}).get("inputs"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic.write_json(out / "metrics.json", {
        **result.metrics.as_dict(), "seconds_per_event": result.seconds_per_event,
        "semantic_counts": result.counts.semantic.tolist(), "filter_counts": result.counts.filter.tolist(),
        **(extra or {})}, indent=1)]
    classes = model.config.semantic_classes
    for norm_by in ("truth", "prediction"):
        fig = display.confusion_figure(result.counts.semantic, classes=classes, normalise=norm_by,
                                       title=f"semantic, normalised by {norm_by}")
        report.figure_png(fig, out / f"confusion_semantic_by_{norm_by}.png")
        written.append(out / f"confusion_semantic_by_{norm_by}.png")
        fig = display.confusion_figure(result.counts.filter, classes=("background", "signal"), normalise=norm_by,
                                       title=f"filter, normalised by {norm_by}")
        report.figure_png(fig, out / f"confusion_filter_by_{norm_by}.png")
        written.append(out / f"confusion_filter_by_{norm_by}.png")
    taken: set[str] = set()
    for e, pr in list(zip(events, result.predictions))[:displays]:
        fig = display.event_display(e, predicted_labels(pr, model.config.planes), planes=model.config.planes,
                                    title=f"event {e.name}")
        name = display_file_name(e.name, taken)
        report.figure_png(fig, out / name)
        written.append(out / name)
    return written


def file_stamp(path: str | Path) -> dict:
    """The size and mtime_ns of the file at `path` (a stat, no read; None for both if nothing is
    there, which reading it then reports): what an evaluation records beside the path, so one of a
    file changed in place is not taken for the same evaluation."""
    try:
        st = Path(path).stat()
    except OSError:
        return {"file_size": None, "file_mtime_ns": None}
    return {"file_size": st.st_size, "file_mtime_ns": st.st_mtime_ns}


def run_cli(args) -> EvalResult:
    model = load_model(args.params)
    split = None if args.split == "all" else args.split
    # the file by path, size and mtime: a file rewritten at the same path (another simulation, more
    # events) is another evaluation, whose results do not replace this one's under the same name
    # the folder load_model read, resolved: `--params RUN/model.npz` (which --help offers) recorded the
    # file, so a repeat of `--params RUN`'s evaluation through it was refused as another evaluation
    params = None if args.params is None else Path(args.params).resolve()
    params = params.parent if params is not None and params.is_file() else params
    inputs = {"file": str(Path(args.file).resolve()), **file_stamp(args.file), "split": args.split,
              "limit": args.limit, "params": str(params) if params is not None else "the shipped model",
              "model_sha256": model.npz_sha256}
    check_out_dir(args.out, inputs)  # before anything is read or computed
    info = hdf5.read_info(args.file, need_samples=split is not None, need_norm=False)
    if tuple(info.semantic_classes) != tuple(model.config.semantic_classes):
        # labels index the file's list, predictions the model's: per-class figures would swap names
        raise ValueError(f"file: {args.file} has semantic classes {list(info.semantic_classes)}, the model "
                         f"predicts {list(model.config.semantic_classes)} (the same names in the same order expected)")
    if set(info.planes) != set(model.config.planes):
        # a model of fewer planes ran on those alone, its figures silently leaving the others' hits out;
        # one of more planes failed on the first event (planes are matched by name: the order may differ)
        raise ValueError(f"file: {args.file} has planes {list(info.planes)}, the model takes planes "
                         f"{list(model.config.planes)} (--params; the same planes expected)")
    res = hdf5.read_events(args.file, split, limit=args.limit)
    stamp = file_stamp(args.file)
    if stamp != {k: inputs[k] for k in stamp}:  # what is recorded must be what was read
        raise ValueError(f"file: {args.file} changed while it was read (size and mtime_ns "
                         f"{inputs['file_size']}, {inputs['file_mtime_ns']} before, {stamp['file_size']}, "
                         f"{stamp['file_mtime_ns']} after); expected it unchanged (run again once it is written)")
    events = to_events(res.events, model)
    print(f"{args.split}: {len(events)} events ({res.skipped_line()})")
    if not events:  # evaluate's own error named neither the file nor the split
        where = "the file" if split is None else f"split {args.split!r}"
        raise ValueError(f"file: {args.file}: expected at least one event to evaluate in {where}, got none "
                         f"({res.skipped_line()})")
    result = evaluate(model, events, batch_size=args.batch_size, progress=True)
    m = result.metrics
    print(m.line())
    print("class      efficiency  purity")
    for c in model.config.semantic_classes:
        print(f"{c:<10} {m.efficiency[c]:>10.2%}  {m.purity[c]:>6.2%}")
    # the batch timed holds what there was: "the first batch of 32" of a 2-event split timed 2 events
    print(f"inference: {result.seconds_per_event * 1e3:.1f} ms/event (the jitted forward on the first batch, "
          f"{min(args.batch_size, len(events))} events; compile, checks, padding and copies apart)")
    files = write_outputs(args.out, model, events, result, displays=args.displays,
                          extra={"file": str(args.file), "split": args.split, "skipped": dict(res.skipped),
                                 "model": dataclasses.asdict(model.config), "inputs": inputs})
    print(f"wrote {len(files)} files to {args.out}")
    return result
