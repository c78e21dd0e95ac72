"""Tokenizers: the tiny preset's byte-level BPE (built offline, shipped with the checkpoint) and
the special-token set-up shared by every backbone.

Byte-level BPE means any user text (any script, emoji, control characters) tokenizes without
unknown tokens; the ShapesRef vocabulary becomes whole-word tokens so answers stay short.
"""

from __future__ import annotations

import itertools

from perception.tokens import OBJECT_TOKEN, SPECIAL_TOKENS

_COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
_SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
_WORDS = (
    "the a an of is are there it this that what where which how many all find locate segment show me "
    "point out describe color colour shape object objects left right above below leftmost rightmost "
    "topmost bottommost small large big tiny image picture here and or with in on to you can see "
    "please thanks yes no not one two three four five six zero number count"
).split()


def tiny_corpus() -> list[str]:
    """Sentences covering the ShapesRef vocabulary (templates, not a dataset), for BPE training."""
    lines = []
    for c, s in itertools.product(_COLORS, _SHAPES):
        for size in ("small", "large"):
            lines += [
                f"Find the {size} {c} {s}.",
                f"Where is the {c} {s}? the {size} {c} {s}",
                f"How many {s}s are there? 3: the {size} {c} {s}, the {c} object",
                f"Show me all the {c} objects. the leftmost {s} right of the {c} {s}",
                f"the topmost {c} object above the bottommost {s} below the rightmost {c} {s}",
                f"What color is it? {c}. What shape is it? {s}. Describe it: a {size} {c} {s}",
            ]
    lines += [" ".join(_WORDS), "0 1 2 3 4 5 6 7 8 9 10 . , ? ! : ; ' \" ( ) [ ] - USER: ASSISTANT:"]
    return lines


def build_tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE PreTrainedTokenizerFast with <s>, </s>, <pad>, <unk> and our special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    add_special_tokens(fast)
    return fast


def add_special_tokens(tokenizer) -> int:
    """Add the perception, image, region and phrase tokens (those missing). Returns how many were added."""
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if not missing:
        return 0
    return tokenizer.add_special_tokens(
        {"additional_special_tokens": missing}, replace_extra_special_tokens=False
    )


def add_object_token(tokenizer) -> int:
    """Add ``<obj>`` (object-token models only) after every other token, so existing ids stay put.
    Returns how many tokens were added (0 when the tokenizer has it already)."""
    if OBJECT_TOKEN in tokenizer.get_vocab():
        return 0
    return tokenizer.add_special_tokens({"additional_special_tokens": [OBJECT_TOKEN]}, replace_extra_special_tokens=False)
