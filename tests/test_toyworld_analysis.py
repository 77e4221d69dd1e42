"""`python -m jaxinterp.toyworld.analysis` on the shipped model reproduces the figures BUILD_NOTES.md
states for it ("Injection and Attention Lens on this model"): the injection sweeps of the bridge and
of a random entity of its kind, and the logit-lens columns of the head table (those do not depend on
lens training, so a 3-step lens suffices here; the paper's random-word baselines need the multi-hop
word list and are left out)."""

import json

import pytest

from jaxinterp.toyworld.analysis import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    assert main(["--out", str(out), "--lens-layers", "3", "--lens-steps", "3"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_injection_sweeps_give_the_stated_figures(summary):
    out, s = summary
    inj = s["injection"]
    assert inj["prompts"] == 63
    bridge, control = inj["sweeps"]
    assert (bridge["memory"], control["memory"]) == ("bridge entity", "random entity of the bridge's kind")
    for sweep, (layer, tau, median, mean, trimmed, share, p_after) in (
            (bridge, (1, 6, 116.8, 13632, 610.6, 0.59, 0.152)),
            (control, (1, 4, 35.3, 579, 146.5, 0.60, 0.169))):
        assert (sweep["best_layer"], sweep["best_tau"]) == (layer, tau)
        assert sweep["best_median_pct"] == pytest.approx(median, abs=0.05)
        assert sweep["best_mean_pct"] == pytest.approx(mean, abs=0.5)
        assert sweep["best_trimmed_mean_pct"] == pytest.approx(trimmed, abs=0.05)
        assert sweep["best_share_improved"] == pytest.approx(share, abs=0.005)
        assert sweep["best_p_after_mean"] == pytest.approx(p_after, abs=0.0005)
        assert sweep["p_before_mean"] == pytest.approx(0.182, abs=0.0005)
        assert sweep["p_explicit_mean"] == pytest.approx(0.999, abs=0.0005)
    assert control["median_pct_grid"][1][5] == pytest.approx(-20.1, abs=0.005)  # in the bridge's best cell
    assert max(map(max, bridge["p_after_mean_grid"])) == pytest.approx(0.200, abs=0.0005)
    for i in range(2):
        assert (out / f"heatmap_{i}.png").read_bytes().startswith(PNG_MAGIC)


def test_head_table_logit_lens_columns_and_lens_training(summary):
    out, s = summary
    layer = s["lens"]["3"]
    t = layer["in_top_k"]
    # BUILD_NOTES' rows L3 H0 and L3 H5, logit-lens side (0.24 0.05 0.03 0.06 and 0.16 0.10 0.11 0.29): as
    # counts of the 63 prompts, since the table rounds shares to two decimals and summary.json to three
    for head, counts in ((0, (15, 3, 2, 4)), (5, (10, 6, 7, 18))):
        got = [t["obscure"]["bridge/logit_lens"][head], t["obscure"]["control/logit_lens"][head],
               t["obscure"]["answer/logit_lens"][head], t["explicit"]["answer/logit_lens"][head]]
        assert [round(x * 63) for x in got] == list(counts), (head, got)
    assert layer["k"] == 10 and layer["final_loss"] < layer["initial_loss"]
    assert all(0 <= v <= 1 for form in t.values() for col in form.values() for v in col)
    md = (out / "summary.md").read_text()
    assert "| bridge entity | 0.182 | 0.999 | 1, 6 |" in md and "Layer 3 lenses" in md


@pytest.mark.parametrize("argv,match", [
    (["--lens-layers", "9"], r"layer: expected an integer in \[0, 4\) \(the model has 4 blocks\), got 9"),
    (["--lens-layers", "3", "-1"], r"layer: expected an integer in \[0, 4\) .*got -1"),
])
def test_bad_lens_layer_is_refused_before_the_sweep(tmp_path, monkeypatch, argv, match):
    """A lens layer the model lacks: refused before the injection sweep runs and before anything is
    written (it failed only after the whole sweep, with its heatmaps written)."""
    from jaxinterp.toyworld import analysis

    monkeypatch.setattr(analysis, "injection", lambda *a, **k: pytest.fail("the sweep ran before the bad layer was refused"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        main(["--out", str(out), *argv])
    assert not out.exists()


def test_non_positive_lens_steps_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "out"), "--lens-steps", "0"])
    assert e.value.code == 2 and "argument --lens-steps: expected a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_world_is_the_models_own(tmp_path, monkeypatch):
    """The world (entities for the controls, the lens corpus) comes from the train.json beside the
    model folder given, not always from the shipped model's (another run's model was analysed with the
    shipped world); a model folder without one is refused before the sweep and before any write."""
    import json
    import shutil

    from jaxinterp.toyworld import MODEL_DIR, analysis
    from jaxinterp.toyworld.world import WorldConfig, build_world

    run = tmp_path / "run"
    shutil.copytree(MODEL_DIR, run / "model")
    monkeypatch.setattr(analysis, "injection", lambda *a, **k: pytest.fail("the sweep ran before the world was read"))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"train.json beside it .*found no .*run/train.json"):
        main(["--out", str(out), "--model", str(run / "model")])
    assert not out.exists()

    record = json.loads((MODEL_DIR.parent / "train.json").read_text())
    record["world"]["seed"] = 5
    (run / "train.json").write_text(json.dumps(record))
    assert analysis.model_world(run / "model") == build_world(WorldConfig(**record["world"]))
    assert analysis.model_world(run / "model") != analysis.model_world(MODEL_DIR)
