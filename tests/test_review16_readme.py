"""Review 16: README.md's documented usage, run as written.

Its python blocks (GPT-2 with hooks, NuGraph2, Merging) are taken from README.md and exec'd, with only
the names that need a network or absent files replaced; the commands and options it names are looked
up in `jaxinterp.cli.build_parser()`; its "On a CPU" paragraph is held against cli.RETAIN_FREED_MEMORY.
(The NuGraph2 CPU-throughput and jraph blocks: tests/test_review15_predict.py, test_review15_jraph_io.py.)
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import FIXTURES, TINY_GPT2

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(after: str) -> str:
    """The first ```python block after the text `after` in README.md."""
    text = README.read_text()
    start = text.index("```python", text.index(after)) + len("```python")
    return text[start:text.index("```", start)]


def substituted(code: str, **names: str) -> str:
    """`code` with each quoted name ("gpt2") replaced by a repr'd local stand-in; each must occur."""
    for name, value in names.items():
        assert f'"{name}"' in code, (name, code)
        code = code.replace(f'"{name}"', repr(value))
    return code


def run_block(code: str, scope: dict) -> dict:
    exec(compile(code, str(README), "exec"), scope)
    return scope


# ---------------------------------------------------------------------------------------------
# GPT-2 with hooks


@pytest.fixture(scope="module")
def twelve_layer_gpt2(tmp_path_factory):
    """A random GPT-2 folder with GPT-2 small's 12 layers (the block names layer 5 and sweeps
    range(12)) but tiny widths, and the tiny fixture's word-level tokenizer."""
    from jaxinterp.transformer import gpt2, weights

    config = gpt2.GPT2Config(vocab_size=97, n_positions=32, n_embd=16, n_layer=12, n_head=4)
    params = gpt2.init(jax.random.PRNGKey(0), config)
    return weights.save_gpt2(params, config, tmp_path_factory.mktemp("gpt2") / "gpt2",
                             tokenizer=weights.load_tokenizer(TINY_GPT2))


def test_readme_gpt2_block_runs_as_written(twelve_layer_gpt2):
    """The block with the hub name "gpt2" replaced by a local folder: the cache holds the per-head
    hook_result [1, P, n_head, d_model] its comment gives for GPT-2 small as (1, P, 12, 768); the sweep
    is 12 layers x 2 taus = 24 rows of logits, each the single intervened run's, and they differ
    from the unintervened logits."""
    from jaxinterp.transformer import gpt2, intervene, run_with_cache

    block = readme_block("## GPT-2 with hooks")
    assert "# (1, P, 12, 768)" in block and "range(12)" in block and "(2., 4.)" in block
    small = gpt2.PRESETS["gpt2"]  # what the comment and the sweep's range(12) say of the hub's "gpt2"
    assert (small.n_head, small.n_embd, small.n_layer) == (12, 768, 12)
    s = run_block(substituted(block, gpt2=str(twelve_layer_gpt2)), {})
    config, params, tokens, tok = s["config"], s["params"], s["tokens"], s["tok"]
    P = len(tok("The Eiffel Tower is in")["input_ids"])
    assert tokens.shape == (1, P) and P >= 1
    assert not config.tie_word_embeddings  # process_weights=True: the unembedding the block indexes
    assert s["cache"]["blocks.5.attn.hook_result"].shape == (1, P, config.n_head, config.n_embd) == (1, P, 4, 16)
    assert list(s["cache"]) == ["blocks.5.attn.hook_result"]
    assert s["logits"].shape == (1, P, config.vocab_size)
    assert s["memory"].shape == (config.n_embd,)
    sweep = s["sweep"]
    assert sweep.shape == (24, 1, P, config.vocab_size)
    for k, (L, tau) in enumerate((L, tau) for L in range(12) for tau in (2.0, 4.0)):
        if k in (0, 11, 23):  # layer 0 tau 2, layer 5 tau 4, layer 11 tau 4
            one = run_with_cache(params, tokens, config=config,
                                 interventions=[intervene(f"blocks.{L}.hook_attn_out", s["memory"], scale=tau)])[0]
            np.testing.assert_allclose(sweep[k], one, rtol=0, atol=2e-5)
        assert float(jnp.abs(sweep[k] - s["logits"]).max()) > 1e-3, (L, tau)


def _hook_paragraph() -> str:
    text = README.read_text()
    start = text.index("Hook points:")
    return " ".join(text[start:text.index("\n\n", start)].split())


def test_readme_hook_points_are_the_models_in_its_order():
    """The README's list of hook points, `attn.hook_q/k/v` and `ln2.*` expanded, is every hook point
    of a one-block GPT-2 in the order the forward meets them (it left out `ln_final.hook_scale`); its
    intervention modes are hooks.MODES; the slices it names exist with the arguments it gives."""
    import inspect

    from jaxinterp.transformer import gpt2, hooks

    para = _hook_paragraph()
    listed = re.search(r"Hook points: (.*?)\. Interventions:", para).group(1)
    before, rest = listed.split(", and per block ")
    per_block, after = rest.split(", then ")
    names = re.findall(r"`([^`]+)`", before)
    for site in re.findall(r"`([^`]+)`", per_block):
        if site.endswith("/k/v"):
            expanded = [site[:-len("/k/v")]] + [site[:-len("q/k/v")] + c for c in "kv"]
        elif site.endswith(".*"):
            expanded = [f"{site[:-2]}.{s.split('.', 1)[1]}" for s in hooks.BLOCK_SITES if s.startswith(site[:-1])]
            assert expanded, site
        else:
            expanded = [site]
        names += [f"blocks.0.{s}" for s in expanded]
    names += re.findall(r"`([^`]+)`", after)
    assert names == hooks.hook_names(1)
    modes = re.search(r"Interventions: (.*?), optionally", para).group(1)
    assert tuple(re.findall(r"`(\w+)`", modes)) == hooks.MODES
    for name, args in re.findall(r"`gpt2\.(\w+)(?:\(([^)]*)\))?`", para):
        params = inspect.signature(getattr(gpt2, name)).parameters
        assert all(a.strip() in params for a in args.split(",") if a.strip()), (name, args)
    assert len(re.findall(r"`gpt2\.\w+", para)) == 3


# ---------------------------------------------------------------------------------------------
# NuGraph2


def test_readme_nugraph_block_runs_as_written():
    """The block on the official-format fixtures (a Lightning checkpoint written as NuGraph2 training
    writes it; a file written by pynuml, whose test split holds one event): one prediction per event,
    per plane [N, 5] class probabilities summing to 1 and [N] filter probabilities."""
    block = readme_block("## NuGraph2")
    assert "# [N, 5] probabilities, [N]" in block
    code = substituted(block, **{"NuGraph2.ckpt": str(FIXTURES / "nugraph2_reference.ckpt"),
                                 "events.gnn.h5": str(FIXTURES / "nugraph2_events.gnn.h5")})
    s = run_block(code, {})
    events, preds, config = s["events"], s["preds"], s["ckpt"].config
    assert len(events) == len(preds) == 1
    for ev, pred in zip(events, preds):
        for p in config.planes:
            n = ev.planes[p].x.shape[0]
            assert n > 0
            assert pred.semantic[p].shape == (n, len(config.semantic_classes)) == (n, 5)
            assert pred.filter[p].shape == (n,)
            np.testing.assert_allclose(pred.semantic[p].sum(-1), 1.0, rtol=0, atol=1e-5)
            assert (pred.semantic[p] >= 0).all() and ((pred.filter[p] >= 0) & (pred.filter[p] <= 1)).all()


# ---------------------------------------------------------------------------------------------
# Merging


def test_readme_merging_block_runs_as_written():
    """The block on small MLPs defined here (pre, its two fine-tunes, a second network params_b that
    is params_a with its hidden units shuffled and a little noise): ties keeps pre's structure;
    linear_path gives 25 alphas from 0 to 1 with the endpoint losses, from one compilation; weight matching returns a
    permutation of params_b that computes params_b's function and is params_a up to the noise."""
    from jaxinterp.merge import mlp, rebasin

    block = readme_block("## Merging")
    assert "# 25 alphas" in block
    sizes = (5, 8, 6, 3)
    pre = mlp.init(jax.random.PRNGKey(0), sizes)

    def nudged(tree, seed, size=0.05):
        keys = iter(jax.random.split(jax.random.PRNGKey(seed), len(jax.tree.leaves(tree))))
        return jax.tree.map(lambda a: a + size * jax.random.normal(next(keys), a.shape), tree)

    ft_a, ft_b = nudged(pre, 1), nudged(pre, 2)
    names = ["Dense_0", "Dense_1", "Dense_2"]
    spec = rebasin.mlp_permutation_spec(names)
    rng = np.random.default_rng(0)
    shuffle = {"P_0": rng.permutation(8), "P_1": rng.permutation(6)}
    params_a = mlp.init(jax.random.PRNGKey(3), sizes)
    params_b = rebasin.apply_permutation(spec, shuffle, nudged(params_a, 4, 0.01))
    x = jax.random.normal(jax.random.PRNGKey(5), (16, 5))
    batch = (x, jnp.arange(16) % 3)
    from jaxinterp.merge import landscape

    compiled = landscape._path_losses._cache_size()
    s = run_block(block, {"ft_a": ft_a, "ft_b": ft_b, "pre": pre, "loss_fn": mlp.loss, "params_a": params_a,
                          "params_b": params_b, "batch": batch, "names": names})

    merged = s["merged"]
    assert jax.tree.structure(merged) == jax.tree.structure(pre)
    assert all(m.shape == p.shape and np.isfinite(m).all() for m, p in zip(jax.tree.leaves(merged), jax.tree.leaves(pre)))
    assert any(not np.allclose(m, p) for m, p in zip(jax.tree.leaves(merged), jax.tree.leaves(pre)))

    path = s["path"]
    np.testing.assert_array_equal(path.alphas, np.linspace(0, 1, 25, dtype=np.float32))
    assert path.losses.shape == (25,)
    assert landscape._path_losses._cache_size() == compiled + 1  # "one compiled call" for the 25 alphas
    np.testing.assert_allclose(path.losses[[0, -1]], [mlp.loss(params_a, batch), mlp.loss(params_b, batch)], rtol=1e-5)

    aligned = s["aligned"]
    for a, b in zip(jax.tree.leaves(aligned), jax.tree.leaves(params_b)):  # the same numbers, moved
        np.testing.assert_array_equal(np.sort(np.ravel(a)), np.sort(np.ravel(b)))
    np.testing.assert_allclose(mlp.apply(aligned, x), mlp.apply(params_b, x), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(aligned), jax.tree.leaves(params_a)):  # the shuffle undone
        np.testing.assert_allclose(a, b, rtol=0, atol=0.06)


# ---------------------------------------------------------------------------------------------
# Commands and options


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name, p in a.choices.items()}


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def _prose() -> str:
    """README.md without its python blocks (the others hold `make` lines that name commands)."""
    return re.sub(r"```python\n.*?```", "", README.read_text(), flags=re.S)


def readme_commands() -> list[tuple[str, tuple[str, ...], list[str]]]:
    """Each inline code span of README.md that names a `jaxinterp` command, as (span, command path,
    the rest of its words). A span that starts with a top-level command (`lens show`), a sibling of
    the command before it (`train` after `jaxinterp nugraph simulate`) or an option (`--init` after
    `jaxinterp nugraph train ...`) is read in the context of the command named before it."""
    from jaxinterp import cli

    root = cli.build_parser()
    top = _subparsers(root)
    found, context = [], ()
    for span in re.findall(r"`([^`\n]+)`", _prose()):
        words = span.split()
        if words[0] == "jaxinterp" and len(words) > 1:
            words, base = words[1:], ()
        elif words[0] in top and context:
            base = ()
        elif context and len(context) > 1 and words[0] in _subparsers(_walk(root, context[:-1])):
            base = context[:-1]
        elif context and words[0].startswith("--"):
            base = context
        else:
            continue
        path = list(base)
        while words and words[0] in _subparsers(_walk(root, tuple(path))):
            path.append(words.pop(0))
        assert path, f"README.md: `{span}` names no jaxinterp command (commands: {sorted(top)})"
        found.append((span, tuple(path), words))
        context = tuple(path)
    return found


def _walk(root: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = root
    for word in path:
        subs = _subparsers(parser)
        assert word in subs, f"`jaxinterp {' '.join(path)}`: {word!r} is no subcommand (there are {sorted(subs)})"
        parser = subs[word]
    return parser


def test_every_command_and_option_the_readme_names_exists():
    """Every command the README's table and prose name is a (sub)command of the parser, with no
    subcommand left unchosen before arguments (`toyworld ...` and `lens` name a group as a whole),
    and every option written beside it is accepted by that subcommand, taking a value exactly where
    the README gives one."""
    from jaxinterp import cli

    root = cli.build_parser()
    found = readme_commands()
    paths = {path for _, path, _ in found}
    named = {("gpt2", "run"), ("lens", "train"), ("lens", "show"), ("inject", "sweep"), ("toyworld",),
             ("nugraph", "simulate"), ("nugraph", "train"), ("nugraph", "eval"), ("nugraph", "convert"),
             ("nugraph", "widen"), ("merge", "yaml"), ("merge", "barrier"), ("bench",), ("demo",)}
    assert named <= paths, sorted(named - paths)  # the reading above finds all the README names today
    options = set()
    for span, path, rest in found:
        parser = _walk(root, path)
        subs = _subparsers(parser)
        if subs:
            # a group as a whole (`toyworld ...`; "except `lens` and `merge`"), never with its arguments
            assert rest in ([], ["..."]), f"README.md: `{span}`: {path} needs one of {sorted(subs)} first"
            continue
        accepted = _options(parser)
        for i, word in enumerate(rest):
            if not word.startswith("--"):
                continue
            option = word.strip("[]")
            assert option in accepted, f"README.md: `{span}`: jaxinterp {' '.join(path)} has no {option} ({sorted(accepted)})"
            options.add((path, option))
            value_given = i + 1 < len(rest) and not rest[i + 1].startswith(("-", "["))
            if value_given:
                assert accepted[option].nargs != 0, f"README.md: `{span}`: {option} is a flag, yet a value follows"
    assert {(("nugraph", "simulate"), "--events"), (("nugraph", "simulate"), "--out"), (("nugraph", "train"), "--out"),
            (("nugraph", "train"), "--init"), (("nugraph", "eval"), "--params"), (("nugraph", "convert"), "--norm"),
            (("nugraph", "widen"), "--params"), (("nugraph", "widen"), "--out"), (("merge", "yaml"), "--out"),
            (("bench",), "--quick"), (("demo",), "--out")} <= options, sorted(options)


def test_the_readme_command_lines_parse(tmp_path, monkeypatch):
    """The README's command lines with arguments (not the bare names of commands, such as `jaxinterp
    nugraph eval` in passing), placeholders filled in, parse: types and required arguments included,
    nothing run."""
    from jaxinterp import cli

    monkeypatch.chdir(tmp_path)
    fill = {"N": "3"}
    lines = [(span, path, rest) for span, path, rest in readme_commands()
             if span.startswith("jaxinterp ") and rest and rest != ["..."]]
    for span, path, rest in lines:
        args = cli.build_parser().parse_args(list(path) + [fill.get(w, w).strip("[]") for w in rest])
        assert callable(args.func), span
    assert len(lines) >= 6, lines


def test_readme_set_up_lines_are_the_makefiles_and_pyprojects():
    """`make demo` runs `jaxinterp demo --out demo_out`, `make bench` `jaxinterp bench --quick`,
    Python >= 3.11, the `cuda` extra and the `jaxinterp` command: as the Makefile and pyproject.toml say."""
    import tomllib

    root = README.parent
    text = " ".join(README.read_text().split())
    make = (root / "Makefile").read_text()
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert "make demo # creates .venv, installs everything, runs `jaxinterp demo --out demo_out`" in text
    assert re.search(r"^demo: .*\n\t\$\(BIN\)/jaxinterp demo --out \$\(OUT\)$", make, re.M)
    assert re.search(r"^OUT \?= demo_out$", make, re.M)
    assert "`make bench` runs the benchmark suite (`jaxinterp bench --quick`)" in text
    assert re.search(r"^bench: .*\n\t\$\(BIN\)/jaxinterp bench --quick\b", make, re.M)
    assert re.search(r"^test: .*\n\t\$\(BIN\)/python -m pytest .*tests$", make, re.M)
    assert "(Python >= 3.11;" in text and project["requires-python"] == ">=3.11"
    assert '`pip install -e ".[cuda]"`' in text and "cuda" in project["optional-dependencies"]
    assert project["scripts"] == {"jaxinterp": "jaxinterp.cli:main"}


# ---------------------------------------------------------------------------------------------
# On a CPU: which commands retain freed memory


def _on_a_cpu() -> str:
    return " ".join(README.read_text().split("## On a CPU", 1)[1].split("##", 1)[0].split())


def _readme_exceptions() -> set[str]:
    m = re.search(r"The `jaxinterp` command does this for its compute jobs except ([^.;]*)[.;]", _on_a_cpu())
    assert m, _on_a_cpu()
    return set(re.findall(r"`(\w+)`", m.group(1)))


def test_readme_on_a_cpu_names_the_commands_that_do_not_retain_freed_memory():
    """"The `jaxinterp` command does this for its compute jobs except `lens` and `merge`": every
    top-level command retains freed memory except those two and `bench`, which the README did not
    name: it runs no computation itself, only each benchmark script in a process of its own (now said)."""
    from jaxinterp import cli

    commands = set(_subparsers(cli.build_parser()))
    assert cli.RETAIN_FREED_MEMORY <= commands
    assert _readme_exceptions() == {"lens", "merge"}
    assert commands - cli.RETAIN_FREED_MEMORY == _readme_exceptions() | {"bench"}
    assert "`bench` computes nothing itself (each benchmark runs in a process of its own" in _on_a_cpu()


@pytest.mark.parametrize("command", ["demo", "bench", "gpt2", "nugraph", "toyworld", "lens", "merge", "inject"])
def test_main_retains_freed_memory_for_exactly_those_commands(command, monkeypatch):
    """cli.main calls hostmem.retain_freed_memory() before the command's work for the README's
    commands and not for the excepted ones (the work itself replaced by a stub)."""
    from jaxinterp import cli, hostmem

    calls = []
    monkeypatch.setattr(hostmem, "retain_freed_memory", lambda *a, **k: calls.append("retain") or True)
    real = cli.build_parser

    def stubbed():
        parser = real()
        monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(
            command=command, func=lambda args: calls.append("work") or 0))
        return parser

    monkeypatch.setattr(cli, "build_parser", stubbed)
    assert cli.main([command]) == 0
    assert calls == (["work"] if command in _readme_exceptions() | {"bench"} else ["retain", "work"])


def test_readme_environment_equivalent_is_what_retain_freed_memory_sets(monkeypatch):
    """The environment the README gives as the equivalent of `retain_freed_memory()` names the same
    three glibc settings with the same values (M_ARENA_MAX, M_MMAP_MAX, M_TRIM_THRESHOLD)."""
    from jaxinterp import hostmem

    m = re.search(r"\(or `(MALLOC_[^`]*)` in the environment\)", _on_a_cpu())
    assert m, _on_a_cpu()
    env = dict(kv.split("=") for kv in m.group(1).split())
    got = {}
    monkeypatch.setattr(hostmem, "_set", lambda **values: got.update(values) or True)
    assert hostmem.retain_freed_memory() is True
    assert {"MALLOC_ARENA_MAX": "arena_max", "MALLOC_MMAP_MAX_": "mmap_max",
            "MALLOC_TRIM_THRESHOLD_": "trim_threshold"} == {k: k.removeprefix("MALLOC_").rstrip("_").lower() for k in env}
    assert {k.removeprefix("MALLOC_").rstrip("_").lower(): int(v) for k, v in env.items()} == got
