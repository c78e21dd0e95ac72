"""The inference API the app, the CLI and the tests use: ``load_pipeline`` -> ``Pipeline``.

Coordinates in and out are input-image pixels (see perception.types). Image features are computed
once per image (an LRU keyed by the pixels) and reused across turns and clicks. Model calls are
serialised by a lock: one model, many callers (threads of a web server).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from perception.geometry import ImageFrame, mask_at_click
from perception.history import check_turn_lengths, recent_turns
from perception.images import load_image
from perception.limits import DEFAULT_LIMITS, Limits
from perception.maskformat import region_from_json, region_to_json
from perception.tokens import check_region_numbers, parse_answer, split_regions
from perception.types import Answer, Region

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = REPO_ROOT / "checkpoints"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda; got {device!r}")
    return torch.device(device)


def backbone_tokenizer(cfg):
    """The tokenizer for a preset's backbone, with our special tokens added."""
    from perception.tokenizer import add_special_tokens, build_tiny_tokenizer

    b = cfg.backbone
    if b.kind == "stem-llama" or b.llava_config is not None or b.qwen_config is not None:  # built from config
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer

    from perception.backbone.hf import missing_weights_message

    try:
        tok = AutoTokenizer.from_pretrained(cfg.backbone.name_or_path)
    except OSError as e:
        raise OSError(missing_weights_message(cfg.backbone.name_or_path)) from e
    add_special_tokens(tok)
    return tok


def load_model(name_or_path: str, device="cpu", cache_dir=None):
    """Preset name, checkpoint folder or hub id -> PerceptionModel (eval mode).

    A hub id ("user/repo", as written by ``save_pretrained(model, folder, push_to_hub="user/repo")``)
    is fetched with ``huggingface_hub.snapshot_download`` into ``cache_dir`` (default: the Hub cache,
    ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``); with ``HF_HUB_OFFLINE=1`` a cached snapshot is used as is.
    """
    from perception.checkpoint import from_pretrained
    from perception.presets import PRESETS, get_preset

    if name_or_path in PRESETS:
        shipped = CHECKPOINTS / name_or_path
        if (shipped / "config.json").is_file():
            return from_pretrained(shipped, device)
        from perception.model import PerceptionModel

        cfg = get_preset(name_or_path)
        warnings.warn(
            f"no trained checkpoint for preset {name_or_path!r} in {shipped}: building it with "
            f"untrained perception heads (answers will be meaningless)",
            stacklevel=2,
        )
        return PerceptionModel(cfg, backbone_tokenizer(cfg)).to(device).eval()
    if os.path.isdir(name_or_path):
        return from_pretrained(name_or_path, device)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(repo_id=name_or_path, cache_dir=cache_dir)
        except Exception as e:
            raise OSError(
                f"could not fetch {name_or_path!r} from the Hugging Face Hub ({type(e).__name__}); "
                f"download it on a connected machine and pass the local folder"
            ) from None
        return from_pretrained(folder, device)
    raise ValueError(f"{name_or_path!r} is neither a preset ({', '.join(PRESETS)}), a folder, nor a hub id")


def load_pipeline(name_or_path: str = "tiny", device: str = "auto", limits: Limits = DEFAULT_LIMITS) -> "Pipeline":
    """Load a model by preset name, local folder or hub id, ready to chat."""
    dev = resolve_device(device)
    return Pipeline(load_model(name_or_path, dev), dev, limits)


class Pipeline:
    def __init__(self, model, device=None, limits: Limits = DEFAULT_LIMITS, cache_size: int = 8):
        self.model = model.eval()
        self.device = device or model.device
        self.limits = limits
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.RLock()

    # --- images -------------------------------------------------------------------------------
    def _prepare(self, image):
        image = load_image(image, self.limits.max_image_pixels)
        key = hashlib.sha1(image.tobytes()).hexdigest() + f"{image.size}"
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return image, hit
        cfg = self.model.config
        frame = ImageFrame(*image.size, cfg.backbone.image_size, cfg.backbone.resize_mode)
        pixels = self.model.backbone.preprocess(image)[None].to(self.device)
        sam = self.model.mask_head.preprocess(image)[None].to(self.device) if self.model.mask_head.needs_pixels else None
        with self._lock, torch.no_grad():
            state = self.model.encode_images(pixels, sam)
            self._cache[key] = (frame, state)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return image, (frame, state)

    # --- click -> mask ------------------------------------------------------------------------
    def segment_point(self, image, point) -> np.ndarray:
        """A click (x, y) in pixels -> H x W bool mask of the object under it."""
        image, (frame, state) = self._prepare(image)
        r = Region(point=tuple(point))
        x, y = r.point
        W, H = image.size
        if not (0 <= x < W and 0 <= y < H):
            raise ValueError(f"point ({x}, {y}) is outside the {W}x{H} image")
        pts = torch.tensor(frame.points_to_model((x, y)), dtype=torch.float32, device=self.device)[None]
        with self._lock, torch.no_grad():
            logits = self.model.mask_head.from_points(state.mask, pts, torch.zeros(1, dtype=torch.long, device=self.device))
        prob = frame.logits_to_pixels(logits)[0].sigmoid().cpu().numpy()
        return mask_at_click(prob, int(x), int(y), self.model.config.mask_head.mask_threshold)

    # --- object tokens (object-token models only) ----------------------------------------------
    def proposals(self, image) -> list:
        """The objects the model proposes for ``image``, one per object token, best first: H x W
        bool masks in input pixels. ValueError for a model without object tokens."""
        self._require_object_tokens()
        image, (frame, state) = self._prepare(image)
        objs = state.objects
        if objs is None:
            raise ValueError("no object proposals for this image (objects.proposals is 'oracle'): give them with use_objects")
        with self._lock, torch.no_grad():
            thr = self.model.config.mask_head.mask_threshold
            return [objs.pixel_mask(0, j, frame, thr) for j in objs.valid[0].nonzero().flatten().tolist()]

    def use_objects(self, image, masks) -> None:
        """Answer later requests about ``image`` with ``masks`` as its object tokens instead of the
        model's own proposals: H x W bool masks in input pixels, at most ``objects.max_objects``
        (ground-truth masks give the upper bound on selection, "oracle proposals"; masks from
        another segmenter work the same way). Holds while the image stays in the feature cache."""
        self._require_object_tokens()
        image, (frame, state) = self._prepare(image)
        model, W, H = self.model, *image.size
        masks = [np.asarray(m, dtype=bool) for m in masks]
        k = model.config.objects.max_objects
        if len(masks) > k:
            raise ValueError(f"{len(masks)} object masks given; this model takes at most objects.max_objects = {k}")
        for i, m in enumerate(masks, 1):
            if m.shape != (H, W):
                raise ValueError(f"object mask {i} is {m.shape[1]}x{m.shape[0]}; the image is {W}x{H}")
        with self._lock, torch.no_grad():
            state.objects = model.object_tokens.from_pixel_masks(model.region_encoder, state.mask, masks, frame)

    def _require_object_tokens(self) -> None:
        if getattr(self.model, "object_tokens", None) is None:
            raise ValueError("this model has no object tokens (objects.enabled is off): it proposes no objects")

    # --- chat ---------------------------------------------------------------------------------
    def chat(self, image, message: str, history=None, regions=None, max_new_tokens=None) -> Answer:
        out = None
        for out in self.stream_chat(image, message, history, regions, max_new_tokens):
            pass
        return out

    def stream_chat(self, image, message: str, history=None, regions=None, max_new_tokens=None):
        """Yield the answer text (markup removed) as it grows, then the final Answer."""
        from perception.generation import generate

        turn = self._prepare_turn(image, message, history, regions, max_new_tokens)
        gen = generate(self.model, turn.state, turn.input_ids, turn.region_embeds, turn.max_new,
                       self.limits.max_objects, decoder=turn.decoder, loc_feedback=turn.loc_feedback)
        new_ids = []
        # The lock is held for each decoding step, never across a yield: a web server may resume
        # this generator from another thread. ``generate`` runs under no_grad itself.
        while True:
            with self._lock:
                try:
                    new_ids.append(next(gen))
                except StopIteration:
                    break
            yield parse_answer(self._decode(new_ids)).text
        yield self._answer(turn, new_ids)

    def chat_batch(self, images, messages, histories=None, regions=None, max_new_tokens=None) -> list[Answer]:
        """Answer several requests together: ``[chat(images[i], messages[i], histories[i], regions[i])]``.

        Each request has its own image, history and regions (None: none), validated as ``chat``
        validates them (ValueError naming the request). Prompts of different lengths are left-padded
        and masked (perception.generation.generate_batch). Image features come from the same cache
        as ``chat``'s, each image encoded alone (a batched convolution rounds differently). The
        answers are ``chat``'s one at a time: same text, boxes and masks; a mask score may differ in
        its last bits (a one-row decoding step multiplies a vector, a batched one a matrix).
        """
        from perception.generation import generate_batch

        n = len(messages)
        histories = [None] * n if histories is None else list(histories)
        regions = [None] * n if regions is None else list(regions)
        images = list(images)
        if not (len(images) == len(histories) == len(regions) == n):
            raise ValueError(f"chat_batch: {len(images)} images, {n} messages, {len(histories)} histories and "
                             f"{len(regions)} region lists; give one of each per request")
        turns = []
        for i in range(n):
            try:
                turns.append(self._prepare_turn(images[i], messages[i], histories[i], regions[i], max_new_tokens))
            except ValueError as e:
                raise ValueError(f"request {i}: {e}") from e
        max_new = max((t.max_new for t in turns), default=0)
        gen = generate_batch(self.model, [t.state for t in turns], [t.input_ids for t in turns],
                             [t.region_embeds for t in turns], [t.decoder for t in turns], max_new, self.limits.max_objects,
                             [t.loc_feedback for t in turns])
        while True:  # the lock is held per decoding step, as in stream_chat
            with self._lock:
                try:
                    next(gen)
                except StopIteration as stop:
                    done = stop.value
                    break
        return [self._answer(t, g.ids[0, g.prompt_len:].tolist()) for t, g in zip(turns, done)]

    def _prepare_turn(self, image, message: str, history, regions, max_new_tokens) -> "_Turn":
        """Validate one request and build what generating its answer needs (``stream_chat`` and
        ``chat_batch`` both start here): the prompt ids, region embeddings and answer decoder."""
        from perception.decoding import answer_decoder
        from perception.regions import Regions

        lim = self.limits
        message = _clean_message(message, lim.max_prompt_chars)
        regions = list(regions or [])
        if len(regions) > lim.max_regions:
            raise ValueError(f"{len(regions)} regions given; at most {lim.max_regions} per message")
        _, numbers = split_regions(message)
        check_region_numbers(numbers, len(regions))
        image, (frame, state) = self._prepare(image)
        W, H = image.size
        regions = [_region_from_dict(r, (H, W)) for r in regions]
        for i, r in enumerate(regions, 1):
            _check_region(r, W, H, i)

        history = list(history or [])
        cfg = self.model.config
        turns, turn_regions, keep, turn_objects = _history_turns(history, lim.max_history_turns, image.size, lim,
                                                                 objects=cfg.loc_feedback and cfg.loc_feedback_history)
        turns.append((message, None))
        turn_regions.append(regions)
        keep.append(True)
        enc = _encode_fitting(self.model, turns, turn_regions, keep, lim.max_new_tokens)
        turn_objects = turn_objects[len(turn_objects) - (len(turns) - 1):] if len(turns) > 1 else []  # the turns kept
        side = self.model.config.region.mask_size * 2
        input_ids = torch.tensor([enc.input_ids], device=self.device)
        with self._lock, torch.no_grad():
            rs = Regions.build([(turn_regions[t][n - 1], frame, 0) for t, n in enc.region_order], side)
            region_embeds = self.model.encode_regions(state, rs.to(self.device) if rs is not None else None)
            feedback = self._history_feedback(state, frame, input_ids, turn_objects)
        return _Turn(message, regions, history, state, input_ids, region_embeds,
                     min(max_new_tokens or lim.max_new_tokens, lim.max_new_tokens),
                     answer_decoder(self.model, state, frame, max_objects=lim.max_objects), feedback)

    def _history_feedback(self, state, frame, input_ids, turn_objects: list):
        """``loc_feedback_history``: the history's ``<loc>`` feedback, as generation gives it to the
        ``<loc>``s it writes: (is_fed (K,) bool over the prompt's ``<loc>``s, (F, D) embeddings), or
        None. ``turn_objects``: per history turn in the prompt, its answer's objects (one Region or
        None per ``<loc>``; None for the whole turn when it carries none). A turn without objects
        and a ``<loc>`` without an object get no feedback; a prompt whose ``<loc>`` count is not the
        turns' is fed nothing (the history was edited)."""
        cfg = self.model.config
        if not (cfg.loc_feedback and cfg.loc_feedback_history) or not turn_objects:
            return None
        per_loc = [o for objs in turn_objects for o in (objs or [])]
        n_locs = int((input_ids == self.model.loc_id).sum())
        if n_locs != sum(len(objs) if objs is not None else 0 for objs in turn_objects) or not any(per_loc):
            return None
        from perception.processing import mask_side
        from perception.regions import region_geometry

        side = mask_side(cfg)
        is_fed = torch.tensor([o is not None for o in per_loc], dtype=torch.bool, device=self.device)
        masks = torch.stack([region_geometry(o, frame, side)["masks"] for o in per_loc if o is not None]).to(self.device)
        fb = self.model.feedback_embeds(state, masks.to(state.mask.pixels.dtype), torch.zeros(len(masks), dtype=torch.long, device=self.device))
        return is_fed, fb

    def _answer(self, turn: "_Turn", new_ids: list) -> Answer:
        """A request's generated ids -> its Answer (text, objects paired with phrases, history)."""
        raw = self._decode(new_ids)
        reply = {"role": "assistant", "content": raw}
        decoded = getattr(turn.decoder, "decoded", [])
        if decoded:  # what each <loc> grounded (None: nothing), so a later turn can feed it back
            reply["objects"] = [_object_to_dict(g) for g in decoded]
        new_history = turn.history + [
            {"role": "user", "content": turn.message, "regions": [_region_to_dict(r) for r in turn.regions]},
            reply,
        ]
        return Answer(text=parse_answer(raw).text, objects=turn.decoder.objects(raw), history=new_history, raw=raw)

    def _decode(self, ids) -> str:
        """Generated ids -> text; byte fragments (U+FFFD) and control characters are dropped."""
        tok = self.model.tokenizer
        ids = [i for i in ids if i != tok.eos_token_id]
        text = tok.decode(ids, skip_special_tokens=False)
        return "".join(ch for ch in text if (ch.isprintable() or ch == "\n") and ch != "\ufffd")


@dataclass
class _Turn:
    """One validated request, ready to generate (``Pipeline._prepare_turn``)."""

    message: str  # cleaned
    regions: list  # [Region] in input-image pixels, one per <regionK>
    history: list  # the messages-format history given
    state: object  # ImageState of the image (a batch of one)
    input_ids: torch.Tensor  # (1, T) the prompt, oldest history turns dropped to fit the context
    region_embeds: object  # RegionEmbeds of every live <region> in the prompt ((R, D) vectors, their boxes), or None
    max_new: int  # new tokens allowed
    decoder: object  # the answer decoder (perception.decoding.answer_decoder) for this image and frame
    loc_feedback: object = None  # the history's <loc> feedback (Pipeline._history_feedback) or None


def _clean_message(message, max_chars: int) -> str:
    if message is None or not isinstance(message, str):
        raise ValueError(f"the message must be text; got {type(message).__name__}")
    # control characters (except newline and tab) carry nothing and confuse tokenizers
    message = "".join(ch for ch in message if ch in "\n\t" or ch.isprintable())
    if not message.strip():
        raise ValueError("the message is empty")
    if len(message) > max_chars:
        raise ValueError(f"the message has {len(message):,} characters; the limit is {max_chars:,}")
    return message.strip()


def _check_region(r: Region, W: int, H: int, i: int) -> None:
    if r.point is not None:
        x, y = r.point
        if not (x < W and y < H):
            raise ValueError(f"region {i}: point ({x}, {y}) is outside the {W}x{H} image")
    elif r.box is not None:
        x1, y1, x2, y2 = r.box
        if x1 >= W or y1 >= H:
            raise ValueError(f"region {i}: box {tuple(r.box)} is outside the {W}x{H} image")
    else:
        if r.mask.shape != (H, W):
            raise ValueError(f"region {i}: mask is {r.mask.shape[1]}x{r.mask.shape[0]} but the image is {W}x{H}")
        if not r.mask.any():
            raise ValueError(f"region {i}: mask is empty")


_region_to_dict = region_to_json  # Region -> {"point" | "box" | "mask": ...} (perception/maskformat.py)


def _region_from_dict(d, size=None) -> Region:
    """A region dict (point / box / COCO RLE mask) -> Region; a mask's claimed (h, w) is checked
    against ``size`` before anything is decoded."""
    if isinstance(d, Region):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"a region must be perception.Region or a dict with point, box or mask; got {type(d).__name__}")
    return region_from_json(d, size)


def _history_turns(history, max_turns: int, size, limits: Limits = DEFAULT_LIMITS, objects: bool = False):
    """Messages-format history -> [(user, assistant)], their regions, whether placeholders are live,
    and each answer's objects (``_answer_objects``; None for every turn unless ``objects``: only a
    model that feeds the history's objects back reads them).

    The turns are the last ``max_turns`` of ``perception.history.pair_turns`` (other entries are
    skipped). Their messages must each fit ``limits.max_prompt_chars`` (ValueError naming the
    message otherwise: nothing is cut). Only their regions are decoded (checked against the image
    size first); a turn whose regions are unusable is read as plain text.
    """
    pairs = recent_turns(history, max_turns)
    check_turn_lengths(history, pairs, limits.max_prompt_chars)
    turns, regs, keep, answer_objects = [], [], [], []
    W, H = size
    for u, a in pairs:
        answer_objects.append(_answer_objects(history[a], (H, W), limits) if objects else None)
        user, assistant = history[u], history[a]
        rs, live = [], True
        try:
            raw = user.get("regions") or []
            if not isinstance(raw, list) or len(raw) > limits.max_regions:
                raise ValueError("bad regions")
            rs = [_region_from_dict(r, (H, W)) for r in raw]
            _, nums = split_regions(user["content"])
            check_region_numbers(nums, len(rs))
            for i, r in enumerate(rs, 1):
                _check_region(r, W, H, i)
        except (ValueError, TypeError, OverflowError):
            rs, live = [], False
        turns.append((user["content"], assistant["content"]))
        regs.append(rs)
        keep.append(live)
    return turns, regs, keep, answer_objects


def _object_to_dict(g):
    """A decoded ``<loc>`` (Grounding or None) -> what the history keeps of it: {"mask": RLE},
    {"box": [...]} for a model without masks, or None (the ``<loc>`` grounded nothing)."""
    if g is None:
        return None
    return region_to_json(Region(mask=g.mask) if g.mask is not None else Region(box=tuple(g.box)))


def _answer_objects(message: dict, size, limits: Limits):
    """An assistant message's "objects" (one region dict or None per ``<loc>`` of its content, as
    ``Pipeline.chat`` writes them) -> [Region | None], or None when it has none or they do not fit
    its content (wrong count, a bad region, a mask of another size): that turn is fed nothing."""
    from perception.tokens import PERCEPTION_TOKEN

    raw = message.get("objects")
    if not isinstance(raw, list) or len(raw) != message["content"].count(PERCEPTION_TOKEN) or len(raw) > limits.max_objects:
        return None
    H, W = size
    try:
        out = [None if d is None else _region_from_dict(d, (H, W)) for d in raw]
        for r in out:
            if r is not None:
                _check_region(r, W, H, 1)
    except (ValueError, TypeError, OverflowError):
        return None
    return out


def _context_length(model) -> int | None:
    """The most positions the model's language model reads (its config's max_position_embeddings;
    a multimodal config's text_config), or None when the backbone does not say."""
    for name in ("llm", "model"):  # StemLlamaBackbone.llm, HFBackbone.model
        cfg = getattr(getattr(model.backbone, name, None), "config", None)
        cfg = getattr(cfg, "text_config", None) or cfg
        n = getattr(cfg, "max_position_embeddings", None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def _encode_fitting(model, turns: list, turn_regions: list, keep: list, reserve: int):
    """Encode the conversation for generation so that it plus ``reserve`` new tokens fits the context.

    A prompt longer than the model's context is never generated from (the tiny model then writes
    ``</s>`` at once: an empty answer). The oldest history turns are dropped until it fits, from
    ``turns``, ``turn_regions`` and ``keep`` in place, so they stay aligned with the returned
    ``Encoded.region_order``. The last turn, the new message, is never dropped: when it alone does
    not fit, ValueError naming the token counts.
    """
    limit = _context_length(model)
    while True:
        enc = model.prompts.encode(turns, add_generation_prompt=True, keep_placeholders=keep)
        if limit is None or len(enc.input_ids) + reserve <= limit:
            return enc
        if len(turns) == 1:
            raise ValueError(f"the image and the message take {len(enc.input_ids):,} tokens and the answer up to "
                             f"{reserve:,}, over the model's context of {limit:,} tokens: shorten the message")
        del turns[0], turn_regions[0], keep[0]
