"""The merging section of `jaxinterp demo`: digits MLPs, barriers, weight matching, every merge.

1. Two MLPs trained from different seeds: loss/error along the linear path, barrier before and
   after weight matching (Git Re-Basin), and a trained Bezier curve between them.
2. A base MLP fine-tuned on three shards of the data (each shard over-weights some classes): the
   merges of the fine-tunes by each method, with their test accuracies.
3. The loss on the plane through the three fine-tunes.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class DemoResult(NamedTuple):
    data_name: str
    barriers: dict[str, tuple[float, float]]  # name -> (barrier_mean, barrier_chord) of the loss
    path_errors: dict[str, np.ndarray]
    accuracies: dict[str, float]
    alphas: np.ndarray
    path_losses: dict[str, np.ndarray]
    plane: object
    bezier_losses: np.ndarray


def held_out_split(d, n_val: int = 300) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(x, y) to fit the base and the fine-tunes on, and the last `n_val` training examples apart from
    them: the held-out set the greedy soup ranks by (Wortsman et al.), not the test set."""
    return (d.x_train[:-n_val], d.y_train[:-n_val]), (d.x_train[-n_val:], d.y_train[-n_val:])


def _key(seed: int, k: int) -> jax.Array:
    """The k-th key of the demo run with `seed`: folded into the seed's key, not PRNGKey(seed + k), which
    was seed + 1's (k - 1)-th key (seed 0's model B was seed 1's model A) and wrapped past 2**32 (seed
    2**32 - 1's model A was seed 0's)."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), k)


def _np_seed(seed: int, k: int) -> int:
    """The numpy seed of the demo run's k-th draw (a training run's batches, a shard's extra examples):
    from SeedSequence([seed, k]), so every draw follows `seed` (fixed seeds 1, 2, 3, 10 + j and shard
    masks of default_rng(j) made every seed's runs train on the same batches)."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def run(*, quick: bool = True, seed: int = 0) -> DemoResult:
    from jaxinterp.checks import check_seed
    from jaxinterp.merge import curves, fisher, landscape, mlp, rebasin, soups
    from jaxinterp.merge.tree_merge import merge

    seed = check_seed(seed)  # before the data is read or a model trained
    d = mlp.load_digits(seed)
    train = (jnp.asarray(d.x_train), jnp.asarray(d.y_train))
    test = (jnp.asarray(d.x_test), jnp.asarray(d.y_test))
    steps = 400 if quick else 1500
    sizes = (64, 128, 128, 10)

    # 1. two independently trained models, before and after weight matching
    pa = mlp.train(mlp.init(_key(seed, 1), sizes), d.x_train, d.y_train, steps=steps, seed=_np_seed(seed, 1))
    pb = mlp.train(mlp.init(_key(seed, 2), sizes), d.x_train, d.y_train, steps=steps, seed=_np_seed(seed, 2))
    spec = rebasin.mlp_permutation_spec([f"Dense_{i}" for i in range(len(sizes) - 1)])
    pb_aligned = rebasin.weight_matching(spec, pa, pb, seed=seed).params
    paths = {"naive": landscape.linear_path(mlp.loss, pa, pb, train),
             "weight matching": landscape.linear_path(mlp.loss, pa, pb_aligned, train)}
    errs = {k: np.asarray(landscape.path_losses(mlp.error, pa, b, test, jnp.asarray(paths[k].alphas)))
            for k, b in (("naive", pb), ("weight matching", pb_aligned))}
    key = _key(seed, 0)
    batches = lambda i: (train[0][(i * 128) % 1280:(i * 128) % 1280 + 128], train[1][(i * 128) % 1280:(i * 128) % 1280 + 128])  # noqa: E731
    bend = curves.fit_bezier(mlp.loss, pa, pb, batches, steps=300 if quick else 1500, learning_rate=3e-3, key=key).bend
    bez = np.asarray(curves.curve_losses(mlp.loss, pa, bend, pb, train, jnp.asarray(paths["naive"].alphas)))

    # 2. fine-tunes of one base on three class-skewed shards, merged by every method; the greedy
    # soup ranks by a validation split that neither the base nor any fine-tune trained on
    (x_fit, y_fit), val = held_out_split(d)
    base = mlp.train(mlp.init(_key(seed, 3), sizes), x_fit, y_fit, steps=steps // 4, seed=_np_seed(seed, 3))
    fts, shards = [], []
    for j, classes in enumerate(([0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9])):
        keep = np.isin(y_fit, classes) | (np.random.default_rng(_np_seed(seed, 20 + j)).random(len(y_fit)) < 0.15)
        shards.append((x_fit[keep], y_fit[keep]))
        fts.append(mlp.train(base, *shards[-1], steps=steps // 2, seed=_np_seed(seed, 10 + j)))
    acc = lambda p: float(mlp.accuracy(p, *test))  # noqa: E731
    accs = {"base": acc(base), **{f"fine-tune {j}": acc(f) for j, f in enumerate(fts)}}
    w = {"weight": 1.0}
    method_args = {
        "linear": dict(parameters=w), "task_arithmetic": dict(base=base, parameters={"weight": 1 / 3}),
        "ties": dict(base=base, parameters={"weight": 1.0, "density": 0.5}),
        "dare_ties": dict(base=base, parameters={"weight": 1.0, "density": 0.5}),
        "dare_linear": dict(base=base, parameters={"weight": 1 / 3, "density": 0.5}),
        "breadcrumbs": dict(base=base, parameters={"weight": 1 / 3, "density": 0.5}),
        "breadcrumbs_ties": dict(base=base, parameters={"weight": 1 / 3, "density": 0.5}),
        "della": dict(base=base, parameters={"weight": 1.0, "density": 0.5}),
        "della_linear": dict(base=base, parameters={"weight": 1 / 3, "density": 0.5}),
        "multislerp": dict(base=base, parameters=w), "karcher": {}, "model_stock": dict(base=base),
        "sce": dict(base=base, parameters={"select_topk": 0.5}),
    }
    for m, kw in method_args.items():
        accs[m] = acc(merge(m, fts, seed=seed, **kw))  # the seed of DARE's and DELLA's random drops
    accs["slerp (ft 0, ft 1; t=0.5)"] = acc(merge("slerp", [fts[1]], base=fts[0], parameters={"t": 0.5}))
    accs["nuslerp (ft 0, ft 1)"] = acc(merge("nuslerp", fts[:2], base=base, parameters=w))
    accs["nearswap (base, ft 0; t=0.01)"] = acc(merge("nearswap", [fts[0]], base=base, parameters={"t": 0.01}))
    accs["arcee_fusion (base, ft 0)"] = acc(merge("arcee_fusion", [fts[0]], base=base))
    fis = [fisher.diagonal_fisher(mlp.apply, f, jnp.asarray(x[:400]), labels=jnp.asarray(y[:400]))
           for f, (x, y) in zip(fts, shards)]
    accs["fisher"] = acc(fisher.fisher_merge(fts, fis))
    grams = [{k: fisher.gram(v) for k, v in mlp.apply(f, jnp.asarray(x), capture=True)[1].items()}
             for f, (x, _) in zip(fts, shards)]
    accs["regmean"] = acc(fisher.regmean(fts, grams))
    accs["uniform soup"] = acc(soups.uniform_soup(fts))
    val = (jnp.asarray(val[0]), jnp.asarray(val[1]))
    accs["greedy soup"] = acc(soups.greedy_soup(fts, lambda p: float(mlp.accuracy(p, *val))).params)
    accs["tsv"] = acc(soups.tsv_merge(fts, base))

    # 3. the plane through the three fine-tunes
    plane = landscape.plane_through(mlp.loss, fts[0], fts[1], fts[2], test, n=25 if quick else 51)
    return DemoResult(d.name, {k: (p.barrier_mean, p.barrier_chord) for k, p in paths.items()}, errs, accs,
                      paths["naive"].alphas, {k: p.losses for k, p in paths.items()}, plane, bez)


def section(out_dir, *, quick: bool):
    from jaxinterp import report
    from jaxinterp.merge import plots

    r = run(quick=quick)
    out = Path(out_dir) / "merge"
    curves = {**{f"{k} (train loss)": (r.alphas, v) for k, v in r.path_losses.items()},
              "Bezier curve, one bend (train loss)": (r.alphas, r.bezier_losses)}
    png_path = plots.save_png(plots.path_figure(curves, title="Two MLPs from different seeds"), out / "path.png")
    png_err = plots.save_png(plots.path_figure({k: (r.alphas, v) for k, v in r.path_errors.items()},
                                               ylabel="test error", title="Test error along the path"),
                             out / "path_error.png")
    png_plane = plots.save_png(plots.surface_figure(r.plane, title="Test loss on the plane of 3 fine-tunes",
                                                    labels=("ft 0", "ft 1", "ft 2")), out / "plane.png")
    rows = [(k, bm, bc, float(r.path_errors[k].max())) for k, (bm, bc) in r.barriers.items()]
    html = (report.paragraph(f"Data: {r.data_name}. MLP 64-128-128-10, Adam.")
            + report.table(["path", "loss barrier (max - mean of ends)", "loss barrier (max - chord)",
                            "max test error"], rows)
            + report.img(png_path, "loss along the linear path") + report.img(png_err, "error along the path")
            + report.paragraph("Merges of three fine-tunes (class-skewed shards) of one base: test accuracy.")
            + report.table(["model / merge", "test accuracy"], list(r.accuracies.items()))
            + report.img(png_plane, "loss on the plane through the three fine-tunes"))
    return report.Section("Model merging and loss landscape", html)
