"""Conversation -> token ids, one function for training and inference.

Layout (LLaVA-1.5's): ``<s>USER: <image>xN\n{user1} ASSISTANT: {answer1}</s>USER: {user2} ASSISTANT: ...``
where ``<image>xN`` is N image-token ids (replaced by image features) and each ``<regionK>`` in a
user message becomes one ``<region>`` id (replaced by a region embedding).

With ``image_after_question`` (``image_position: after_question``) the first turn reads
``USER: {user1}\n<image>xN ASSISTANT: ...`` instead: the image tokens, like object tokens, follow
the question and can attend to it (an ablation of issue 14; later turns are unchanged).

With object tokens (``num_object_tokens`` = K > 0) every turn, replayed history included, carries
K ``<obj>`` ids after the user's text: ``USER: {user} <obj>xK ASSISTANT:``. Each is replaced by one
proposal's embedding (perception/objects.py), and standing after the question they can already
attend to what is asked.

User text is tokenized with special tokens split, so typed ``<image>``/``<loc>`` stay plain text.
Assistant text may contain only ``<p>``, ``</p>`` and ``<loc>`` as special tokens; anything else
special-looking in it (history can come from outside) is plain text too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from perception.tokens import (
    IMAGE_TOKEN,
    OBJECT_TOKEN,
    PERCEPTION_TOKEN,
    PHRASE_CLOSE,
    PHRASE_OPEN,
    REGION_TOKEN,
    split_regions,
)

_ANSWER_SPECIALS = re.compile(f"({re.escape(PHRASE_OPEN)}|{re.escape(PHRASE_CLOSE)}|{re.escape(PERCEPTION_TOKEN)})")
IGNORE = -100


@dataclass
class Encoded:
    input_ids: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    region_order: list = field(default_factory=list)  # per <region> id in order: (turn index, region number 1-based)


def image_after_question(cfg) -> bool:
    """Whether PerceptionConfig ``cfg`` puts the image tokens after the first question."""
    if cfg.image_position not in ("before_question", "after_question"):
        raise ValueError(f"image_position must be 'before_question' or 'after_question'; got {cfg.image_position!r}")
    return cfg.image_position == "after_question"


class PromptEncoder:
    """Turns conversations into ids for one tokenizer, one image-token count and one object-token
    count per turn (0: no object tokens; the tokenizer must then hold ``<obj>`` otherwise)."""

    def __init__(self, tokenizer, num_image_tokens: int, num_object_tokens: int = 0, image_after_question: bool = False):
        self.tok = tokenizer
        self.n_image = num_image_tokens
        self.image_after = image_after_question
        self.n_object = num_object_tokens
        ids = tokenizer.convert_tokens_to_ids
        self.object_id = None
        if num_object_tokens:
            if OBJECT_TOKEN not in tokenizer.get_vocab():
                raise ValueError(f"{num_object_tokens} object tokens per turn requested but the tokenizer has no "
                                 f"{OBJECT_TOKEN} token (perception.tokenizer.add_object_token adds it)")
            self.object_id = ids(OBJECT_TOKEN)
        self.image_id = ids(IMAGE_TOKEN)
        self.region_id = ids(REGION_TOKEN)
        self.loc_id = ids(PERCEPTION_TOKEN)
        self.special = {t: ids(t) for t in (PHRASE_OPEN, PHRASE_CLOSE, PERCEPTION_TOKEN)}
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos_id = tokenizer.eos_token_id
        self._user_prefix_first = self.text("USER: ")
        self._newline = self.text("\n")
        self._user_prefix = self.text("USER: ")
        self._assistant = self.text(" ASSISTANT:")
        self._space = self.text(" ")

    def text(self, s: str) -> list:
        """Plain text -> ids; special-token strings are split into ordinary tokens."""
        if not s:
            return []
        return self.tok(s, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def user(self, s: str) -> tuple[list, list]:
        """User text -> (ids with one <region> id per placeholder, placeholder numbers in order)."""
        pieces, numbers = split_regions(s)
        ids = self.text(pieces[0])
        for piece in pieces[1:]:
            ids += [self.region_id] + self.text(piece)
        return ids, numbers

    def assistant(self, s: str) -> list:
        ids = []
        for part in _ANSWER_SPECIALS.split(s):
            ids += [self.special[part]] if part in self.special else self.text(part)
        return ids

    def encode(self, turns, add_generation_prompt: bool = False, keep_placeholders=None) -> Encoded:
        """turns: [(user, assistant or None)]. The last assistant may be None with add_generation_prompt.

        keep_placeholders: per turn, False to render that turn's ``<regionK>`` as plain text (its
        regions are unknown, e.g. history from a client that did not send them).
        """
        enc = Encoded()
        ids, labels = enc.input_ids, enc.labels
        image = [self.image_id] * self.n_image
        ids += self.bos + self._user_prefix_first + ([] if self.image_after else image + self._newline)
        for i, (user, answer) in enumerate(turns):
            if i > 0:
                ids += self._user_prefix
            if keep_placeholders is None or keep_placeholders[i]:
                u, numbers = self.user(user)
                enc.region_order += [(i, n) for n in numbers]
            else:
                u = self.text(user)
            ids += u
            if i == 0 and self.image_after:
                ids += self._newline + image
            if self.n_object:
                ids += self._space + [self.object_id] * self.n_object
            ids += self._assistant
            labels += [IGNORE] * (len(ids) - len(labels))
            if answer is None:
                if i != len(turns) - 1 or not add_generation_prompt:
                    raise ValueError("only the last turn may lack an answer")
                ids += self._space
                labels += [IGNORE] * len(self._space)
                break
            a = self._space + self.assistant(answer) + [self.eos_id]
            ids += a
            labels += [IGNORE] * len(self._space) + a[len(self._space):]
        return enc
