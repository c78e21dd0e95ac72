"""PerceptionGPT: perception tokens on a vision LLM (Pi et al., arXiv 2311.06612).

Public API::

    import perception
    pipe = perception.load_pipeline("tiny")
    ans = pipe.chat(image, "Find the red circle.")
    ans.text, ans.objects, ans.history
    pipe.segment_point(image, (x, y))

and what a front end needs around it (the app imports nothing else): ``load_image`` (any input
-> a safe RGB image), ``draw_overlay`` / ``answer_json`` / ``color_hex`` (an answer drawn and
serialised), ``rle_encode`` / ``rle_decode`` / ``rle_size`` (COCO RLE masks),
``region_to_json`` / ``region_from_json`` (regions as JSON dicts), and ``pair_turns`` /
``recent_turns`` / ``recent_messages`` / ``check_turn_lengths`` (messages-format history, paired
as the pipeline pairs it).
"""

from perception.history import check_turn_lengths, pair_turns, recent_messages, recent_turns
from perception.images import load_image
from perception.limits import DEFAULT_LIMITS, Limits
from perception.maskformat import excerpt, region_from_json, region_to_json, rle_decode, rle_encode, rle_size
from perception.pipeline import Pipeline, load_pipeline
from perception.render import PALETTE, answer_json, color_hex, draw_overlay
from perception.types import Answer, Grounding, Region

__all__ = [
    "load_pipeline", "Pipeline", "Region", "Grounding", "Answer", "Limits", "DEFAULT_LIMITS",
    "load_image", "draw_overlay", "answer_json", "color_hex", "PALETTE",
    "rle_encode", "rle_decode", "rle_size", "region_to_json", "region_from_json", "excerpt",
    "pair_turns", "recent_turns", "recent_messages", "check_turn_lengths",
]
__version__ = "0.1.0"
