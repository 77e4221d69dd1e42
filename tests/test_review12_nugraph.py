"""Review 12 of NuGraph2's message passing, graph building and simulation: one test per defect found."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.kernels.message_passing import gather_segment_sum, gather_segment_sum_reference


# ---- kernels/message_passing.py ------------------------------------------------------------------

def _both(values, weights, senders, receivers, n, **kw):
    return (gather_segment_sum(values, weights, senders, receivers, n, **kw),
            gather_segment_sum_reference(values, weights, senders, receivers, n, **kw))


@pytest.mark.parametrize("mean, with_initial", [(False, False), (True, False), (False, True), (True, True)])
def test_out_of_range_ids_do_not_leak_into_another_graphs_rows(mean, with_initial):
    """Receivers outside [0, N) (sorted: negatives first, too large last) are dropped by the reference's
    segment_sum; the fast form's flat rows sent them into the neighbouring graph's or class's rows.
    Senders >= M are clamped by the reference's gather; the fast form read another graph's node."""
    rng = np.random.default_rng(3)
    b, c, m, n, f = 3, 2, 4, 3, 2
    rcv = jnp.asarray([[-1, 0, 1, 3, 5], [-2, -1, 0, 2, 3], [0, 1, 2, 2, 4]], jnp.int32)  # sorted per graph
    snd = jnp.asarray([[0, 1, 4, 2, 3], [1, 2, 3, 7, 0], [0, 5, 1, 2, 3]], jnp.int32)
    v = jnp.asarray(rng.normal(size=(b, c, m, f)), jnp.float32)
    w = jnp.asarray(rng.uniform(size=(b, c, 5)), jnp.float32)
    init = jnp.asarray(rng.normal(size=(b, c, n, f)), jnp.float32) if with_initial else None
    cot = jnp.asarray(rng.normal(size=(b, c, n, f)), jnp.float32)
    for jit in (False, True):
        fast, ref = (jax.jit(g, static_argnums=4, static_argnames="mean") if jit else g
                     for g in (gather_segment_sum, gather_segment_sum_reference))
        np.testing.assert_allclose(fast(v, w, snd, rcv, n, mean=mean, initial=init),
                                   ref(v, w, snd, rcv, n, mean=mean, initial=init), rtol=1e-6, atol=1e-6)
    grads = [jax.grad(lambda v, w, g=g: jnp.sum(g(v, w, snd, rcv, n, mean=mean, initial=init) * cot), (0, 1))(v, w)
             for g in (gather_segment_sum, gather_segment_sum_reference)]
    for a, r in zip(*grads):
        np.testing.assert_allclose(a, r, rtol=1e-6, atol=1e-6)


def test_negative_senders_are_clamped_in_both_forms():
    """The reference's jnp gather wrapped a negative sender to the last node (numpy's rule) while the
    fast form read the previous graph's row; both now clamp it to node 0."""
    v = jnp.arange(2 * 1 * 3 * 1, dtype=jnp.float32).reshape(2, 1, 3, 1) + 1
    snd = jnp.asarray([[0, -1], [-1, 1]], jnp.int32)
    rcv = jnp.asarray([[0, 1], [0, 1]], jnp.int32)
    fast, ref = _both(v, None, snd, rcv, 3)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(np.asarray(fast)[:, 0, :, 0], [[1, 1, 0], [4, 5, 0]])


def test_initial_of_a_narrower_dtype_promotes_as_the_reference_does():
    """With bfloat16 `initial` and float32 weights the reference returned float32 (initial + out) and the
    fast form scattered the float32 messages into the bfloat16 buffer, rounding them."""
    rng = np.random.default_rng(0)
    v = jnp.asarray(rng.normal(size=(1, 1, 3, 2)), jnp.bfloat16)
    w = jnp.asarray([[[0.1234567, 0.7654321]]], jnp.float32)
    init = jnp.asarray(rng.normal(size=(1, 1, 3, 2)), jnp.bfloat16)
    snd, rcv = jnp.asarray([[0, 2]], jnp.int32), jnp.asarray([[1, 1]], jnp.int32)
    fast, ref = _both(v, w, snd, rcv, 3, initial=init)
    assert fast.dtype == ref.dtype == jnp.float32
    np.testing.assert_allclose(fast, ref, rtol=1e-6)


def test_no_receivers_gives_an_empty_result():
    v = jnp.ones((2, 1, 3, 2))
    snd = rcv = jnp.zeros((2, 4), jnp.int32)
    for kw in (dict(), dict(mean=True), dict(initial=jnp.zeros((2, 1, 0, 2)))):
        fast, ref = _both(v, None, snd, rcv, 0, **kw)
        assert fast.shape == ref.shape == (2, 1, 0, 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_receivers=2.5), r"num_receivers: expected a static non-negative integer, got 2.5"),
    (dict(num_receivers=-1), r"num_receivers: expected a static non-negative integer, got -1"),
    (dict(num_receivers=True), r"num_receivers: expected a static non-negative integer, got True"),
    (dict(senders=jnp.zeros((2, 3), jnp.float32)), "senders: expected an integer dtype, got float32"),
    (dict(receivers=jnp.zeros((2, 3), jnp.float32)), "receivers: expected an integer dtype, got float32"),
    (dict(values=jnp.zeros((2, 1, 0, 2))), "values: 3 edges need sender nodes, got M = 0 in shape [2, 1, 0, 2]"),
])
def test_bad_ids_and_sizes_are_value_errors(kwargs, message):
    """These were a TypeError from inside jnp (float ids, a float size, no sender node) or passed (True)."""
    args = dict(values=jnp.zeros((2, 1, 4, 2)), weights=None, senders=jnp.zeros((2, 3), jnp.int32),
                receivers=jnp.zeros((2, 3), jnp.int32), num_receivers=4)
    args.update(kwargs)
    for fn in (gather_segment_sum, gather_segment_sum_reference):
        with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):  # the whole message
            fn(args["values"], args["weights"], args["senders"], args["receivers"], args["num_receivers"])


# ---- jaxinterp/nugraph/detector.py -----------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("wire_pitch_cm", 0.0, "a positive finite number"),  # was an OverflowError (infinitely many wires)
    ("wire_pitch_cm", -0.3, "a positive finite number"),  # was "no event within the size limits" after 100 tries
    ("tick_cm", 0.0, "a positive finite number"),  # was divide-by-zero warnings, then no event
    ("lifetime_ticks", 0.0, "a positive finite number"),
    ("drift_cm", float("nan"), "a positive finite number"),
    ("noise_adc", -1.0, "a non-negative finite number"),
    ("readout_ticks", 6400.5, "a positive integer"),
    ("plane_angles_deg", (60.0, float("inf"), 0.0), "one wire angle per plane, in degrees from vertical within [-90, 90]"),
    ("shaping_ticks", (3.0, 3.0), "one positive pulse width per plane (3, as plane_angles_deg)"),  # was an IndexError
])
def test_bad_detector_names_the_field(field, value, message):
    from jaxinterp.nugraph import detector

    # the whole message: the field, what it expects and the value that came
    with pytest.raises(ValueError, match="^" + re.escape(f"Detector.{field}: expected {message}, got {value!r}") + "$"):
        detector.Detector(**{field: value})


# ---- jaxinterp/nugraph/simulate.py -------------------------------------------------------------------

@pytest.mark.parametrize("kw, message", [
    (dict(n=2.5), "n: expected a non-negative number of events, got 2.5"),  # was a TypeError from range()
    (dict(n=1, seed=True), "seed: expected an integer in [0, 2**32), got True"),  # ran as seed 1
    (dict(n=1, max_tries=0), "max_tries: expected a positive integer, got 0"),  # was "no event ... after 0 tries"
    (dict(n=1, run="a"), "run: expected a non-negative integer, got 'a'"),  # was accepted
    (dict(n=1, subrun=-2), "subrun: expected a non-negative integer, got -2"),
    (dict(n=1, config=None), "config: expected a simulate.SimConfig, got NoneType"),
])
def test_bad_simulate_arguments_are_named(kw, message):
    from jaxinterp.nugraph import simulate

    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        simulate.simulate(**kw)


@pytest.mark.parametrize("field, value, message", [
    ("detector", None, "a detector.Detector with 3 wire planes (u, v, y)"),  # was an AttributeError in the first event
    ("min_hits_per_plane", True, "a non-negative integer"),  # bool passed as 1
    ("step_cm", True, "a positive finite number"),
])
def test_bad_sim_config_fields_are_named(field, value, message):
    from jaxinterp.nugraph import simulate

    with pytest.raises(ValueError, match="^" + re.escape(f"SimConfig.{field}: expected {message}, got {value!r}") + "$"):
        simulate.SimConfig(**{field: value})


def test_a_two_plane_detector_is_refused_by_the_simulation():
    from jaxinterp.nugraph import detector, simulate

    two = detector.Detector(plane_angles_deg=(60.0, -60.0), shaping_ticks=(3.0, 3.0))
    with pytest.raises(ValueError, match=r"^SimConfig\.detector: expected a detector\.Detector with 3 wire planes "
                                         r"\(u, v, y\), got Detector\(.*, plane_angles_deg=\(60\.0, -60\.0\), .*\)$"):
        simulate.SimConfig(detector=two)


# ---- jaxinterp/nugraph/display.py ---------------------------------------------------------------------

def _display_event(n=5):
    from jaxinterp.nugraph.event import Event, PlaneHits

    rng = np.random.default_rng(0)
    hits = lambda: PlaneHits(np.zeros((n, 4), np.float32), rng.uniform(size=(n, 2)), np.zeros((2, 0), np.int64),  # noqa: E731
                             np.zeros((2, 0), np.int64), np.array([0, 1, -1, 4, 2]))
    return Event({"u": hits(), "v": hits(), "y": hits()}, 0)


def test_predicted_labels_refuses_a_semantic_vector_without_the_class_axis():
    """A [N] semantic vector used to argmax to one class for every hit, silently."""
    from jaxinterp.nugraph import display

    with pytest.raises(ValueError, match=r"^semantic_probs: expected shape \[\.\.\., N, C\] with \[\.\.\., N\] = "
                                         r"filter_probs' \[3\], got \[3\]$"):
        display.predicted_labels(np.array([0.1, 0.9, 0.3]), np.array([0.9, 0.9, 0.9]))


CLASSES = "MIP, HIP, shower, michel, diffuse; negative for background"


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 5, 2, 3]), f"predicted['u']: expected labels below 5 ({CLASSES}), got 5"),  # was drawn grey
    (np.array([0, 1, 6, 2, 3]), f"predicted['u']: expected labels below 5 ({CLASSES}), got 6"),  # was an IndexError
    (np.array([0.0, 1, 2, 2, 3]), "predicted['u']: expected integer class labels, got dtype float64"),  # an IndexError
])
def test_event_display_refuses_labels_it_cannot_colour(labels, message):
    from jaxinterp.nugraph import display

    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        display.event_display(_display_event(), {p: labels for p in "uvy"})


def test_event_display_of_a_plane_the_event_lacks_is_a_value_error():
    from jaxinterp.nugraph import display

    # was a KeyError
    with pytest.raises(ValueError, match=r"^planes: the event has no plane\(s\) \['x'\] \(it has \['u', 'v', 'y'\]\)$"):
        display.event_display(_display_event(), planes=("u", "x"))


def test_summary_of_no_events_says_so():
    from jaxinterp.nugraph import simulate

    with pytest.raises(ValueError, match="^events: expected at least one event to summarise, got none$"):
        simulate.summary([])
    events = simulate.simulate(2, seed=0)
    # an iterator was read up by the hit counts, leaving no labels: "need at least one array to concatenate"
    s, it = simulate.summary(events), simulate.summary(iter(events))
    assert s.space_points.shape == (2,) and sum(s.class_mix.values()) == pytest.approx(1.0)
    assert it.class_mix == s.class_mix and np.array_equal(it.hits_percentiles, s.hits_percentiles)
