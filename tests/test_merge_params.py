"""Parameter settings as mergekit reads them (jaxinterp.merge.params): scalars of each kind, layer
gradients, tensor-name filters, and the refusals of settings mergekit would misread."""

import pytest

from jaxinterp.merge import params
from jaxinterp.merge.registry import METHODS, ParamSpec

WEIGHT = ParamSpec("weight", "input")
MAX_ITER = ParamSpec("max_iter", "shared", 10, int)
NORMALIZE = ParamSpec("normalize", "shared", True, bool)


def value(setting, spec=WEIGHT, *, name="model.layers.2.mlp.up_proj.weight", t=0.5):
    return params.evaluate(setting, spec, tensor_name=name, t=t, where="parameters.x")


@pytest.mark.parametrize("setting,spec,expected", [
    (0.3, WEIGHT, 0.3), (2, WEIGHT, 2.0), ("1e-5", WEIGHT, 1e-5),  # YAML reads 1e-5 as a string
    (7, MAX_ITER, 7), (7.0, MAX_ITER, 7), (False, NORMALIZE, False),
    ([0.0, 1.0], WEIGHT, 0.5), ([0.0, 1.0, 0.0], WEIGHT, 1.0), ([1, 3], WEIGHT, 2.0),
    ([True, False, False], NORMALIZE, False),  # booleans are picked, not interpolated: v[int(0.5 * 2)]
    ([2, 4, 6], MAX_ITER, 4),
])
def test_scalars_and_gradients(setting, spec, expected):
    got = value(setting, spec)
    assert got == pytest.approx(expected) and type(got) is type(expected)


def test_gradient_ends_and_layer_positions():
    names = ["model.embed_tokens.weight"] + [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(5)]
    assert params.num_layers(names) == 5
    ts = [params.layer_t(n, 5) for n in names]
    assert ts == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0]  # outside the layers: t = 0
    assert params.layer_t("h.0.attn.weight", 1) == 1.0  # one layer: the gradient's end
    # the post weights (final norm, LM head; taken from the last slice) of the architectures mergekit knows
    post = ["model.norm.weight", "lm_head.weight", "transformer.ln_f.bias", "embed_out.weight",
            "backbone.norm_f.weight", "gpt_neox.final_layer_norm.weight", "params.ln_f.scale", "unembed.W_U"]
    assert all(map(params.is_post, post)) and [params.layer_t(n, 5) for n in post] == [0.0] * len(post)
    pre = ["model.embed_tokens.weight", "transformer.wte.weight", "transformer.wpe.weight", "embed.W_E"]
    assert not any(map(params.is_post, pre))
    assert not params.is_post("model.layers.3.input_layernorm.weight")  # inside the layers
    assert [value([0.0, 0.4, 1.0], t=t) for t in (0.0, 0.25, 1.0)] == pytest.approx([0.0, 0.2, 1.0])
    assert params.with_layer("transformer.h.3.attn.c_attn.weight", 11) == "transformer.h.11.attn.c_attn.weight"
    assert params.layer_index("blocks.7.attn.W_Q") == 7 and params.layer_index("h_4.mlp") == 4
    with pytest.raises(ValueError, match="'lm_head.weight' has no layer index"):
        params.with_layer("lm_head.weight", 1)


def test_filters_pick_the_first_matching_condition():
    setting = [{"filter": "self_attn", "value": 0.1}, {"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.9}]
    assert value(setting, name="model.layers.2.self_attn.o_proj.weight") == pytest.approx(0.1)
    assert value(setting, name="model.layers.2.mlp.up_proj.weight", t=0.25) == pytest.approx(0.25)
    assert value(setting, name="model.norm.weight") == pytest.approx(0.9)
    assert value({"filter": "*", "value": 0.4}) == pytest.approx(0.4)
    assert value([{"filter": "self_attn", "value": 0.1}], name="model.norm.weight") is None  # not set here


@pytest.mark.parametrize("setting,spec,match", [
    ("half", WEIGHT, r"parameters\.x: expected a float, got 'half'"),
    (7.5, MAX_ITER, r"expected an int, got 7\.5"),
    ([1, 2], MAX_ITER, r"expected an int, got 1\.5"),  # a gradient of an integer that lands between two
    (1, NORMALIZE, "expected a bool, got 1"),
    (True, WEIGHT, "expected a float, got True"),
])
def test_values_of_the_wrong_kind(setting, spec, match):
    with pytest.raises(ValueError, match=match):
        value(setting, spec)


@pytest.mark.parametrize("setting,match", [
    ({"filter": "mlp"}, r"expected a condition \{value, filter\}, got keys \['filter'\]"),
    ({"value": 1, "filter": "mlp", "scope": "x"}, r"got keys \['filter', 'scope', 'value'\]"),
    ({"value": 1, "filter": 3}, r"w\.filter: expected a string, got 3"),
    ([], "expected a non-empty list, got"),
    ([0.5, [0.1]], r"w\[0\]: expected scalars \(a gradient\) or conditions \{value, filter\}, got 0\.5"),
    ([{"value": {"value": []}}], r"w\[0\]\.value\.value: expected a non-empty list"),
    (object, "expected a scalar, a list or a condition"),
])
def test_malformed_settings(setting, match):
    with pytest.raises(ValueError, match=match):
        params.check_setting(setting, "w")


def test_unknown_and_misplaced_parameters():
    ties = METHODS["ties"]
    params.check_names(ties, {"density": 0.5, "weight": [0.0, 1.0]}, "models[0].parameters", per_model=True)
    with pytest.raises(ValueError, match=r"models\[0\]\.parameters\.densty: unknown parameter for merge_method "
                                         r"'ties' \(its parameters: .*density"):
        params.check_names(ties, {"densty": 0.5}, "models[0].parameters", per_model=True)
    with pytest.raises(ValueError, match="a shared parameter of 'ties'; set it in the global parameters"):
        params.check_names(ties, {"normalize": True}, "models[0].parameters", per_model=True)


def test_resolve_precedence_defaults_and_required():
    ties = METHODS["ties"]
    shared, per_input = params.resolve(
        ties, tensor_name="model.layers.0.mlp.up_proj.weight", t=0.0,
        global_params={"density": 0.5, "weight": 1.0, "normalize": False},
        model_params=[None, {"density": 0.2}, {"weight": {"filter": "attn", "value": 3.0}}], base_index=0)
    assert shared["normalize"] is False and shared["int8_mask"] is False  # given, and the default
    assert per_input[0] == {}  # the base takes no non-base parameter
    assert per_input[1]["density"] == 0.2 and per_input[1]["weight"] == 1.0  # own, then global
    assert per_input[2]["density"] == 0.5 and per_input[2]["weight"] == 1.0  # filter misses: the global one
    with pytest.raises(ValueError, match="merge_method 'ties' requires it for b: model.layers.0.mlp"):
        params.resolve(ties, tensor_name="model.layers.0.mlp.up_proj.weight", t=0.0, global_params={},
                       model_params=[None, {}], base_index=0, model_names=["a", "b"])

