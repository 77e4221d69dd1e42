"""A seeded synthetic world of entities and relations, and the sentences that state its facts.

Entities (people, cities, countries, languages, companies) carry made-up names built from
syllables, so no fact can be known from pre-training or guessed from spelling. Relations:

    birthplace    person  -> city        "Tavo Renik was born in the city of Dulmar."
    country       city    -> country     "Dulmar is in the country of Keshor."
    language      country -> language    "The language of Keshor is Ulvan."
    founder       company -> person      "Velkor Works was founded by Tavo Renik."
    headquarters  company -> city        "Velkor Works is based in the city of Dulmar."

Two-hop facts compose two relations through a bridge entity, written by putting a description of
the bridge ("the birthplace of Tavo Renik") where the second relation's subject goes: "The
birthplace of Tavo Renik is in the country of Keshor." For each composition kind, the two-hop
sentences of only part of the subjects (`train_fraction` of them, rounded half up) go into the
training text; the rest are held out, so the model can answer them only by composing the two
single-hop facts it learnt.

Everything is a plain function of (WorldConfig, seed): the same config gives the same world.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxinterp.checks import is_integer

# Syllable inventory: consonant onsets, vowels and optional codas. Names are 2-3 syllables.
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "th", "br", "dr", "kr", "tr"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "", "n", "r", "l", "s", "k", "m", "th"]
_COMPANY_SUFFIXES = ["Works", "Labs", "Trading", "Foundry", "Systems", "Mills"]

KINDS = ("person", "city", "country", "language", "company")

# relation -> (subject kind, object kind, prompt templates). A prompt ends right before the object;
# the sentence is prompt + " " + object + ".". The first template is the canonical one.
RELATIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "birthplace": ("person", "city", (
        "{s} was born in the city of", "The birthplace of {s} is", "{s} comes from the city of")),
    "country": ("city", "country", (
        "{s} is in the country of", "The city of {s} lies in", "{s} is a city in")),
    "language": ("country", "language", (
        "The language of {s} is", "People in {s} speak", "In {s}, the main language is")),
    "founder": ("company", "person", (
        "{s} was founded by", "The founder of {s} is", "{s} was started by")),
    "headquarters": ("company", "city", (
        "{s} is based in the city of", "The headquarters of {s} are in", "{s} has its head office in")),
}

# Descriptions of the object of a relation, used to name a bridge entity without naming it.
DESCRIPTIONS: dict[str, tuple[str, ...]] = {
    "birthplace": ("the birthplace of {s}", "the city where {s} was born"),
    "country": ("the country of {s}", "the country where {s} lies"),
    "founder": ("the founder of {s}", "the person who founded {s}"),
    "headquarters": ("the headquarters city of {s}", "the city where {s} is based"),
}

# Two-hop compositions (first relation, second relation): subject -r1-> bridge -r2-> answer.
COMPOSITIONS: tuple[tuple[str, str], ...] = (
    ("birthplace", "country"),     # person -> city -> country
    ("country", "language"),       # city -> country -> language
    ("founder", "birthplace"),     # company -> person -> city
    ("headquarters", "country"),   # company -> city -> country
)


@dataclasses.dataclass(frozen=True)
class WorldConfig:
    """Sizes of the world. The defaults make the shipped model's world."""

    n_countries: int = 10
    cities_per_country: int = 3
    n_people: int = 64
    n_companies: int = 16
    train_fraction: float = 0.5  # share of each composition's subjects whose two-hop text is trained (`trained_count`)
    seed: int = 0

    def __post_init__(self):
        # each stored as a Python number once checked: random.Random refuses an np.int64 seed (a
        # TypeError in build_world) and json.dumps any numpy scalar (run.json, train.json: after the work)
        for field in ("n_countries", "cities_per_country", "n_people", "n_companies", "seed"):
            # 2.5 people spun through 100000 draws for 'could not draw 2.5 distinct names'; True was 1
            if not is_integer(getattr(self, field)):
                raise ValueError(f"WorldConfig.{field} must be an integer, got {getattr(self, field)!r}")
            object.__setattr__(self, field, int(getattr(self, field)))
        if isinstance(self.train_fraction, bool) or not isinstance(self.train_fraction, (int, float, np.floating)):
            raise ValueError(f"WorldConfig.train_fraction must be a number, got {self.train_fraction!r}")
        object.__setattr__(self, "train_fraction", float(self.train_fraction))
        # random.Random(-3) is random.Random(3): a negative seed built the world of its absolute value
        if self.seed < 0:
            raise ValueError(f"WorldConfig.seed must be at least 0, got {self.seed}")
        for field in ("n_countries", "cities_per_country", "n_people", "n_companies"):
            if getattr(self, field) < 1:
                raise ValueError(f"WorldConfig.{field} must be at least 1, got {getattr(self, field)}")
        if not 0.0 <= self.train_fraction <= 1.0:
            raise ValueError(f"WorldConfig.train_fraction must lie in [0, 1], got {self.train_fraction}")
        if self.n_countries * self.cities_per_country > 200 or self.n_countries > 60:
            raise ValueError(f"the syllable inventory names at most 60 countries and 200 cities, got "
                             f"{self.n_countries} countries x {self.cities_per_country} cities")


def train_json_path(model_dir) -> Path:
    """The train.json beside a model folder (made absolute first: Path(".").parent is "." itself, so
    `--model .` looked inside the model folder, found none and took the default world)."""
    return Path(os.path.abspath(model_dir)).parent / "train.json"


def run_world_config(model_dir) -> WorldConfig | None:
    """The WorldConfig a toy-world model was trained on, from the train.json beside its model folder
    (a `toyworld train` run folder holds model/ and train.json, as the shipped assets do); None where
    there is no such file or it records no world. ValueError if the settings are not a WorldConfig's."""
    path = train_json_path(model_dir)
    try:
        world = json.loads(path.read_text()).get("world") if path.is_file() else None
    except (OSError, ValueError):
        world = None
    if not isinstance(world, dict):
        return None
    try:
        return WorldConfig(**world)
    except (TypeError, ValueError) as e:  # an unknown field; a value WorldConfig refuses (named with the file)
        raise ValueError(f"model: expected the world settings of a toyworld run in {path}, got {world} ({e})") from None


class Fact(NamedTuple):
    """One single-hop fact: relation(subject) = object."""

    relation: str
    subject: str
    object: str


class TwoHop(NamedTuple):
    """relation2(relation1(subject)) = answer, through `bridge` = relation1(subject)."""

    relation1: str
    relation2: str
    subject: str
    bridge: str
    answer: str
    trained: bool  # its sentences are in the training text


class World(NamedTuple):
    config: WorldConfig
    entities: dict[str, list[str]]  # kind -> names
    facts: list[Fact]
    two_hops: list[TwoHop]

    def lookup(self, relation: str, subject: str) -> str:
        """relation(subject); a linear scan (a world holds a few hundred facts)."""
        for f in self.facts:
            if f.relation == relation and f.subject == subject:
                return f.object
        raise ValueError(f"no {relation!r} fact about {subject!r} in this world")


def _syllable(rng: random.Random, coda: bool = True) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if coda else "")


def _names(rng: random.Random, n: int, syllables: tuple[int, int], taken: set[str],
           distinct_first: bool) -> list[str]:
    """n new capitalised names; with distinct_first, no two share a first syllable (so the first
    token of an answer tends to tell answers of one kind apart)."""
    out, firsts = [], set()
    for _ in range(100_000):
        if len(out) == n:
            return out
        k = rng.randint(*syllables)
        first = _syllable(rng)
        name = (first + "".join(_syllable(rng, coda=(i == k - 2)) for i in range(k - 1))).capitalize()
        if name in taken or (distinct_first and first in firsts):
            continue
        taken.add(name)
        firsts.add(first)
        out.append(name)
    raise ValueError(f"could not draw {n} distinct names from the syllable inventory")


def trained_count(train_fraction: float, n: int) -> int:
    """How many of a composition's `n` subjects have their two-hop text trained: `train_fraction * n`
    rounded half up (0.5 of 15 is 8, of 13 is 7), computed on the fraction as written (0.35 is 7/20,
    not the binary float just below it), so a share that lands on a half always rounds the same way.
    (It was round(): half to even, so 0.5 of 15 gave 8 but 0.5 of 13 gave 6.)"""
    exact = Fraction(repr(float(train_fraction))) * n
    return math.floor(exact + Fraction(1, 2))


def build_world(config: WorldConfig = WorldConfig()) -> World:
    """The world of `config` (deterministic in config.seed)."""
    # a dict of its fields (as train.json holds them) was an AttributeError from random.Random
    if not isinstance(config, WorldConfig):
        raise ValueError(f"config: expected a toyworld WorldConfig, got {type(config).__name__}: {config!r:.80}")
    rng = random.Random(config.seed)
    taken: set[str] = set()
    countries = _names(rng, config.n_countries, (2, 2), taken, distinct_first=True)
    languages = _names(rng, config.n_countries, (2, 3), taken, distinct_first=True)
    cities = _names(rng, config.n_countries * config.cities_per_country, (2, 3), taken, distinct_first=True)
    firsts = _names(rng, config.n_people, (2, 2), taken, distinct_first=False)
    lasts = _names(rng, config.n_people, (2, 2), taken, distinct_first=False)
    people = [f"{a} {b}" for a, b in zip(firsts, lasts)]
    companies = [f"{n} {rng.choice(_COMPANY_SUFFIXES)}"
                 for n in _names(rng, config.n_companies, (2, 2), taken, distinct_first=False)]

    facts: list[Fact] = []
    for i, country in enumerate(countries):
        facts.append(Fact("language", country, languages[i]))
    for i, city in enumerate(cities):  # every country gets cities_per_country cities
        facts.append(Fact("country", city, countries[i % config.n_countries]))
    for person in people:
        facts.append(Fact("birthplace", person, rng.choice(cities)))
    founders = rng.sample(people, k=min(config.n_companies, len(people))) if config.n_companies <= len(people) \
        else [rng.choice(people) for _ in companies]
    for company, founder in zip(companies, founders):
        facts.append(Fact("founder", company, founder))
        facts.append(Fact("headquarters", company, rng.choice(cities)))

    world = World(config, {"person": people, "city": cities, "country": countries, "language": languages,
                           "company": companies}, facts, [])
    by_rel = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    # one index, not World.lookup's scan of every fact per two-hop: that made the build quadratic
    # (24 s for 20000 people)
    obj = {(f.relation, f.subject): f.object for f in facts}
    for r1, r2 in COMPOSITIONS:
        subjects = [f.subject for f in by_rel[r1]]
        order = list(range(len(subjects)))
        rng.shuffle(order)
        n_train = trained_count(config.train_fraction, len(subjects))
        trained = set(order[:n_train])
        for i, s in enumerate(subjects):
            bridge = obj[r1, s]
            world.two_hops.append(TwoHop(r1, r2, s, bridge, obj[r2, bridge], i in trained))
    return world


# ----------------------------------------------------------------------------------------------
# Sentences.

def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def fact_prompts(fact: Fact) -> list[str]:
    """Every template's prompt for a single-hop fact (each ends right before the object)."""
    return [t.format(s=fact.subject) for t in RELATIONS[fact.relation][2]]


def description(relation: str, subject: str, variant: int = 0) -> str:
    """A noun phrase naming relation(subject) without naming it: 'the birthplace of Tavo Renik'."""
    return DESCRIPTIONS[relation][variant].format(s=subject)


def two_hop_prompts(th: TwoHop) -> list[str]:
    """Every (description variant x second-relation template) prompt of a two-hop fact."""
    out = []
    for d in range(len(DESCRIPTIONS[th.relation1])):
        desc = description(th.relation1, th.subject, d)
        for t in RELATIONS[th.relation2][2]:
            out.append(_capitalise(t.format(s=desc)))
    return out


def explicit_prompts(th: TwoHop) -> list[str]:
    """The two-hop question with the bridge named: the second relation's prompts on the bridge."""
    return fact_prompts(Fact(th.relation2, th.bridge, th.answer))


def sentence(prompt: str, answer: str) -> str:
    return f"{prompt} {answer}."


def training_sentences(world: World) -> list[str]:
    """The training text: every single-hop sentence, and the two-hop sentences of trained compositions."""
    out = [sentence(p, f.object) for f in world.facts for p in fact_prompts(f)]
    out += [sentence(p, th.answer) for th in world.two_hops if th.trained for p in two_hop_prompts(th)]
    return out


class PromptRow(NamedTuple):
    """One row of the memory-injection CSV format (the columns of the paper's hand-written set)."""

    explicit_sentence: str
    obscure_sentence: str
    explicit_entity: str
    obscure_entity: str
    answer: str


CSV_COLUMNS = PromptRow._fields


def prompt_rows(world: World, *, held_out_only: bool = True) -> list[PromptRow]:
    """Memory-injection prompts from the two-hop facts (canonical templates): the obscure sentence
    describes the bridge, the explicit sentence names it, the memory to inject is the bridge."""
    rows = []
    for th in world.two_hops:
        if held_out_only and th.trained:
            continue
        desc = description(th.relation1, th.subject, 0)
        template = RELATIONS[th.relation2][2][0]
        obscure = _capitalise(template.format(s=desc))
        explicit = template.format(s=th.bridge)
        obscure_entity = _capitalise(desc) if obscure.startswith(_capitalise(desc)) else desc
        rows.append(PromptRow(explicit, obscure, th.bridge, obscure_entity, th.answer))
    return rows


def write_prompts_csv(rows: list[PromptRow], path) -> None:
    import csv
    import io

    from jaxinterp import atomic

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    w.writerows(rows)
    atomic.write_text(path, buf.getvalue())
