"""Text and JSON formats of the app: coloured chat HTML, the ``regions`` JSON of the API, placeholders.

No gradio and no model here: plain functions on strings, lists and dicts (easy to test).
Colours: object i of an answer (0-based) is ``color_hex(i)``, the colour ``draw_overlay`` gives it,
and region N of a message (1-based) is ``color_hex(N - 1)``, the colour of its mask on the image.
"""

from __future__ import annotations

import html
import json
import re

from perception import Region, color_hex, excerpt, region_from_json

PLACEHOLDER = re.compile(r"<region(\d+)>")


# --- chat HTML ----------------------------------------------------------------------------------


def _span(text: str, color: str) -> str:
    return f'<span style="color:{color};font-weight:600">{html.escape(text)}</span>'


def _tag(number: int) -> str:
    """A small numbered marker ``[n]`` in object n's colour (1-based)."""
    return f'<sup style="color:{color_hex(number - 1)};font-weight:700">[{number}]</sup>'


def escape(text: str) -> str:
    """Plain text -> HTML that the chat shows verbatim (``<region1>`` stays visible)."""
    return html.escape(text or "")


def user_html(message: str) -> str:
    """A user message with each ``<regionN>`` in region N's colour."""
    out, last = [], 0
    for m in PLACEHOLDER.finditer(message):
        out.append(escape(message[last : m.start()]))
        out.append(_span(m.group(0), color_hex(int(m.group(1)) - 1)))
        last = m.end()
    out.append(escape(message[last:]))
    return "".join(out)


def answer_html(text: str, phrases: list) -> str:
    """The answer text with the phrase of object i in ``color_hex(i)``, followed by its number [i+1].

    phrases: one entry per grounded object, in answer order (``Grounding.phrase``: str or None).
    Each phrase is looked up after the previous one. An object whose phrase is the previous
    object's and does not occur again shares that occurrence (``the squares [1][2]``); an object
    with no phrase, or one not in the text, gets its number at the end.
    """
    out, cursor, trailing = [], 0, []
    for i, phrase in enumerate(phrases):
        pos = text.find(phrase, cursor) if phrase else -1
        if pos >= 0:
            out.append(escape(text[cursor:pos]))
            out.append(_span(phrase, color_hex(i)) + _tag(i + 1))
            cursor = pos + len(phrase)
        elif phrase and i > 0 and phrases[i - 1] == phrase and out:
            out.append(_tag(i + 1))  # right after the shared phrase (nothing was appended since)
        else:
            trailing.append(i + 1)
    out.append(escape(text[cursor:]))
    if trailing:
        out.append(" " + "".join(_tag(k) for k in trailing))
    return "".join(out)


# --- regions ------------------------------------------------------------------------------------


def parse_regions(value, size: tuple[int, int] | None = None, max_regions: int | None = None) -> list[Region]:
    """The API's ``regions`` argument -> [Region].

    value: a JSON string or an already parsed list of ``{"point": [x, y]}``, ``{"box": [x1, y1, x2,
    y2]}`` or ``{"mask": COCO RLE}`` in image pixels; None, "" and "[]" mean no regions.
    size: (w, h) of the image; a mask of another size is an error, found before it is decoded (an
    RLE of a few bytes can claim any size). max_regions: more regions than this is an error, also
    before any decoding. Raises ValueError naming the problem.
    """
    value = _load_json(value, "regions must be a JSON list")
    if not isinstance(value, list):
        raise ValueError(f"regions must be a JSON list of {{point|box|mask}} objects; got {type(value).__name__}")
    if max_regions is not None and len(value) > max_regions:
        raise ValueError(f"{len(value)} regions given; at most {max_regions} per message")
    hw = (size[1], size[0]) if size is not None else None
    out = []
    for n, d in enumerate(value, 1):
        try:
            _check_mask_size(d, hw)
            out.append(region_from_json(d, hw))
        except (ValueError, TypeError) as e:
            raise ValueError(f"region {n}: {e}") from None
        except OverflowError as e:  # a coordinate beyond float range
            raise ValueError(f"region {n}: a number is too large ({e})") from None
    return out


def _load_json(value, what: str):
    """The API's JSON argument: a string is parsed (None and blank text are ``[]``), anything else
    is taken as already parsed. ValueError starting with ``what`` when the text is not JSON, including
    JSON nested too deeply for the parser (json.loads raises RecursionError there, which would
    otherwise reach the client as Gradio's generic error)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        problem = f"{e.msg} at column {e.colno}"
    except ValueError as e:  # a number of over 4300 digits
        problem = str(e).split(";")[0]
    except RecursionError:
        problem = "it is nested too deeply"
    raise ValueError(f"{what}; could not parse it ({problem})") from None


def _check_mask_size(d, hw: tuple[int, int] | None) -> None:
    """A mask region whose RLE claims another (h, w) than the image's: ValueError, without decoding."""
    if hw is None or not isinstance(d, dict) or not isinstance(d.get("mask"), dict) or "size" not in d["mask"]:
        return  # not a mask, or not an RLE: region_from_json says so
    try:
        claimed = tuple(int(v) for v in d["mask"]["size"])
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"mask size must be [h, w] integers; got {excerpt(d['mask']['size'])}") from None
    if claimed != tuple(hw):
        raise ValueError(f"mask is {'x'.join(map(str, claimed))} (h x w) but the image is {hw[0]}x{hw[1]}")


def parse_history(value) -> list:
    """The API's ``history`` argument (JSON string or list, messages format) -> list."""
    value = _load_json(value, "history must be a JSON list of messages")
    if not isinstance(value, list):
        raise ValueError(f"history must be a list of {{role, content}} messages; got {type(value).__name__}")
    return value


def check_history_regions(messages: list, size: tuple[int, int], max_regions: int, first: int = 1) -> None:
    """Regions carried by history messages: a list of at most ``max_regions``, masks of the image's size.

    Checked without decoding anything; ValueError naming the message otherwise (numbered from
    ``first``: the position of ``messages[0]`` in the client's whole history). Other problems (a
    region that is not a valid point/box/mask) make the pipeline read that turn as plain text.
    """
    hw = (size[1], size[0])
    for k, m in enumerate(messages, first):
        if not isinstance(m, dict) or m.get("regions") is None:
            continue
        regs = m["regions"]
        if not isinstance(regs, list):
            raise ValueError(f"history message {k}: regions must be a list; got {type(regs).__name__}")
        if len(regs) > max_regions:
            raise ValueError(f"history message {k}: {len(regs)} regions; at most {max_regions} per message")
        for n, d in enumerate(regs, 1):
            try:
                _check_mask_size(d, hw)
                _check_finite(d)
            except ValueError as e:
                raise ValueError(f"history message {k}: region {n}: {e}") from None


def _check_finite(d) -> None:
    """Point and box numbers must fit a float (the pipeline reads them with float())."""
    if not isinstance(d, dict):
        return
    for kind in ("point", "box"):
        values = d.get(kind)
        if isinstance(values, list):
            for v in values:
                try:
                    float(v)
                except OverflowError:
                    raise ValueError(f"{kind} has a number too large for a coordinate") from None
                except (TypeError, ValueError):
                    pass  # the pipeline reads this turn as plain text


def placeholder_numbers(message: str) -> list[int]:
    """The N of each ``<regionN>`` in the message, in order."""
    return [int(m.group(1)) for m in PLACEHOLDER.finditer(message or "")]


def check_placeholders(message: str, n_regions: int) -> None:
    """Every ``<regionN>`` must name an existing region (1..n_regions); ValueError otherwise."""
    missing = sorted({n for n in placeholder_numbers(message) if n < 1 or n > n_regions})
    if missing:
        names = ", ".join(f"<region{n}>" for n in missing)
        have = f"only {n_regions} region(s) exist" if n_regions else "no regions exist yet"
        raise ValueError(f"{names} refers to a region that does not exist: {have}. "
                         f"Click the image to add a region first.")


def compact_regions(message: str, regions: list) -> tuple[str, list]:
    """Keep only the regions the message refers to and renumber them 1..K in order of first mention.

    ``"What is <region2>?"`` with [A, B] -> ``("What is <region1>?", [B])``. The message must pass
    ``check_placeholders`` first.
    """
    order: list[int] = []
    for n in placeholder_numbers(message):
        if n not in order:
            order.append(n)
    new_number = {n: k for k, n in enumerate(order, 1)}
    text = PLACEHOLDER.sub(lambda m: f"<region{new_number[int(m.group(1))]}>", message)
    return text, [regions[n - 1] for n in order]


def remove_placeholder(message: str, number: int) -> str:
    """Drop ``<region{number}>`` from the message and shift higher numbers down by one."""
    def sub(m):
        n = int(m.group(1))
        return "" if n == number else f"<region{n - 1}>" if n > number else m.group(0)

    return re.sub(r"  +", " ", PLACEHOLDER.sub(sub, message or ""))


def append_placeholder(message: str, number: int) -> str:
    """The message with `` <region{number}>`` added at the end."""
    message = (message or "").rstrip()
    return f"{message} <region{number}>" if message else f"<region{number}>"


# --- suggested messages -------------------------------------------------------------------------

FIRST_PROMPTS = ("Find all the triangles.", "Find the red circle.", "How many squares are there?")


def suggested_prompts(n_regions: int) -> list[str]:
    """Messages the app offers under the message box: requests about the scene, or, once a click has
    added ``<region{n_regions}>``, requests about that region, the ones the shipped model answers
    best first (region questions 0.958; same-as-a-region F1 0.941: docs/RESULTS.md). The
    same-as-a-region request is worded as ShapesRef's training data words it ("color", not
    "colour"; ../shared/SHAPESREF.md v2).
    """
    if n_regions < 1:
        return list(FIRST_PROMPTS)
    r = f"<region{n_regions}>"
    return [f"What is {r}?", f"Describe {r}.", f"Find all the objects with the same color as {r}."]
