"""Generate the bundled quickstart dataset (order-message field extraction).

Task: each row holds a short, informally written customer order message, and
the model must answer with a single line in a fixed house format::

    product=<product>; qty=<number>; city=<city>

Everything in the answer is copied verbatim from the message (no arithmetic,
no world knowledge); the message phrasing, the field order and the
distractors (customer names, order numbers, dates, unit words) vary.  The
base SmolLM2-135M-Instruct model does not produce this format out of the box,
so exact match starts near 0 %, while a short LoRA fine-tune learns it.

The held-out eval split uses product nouns and cities that never occur in
the training split (so every eval product and city string is unseen), so a
gain in exact match cannot come from memorising entity values.

Output files (JSON Lines, one ``{"instruction": ..., "output": ...}`` per row):

* ``examples/data/quickstart_train.jsonl`` (360 rows)
* ``examples/data/quickstart_eval.jsonl`` (40 rows)

The generator is deterministic (fixed seed, standard library only).

Run as: python examples/make_quickstart_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20240611
N_TRAIN = 360
N_EVAL = 40

OUT_DIR = Path(__file__).resolve().parent / "data"
TRAIN_PATH = OUT_DIR / "quickstart_train.jsonl"
EVAL_PATH = OUT_DIR / "quickstart_eval.jsonl"

INSTRUCTIONS = [
    "Extract the order from this customer message.",
    "Read the customer message and extract the order.",
    "Extract the order details from the message below.",
    "Turn this customer message into an order record.",
]

# Product = adjective + noun.  Nouns and cities are split disjointly between
# the train and eval pools; adjectives are shared.
ADJECTIVES = [
    "blue",
    "red",
    "green",
    "black",
    "white",
    "grey",
    "oak",
    "steel",
    "bamboo",
    "ceramic",
    "cotton",
    "wool",
    "leather",
    "glass",
    "linen",
    "copper",
    "compact",
    "large",
    "small",
    "foldable",
    "wireless",
    "vintage",
]
TRAIN_NOUNS = [
    "mug",
    "desk lamp",
    "yoga mat",
    "backpack",
    "notebook",
    "water bottle",
    "chair",
    "teapot",
    "umbrella",
    "towel",
    "pillow",
    "keyboard",
    "blanket",
    "picture frame",
    "cutting board",
    "wall clock",
    "plant pot",
    "lunch box",
    "scarf",
    "headphones",
    "doormat",
    "bookshelf",
    "tote bag",
    "spatula",
    "coat hanger",
    "phone stand",
    "candle",
    "serving tray",
    "laundry basket",
    "tablecloth",
]
EVAL_NOUNS = [
    "kettle",
    "stool",
    "mouse pad",
    "shoe rack",
    "salad bowl",
    "desk fan",
    "bath mat",
    "pencil case",
    "mirror",
    "coaster set",
]
TRAIN_CITIES = [
    "Lisbon",
    "Porto",
    "Madrid",
    "Valencia",
    "Lyon",
    "Marseille",
    "Hamburg",
    "Munich",
    "Leipzig",
    "Vienna",
    "Graz",
    "Zurich",
    "Geneva",
    "Milan",
    "Turin",
    "Bologna",
    "Krakow",
    "Gdansk",
    "Prague",
    "Brno",
    "Dublin",
    "Cork",
    "Leeds",
    "Bristol",
    "Glasgow",
    "Oslo",
    "Bergen",
    "Malmo",
    "Aarhus",
    "Ghent",
    "Utrecht",
    "Rotterdam",
    "Toronto",
    "Denver",
    "Austin",
    "Portland",
    "San Diego",
    "New Orleans",
    "Cape Town",
    "Osaka",
]
EVAL_CITIES = [
    "Seville",
    "Nantes",
    "Dresden",
    "Salzburg",
    "Verona",
    "Wroclaw",
    "Galway",
    "Cardiff",
    "Tampere",
    "Antwerp",
    "Halifax",
    "Tucson",
]

NAMES = [
    "Maria",
    "Tom",
    "Aisha",
    "Lukas",
    "Sofia",
    "Ben",
    "Chen",
    "Priya",
    "Jonas",
    "Elena",
    "Omar",
    "Julia",
    "Mateo",
    "Hannah",
    "Yuki",
    "Noah",
    "Lena",
    "Ravi",
    "Clara",
    "Felix",
]
UNITS = ["", "", "", "units of ", "pieces of ", "x ", "boxes of ", "packs of "]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]

# Placeholders: {name} {q} {u} {p} {c} {oid} {day}
TEMPLATES = [
    "Hi, this is {name}. Could you send {q} {u}{p} to our office in {c}? Thanks!",
    "Please ship {q} {u}{p} to {c}.",
    "Order #{oid}: {p}, quantity {q}, deliver to {c}.",
    "Hello! I'd like to order {q} {u}{p}. Delivery address is in {c}. Best, {name}",
    "We need {q} {u}{p} for the {c} store by {day}.",
    "{name} here - can we get {q} {u}{p} shipped to {c} please?",
    "Deliver to {c}: {q} {u}{p}. Ref {oid}.",
    "Ship to: {c}\nItem: {p}\nQty: {q}\nCustomer: {name}",
    "Good morning, our team in {c} is out of {p}. Please send {q} {u}more before {day}.",
    "Reorder request {oid} - {q} {u}{p} - destination {c}.",
    "Can you deliver {q} {u}{p} to {c} on {day}? Regards, {name}",
    "Item: {p} | Amount: {q} | City: {c} | Ticket {oid}",
    "Hey, it's {name} from the {c} branch. We want {q} {u}{p}.",
    "For the {c} warehouse we are ordering {p} ({q} {u}total).",
    "Customer {name} (order {oid}) asked for {q} {u}{p}, to be sent to {c}.",
    "Please add {q} {u}{p} to the next delivery for {c}. Thank you.",
    "Quick order: {p} x{q}, shipping to {c}.",
    "Dear team, kindly dispatch {q} {u}{p} to {c} by {day}. Kind regards, {name}",
    "{q} {u}{p} needed in {c} asap, order id {oid}.",
    "Hi there, I want to buy {p}. I need {q} {u}of them, sent to {c}.",
]


def _fmt_unit(template: str, unit: str) -> str:
    """Units read awkwardly in some templates; drop them there."""
    if "{u}more" in template or "{u}total" in template or "{u}of them" in template:
        return ""
    return unit


def make_row(rng: random.Random, nouns: list[str], cities: list[str]) -> dict[str, str]:
    product = f"{rng.choice(ADJECTIVES)} {rng.choice(nouns)}"
    city = rng.choice(cities)
    qty = rng.choice([rng.randint(2, 20), rng.randint(2, 20), rng.randint(21, 250)])
    template = rng.choice(TEMPLATES)
    message = template.format(
        name=rng.choice(NAMES),
        q=qty,
        u=_fmt_unit(template, rng.choice(UNITS)),
        p=product,
        c=city,
        oid=rng.randint(1000, 99999),
        day=rng.choice(WEEKDAYS),
    )
    instruction = f"{rng.choice(INSTRUCTIONS)}\n\nMessage: {message}"
    output = f"product={product}; qty={qty}; city={city}"
    return {"instruction": instruction, "output": output}


def generate(n: int, rng: random.Random, nouns: list[str], cities: list[str]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(rows) < n:
        row = make_row(rng, nouns, cities)
        if row["instruction"] in seen:
            continue
        seen.add(row["instruction"])
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    rng = random.Random(SEED)
    train = generate(N_TRAIN, rng, TRAIN_NOUNS, TRAIN_CITIES)
    eval_rows = generate(N_EVAL, rng, EVAL_NOUNS, EVAL_CITIES)
    write_jsonl(TRAIN_PATH, train)
    write_jsonl(EVAL_PATH, eval_rows)
    print(f"wrote {len(train)} rows to {TRAIN_PATH}")
    print(f"wrote {len(eval_rows)} rows to {EVAL_PATH}")


if __name__ == "__main__":
    main()
