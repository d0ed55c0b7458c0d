"""The golden set: memories and the questions whose right answers they are,
generated from templates by a seeded `random.Random` (no network, no model)
and committed as `evaluation/golden/<family>.{memories,questions}.jsonl`.
`python -m evaluation --regenerate` rewrites the files byte for byte.

Families (each in an environment of its own; a tenant index is an end user):

- paraphrase: 100 end users x 30 personal facts (places, food, work, family,
  hobbies, health), 5 questions each worded differently from the fact
  ("Drinks green tea every morning" / "What is my usual morning beverage?").
- exact_term: 5 end users x 300 similar records told apart by one exact term
  (order codes, ticket ids, SKUs, full names, invoice numbers), 100 questions
  each naming the term ("What is the status of ORD-48213?").
- current_truth: 100 end users x 10 facts of which 5 changed: the old memory
  holds from `valid_time` until `invalid_time` (set with UpdateMemory after
  loading), the new one from then on; the question asks for the current
  value and names the superseded memory as a wrong answer.
- knowledge: pending (needs KnowledgeService); no files.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).parent / "golden"
SEED = 11
FAMILIES = ("paraphrase", "exact_term", "current_truth")
# Families whose questions need a service that does not exist yet: name → why.
PENDING_FAMILIES = {"knowledge": "pending (needs KnowledgeService)"}


@dataclass(frozen=True)
class GoldenMemory:
    """One memory to load; `gid` goes to `metadata.gid`. Times are RFC 3339
    strings; empty `valid_time`: from its creation; non-empty `invalid_time`:
    it no longer holds (applied with UpdateMemory after loading)."""

    gid: str
    family: str
    tenant: int
    content: str
    valid_time: str = ""
    invalid_time: str = ""


@dataclass(frozen=True)
class GoldenQuestion:
    """One question, asked as the end user `tenant` of its family. `expected`:
    the gids of the right answers; `superseded`: gids that answered it once
    and no longer do (a hit on one is wrong)."""

    qid: str
    family: str
    tenant: int
    question: str
    expected: tuple[str, ...]
    superseded: tuple[str, ...] = ()


@dataclass(frozen=True)
class GoldenSet:
    memories: tuple[GoldenMemory, ...]
    questions: tuple[GoldenQuestion, ...]

    def of(self, family: str) -> GoldenSet:
        """The part of the set in `family`."""
        return GoldenSet(
            tuple(m for m in self.memories if m.family == family),
            tuple(q for q in self.questions if q.family == family),
        )


# --- values shared by the templates ----------------------------------------------------

_VALUES: dict[str, tuple[str, ...]] = {
    "city": (
        "Lisbon", "Nairobi", "Osaka", "Toronto", "Krakow", "Porto",
        "Lima", "Hanoi", "Dublin", "Tbilisi", "Seville", "Perth",
    ),
    "country": (
        "Iceland", "Peru", "Japan", "Morocco", "New Zealand",
        "Norway", "Vietnam", "Chile", "Greece", "Kenya",
    ),
    "drink": (
        "green tea", "black coffee", "oat milk latte", "sparkling water",
        "chai", "espresso", "hot chocolate", "orange juice",
    ),
    "allergen": (
        "peanuts", "shellfish", "penicillin", "cats", "pollen", "latex", "sesame", "bee stings",
    ),
    "diet": ("vegetarian", "vegan", "low-carb", "gluten-free", "pescatarian", "keto", "paleo"),
    "cuisine": (
        "Thai", "Ethiopian", "Mexican", "Korean", "Lebanese", "Italian", "Georgian", "Peruvian",
    ),
    "food": (
        "olives", "coriander", "mushrooms", "blue cheese",
        "liquorice", "anchovies", "okra", "beetroot",
    ),
    "job": (
        "a nurse", "a carpenter", "an airline pilot", "a primary school teacher", "a data analyst",
        "a pastry chef", "an architect", "a physiotherapist", "a lawyer", "an electrician",
    ),
    "company": (
        "Northwind", "Globex", "Initech", "Umbrella Health",
        "Stark Logistics", "Acme Foods", "Hooli", "Vandelay Imports",
    ),
    "transport": ("bicycle", "train", "electric scooter", "bus", "ferry", "car", "tram"),
    "person": (
        "Marta", "Jonas", "Aisha", "Tomasz", "Lucia", "Kenji",
        "Fiona", "Rafael", "Ingrid", "Omar", "Sofia", "Bilal",
    ),
    "morning": ("6 am", "7 am", "7:30 am", "8 am", "8:30 am", "9 am", "10 am"),
    "night": ("9 pm", "10 pm", "10:30 pm", "11 pm", "midnight", "1 am"),
    "count": ("one", "two", "three", "four"),
    "pet": ("dog", "cat", "parrot", "rabbit", "tortoise", "hamster"),
    "petname": ("Biscuit", "Luna", "Pepper", "Mango", "Ziggy", "Olive", "Noodle"),
    "month": (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
    "sport": (
        "tennis", "basketball", "badminton", "rugby",
        "volleyball", "squash", "table tennis", "padel",
    ),
    "instrument": ("cello", "piano", "violin", "trumpet", "ukulele", "drums", "saxophone"),
    "genre": ("science fiction", "crime", "historical", "fantasy", "romance", "horror"),
    "music": ("jazz", "lo-fi beats", "classical", "heavy metal", "bossa nova", "techno", "k-pop"),
    "language": (
        "Portuguese", "Japanese", "Swahili", "Polish", "Hindi", "Arabic", "Korean", "Turkish",
    ),
    "colour": ("red", "blue", "silver", "green", "black", "white"),
    "carmodel": (
        "Volvo estate", "Toyota hatchback", "Fiat 500",
        "Tesla Model 3", "Ford pickup", "Mini Cooper",
    ),
    "fear": ("spiders", "heights", "deep water", "thunderstorms", "flying", "clowns", "the dark"),
    "condition": (
        "high blood pressure", "asthma", "migraines", "diabetes", "insomnia", "back pain",
    ),
    "team": ("Benfica", "Arsenal", "Ajax", "Celtic", "Boca Juniors", "Napoli", "Galatasaray"),
    "phone": ("Pixel", "Galaxy", "Fairphone", "OnePlus", "Nokia", "Motorola"),
}  # fmt: skip


@dataclass(frozen=True)
class _Kind:
    """A kind of fact: ways to state it and ways to ask for it."""

    name: str
    facts: tuple[str, ...]
    questions: tuple[str, ...]


# --- paraphrase ----------------------------------------------------------------------------

_PARAPHRASE_USERS = 100
_PARAPHRASE_QUESTIONS_PER_USER = 5
_PERSONAL: tuple[_Kind, ...] = (
    _Kind(
        "home",
        ("Lives in {city}.", "Has been living in {city} for three years."),
        ("Which city is my home now?", "Where am I based these days?"),
    ),
    _Kind(
        "hometown",
        ("Grew up in {city}.", "Was born and raised in {city}."),
        ("Where did I spend my childhood?", "What town am I originally from?"),
    ),
    _Kind(
        "sibling",
        ("Their sibling {person} lives in {city}.", "Has a sibling, {person}, based in {city}."),
        ("Where does my brother or sister live?", "What is my sibling called?"),
    ),
    _Kind(
        "bucket_list",
        ("Dreams of visiting {country} one day.", "Wants to travel to {country} someday."),
        ("Which country is on my bucket list?", "Where would I love to go on a trip in future?"),
    ),
    _Kind(
        "holiday",
        ("Spent last summer's holiday in {country}.", "Went to {country} on vacation last year."),
        (
            "Where did I go for my most recent vacation?",
            "Which country did I see on my last break?",
        ),
    ),
    _Kind(
        "drink",
        ("Drinks {drink} every morning.", "Starts each day with a cup of {drink}."),
        ("What is my usual morning beverage?", "What do I have to drink when I wake up?"),
    ),
    _Kind(
        "allergy",
        ("Is allergic to {allergen}.", "Has a severe allergy to {allergen}."),
        ("What gives me an allergic reaction?", "Which thing could make me break out in hives?"),
    ),
    _Kind(
        "diet",
        ("Follows a {diet} diet.", "Has been eating {diet} for a while now."),
        ("What kind of eating plan do I stick to?", "Which nutrition regime am I on?"),
    ),
    _Kind(
        "cuisine",
        ("Loves {cuisine} food more than any other.", "Their favourite cuisine is {cuisine}."),
        ("What kind of restaurant should I book for dinner?", "Which country's dishes do I enjoy?"),
    ),
    _Kind(
        "disliked_food",
        ("Cannot stand the taste of {food}.", "Hates {food} and always picks them out."),
        ("What should never go on my plate?", "Which ingredient do I find disgusting?"),
    ),
    _Kind(
        "job",
        ("Works as {job}.", "Is {job} by profession."),
        ("What do I do for a living?", "What is my occupation?"),
    ),
    _Kind(
        "employer",
        ("Is employed at {company}.", "Has worked for {company} since 2021."),
        ("Which company pays my salary?", "Who is my employer?"),
    ),
    _Kind(
        "commute",
        ("Commutes to work by {transport}.", "Takes the {transport} to the office every day."),
        ("How do I get to my workplace?", "How do I travel on my daily journey to my job?"),
    ),
    _Kind(
        "manager",
        ("Their manager at work is {person}.", "Reports to {person} at the office."),
        ("Who is my boss?", "Who do I answer to in my job?"),
    ),
    _Kind(
        "work_start",
        ("Starts work at {morning} every day.", "Begins the working day at {morning}."),
        ("What time does my shift begin?", "When do I have to be at my desk?"),
    ),
    _Kind(
        "spouse",
        ("Is married to {person}.", "Their spouse is called {person}."),
        ("What is my partner's name?", "Who did I marry?"),
    ),
    _Kind(
        "children",
        ("Has {count} children.", "Is a parent of {count} kids."),
        ("How many sons and daughters do I have?", "How big is my family in offspring?"),
    ),
    _Kind(
        "pet",
        ("Has a {pet} named {petname}.", "Owns a {pet} called {petname}."),
        ("What animal lives with me?", "What's the name of my furry or feathered companion?"),
    ),
    _Kind(
        "best_friend",
        ("Their best friend since school is {person}.", "Has been close to {person} since age 6."),
        ("Who is my closest mate?", "Who have I known the longest as a buddy?"),
    ),
    _Kind(
        "birthday",
        ("Celebrates their birthday in {month}.", "Was born in {month}."),
        ("When should people send me birthday wishes?", "In which month do I turn a year older?"),
    ),
    _Kind(
        "sport",
        ("Plays {sport} on weekends.", "Has a weekly {sport} match with friends."),
        ("Which game do I practise for exercise?", "What do I do to stay active on Saturdays?"),
    ),
    _Kind(
        "instrument",
        ("Is learning to play the {instrument}.", "Takes {instrument} lessons on Tuesdays."),
        ("Which musical instrument am I studying?", "What am I practising to become a musician?"),
    ),
    _Kind(
        "books",
        ("Mostly reads {genre} novels.", "Their favourite books are {genre} stories."),
        ("What kind of literature do I enjoy?", "Which genre should a bookshop recommend to me?"),
    ),
    _Kind(
        "music",
        ("Listens to {music} while working.", "Puts on {music} to focus at their desk."),
        ("What is in my headphones during the day?", "Which sound helps me concentrate?"),
    ),
    _Kind(
        "language",
        ("Is taking {language} lessons.", "Is studying {language} in the evenings."),
        ("Which foreign tongue am I learning?", "What language course am I enrolled in?"),
    ),
    _Kind(
        "car",
        ("Drives a {colour} {carmodel}.", "Owns a {colour} {carmodel}."),
        ("What vehicle is parked in my driveway?", "What do I drive?"),
    ),
    _Kind(
        "fear",
        ("Is afraid of {fear}.", "Has a phobia of {fear}."),
        ("What scares me the most?", "What makes me anxious and nervous?"),
    ),
    _Kind(
        "bedtime",
        ("Usually goes to bed around {night}.", "Falls asleep at about {night} on weeknights."),
        ("When do I turn in for the night?", "What time do I hit the sack?"),
    ),
    _Kind(
        "condition",
        ("Takes daily medication for {condition}.", "Is being treated for {condition}."),
        ("What health problem am I managing?", "Why do I see the doctor regularly?"),
    ),
    _Kind(
        "team",
        ("Supports {team} in football.", "Is a lifelong {team} fan."),
        ("Which club do I cheer for?", "Whose matches do I never miss on TV?"),
    ),
)


def _fill(rng: random.Random, template: str) -> str:
    """`template` with each `{slot}` replaced by a random value of that slot."""
    slots = {
        name: rng.choice(values) for name, values in _VALUES.items() if f"{{{name}}}" in template
    }
    return template.format(**slots)


def _paraphrase(rng: random.Random) -> tuple[list[GoldenMemory], list[GoldenQuestion]]:
    memories: list[GoldenMemory] = []
    questions: list[GoldenQuestion] = []
    for user in range(_PARAPHRASE_USERS):
        gids: dict[str, str] = {}
        for kind in _PERSONAL:
            gid = f"pp-u{user:03d}-{kind.name}"
            gids[kind.name] = gid
            memories.append(
                GoldenMemory(gid, "paraphrase", user, _fill(rng, rng.choice(kind.facts)))
            )
        for kind in rng.sample(_PERSONAL, _PARAPHRASE_QUESTIONS_PER_USER):
            questions.append(
                GoldenQuestion(
                    f"pp-q{len(questions):04d}",
                    "paraphrase",
                    user,
                    rng.choice(kind.questions),
                    (gids[kind.name],),
                )
            )
    return memories, questions


# --- exact_term ----------------------------------------------------------------------------

_EXACT_RECORDS = 300
_EXACT_QUESTIONS = 100
_FIRST_NAMES = (
    "Anna", "Ben", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jakob",
    "Karin", "Leon", "Maria", "Nils", "Olivia", "Paul", "Rita", "Simon", "Tanja", "Uwe",
    "Vera", "Walter", "Xenia", "Yann", "Zoe", "Adam", "Berta", "Carl", "Dora", "Emil",
)  # fmt: skip
_LAST_NAMES = (
    "Schmidt", "Novak", "Silva", "Costa", "Jensen", "Nowak", "Rossi", "Meyer", "Dubois",
    "Garcia", "Kowalski", "Horvat", "Larsen", "Moreau", "Fischer", "Santos", "Weber",
    "Ferreira", "Berg", "Koch", "Lopez", "Bauer", "Martin", "Romano", "Wagner", "Petrov",
    "Lindqvist", "Almeida", "Hansen", "Kovac",
)  # fmt: skip
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"


@dataclass(frozen=True)
class _Records:
    """A kind of record told apart by `term`: how to make the terms, how to
    state a record and how to ask for one by its term."""

    name: str
    terms: Callable[[random.Random, int], list[str]]
    fact: str
    slots: dict[str, tuple[str, ...]]
    questions: tuple[str, ...]


def _numbered(prefix: str, digits: int) -> Callable[[random.Random, int], list[str]]:
    low, high = 10 ** (digits - 1), 10**digits
    return lambda rng, n: [f"{prefix}{i}" for i in rng.sample(range(low, high), n)]


def _skus(rng: random.Random, n: int) -> list[str]:
    out: dict[str, None] = {}  # a dict keeps the drawing order; a set would not
    while len(out) < n:
        a, b, c = rng.choice(_LETTERS), rng.choice(_LETTERS), rng.choice(_LETTERS)
        out[f"{a}{b}-{rng.randrange(1000, 10000)}-{c}"] = None
    return list(out)


def _full_names(rng: random.Random, n: int) -> list[str]:
    return [
        f"{f} {la}"
        for f, la in rng.sample([(f, la) for f in _FIRST_NAMES for la in _LAST_NAMES], n)
    ]


_RECORDS: tuple[_Records, ...] = (
    _Records(
        "orders",
        _numbered("ORD-", 5),
        "Order {term} for a {colour} {item} shipped to {city}.",
        {
            "colour": _VALUES["colour"],
            "item": ("ceramic mug", "wool scarf", "desk lamp", "phone case", "water bottle",
                     "notebook", "backpack", "tea kettle"),
            "city": _VALUES["city"],
        },
        ("What is the status of {term}?", "Where was order {term} shipped?",
         "What did the customer buy in order {term}?"),
    ),
    _Records(
        "tickets",
        _numbered("INC-", 6),
        "Support ticket {term}: a customer on the {plan} plan reports that {problem}.",
        {
            "plan": ("free", "team", "business", "enterprise"),
            "problem": ("the password reset email never arrives", "invoices show the wrong VAT",
                        "the mobile app crashes on login", "exports time out",
                        "two-factor codes are rejected", "the dashboard loads slowly",
                        "webhooks are delivered twice", "search returns no results"),
        },
        ("What was ticket {term} about?", "Which plan is the customer of {term} on?",
         "Summarise {term}."),
    ),
    _Records(
        "skus",
        _skus,
        "SKU {term} is a {material} {product}, stocked in aisle {aisle}.",
        {
            "material": ("stainless steel", "bamboo", "glass", "recycled plastic", "cast iron"),
            "product": ("water bottle", "cutting board", "frying pan", "lunch box", "coffee press",
                        "salad bowl"),
            "aisle": tuple(str(i) for i in range(1, 13)),
        },
        ("Which aisle holds {term}?", "What product is {term}?", "What is SKU {term} made of?"),
    ),
    _Records(
        "people",
        _full_names,
        "{term} in {dept} approves {thing} requests.",
        {
            "dept": ("Finance", "Legal", "IT", "Procurement", "HR", "Facilities"),
            "thing": ("travel", "hardware", "contract", "hiring", "software licence", "expense"),
        },
        ("What does {term} approve?", "Which department is {term} in?", "Who is {term}?"),
    ),
    _Records(
        "invoices",
        _numbered("", 6),
        "Invoice {term} from {supplier} totals {amount} euros.",
        {
            "supplier": ("Acme Paper", "Delta Office", "Nordic Print", "Iberia Freight",
                         "Alpine Energy", "Baltic Cleaning"),
            "amount": tuple(f"{a:,}" for a in range(150, 9900, 137)),
        },
        ("How much is invoice {term}?", "Who sent invoice {term}?",
         "What is the total of invoice number {term}?"),
    ),
)  # fmt: skip


def _exact_term(rng: random.Random) -> tuple[list[GoldenMemory], list[GoldenQuestion]]:
    memories: list[GoldenMemory] = []
    questions: list[GoldenQuestion] = []
    for tenant, records in enumerate(_RECORDS):
        terms = records.terms(rng, _EXACT_RECORDS)
        gids = []
        for i, term in enumerate(terms):
            gid = f"ex-{records.name}-{i:03d}"
            gids.append(gid)
            slots = {name: rng.choice(values) for name, values in records.slots.items()}
            content = records.fact.format(term=term, **slots)
            memories.append(GoldenMemory(gid, "exact_term", tenant, content))
        for i in sorted(rng.sample(range(_EXACT_RECORDS), _EXACT_QUESTIONS)):
            question = rng.choice(records.questions).format(term=terms[i])
            qid = f"ex-q{len(questions):04d}"
            questions.append(GoldenQuestion(qid, "exact_term", tenant, question, (gids[i],)))
    return memories, questions


# --- current_truth ---------------------------------------------------------------------------

_TRUTH_USERS = 100
_TRUTH_CHANGED = 5


@dataclass(frozen=True)
class _Change:
    """A fact that can change: `slot` values, how it was stated, how its new
    value is stated, how to ask for the value now."""

    name: str
    slot: str
    old: tuple[str, ...]
    new: tuple[str, ...]
    questions: tuple[str, ...]


_CHANGES: tuple[_Change, ...] = (
    _Change(
        "city", "city",
        ("Lives in {x}.", "Has made a home in {x}."),
        ("Moved to {x} and lives there now.", "Relocated to {x} this year."),
        ("Which city do I live in now?", "Where is my home at the moment?"),
    ),
    _Change(
        "employer", "company",
        ("Works at {x}.", "Is on the payroll of {x}."),
        ("Changed jobs and now works at {x}.", "Joined {x} this spring."),
        ("Who is my current employer?", "Which company do I work for today?"),
    ),
    _Change(
        "job", "job",
        ("Works as {x}.", "Earns a living as {x}."),
        ("Retrained and now works as {x}.", "Changed careers to become {x}."),
        ("What is my job these days?", "What is my current profession?"),
    ),
    _Change(
        "partner", "person",
        ("Is in a relationship with {x}.", "Has been going out with {x}."),
        ("Is now dating {x}.", "Has a new partner, {x}."),
        ("Who is my partner at the moment?", "Who am I seeing right now?"),
    ),
    _Change(
        "car", "carmodel",
        ("Drives a {x}.", "Owns a {x}."),
        ("Sold the old car and now drives a {x}.", "Bought a {x} to replace the old car."),
        ("What car do I have now?", "Which car do I currently drive?"),
    ),
    _Change(
        "diet", "diet",
        ("Follows a {x} diet.", "Eats {x}."),
        ("Switched to a {x} diet.", "Has gone {x} recently."),
        ("What diet am I on these days?", "How do I eat now?"),
    ),
    _Change(
        "sport", "sport",
        ("Plays {x} on weekends.", "Is in a {x} club."),
        ("Gave up the old sport and took up {x}.", "Now plays {x} on weekends."),
        ("Which sport do I do now?", "What is my current weekend sport?"),
    ),
    _Change(
        "manager", "person",
        ("Reports to {x}.", "Their manager is {x}."),
        ("Has a new manager, {x}.", "Now reports to {x} after a reorganisation."),
        ("Who is my boss now?", "Who do I report to these days?"),
    ),
    _Change(
        "phone", "phone",
        ("Uses a {x} phone.", "Carries a {x}."),
        ("Switched to a {x} phone.", "Got a new {x} phone."),
        ("Which phone do I carry now?", "What smartphone do I use at the moment?"),
    ),
    _Change(
        "language", "language",
        ("Is learning {x}.", "Takes {x} classes."),
        ("Stopped the old course and started learning {x}.", "Is now learning {x}."),
        ("Which language am I studying at the moment?", "What language course am I taking now?"),
    ),
)  # fmt: skip


def _current_truth(rng: random.Random) -> tuple[list[GoldenMemory], list[GoldenQuestion]]:
    memories: list[GoldenMemory] = []
    questions: list[GoldenQuestion] = []
    for user in range(_TRUTH_USERS):
        changed = {c.name for c in rng.sample(_CHANGES, _TRUTH_CHANGED)}
        for change in _CHANGES:
            since = f"2023-{rng.randrange(1, 13):02d}-01T00:00:00Z"
            old_value, new_value = rng.sample(_VALUES[change.slot], 2)
            old_text = rng.choice(change.old).format(x=old_value)
            base = f"ct-u{user:03d}-{change.name}"
            if change.name not in changed:
                memories.append(GoldenMemory(base, "current_truth", user, old_text, since))
                continue
            until = f"2025-{rng.randrange(1, 11):02d}-{rng.randrange(1, 29):02d}T00:00:00Z"
            new_text = rng.choice(change.new).format(x=new_value)
            memories += [
                GoldenMemory(f"{base}-old", "current_truth", user, old_text, since, until),
                GoldenMemory(f"{base}-new", "current_truth", user, new_text, until),
            ]
            questions.append(
                GoldenQuestion(
                    f"ct-q{len(questions):04d}",
                    "current_truth",
                    user,
                    rng.choice(change.questions),
                    (f"{base}-new",),
                    (f"{base}-old",),
                )
            )
    return memories, questions


_Generator = Callable[[random.Random], tuple[list[GoldenMemory], list[GoldenQuestion]]]
_GENERATORS: dict[str, _Generator] = {
    "paraphrase": _paraphrase,
    "exact_term": _exact_term,
    "current_truth": _current_truth,
}


def generate(seed: int = SEED) -> GoldenSet:
    """The whole set; the same for the same `seed` (each family has its own
    generator, so changing one family's templates leaves the others alone)."""
    memories: list[GoldenMemory] = []
    questions: list[GoldenQuestion] = []
    for family in FAMILIES:
        m, q = _GENERATORS[family](random.Random(f"{seed}:{family}"))
        memories += m
        questions += q
    return GoldenSet(tuple(memories), tuple(questions))


# --- files -------------------------------------------------------------------------------------


def write(golden: GoldenSet, directory: Path = GOLDEN_DIR) -> list[Path]:
    """Writes `<family>.memories.jsonl` and `<family>.questions.jsonl` for
    each family into `directory`; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for family in FAMILIES:
        part = golden.of(family)
        for kind, items in (("memories", part.memories), ("questions", part.questions)):
            path = directory / f"{family}.{kind}.jsonl"
            path.write_text("".join(_line(item) for item in items), encoding="utf-8", newline="\n")
            paths.append(path)
    return paths


def read(directory: Path = GOLDEN_DIR) -> GoldenSet:
    """The set as committed in `directory`."""
    memories: list[GoldenMemory] = []
    questions: list[GoldenQuestion] = []
    for family in FAMILIES:
        for record in _records(directory / f"{family}.memories.jsonl"):
            memories.append(GoldenMemory(family=family, **record))
        for record in _records(directory / f"{family}.questions.jsonl"):
            record["expected"] = tuple(record["expected"])
            record["superseded"] = tuple(record.get("superseded", ()))
            questions.append(GoldenQuestion(family=family, **record))
    return GoldenSet(tuple(memories), tuple(questions))


def _line(item: GoldenMemory | GoldenQuestion) -> str:
    """One JSON line; the family (the file's name) and fields at their
    default are left out."""
    record: dict[str, Any] = {}
    for f in dataclasses.fields(item):
        value = getattr(item, f.name)
        if f.name != "family" and value != f.default:
            record[f.name] = list(value) if isinstance(value, tuple) else value
    return json.dumps(record, ensure_ascii=False) + "\n"


def _records(path: Path) -> Sequence[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
