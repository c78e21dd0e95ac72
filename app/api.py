"""The named API endpoints (gradio_client): ``/chat`` and ``/segment_point``. Stateless: the
client keeps the history. Formats are a contract; see api_chat's docstring.
"""

from __future__ import annotations

import functools
import html

import gradio as gr

import perception
from perception import Answer, answer_json, draw_overlay

from app import format as fmt
from app import model
from app.handlers import error, load, model_error, segment


# --- endpoints -----------------------------------------------------------------------------------


def _plain_errors(fn):
    """For API endpoints: error messages as plain text (clients do not render HTML)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error as e:
            raise gr.Error(html.unescape(e.message), title=e.title, print_exception=False) from None

    return wrapper


@_plain_errors
def api_chat(image, message: str, regions, history):
    """The ``/chat`` endpoint: one turn, stateless (the client keeps the history).

    The request is validated on its own (a gr.Error naming the problem), then answered in one
    batch with the valid requests that arrive with it (``model.chat``); a failure of the model on
    this request is this request's error only.

    image: file path (or PIL/array). regions: JSON list in pixels of {"point": [x, y]} |
    {"box": [x1, y1, x2, y2]} | {"mask": COCO RLE}, "[]" for none. history: messages-format list
    (or its JSON), "[]" to start; an assistant message may carry "objects" (one region dict or null
    per <loc> of its content: what it grounded; the returned history has them), which a model
    with loc_feedback_history reads so that a later "it" means that object (a list that does not
    fit the message is ignored). Returns (answer text, history + 2 messages, objects, overlay),
    objects = [{"box": [x1, y1, x2, y2], "mask": RLE, "phrase": str | None}] in answer order.
    """
    img = load(image)
    if not isinstance(message, str) or not message.strip():
        raise error("The message is empty: give a question or an instruction.")
    lim = model.limits()
    try:
        regs = fmt.parse_regions(regions, img.size, lim.max_regions)
        hist = fmt.parse_history(history)
        # the model sees only the last turns: older ones go back to the client untouched, never decoded
        recent = perception.recent_messages(hist, lim.max_history_turns)
        first = len(hist) - len(recent) + 1  # the position of recent[0] in the client's history
        perception.check_turn_lengths(recent, perception.recent_turns(recent, lim.max_history_turns),
                                      lim.max_prompt_chars, first)
        fmt.check_history_regions(recent, img.size, lim.max_regions, first)
        fmt.check_placeholders(message, len(regs))
    except ValueError as e:
        raise error(str(e)) from None
    try:  # answered together with the requests that arrive with it (app/model.py chat)
        answer = model.chat(img, message, recent, regs)
    except ValueError as e:
        raise error(str(e)) from None
    except Exception as e:
        raise model_error("answering", e) from None
    if not isinstance(answer, Answer):
        raise error("The model returned no answer.")
    new_messages = answer.history[len(recent):]  # this turn: the user message and the answer
    return answer.text, hist + new_messages, answer_json(answer), draw_overlay(img, answer.objects)


api_segment_point = _plain_errors(segment)
