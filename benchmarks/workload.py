"""The workload: deterministic sentences and request bodies, the same in every run.

`short_sentences` is what the load generators send (one sentence per request)
and what the in-process baseline embeds, so both sides pay for the same
token counts. `varied_sentences` spans a few words to past the 256-token
truncation, for the int8 quality check where long inputs are where
quantization error accumulates.
"""

from __future__ import annotations

import json
import random

SUBJECTS = [
    "the customer",
    "our support team",
    "a new user",
    "the inference server",
    "my manager",
    "the delivery driver",
    "this small startup",
    "the on-call engineer",
    "a curious student",
    "the billing service",
    "her grandmother",
    "the search index",
    "our largest client",
]
VERBS = [
    "reported",
    "asked about",
    "complained about",
    "praised",
    "fixed",
    "ignored",
    "measured",
    "rewrote",
    "forgot",
    "doubled",
    "cancelled",
    "explained",
    "shipped",
]
OBJECTS = [
    "the late parcel",
    "a billing error",
    "the password reset flow",
    "GPU memory usage",
    "the weekly report",
    "a broken checkout page",
    "the refund policy",
    "the cache hit rate",
    "a strange error message",
    "the onboarding email",
    "the p99 latency",
    "a duplicate charge",
]
TAILS = [
    "yesterday",
    "after the update",
    "twice this week",
    "on the mobile app",
    "before the deadline",
    "during the outage",
    "without telling anyone",
    "in the morning",
    "for the third time",
    "at the end of the quarter",
]
CONNECTORS = ["and then", "because", "although", "so", "while", "but", "after which"]
FRAGMENTS = [
    "Thanks!",
    "Where is my order?",
    "Not again.",
    "Great job, team.",
    "Why?",
    "Please call me back.",
    "It works now.",
    "Le colis est arrivé en retard.",
    "Das Passwort funktioniert nicht.",
    "¿Dónde está mi pedido?",
]


def _clause(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"


def short_sentences(n: int = 16, seed: int = 7) -> list[str]:
    """`n` one-clause sentences of 7-12 words: a typical short embedding query."""
    rng = random.Random(seed)
    return [_clause(rng).capitalize() + "." for _ in range(n)]


def varied_sentences(n: int = 256, seed: int = 11) -> list[str]:
    """`n` texts from 1 word to ~400 words, in a fixed shuffled order."""
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            text = rng.choice(FRAGMENTS)
        elif kind < 6:  # one to four clauses: the bulk of real traffic
            clauses = [_clause(rng) for _ in range(1 + kind % 4)]
            text = " ".join(f"{c} {rng.choice(CONNECTORS)}" for c in clauses[:-1])
            text = f"{text} {clauses[-1]}".strip()
        else:  # long documents, some past the 256-token truncation
            clauses = [_clause(rng) for _ in range(rng.randint(10, 45))]
            text = ". ".join(c.capitalize() for c in clauses)
        out.append(text[0].upper() + text[1:] + ("" if text.endswith((".", "?", "!")) else "."))
    rng.shuffle(out)
    return out


# What every HTTP client sends (one sentence per request, rotating) and the
# in-process baseline embeds.
SENTENCES = short_sentences(16)
V2_BODIES = [
    json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [s]}]})
    for s in SENTENCES
]
# The OpenAI route as a plain HTTP client calls it (no encoding_format: float vectors).
OPENAI_BODIES = [json.dumps({"model": "embed", "input": s}) for s in SENTENCES]
# What the official `openai` Python client sends by default: base64-encoded vectors.
OPENAI_BASE64_BODIES = [
    json.dumps({"model": "embed", "input": s, "encoding_format": "base64"}) for s in SENTENCES
]
NOOP_BODY = json.dumps(
    {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
)
