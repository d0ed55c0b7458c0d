"""The golden set: memories and the questions whose right answers they are,
generated from templates by a seeded `random.Random` (no network, no model)
and committed as `evaluation/golden/<family>.{memories,questions}.jsonl`.
`python -m evaluation --regenerate` rewrites the files byte for byte.

Families (each in an environment of its own; a tenant index is an end user):

- paraphrase: 100 end users x 100 personal facts (each user 100 of 112
  kinds: places, food, work, family, hobbies, health, home, money), 5
  questions each worded differently from the fact ("Drinks green tea every
  morning" / "What is my usual morning beverage?"): the shape of the outside
  replay the issue quotes.
- exact_term: 5 end users x 300 similar records told apart by one exact term
  (order codes, ticket ids, SKUs, full names, invoice numbers), 100 questions
  each naming the term ("What is the status of ORD-48213?").
- current_truth: 100 end users x 10 facts of which 5 changed: the old memory
  holds from `valid_time` until `invalid_time` (set with UpdateMemory after
  loading), the new one from then on; the question asks for the current
  value and names the superseded memory as a wrong answer.
- recency: 50 end users stating each of 10 kinds of fact three times with
  different values, months apart, nothing invalidated; the question asks
  for the value now: the latest statement is right, the earlier ones wrong.
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
FAMILIES = ("paraphrase", "exact_term", "current_truth", "recency")
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
    "nationality": ("Portuguese", "Canadian", "Kenyan", "Japanese", "Polish", "Chilean", "Irish"),
    "breakfast": (
        "porridge", "scrambled eggs", "granola", "toast with jam", "pancakes",
        "yoghurt with berries",
    ),
    "evening": ("red wine", "craft beer", "whisky", "gin and tonic", "herbal tea", "cider"),
    "snack": ("almonds", "dark chocolate", "crisps", "apples", "rice cakes", "popcorn"),
    "dessert": ("tiramisu", "cheesecake", "apple pie", "crème brûlée", "baklava", "mochi"),
    "bake": ("sourdough bread", "banana bread", "cinnamon rolls", "focaccia", "scones", "bagels"),
    "dish": ("paella", "lasagne", "ramen", "chili con carne", "lamb curry", "mushroom risotto"),
    "intolerance": ("lactose", "gluten", "fructose", "caffeine", "onions", "spicy food"),
    "payday": ("1st", "10th", "15th", "25th", "28th"),
    "floor": ("second", "third", "fifth", "ninth", "twelfth"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "business": (
        "candle-making", "dog-walking", "web design", "maths tutoring", "vintage clothing",
        "honey",
    ),
    "subject": (
        "biology", "economics", "philosophy", "mechanical engineering", "art history",
        "computer science",
    ),
    "laptop": ("ThinkPad", "MacBook", "Dell XPS", "Surface", "Chromebook", "Framework"),
    "lunchplace": ("ramen bar", "salad place", "bakery", "canteen", "food truck", "sushi counter"),
    "age": ("4", "7", "10", "13", "16", "19"),
    "school": ("Riverside", "Oakwood", "St Mary's", "Hillcrest", "Greenfield"),
    "distance": ("5 km", "10 km", "3 miles", "8 km", "half a marathon"),
    "exercise": ("yoga", "pilates", "tai chi", "meditation", "breathing exercises"),
    "game": ("chess", "Catan", "poker", "Scrabble", "Monopoly", "bridge"),
    "videogame": ("Minecraft", "FIFA", "Zelda", "Tetris", "Stardew Valley", "Mario Kart"),
    "show": ("The Office", "Breaking Bad", "The Crown", "Friends", "Succession", "Dark"),
    "film": ("Casablanca", "The Matrix", "Amélie", "Spirited Away", "Jaws", "Alien"),
    "author": (
        "Tolkien", "Agatha Christie", "Haruki Murakami", "Jane Austen", "Stephen King",
        "Terry Pratchett",
    ),
    "topic": ("history", "true crime", "economics", "science", "comedy", "football"),
    "plant": ("tomatoes", "roses", "strawberries", "herbs", "sunflowers", "chillies"),
    "collectible": (
        "vinyl records", "stamps", "old coins", "postcards", "comic books", "fountain pens",
    ),
    "craft": (
        "knitting", "pottery", "woodworking", "watercolour painting", "photography", "embroidery",
    ),
    "dance": ("salsa", "tango", "swing", "ballet", "hip hop", "flamenco"),
    "band": ("Coldplay", "Radiohead", "Beyoncé", "Metallica", "Adele", "Daft Punk"),
    "choir": ("church", "gospel", "community", "jazz", "chamber"),
    "laps": ("twenty", "thirty", "forty", "fifty", "sixty"),
    "trail": (
        "Camino de Santiago", "Inca Trail", "West Highland Way", "Tour du Mont Blanc",
        "Kungsleden",
    ),
    "volunteer": ("animal shelter", "food bank", "public library", "hospital", "soup kitchen"),
    "club": ("book", "rowing", "cycling", "photography", "astronomy", "hiking"),
    "dwelling": (
        "studio flat", "terraced house", "houseboat", "farmhouse", "loft apartment", "bungalow",
    ),
    "rent": ("650", "800", "950", "1,200", "1,450"),
    "watch": ("Casio", "Seiko", "Apple", "Garmin", "Swatch", "Omega"),
    "blood": ("A positive", "O negative", "B positive", "AB positive", "O positive"),
    "sight": ("reading", "driving", "screen work", "seeing far away"),
    "doctor": ("Patel", "Okafor", "Lindgren", "Moreau", "Nakamura", "Haddad"),
    "interval": ("six months", "year", "three months", "two years"),
    "bone": ("left wrist", "right ankle", "collarbone", "left leg", "two ribs"),
    "hours": ("six", "seven", "eight", "nine"),
    "supplement": ("vitamin D", "iron", "magnesium", "omega-3", "zinc"),
    "season": ("spring", "summer", "autumn", "winter"),
    "zodiac": ("Leo", "Virgo", "Pisces", "Taurus", "Scorpio", "Gemini"),
    "flower": ("tulips", "peonies", "lilies", "sunflowers", "orchids"),
    "holidaystyle": ("beach", "city", "camping", "skiing", "cruise"),
    "social": ("Instagram", "TikTok", "Mastodon", "Facebook", "Flickr"),
    "newspaper": ("The Guardian", "Le Monde", "El País", "The Times", "Die Zeit"),
    "dreamcar": (
        "Porsche 911", "Land Rover Defender", "vintage Beetle", "Ferrari", "camper van",
    ),
    "topping": ("pineapple", "pepperoni", "mushrooms", "anchovies", "extra cheese"),
    "number": ("3", "7", "13", "21", "42", "8"),
    "hero": (
        "Marie Curie", "Nelson Mandela", "David Attenborough", "Serena Williams", "Frida Kahlo",
    ),
    "bank": ("ING", "Monzo", "Santander", "Revolut", "HSBC", "N26"),
    "goal": ("new kitchen", "house deposit", "round-the-world trip", "electric car", "wedding"),
    "tattoo": ("rose", "anchor", "compass", "wolf", "swallow", "dragon"),
    "haircolour": ("purple", "blonde", "blue", "red", "silver"),
    "shoe": ("38", "39", "41", "42", "44", "45"),
    "height": ("1.62 m", "1.70 m", "1.75 m", "1.80 m", "1.88 m"),
    "gift": ("new bicycle", "camera", "cookbook", "pair of concert tickets", "telescope"),
}  # fmt: skip


@dataclass(frozen=True)
class _Kind:
    """A kind of fact: ways to state it and ways to ask for it."""

    name: str
    facts: tuple[str, ...]
    questions: tuple[str, ...]


# --- paraphrase ----------------------------------------------------------------------------

_PARAPHRASE_USERS = 100
_PARAPHRASE_FACTS_PER_USER = 100
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
    _Kind(
        "university",
        ("Studied at university in {city}.", "Went to college in {city}."),
        ("Where did I get my degree?", "In which city was I a student?"),
    ),
    _Kind(
        "parents",
        ("Their parents still live in {city}.", "Mum and dad are settled in {city}."),
        ("Where are my mother and father living?", "Which city do my folks call home?"),
    ),
    _Kind(
        "next_trip",
        ("Has a trip to {country} booked for next month.", "Flies to {country} in a few weeks."),
        ("Where am I travelling to soon?", "What is the destination of my upcoming journey?"),
    ),
    _Kind(
        "honeymoon",
        ("Went on honeymoon in {country}.", "Spent their honeymoon touring {country}."),
        ("Where did we go right after the wedding?", "Which country did I visit as a newlywed?"),
    ),
    _Kind(
        "passport",
        ("Holds a {nationality} passport.", "Is a {nationality} citizen."),
        ("What is my nationality?", "Which country issued my travel document?"),
    ),
    _Kind(
        "breakfast",
        ("Eats {breakfast} for breakfast.", "Has {breakfast} every morning before leaving."),
        ("What is my first meal of the day?", "What do I usually eat when I get up?"),
    ),
    _Kind(
        "evening_drink",
        ("Enjoys a glass of {evening} in the evening.", "Unwinds with {evening} after dinner."),
        ("What do I sip to relax at night?", "What is my usual nightcap?"),
    ),
    _Kind(
        "snack",
        ("Snacks on {snack} in the afternoon.", "Always keeps {snack} in the desk drawer."),
        ("What do I nibble between meals?", "What is my go-to treat when I get peckish?"),
    ),
    _Kind(
        "dessert",
        ("Their favourite dessert is {dessert}.", "Can never say no to {dessert}."),
        ("What sweet do I order at the end of a meal?", "Which pudding do I love?"),
    ),
    _Kind(
        "baking",
        ("Bakes {bake} every Sunday.", "Makes homemade {bake} at the weekend."),
        ("What comes out of my oven on weekends?", "What do I bake regularly?"),
    ),
    _Kind(
        "signature_dish",
        ("Is known among friends for cooking {dish}.", "Makes the best {dish} in the family."),
        ("What meal am I famous for?", "Which recipe do guests always ask me to make?"),
    ),
    _Kind(
        "intolerance",
        ("Cannot digest {intolerance} well.", "Gets stomach aches from {intolerance}."),
        ("What upsets my digestion?", "What gives me tummy trouble?"),
    ),
    _Kind(
        "payday",
        ("Gets paid on the {payday} of each month.", "Receives the monthly pay on the {payday}."),
        ("When does my wage land in my account?", "On which date do I get my money from work?"),
    ),
    _Kind(
        "office_floor",
        ("Sits on the {floor} floor of the office.", "Has a desk on the {floor} floor at work."),
        ("Where is my workstation in the building?", "Which level of the building do I work on?"),
    ),
    _Kind(
        "desk_neighbour",
        ("Shares a desk with a colleague named {person}.", "Sits next to {person} at work."),
        ("Who is seated beside me in the office?", "Which coworker is my desk neighbour?"),
    ),
    _Kind(
        "remote_day",
        ("Works from home on {weekday}s.", "Stays home to work every {weekday}."),
        ("Which day am I remote?", "When do I skip going in to the office?"),
    ),
    _Kind(
        "side_business",
        ("Runs a small {business} business on the side.", "Earns extra money with {business}."),
        ("What is my side hustle?", "What do I do to make a bit of additional income?"),
    ),
    _Kind(
        "career_goal",
        ("Hopes to become {job} one day.", "Dreams of retraining as {job}."),
        ("What is my dream career?", "Which profession do I aspire to?"),
    ),
    _Kind(
        "first_job",
        ("Their first job was as {job}.", "Started out working as {job}."),
        ("What did I do for work when I was starting out?", "What was my very first position?"),
    ),
    _Kind(
        "degree",
        ("Has a degree in {subject}.", "Majored in {subject}."),
        ("What did I study?", "What is my academic background?"),
    ),
    _Kind(
        "team_meeting",
        ("Has a team meeting every {weekday} morning.", "Meets the whole team each {weekday}."),
        ("When does my team get together each week?", "On which day is our weekly catch-up?"),
    ),
    _Kind(
        "laptop",
        ("Works on a {laptop} laptop.", "Uses a {laptop} for work."),
        ("What computer do I use in my job?", "Which notebook machine do I type on?"),
    ),
    _Kind(
        "lunch",
        ("Has lunch at the {lunchplace} near the office.", "Eats at the {lunchplace} at noon."),
        ("Where do I grab food at midday?", "Where do I go on my lunch break?"),
    ),
    _Kind(
        "mother",
        ("Their mother's name is {person}.", "Their mum is called {person}."),
        ("What is my mom's first name?", "Who is the woman who raised me?"),
    ),
    _Kind(
        "father_job",
        ("Their father works as {job}.", "Their dad is {job}."),
        ("What does my father do?", "What is my old man's occupation?"),
    ),
    _Kind(
        "niece",
        ("Has a niece named {person}.", "Is an aunt or uncle to little {person}."),
        ("What is my sibling's daughter called?", "Who is my niece?"),
    ),
    _Kind(
        "grandmother",
        ("Their grandmother lives in {city}.", "Visits their grandma in {city} every year."),
        ("Where does my granny live?", "Which city do I travel to to see my nan?"),
    ),
    _Kind(
        "anniversary",
        ("Their wedding anniversary is in {month}.", "Got married in {month}."),
        ("When do I celebrate the day I tied the knot?", "In which month was my wedding?"),
    ),
    _Kind(
        "eldest_age",
        ("Their eldest child is {age} years old.", "Their oldest kid just turned {age}."),
        ("How old is my firstborn?", "What age is my oldest son or daughter?"),
    ),
    _Kind(
        "school",
        ("Their kids go to {school} School.", "Drops the children off at {school} School."),
        ("Where do my children study?", "Which school do my little ones attend?"),
    ),
    _Kind(
        "neighbour",
        ("Gets on well with their neighbour {person}.", "Their next-door neighbour is {person}."),
        ("Who lives next door to me?", "Who is the person in the house beside mine?"),
    ),
    _Kind(
        "flatmate",
        ("Shares a flat with {person}.", "Lives with a roommate called {person}."),
        ("Who do I split the rent with?", "Who is my housemate?"),
    ),
    _Kind(
        "mentor",
        ("Was mentored by {person} early in their career.", "Learned the trade from {person}."),
        ("Who guided me when I was new to my field?", "Who taught me the ropes professionally?"),
    ),
    _Kind(
        "childhood_pet",
        ("Had a pet {pet} as a child.", "Grew up with a {pet} in the house."),
        (
            "What animal did I have when I was little?",
            "Which creature did we keep at home in my youth?",
        ),
    ),
    _Kind(
        "running",
        ("Runs {distance} every morning.", "Jogs {distance} before breakfast."),
        ("How far do I go on my daily jog?", "What distance do I cover when I go out running?"),
    ),
    _Kind(
        "relaxation",
        ("Practises {exercise} to relax.", "Does {exercise} to calm down after work."),
        ("What calming activity do I do?", "How do I de-stress in the evening?"),
    ),
    _Kind(
        "board_game",
        ("Loves playing {game} with friends.", "Hosts a {game} night every month."),
        ("What do we play at game night?", "Which tabletop game am I really into?"),
    ),
    _Kind(
        "video_game",
        ("Plays {videogame} in the evenings.", "Is hooked on the game {videogame}."),
        ("Which console title am I obsessed with?", "What do I play on my gaming system?"),
    ),
    _Kind(
        "tv_show",
        ("Is binge-watching {show}.", "Is halfway through every season of {show}."),
        ("Which series am I streaming lately?", "What programme am I glued to on TV?"),
    ),
    _Kind(
        "film",
        ("Their favourite film is {film}.", "Has seen {film} more than twenty times."),
        ("Which movie could I watch again and again?", "What is my all-time best picture?"),
    ),
    _Kind(
        "author",
        ("Their favourite author is {author}.", "Has read everything written by {author}."),
        ("Whose novels do I love most?", "Which writer do I admire?"),
    ),
    _Kind(
        "podcast",
        ("Listens to a podcast about {topic} on the way to work.", "Follows a {topic} podcast."),
        (
            "What is the show in my earbuds about?",
            "What subject does my favourite audio series cover?",
        ),
    ),
    _Kind(
        "garden",
        ("Grows {plant} in the garden.", "Has a vegetable patch full of {plant}."),
        ("What do I cultivate outdoors?", "What is growing in my backyard?"),
    ),
    _Kind(
        "collection",
        ("Collects {collectible}.", "Has a large collection of {collectible}."),
        ("What have I been gathering for years?", "What do I hoard as a collector?"),
    ),
    _Kind(
        "craft",
        ("Enjoys {craft} as a hobby.", "Spends free afternoons on {craft}."),
        ("What do I make with my hands in my spare time?", "What is my creative pastime?"),
    ),
    _Kind(
        "dance",
        ("Takes {dance} classes on Thursdays.", "Goes {dance} dancing every week."),
        ("What style of dancing am I learning?", "Which dance do I practise?"),
    ),
    _Kind(
        "concert",
        ("Saw {band} live last year.", "Went to a {band} concert recently."),
        ("Whose gig did I attend?", "Which performer did I see on stage?"),
    ),
    _Kind(
        "choir",
        ("Sings in a {choir} choir.", "Is a member of the local {choir} choir."),
        ("What group do I sing with?", "What kind of vocal ensemble am I part of?"),
    ),
    _Kind(
        "swimming",
        ("Swims {laps} lengths at the pool on Fridays.", "Does {laps} laps of the pool weekly."),
        ("How much do I swim?", "What is my routine in the water?"),
    ),
    _Kind(
        "hike",
        ("Hiked the {trail} last autumn.", "Walked the whole {trail} on foot."),
        ("Which long-distance trek have I completed?", "What famous route did I walk?"),
    ),
    _Kind(
        "volunteering",
        ("Volunteers at the {volunteer} on Saturdays.", "Helps out unpaid at a {volunteer}."),
        ("Where do I give my time for free?", "What charity work do I do?"),
    ),
    _Kind(
        "club",
        ("Is a member of a {club} club.", "Joined the local {club} society."),
        ("Which club do I belong to?", "What association did I sign up for?"),
    ),
    _Kind(
        "dwelling",
        ("Lives in a {dwelling}.", "Calls a {dwelling} home."),
        ("What kind of property do I live in?", "What type of house is my residence?"),
    ),
    _Kind(
        "rent",
        ("Pays {rent} euros a month in rent.", "Their rent is {rent} euros monthly."),
        ("How much does my accommodation cost me?", "What do I pay my landlord?"),
    ),
    _Kind(
        "bike",
        ("Rides a {colour} road bike.", "Owns a {colour} racing bicycle."),
        ("What colour is my bicycle?", "What does my two-wheeler look like?"),
    ),
    _Kind(
        "watch",
        ("Wears a {watch} watch.", "Never takes off their {watch} watch."),
        ("What is on my wrist?", "Which timepiece do I wear?"),
    ),
    _Kind(
        "favourite_colour",
        ("Their favourite colour is {colour}.", "Likes {colour} more than any other colour."),
        ("Which shade do I like best?", "What hue would I pick for everything?"),
    ),
    _Kind(
        "blood_type",
        ("Has blood type {blood}.", "Their blood group is {blood}."),
        ("What should a hospital know before a transfusion for me?", "What is my blood group?"),
    ),
    _Kind(
        "glasses",
        ("Wears glasses for {sight}.", "Needs spectacles for {sight}."),
        ("When do I need my specs?", "What do I put my glasses on for?"),
    ),
    _Kind(
        "doctor",
        ("Their family doctor is Dr {doctor}.", "Sees Dr {doctor} at the local practice."),
        ("Who is my GP?", "Which physician do I book appointments with?"),
    ),
    _Kind(
        "dentist",
        ("Sees the dentist every {interval}.", "Gets a dental check-up every {interval}."),
        ("How often do I get my teeth looked at?", "How regularly do I visit the tooth doctor?"),
    ),
    _Kind(
        "injury",
        ("Broke their {bone} skiing years ago.", "Fractured their {bone} in a ski accident."),
        ("What did I break on the slopes?", "Which bone did I injure in the snow?"),
    ),
    _Kind(
        "sleep_need",
        ("Needs {hours} hours of sleep to feel rested.", "Feels best after {hours} hours in bed."),
        ("How much rest do I need each night?", "How long should I sleep?"),
    ),
    _Kind(
        "supplement",
        ("Takes {supplement} supplements.", "Swallows a {supplement} tablet with breakfast."),
        ("Which vitamins or minerals do I take?", "What pill do I take for my wellbeing?"),
    ),
    _Kind(
        "season",
        ("Loves {season} more than any other season.", "Their favourite time of year is {season}."),
        ("Which part of the year do I enjoy most?", "When is the weather at its best for me?"),
    ),
    _Kind(
        "star_sign",
        ("Is a {zodiac}.", "Their zodiac sign is {zodiac}."),
        ("What is my horoscope sign?", "Which constellation was I born under?"),
    ),
    _Kind(
        "flowers",
        ("Their favourite flowers are {flower}.", "Always buys {flower} at the market."),
        ("What bouquet would delight me?", "Which blooms do I like?"),
    ),
    _Kind(
        "holiday_style",
        ("Prefers {holidaystyle} holidays.", "Always books {holidaystyle} holidays."),
        ("What type of vacation suits me?", "What kind of getaway do I choose?"),
    ),
    _Kind(
        "social_media",
        ("Posts photos on {social} every day.", "Is very active on {social}."),
        ("Which app do I share pictures on?", "Where do my followers see my posts?"),
    ),
    _Kind(
        "newspaper",
        ("Reads {newspaper} every morning.", "Subscribes to {newspaper}."),
        ("Where do I get my news?", "Which paper do I read?"),
    ),
    _Kind(
        "dream_car",
        ("Would love to own a {dreamcar} one day.", "Dreams of buying a {dreamcar}."),
        ("What is my dream vehicle?", "Which car would I get if I won the lottery?"),
    ),
    _Kind(
        "pizza",
        ("Always orders pizza with {topping}.", "Puts {topping} on every pizza."),
        ("What do I like on my pizza?", "What is my favourite topping?"),
    ),
    _Kind(
        "lucky_number",
        ("Their lucky number is {number}.", "Believes {number} brings good luck."),
        ("Which number brings me good fortune?", "What figure do I pick in the lottery?"),
    ),
    _Kind(
        "role_model",
        ("Admires {hero} more than anyone.", "Their role model is {hero}."),
        ("Who is my hero?", "Which famous person inspires me?"),
    ),
    _Kind(
        "bank",
        ("Banks with {bank}.", "Has a current account at {bank}."),
        ("Where do I keep my money?", "Which financial institution holds my savings?"),
    ),
    _Kind(
        "savings_goal",
        ("Is saving up for a {goal}.", "Puts money aside every month for a {goal}."),
        ("What am I saving for?", "What big purchase am I budgeting towards?"),
    ),
    _Kind(
        "tattoo",
        ("Has a tattoo of a {tattoo} on their arm.", "Got a {tattoo} tattooed on their shoulder."),
        ("What ink do I have on my skin?", "What design is my body art?"),
    ),
    _Kind(
        "hair",
        ("Dyed their hair {haircolour} last month.", "Now has {haircolour} hair."),
        ("What colour is my hair at the moment?", "How did I change my look at the hairdresser?"),
    ),
    _Kind(
        "shoe_size",
        ("Wears size {shoe} shoes.", "Their shoe size is {shoe}."),
        ("What size are my feet?", "Which size should I buy when getting trainers?"),
    ),
    _Kind(
        "height",
        ("Is {height} tall.", "Measures {height} in height."),
        ("How tall am I?", "What is my height?"),
    ),
    _Kind(
        "birthday_wish",
        ("Wants a {gift} for their next birthday.", "Has asked for a {gift} as a present."),
        ("What should someone give me as a gift?", "What is on my wish list?"),
    ),
    _Kind(
        "mother_tongue",
        ("Speaks {language} at home with family.", "Grew up speaking {language}."),
        ("What is my native language?", "What language did I learn first as a baby?"),
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
        kinds = rng.sample(_PERSONAL, _PARAPHRASE_FACTS_PER_USER)
        for kind in kinds:
            gid = f"pp-u{user:03d}-{kind.name}"
            gids[kind.name] = gid
            memories.append(
                GoldenMemory(gid, "paraphrase", user, _fill(rng, rng.choice(kind.facts)))
            )
        for kind in rng.sample(kinds, _PARAPHRASE_QUESTIONS_PER_USER):
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


# --- recency ----------------------------------------------------------------------------------

_RECENCY_USERS = 50
_RECENCY_STATEMENTS = 3
_RECENCY_QUESTIONS_PER_USER = 4
# The statements' months are drawn from the 34 months from January 2023 on.
_RECENCY_MONTHS = 34


def _recency(rng: random.Random) -> tuple[list[GoldenMemory], list[GoldenQuestion]]:
    """Each user states every kind of `_CHANGES` three times with a different
    value, months apart, and nothing is invalidated: only the times tell
    which statement is the latest."""
    memories: list[GoldenMemory] = []
    questions: list[GoldenQuestion] = []
    for user in range(_RECENCY_USERS):
        latest: dict[str, tuple[str, tuple[str, ...]]] = {}
        for change in _CHANGES:
            values = rng.sample(_VALUES[change.slot], _RECENCY_STATEMENTS)
            months = sorted(rng.sample(range(_RECENCY_MONTHS), _RECENCY_STATEMENTS))
            gids = []
            for i, (value, month) in enumerate(zip(values, months, strict=True)):
                gid = f"rc-u{user:03d}-{change.name}-{i}"
                gids.append(gid)
                day = rng.randrange(1, 29)
                valid = f"{2023 + month // 12}-{month % 12 + 1:02d}-{day:02d}T00:00:00Z"
                text = rng.choice(change.old + change.new).format(x=value)
                memories.append(GoldenMemory(gid, "recency", user, text, valid))
            latest[change.name] = (gids[-1], tuple(gids[:-1]))
        for change in rng.sample(_CHANGES, _RECENCY_QUESTIONS_PER_USER):
            expected, older = latest[change.name]
            questions.append(
                GoldenQuestion(
                    f"rc-q{len(questions):04d}",
                    "recency",
                    user,
                    rng.choice(change.questions),
                    (expected,),
                    older,
                )
            )
    return memories, questions


_Generator = Callable[[random.Random], tuple[list[GoldenMemory], list[GoldenQuestion]]]
_GENERATORS: dict[str, _Generator] = {
    "paraphrase": _paraphrase,
    "exact_term": _exact_term,
    "current_truth": _current_truth,
    "recency": _recency,
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
