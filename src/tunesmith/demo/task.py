"""A synthetic, seeded task: customer-support messages → JSON with intent and fields.

Every example is generated from templates with a fixed seed, so the demo needs no download
and its numbers are reproducible. Scoring parses the first JSON object in the model output.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

SYSTEM = ("Extract the support request as JSON with keys intent (order_status, refund, "
          "cancel_order, change_address, product_question), order_id, product, customer. "
          "Use null when a value is missing.")
FIELDS = ("intent", "order_id", "product", "customer")

PRODUCTS = ["blue jacket", "wireless mouse", "coffee grinder", "yoga mat", "desk lamp",
            "running shoes", "phone case", "water bottle", "backpack", "bluetooth speaker",
            "wool scarf", "office chair", "electric kettle", "hiking boots", "laptop stand",
            "garden hose", "table fan", "winter gloves", "rice cooker", "camping tent"]
NAMES = ["Maria", "John", "Aisha", "Chen", "Lucas", "Priya", "Olga", "Tom", "Fatima", "Diego",
         "Emma", "Kenji", "Sara", "Noah", "Leila", "Pavel", "Grace", "Omar", "Ines", "Ravi"]
CITIES = ["Lyon", "Denver", "Osaka", "Leeds", "Porto", "Austin", "Graz", "Perth"]
COLORS = ["black", "red", "green", "grey", "white"]
GREETINGS = ["Hi,", "Hello,", "Hey there,", "Good morning,", "", "Dear support,"]
SIGNOFFS = ["Thanks, {name}", "Regards, {name}", "- {name}", "Cheers, {name}", "{name}"]

TEMPLATES: dict[str, list[str]] = {
    "order_status": [
        "Where is my {product}? I ordered it {days} days ago, order {order}.",
        "Any update on order {order}? The {product} still hasn't arrived.",
        "My {product} (order {order}) was supposed to arrive last week. Can you check?",
        "Can you tell me when order {order} will be delivered? It's the {product}.",
    ],
    "refund": [
        "The {product} I received is broken. I want my money back for order {order}.",
        "I'd like a refund for the {product} from order {order}, it doesn't work.",
        "Order {order}: the {product} arrived damaged. Please refund me.",
        "Please refund order {order}. The {product} is not what I expected.",
    ],
    "cancel_order": [
        "Please cancel order {order}, I no longer need the {product}.",
        "I ordered a {product} by mistake. Cancel order {order} please.",
        "Can you cancel my order {order} for the {product} before it ships?",
    ],
    "change_address": [
        "I moved to {city}. Can you ship order {order} ({product}) to my new address?",
        "Please send the {product} from order {order} to my office in {city} instead.",
        "Wrong address on order {order}! The {product} should go to {city}.",
    ],
    "product_question": [
        "Does the {product} come in {color}?",
        "Is the {product} waterproof? Thinking about buying one.",
        "How long is the warranty on the {product}?",
        "Can I return the {product} if it doesn't fit?",
    ],
}


@dataclass
class Ticket:
    message: str
    target: dict[str, Any]

    def as_messages(self) -> dict[str, Any]:
        return {"messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": self.message},
            {"role": "assistant", "content": json.dumps(self.target)},
        ]}


def make_ticket(rng: random.Random) -> Ticket:
    intent = rng.choice(list(TEMPLATES))
    product = rng.choice(PRODUCTS)
    order = None if intent == "product_question" else f"{rng.randint(10000, 99999)}"
    name = rng.choice(NAMES) if rng.random() < 0.7 else None
    body = rng.choice(TEMPLATES[intent]).format(
        product=product, order=f"#{order}" if order else "", days=rng.randint(2, 30),
        city=rng.choice(CITIES), color=rng.choice(COLORS))
    parts = [rng.choice(GREETINGS), body]
    if name:
        parts.append(rng.choice(SIGNOFFS).format(name=name))
    message = " ".join(p for p in parts if p)
    target = {"intent": intent, "order_id": order, "product": product, "customer": name}
    return Ticket(message, target)


def make_dataset(n: int, seed: int) -> list[Ticket]:
    rng = random.Random(seed)
    return [make_ticket(rng) for _ in range(n)]


def parse_json(text: str) -> dict[str, Any] | None:
    match = re.search(r"\{.*?\}", text, flags=re.S)
    if not match:
        return None
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def score(outputs: list[str], targets: list[dict[str, Any]]) -> dict[str, float]:
    """Exact match, per-field accuracy and valid-JSON rate."""
    exact = valid = 0
    field_hits = {f: 0 for f in FIELDS}
    for text, target in zip(outputs, targets):
        pred = parse_json(text)
        if pred is None:
            continue
        valid += 1
        exact += int(all(pred.get(f) == target[f] for f in FIELDS))
        for f in FIELDS:
            field_hits[f] += int(pred.get(f) == target[f])
    n = max(len(targets), 1)
    result = {"exact_match": exact / n, "valid_json": valid / n}
    result.update({f"field_{f}": hits / n for f, hits in field_hits.items()})
    result["field_accuracy"] = sum(field_hits.values()) / (n * len(FIELDS))
    return result
