"""Accuracy of a model on the toy world: single-hop facts, two-hop compositions, explicit forms.

Two measures per prompt:
* greedy: the model's greedy continuation starts with the whole answer. Computed in one forward of
  prompt + answer: greedy decoding yields the answer exactly when, given the right prefix, every
  answer token is the argmax.
* candidate choice (canonical template only): among all entities of the answer's kind, the one
  with the highest log-probability of its whole continuation is the answer. Chance is 1 / #kind.

Groups: `single-hop` (every fact, every template), `two-hop held-out` (compositions whose two-hop
text was never trained: every description x template), `two-hop trained` (compositions seen in
training), `explicit held-out` (the held-out compositions with the bridge named: the second hop's
prompts on the bridge entity). The held-out two-hop figure is also given for the compositions whose
two single hops the model answers correctly on their canonical prompts.

Axis names: N prompts, T positions, V vocabulary.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from jaxinterp.toyworld import tokenizer as toktools
from jaxinterp.toyworld.world import (Fact, World, WorldConfig, build_world, explicit_prompts,
                                      fact_prompts, two_hop_prompts, RELATIONS)

_BATCH = 128  # prompts per forward (one compiled shape)


class Item(NamedTuple):
    group: str     # single-hop / two-hop held-out / two-hop trained / explicit held-out
    kind: str      # relation, or "r1 -> r2"
    prompt: str
    answer: str
    canonical: bool  # first template (and first description)


class Scored(NamedTuple):
    greedy: np.ndarray       # [N] bool
    first_prob: np.ndarray   # [N] probability of the answer's first token after the prompt
    logprob: np.ndarray      # [N] log-probability of the whole answer


def items(world: World) -> list[Item]:
    out = []
    for f in world.facts:
        out += [Item("single-hop", f.relation, p, f.object, i == 0) for i, p in enumerate(fact_prompts(f))]
    for th in world.two_hops:
        kind = f"{th.relation1} -> {th.relation2}"
        group = "two-hop trained" if th.trained else "two-hop held-out"
        out += [Item(group, kind, p, th.answer, i == 0) for i, p in enumerate(two_hop_prompts(th))]
        if not th.trained:
            out += [Item("explicit held-out", kind, p, th.answer, i == 0) for i, p in enumerate(explicit_prompts(th))]
    return out


@functools.cache
def _score_fn(config):
    import jax
    import jax.numpy as jnp

    from jaxinterp.transformer import gpt2

    def score(params, tokens, mask):
        """Per position t: log p(tokens[t+1]) and whether it is the argmax. [N, T-1] each."""
        logits = gpt2.module(config).apply({"params": params}, tokens, mask)[:, :-1]
        logp = jax.nn.log_softmax(logits, axis=-1)
        target = tokens[:, 1:]
        lp = jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
        return lp, logits.argmax(-1) == target

    return jax.jit(score)


def score(params, config, tokenizer, prompts: list[str], answers: list[str]) -> Scored:
    """Greedy correctness, first-token probability and whole-answer log-probability per prompt."""
    # zip dropped the prompts (or answers) past the shorter list: fewer scores than prompts, silently
    if len(prompts) != len(answers):
        raise ValueError(f"answers: expected one answer per prompt ({len(prompts)}), got {len(answers)}")
    if not prompts:  # max() of no sequence, below
        raise ValueError("prompts: expected at least one prompt, got none")
    seqs, spans = [], []
    for p, a in zip(prompts, answers):
        if not a.strip():  # " " alone is a token here, so test the text
            raise ValueError(f"answers: answer {a!r} of prompt {p!r} is empty")
        pid, aid = toktools.encode(tokenizer, p), toktools.answer_ids(tokenizer, a)
        seqs.append(pid + aid)
        spans.append((len(pid), len(pid) + len(aid)))
    T = config.n_positions
    longest = max(range(len(seqs)), key=lambda i: len(seqs[i]))
    if len(seqs[longest]) > T:  # named: the message said only that some prompt was too long
        raise ValueError(f"prompt {prompts[longest]!r} with its answer {answers[longest]!r} is {len(seqs[longest])} "
                         f"tokens, longer than n_positions={T}")
    n = len(seqs)
    n_pad = -(-n // _BATCH) * _BATCH
    tokens, mask = np.zeros((n_pad, T), np.int32), np.zeros((n_pad, T), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)], mask[i, :len(s)] = s, 1
    fn = _score_fn(config)
    lps, hits = [], []
    for b in range(0, n_pad, _BATCH):
        lp, hit = fn(params, tokens[b:b + _BATCH], mask[b:b + _BATCH])
        lps.append(np.asarray(lp))
        hits.append(np.asarray(hit))
    lp, hit = np.concatenate(lps), np.concatenate(hits)
    # Position t of lp predicts token t+1: the answer tokens [start, stop) are predicted at [start-1, stop-1).
    greedy = np.array([hit[i, a - 1:b - 1].all() for i, (a, b) in enumerate(spans)])
    first = np.array([np.exp(lp[i, a - 1]) for i, (a, _) in enumerate(spans)])
    total = np.array([lp[i, a - 1:b - 1].sum() for i, (a, b) in enumerate(spans)])
    return Scored(greedy, first, total)


def _answer_kind(item: Item) -> str:
    relation = item.kind.split(" -> ")[-1]
    return RELATIONS[relation][1]


def evaluate(model, *, world_config: WorldConfig | None = None, candidates: bool = True,
             params_config_tokenizer=None) -> dict:
    """Accuracy tables of `model` (a folder `load_gpt2` reads) on the world of `world_config`; by
    default the model's own (the train.json beside its folder, as `toyworld evaluate` reads it), else
    WorldConfig()'s. (The default was always WorldConfig(): another run's model was scored on the
    built-in world, whose held-out compositions it may have trained on.)"""
    from jaxinterp.toyworld.world import run_world_config
    from jaxinterp.transformer import load_gpt2, load_tokenizer

    if world_config is None:
        world_config = (run_world_config(model) if model is not None else None) or WorldConfig()
    elif not isinstance(world_config, WorldConfig):  # a dict was an AttributeError once the model had loaded
        raise ValueError(f"world_config: expected a WorldConfig or None (the model's own world), got "
                         f"{type(world_config).__name__}: {world_config!r:.80}")
    if params_config_tokenizer is None:
        params, config = load_gpt2(model)
        tok = load_tokenizer(model)
    else:
        params, config, tok = params_config_tokenizer
    world = build_world(world_config)
    its = items(world)
    s = score(params, config, tok, [i.prompt for i in its], [i.answer for i in its])

    cand = np.full(len(its), np.nan)
    if candidates:
        canon = [k for k, i in enumerate(its) if i.canonical]
        prompts, answers, owners = [], [], []
        for k in canon:
            for c in world.entities[_answer_kind(its[k])]:
                prompts.append(its[k].prompt), answers.append(c), owners.append(k)
        lp = score(params, config, tok, prompts, answers).logprob
        best: dict[int, tuple[float, str]] = {}
        for k, a, v in zip(owners, answers, lp):
            if k not in best or v > best[k][0]:
                best[k] = (v, a)
        for k in canon:
            cand[k] = float(best[k][1] == its[k].answer)

    rows = []
    groups = defaultdict(list)
    for k, i in enumerate(its):
        groups[i.group, i.kind].append(k)
        groups[i.group, "all"].append(k)
    for (group, kind), ks in groups.items():
        c = cand[ks][~np.isnan(cand[ks])]
        rows.append({"group": group, "kind": kind, "prompts": len(ks), "greedy": float(s.greedy[ks].mean()),
                     "answer_first_token_prob": float(s.first_prob[ks].mean()),
                     "candidate_choice": float(c.mean()) if c.size else None, "candidate_prompts": int(c.size),
                     # a random pick among the answer's kind, averaged over the prompts (an "all" row
                     # weighs each kind by its prompts; it was an unweighted mean over kinds)
                     "chance": float(sum(Fraction(1, len(world.entities[_answer_kind(its[k])])) for k in ks) / len(ks))})
    order = ["single-hop", "two-hop held-out", "explicit held-out", "two-hop trained"]
    rows.sort(key=lambda r: (order.index(r["group"]), r["kind"] != "all", r["kind"]))

    # Held-out compositions whose two hops the model knows (canonical single-hop prompts correct).
    known = {(i.kind, i.prompt): bool(s.greedy[k]) for k, i in enumerate(its) if i.group == "single-hop" and i.canonical}
    def hop_known(relation, subject):
        return known[relation, fact_prompts(Fact(relation, subject, ""))[0]]
    # the held-out items by prompt: each composition's were found by a scan of every item (building
    # the prompt set once per item scanned), quadratic in the world (96 s for 2000 people)
    held_out = defaultdict(list)
    for k, i in enumerate(its):
        if i.group == "two-hop held-out":
            held_out[i.prompt].append(k)
    both, ok = 0, 0
    for th in world.two_hops:
        if th.trained or not (hop_known(th.relation1, th.subject) and hop_known(th.relation2, th.bridge)):
            continue
        ks = sorted({k for p in set(two_hop_prompts(th)) for k in held_out.get(p, ())})
        both += len(ks)
        ok += int(s.greedy[ks].sum())
    tokenization = {}
    for kind, names in world.entities.items():
        ids = [toktools.answer_ids(tok, n) for n in names]
        tokenization[kind] = {"entities": len(names), "mean_tokens": float(np.mean([len(i) for i in ids])),
                              "distinct_first_tokens": len({i[0] for i in ids})}
    examples = [{"prompt": i.prompt, "answer": i.answer, "greedy": bool(s.greedy[k]),
                 "answer_first_token_prob": float(s.first_prob[k])}
                for k, i in enumerate(its) if i.canonical][:: max(1, sum(i.canonical for i in its) // 12)][:12]
    return {"rows": rows, "two_hop_held_out_given_both_hops_known": {"prompts": both,
            "greedy": ok / both if both else None}, "tokenization": tokenization, "examples": examples}


def markdown(result: dict) -> str:
    """The accuracy table (and tokenisation table) as markdown."""
    lines = ["| group | kind | prompts | greedy acc | candidate-choice acc (canonical) | chance | p(first answer token) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        cc = "-" if r["candidate_choice"] is None else f"{r['candidate_choice']:.3f} ({r['candidate_prompts']})"
        lines.append(f"| {r['group']} | {r['kind']} | {r['prompts']} | {r['greedy']:.3f} | {cc} | "
                     f"{r['chance']:.3f} | {r['answer_first_token_prob']:.3f} |")
    c = result["two_hop_held_out_given_both_hops_known"]
    if c["greedy"] is not None:
        lines.append(f"\nHeld-out two-hop prompts whose two single hops are both known: {c['prompts']}, "
                     f"greedy accuracy {c['greedy']:.3f}.")
    lines += ["", "| entity kind | entities | mean tokens (' ' + name) | distinct first tokens |", "| --- | ---: | ---: | ---: |"]
    for kind, t in result["tokenization"].items():
        lines.append(f"| {kind} | {t['entities']} | {t['mean_tokens']:.2f} | {t['distinct_first_tokens']} |")
    return "\n".join(lines)
