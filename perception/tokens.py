"""Special tokens and the answer format: one place that knows how text and perception tokens mix.

Answer markup: a grounded phrase is written ``<p>the red circle</p><loc>``: the phrase in
``<p>...</p>``, then one perception token ``<loc>`` per object. Several objects give several
``<loc>`` in one answer. Region placeholders ``<region1>``, ``<region2>``, ... in *user* text map
in order to the regions passed with that message; each becomes one ``<region>`` token whose input
embedding is replaced by the region encoder's output.

User text is tokenized with special tokens split (``split_special_tokens=True``), so a user who
types ``<image>`` or ``<loc>`` gets plain text, never a special-token id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PERCEPTION_TOKEN = "<loc>"
IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"
PHRASE_OPEN = "<p>"
PHRASE_CLOSE = "</p>"
SPECIAL_TOKENS = [IMAGE_TOKEN, PERCEPTION_TOKEN, REGION_TOKEN, PHRASE_OPEN, PHRASE_CLOSE]
# One object token per proposal (``objects.enabled`` models only): added to the tokenizer after
# SPECIAL_TOKENS, by ``perception.tokenizer.add_object_token``, so no existing id moves.
OBJECT_TOKEN = "<obj>"

REGION_PLACEHOLDER = re.compile(r"<region(\d+)>")
_MARKUP = re.compile(r"<p>((?:(?!<loc>|<p>).)*?)</p>((?:\s*<loc>)*)|<loc>", re.S)


def grounded(phrase: str, n_objects: int = 1) -> str:
    """Markup for a phrase grounded by ``n_objects`` perception tokens."""
    return f"{PHRASE_OPEN}{phrase}{PHRASE_CLOSE}" + PERCEPTION_TOKEN * n_objects


def split_regions(text: str) -> tuple[list[str], list[int]]:
    """Split user text at ``<regionN>`` placeholders.

    Returns (pieces, numbers): len(pieces) == len(numbers) + 1, numbers are the N of each placeholder
    in order of appearance (1-based, as written).
    """
    pieces, numbers, last = [], [], 0
    for m in REGION_PLACEHOLDER.finditer(text):
        pieces.append(text[last : m.start()])
        numbers.append(int(m.group(1)))
        last = m.end()
    pieces.append(text[last:])
    return pieces, numbers


def check_region_numbers(numbers: list[int], n_regions: int) -> None:
    """Placeholders must name regions that exist: <region1>..<regionK> with K == n_regions.

    Raises ValueError naming both counts when they disagree.
    """
    if any(n < 1 or n > n_regions for n in numbers) or len(set(numbers)) != n_regions:
        raise ValueError(
            f"The message refers to regions {sorted(set(numbers)) or 'none'} "
            f"({len(numbers)} placeholder(s)) but {n_regions} region(s) were given; "
            f"use <region1>..<region{n_regions}> once each"
            if n_regions
            else f"The message has {len(numbers)} region placeholder(s) but no regions were given"
        )


@dataclass
class ParsedAnswer:
    text: str  # markup and perception tokens removed
    phrases: list  # one entry per perception token, in order: the phrase (str) or None


def parse_answer(raw: str) -> ParsedAnswer:
    """Turn generated text with markup into display text and a phrase per perception token.

    Robust to malformed output: unclosed ``<p>``, stray ``</p>``, ``<loc>`` without phrase.
    """
    phrases: list = []
    out: list[str] = []
    last = 0
    for m in _MARKUP.finditer(raw):
        out.append(raw[last : m.start()])
        if m.group(1) is not None:
            phrase = m.group(1).strip()
            out.append(m.group(1))
            n = m.group(2).count(PERCEPTION_TOKEN)
            phrases.extend([phrase or None] * n)
        else:
            phrases.append(None)
        last = m.end()
    out.append(raw[last:])
    text = "".join(out)
    for tok in (PHRASE_OPEN, PHRASE_CLOSE, PERCEPTION_TOKEN, IMAGE_TOKEN, REGION_TOKEN, OBJECT_TOKEN):
        text = text.replace(tok, "")
    text = re.sub(r"[ \t]+", " ", text).strip()
    return ParsedAnswer(text=text, phrases=phrases)
