"""Messages-format chat history: which messages form turns, which turns are recent, how long they are.

A history is ``[{"role": "user" | "assistant", "content": str, "regions": [...]?}, ...]`` as
``Answer.history`` returns it and as a client sends it back. A *turn* is a user message followed
by an assistant message, both with text contents; other entries (other roles, non-text contents,
a user message the next user message replaces) are skipped. The pipeline and the app pair
messages with this one function, so they agree on which turns the model reads.
"""

from __future__ import annotations


def pair_turns(messages: list) -> list[tuple[int, int]]:
    """The (user index, assistant index) of each complete turn of ``messages``, in order."""
    pairs, pending = [], None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            continue
        if m.get("role") == "user":
            pending = i
        elif m.get("role") == "assistant" and pending is not None:
            pairs.append((pending, i))
            pending = None
    return pairs


def recent_turns(messages: list, max_turns: int) -> list[tuple[int, int]]:
    """The last ``max_turns`` pairs of ``pair_turns`` (all of them when max_turns < 0)."""
    pairs = pair_turns(messages)
    if max_turns < 0:
        return pairs
    return pairs[len(pairs) - max_turns:] if max_turns > 0 else []


def recent_messages(messages: list, max_turns: int) -> list:
    """The tail of ``messages`` that holds its last ``max_turns`` complete turns.

    The turns of the tail are the turns of the whole (``recent_turns`` of both agree), so a
    caller can hand the tail to the model and never read, or decode the regions of, older ones.
    """
    if max_turns < 0:
        return list(messages)
    pairs = recent_turns(messages, max_turns)
    return list(messages[pairs[0][0]:]) if pairs else []


def check_turn_lengths(messages: list, pairs: list[tuple[int, int]], max_chars: int, first: int = 1) -> None:
    """Every message of ``pairs`` has at most ``max_chars`` characters (the per-message limit).

    ValueError otherwise, naming the message by its 1-based position (``first`` is the position of
    ``messages[0]`` in the caller's whole history). Nothing is cut: a history the model cannot read
    whole is refused, never answered from a truncated prompt.
    """
    for pair in pairs:
        for i in pair:
            n = len(messages[i]["content"])
            if n > max_chars:
                role = messages[i]["role"]
                raise ValueError(f"history message {i + first} ({role}) has {n:,} characters; "
                                 f"the limit is {max_chars:,} per message")
