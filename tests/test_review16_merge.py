"""Review 16 of jaxinterp.merge: base_model matched as a path, and the geometry/soup/Fisher/Re-Basin
defects found with it. Each test failed on the code before its fix."""

import os

import numpy as np
import pytest

from jaxinterp.merge import config, slices


# ----------------------------------------------------------------------------- base_model as a path


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Folders m, a, b in a working directory (relative config paths resolve against it)."""
    for n in ("m", "a", "b"):
        (tmp_path / n).mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("spelling", ["./m", "m/", "ABS", "link", "sub/../m"])
def test_base_model_listed_under_another_spelling_is_the_base(folders, spelling):
    """`./m`, `m/`, /abs/m, a link to m: the base listed as `m` among the models was merged as an extra
    model (task arithmetic added a zero task vector; ties counted its weight)."""
    (folders / "sub").mkdir()
    base = str(folders / "m") if spelling == "ABS" else spelling
    cfg = config.from_dict({"merge_method": "ties", "base_model": base,
                            "models": ["a", {"model": "m"}, "b"]})
    assert cfg.base_model == base and [e.model for e in cfg.models] == ["a", "b"]


def test_names_not_on_disk_compare_as_normalised_text(folders):
    cfg = config.from_dict({"merge_method": "ties", "base_model": "./org/x", "models": ["org/x", "org/y"]})
    assert [e.model for e in cfg.models] == ["org/y"]
    cfg = config.from_dict({"merge_method": "ties", "base_model": "org/z", "models": ["org/x", "org/y"]})
    assert [e.model for e in cfg.models] == ["org/x", "org/y"]


def test_linear_base_under_another_spelling_is_one_of_the_models(folders):
    """linear ignores the base: a base_model listed among the models (as an absolute path) is one of
    them; it was kept as a base as well and refused ('does not use a base model')."""
    cfg = config.from_dict({"merge_method": "linear", "base_model": str(folders / "a"),
                            "models": [{"model": "a", "parameters": {"weight": 0.3}},
                                       {"model": "b", "parameters": {"weight": 0.7}}]})
    assert cfg.base_model is None and [e.model for e in cfg.models] == ["a", "b"]


def test_duplicate_models_under_absolute_and_relative_spellings_refused(folders):
    with pytest.raises(ValueError, match=r"config.models\[1\]: expected each model once, got 'a' again "
                                         r"\(as '.*/a'; first at models\[0\]\)"):
        config.from_dict({"merge_method": "ties", "base_model": "m", "models": ["a", str(folders / "a")]})


def test_slices_base_under_another_spelling(folders):
    """slices: a source `m` with base_model `./m` was not found as the base ('expected the base_model
    among the sources'), and plan_jobs would have merged it as a model."""
    d = {"merge_method": "ties", "base_model": "./m", "parameters": {"weight": 1.0, "density": 0.5},
         "slices": [{"sources": [{"model": "a", "layer_range": [0, 1]}, {"model": "m", "layer_range": [0, 1]}]}]}
    cfg = config.from_dict(d)
    idx = {"transformer.h.0.w": object()}
    indices = {"a": idx, "m": idx, "./m": idx}
    jobs, n = slices.plan_jobs(cfg, indices)
    assert n == 1 and [j.inputs for j in jobs] == [(("a", "transformer.h.0.w"), ("m", "transformer.h.0.w"))]
    assert jobs[0].base_index == 1
