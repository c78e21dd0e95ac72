"""One tree of config dataclasses, saved as JSON with every checkpoint (``config.json``).

Presets (``perception.presets``) are instances of ``PerceptionConfig``; nothing else configures a
model. The defaults are the recipe the shipped ``tiny`` model was trained with (its preset only
adds the ShapesRef attribute words); the real presets set what differs (the paper's path).
``to_dict``/``from_dict`` round-trip exactly. Options of superseded recipes are gone; the commits
that trained with them are named in docs/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class StemConfig:
    """The tiny preset's convolutional vision encoder (stride 2/4/8/16 feature maps)."""

    channels: list = field(default_factory=lambda: [32, 64, 128, 192])  # width at stride 2, 4, 8, 16
    token_grid: int = 10  # the LLM sees token_grid**2 image tokens: the stride-16 map (10x10 at 160 px), average-pooled when smaller


@dataclass
class TextConfig:
    """A Llama built from config (tiny preset and tests)."""

    hidden_size: int = 256  # model width
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads
    intermediate_size: int = 768  # MLP width
    max_positions: int = 1024  # longest sequence (image tokens included)
    vocab_size: int = 0  # set from the tokenizer when the model is built


@dataclass
class BackboneConfig:
    """Which vision LLM carries the perception token, behind ``perception.backbone`` adapters."""

    kind: str = "stem-llama"  # "stem-llama" (tiny: conv stem + Llama) | "llava" (LlavaForConditionalGeneration) | "qwen2vl" (Qwen2VLForConditionalGeneration)
    name_or_path: Optional[str] = None  # llava / qwen2vl: hub id or local folder of a pretrained checkpoint
    llava_config: Optional[dict] = None  # llava: build from this config dict instead (tests, tiny llava)
    qwen_config: Optional[dict] = None  # qwen2vl: build a Qwen2VLConfig from this dict instead (tests, tiny-qwen2vl)
    image_size: int = 160  # model input side S (square model frame)
    resize_mode: str = "stretch"  # "stretch" (W x H -> S x S) | "pad" (longest side -> S, pad bottom/right)
    pixel_mean: list = field(default_factory=lambda: [0.5, 0.5, 0.5])  # per-channel, on [0, 1] pixels
    pixel_std: list = field(default_factory=lambda: [0.25, 0.25, 0.25])
    stem: StemConfig = field(default_factory=StemConfig)
    text: TextConfig = field(default_factory=TextConfig)
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    load_in: Optional[str] = None  # None | "8bit" | "4bit" (bitsandbytes, optional)
    device_map: Optional[str] = None  # passed to from_pretrained for large checkpoints
    gradient_checkpointing: bool = False


@dataclass
class MaskHeadConfig:
    """Decodes a perception-token state (or a click) into mask logits in the model frame."""

    kind: str = "dot"  # "dot" (SAM's last stage: query . per-pixel features) | "sam" (segment-anything's MaskDecoder)
    dim: int = 64  # query / per-pixel feature width ("sam": transformer_dim, 256 for real SAM)
    refine_layers: int = 1  # "dot": cross-attention layers refining the query over stride-8 features
    sam_variant: Optional[str] = None  # "sam": "vit_b" | "vit_l" | "vit_h" image encoder, None = use backbone features
    sam_checkpoint: Optional[str] = None  # "sam": path to the official .pth (loaded weights_only=True)
    sam_image_size: int = 1024  # "sam": encoder input side
    sam_encoder_depth: Optional[int] = None  # "sam": override depth (tests build tiny encoders)
    sam_encoder_dim: Optional[int] = None  # "sam": override embed dim (tests)
    mask_threshold: float = 0.5  # probability above which a pixel is in the mask
    min_object_pixels: int = 5  # decoding: a <loc> whose mask has fewer pixels (input image) grounds nothing
    exclusive: bool = True  # decoding: each <loc> of an answer takes its mask from pixels no earlier <loc> of that answer took


@dataclass
class BoxHeadConfig:
    """The paper's MLP from the perception-token state to a normalised box."""

    hidden: int = 256  # MLP width
    layers: int = 3  # MLP depth
    source: str = "mask"  # the box reported: "mask" (box of the mask blob around its peak) | "head" (the paper's MLP)


@dataclass
class RegionEncoderConfig:
    """Region (box / mask / click) -> one input embedding replacing a <region> token."""

    mask_size: int = 32  # region masks are rasterised at 2x this side
    roi_size: int = 16  # side of the crop (mask and per-pixel features) inside the region's box
    roi_context: float = 0.25  # the crop box grows by this fraction of its size on every side
    hidden: int = 128  # conv / MLP width


@dataclass
class TokenAuxConfig:
    """Dense auxiliary targets on the image tokens (training only; off when ``attributes`` is empty).

    Each image token is a cell of the square token grid. A linear read-out of the LM's last-layer
    state at that token predicts, per attribute group, the word of (a) the object whose box
    centre lies in the cell and (b) the object covering most of the cell, or "none". Labels are
    matched word by word (ShapesRef labels are "size colour shape"); a sample whose labels lack a
    group's word is ignored for that group. This makes the image tokens carry object identity,
    which the LM needs to enumerate and count.

    The same groups serve ``LossWeights.region_aux``: a linear read-out of each region embedding
    (a user's region, and each fed-back ``<loc>``'s object) predicts that object's words, so the
    embedding the LM reads carries the object's shape, not only its position and colour.
    """

    attributes: list = field(default_factory=list)  # groups of words, e.g. [["small", "large"], ["red", ...]]
    min_cover: float = 0.2  # fraction of a cell an object must cover to be its "cover" target


@dataclass
class ObjectTokensConfig:
    """Question-aware object tokens (perception/objects.py; off by default: the paper's path).

    Proposals (a centre heatmap's peaks clicked through the mask head, or given masks: "oracle")
    each become one ``<obj>`` token: the region encoder's embedding of the proposal's mask and box
    plus a separate projection of Fourier features of its box centre and size. The tokens stand
    after the user's text of every turn; a pointer from each ``<loc>`` state picks one of them.
    """

    enabled: bool = False
    max_objects: int = 8  # object-token slots per turn (unused slots carry a learned "empty" embedding)
    position_freqs: int = 8  # Fourier frequencies per coordinate of (cx, cy, w, h): 4 x 2 x this features
    pointer_dim: int = 64  # width of the pointer's query / key projections
    proposals: str = "heatmap"  # inference proposals: "heatmap" (learned centres -> clicks) | "oracle" (masks given by the caller)
    selection: str = "pointer"  # inference: "pointer" (each <loc> picks a proposal) | "mask" (the <loc> state draws its mask, the paper's path: an ablation)
    proposal_dilations: list = field(default_factory=lambda: [1])  # the centre heatmap's 3x3 convolutions, one per dilation (receptive field: perception/heads/proposals.py)
    proposal_pool: int = 1  # the centre heatmap's convolutions run on the features average-pooled this much (logits upsampled back)
    heatmap_sigma: float = 0.15  # Gaussian target: sigma = this x sqrt(object area), in heatmap pixels
    score_threshold: float = 0.3  # a heatmap peak below this probability proposes nothing
    nms_kernel: int = 5  # a peak must be the maximum of its nms_kernel x nms_kernel window
    proposal_component: bool = True  # a proposal keeps only its mask's connected component at its click (stray blobs on other objects dropped)
    duplicate_iou: float = 0.7  # a proposal whose mask overlaps a better proposal's by this IoU is dropped
    drop_prob: float = 0.1  # training: probability that one ground-truth proposal is left out (its <loc>s get no pointer target)
    extra_prob: float = 0.2  # training: probability of one extra, non-object proposal (a random background box)
    match_gate: float = 0.0  # inference: a <loc> may only choose an object token whose match read-out (loss.match) is at least this probability (0: off)
    list_gate: float = 0.0  # inference: after a <loc>, the answer may not end (</s>, ":" or ".") while a proposal it has not grounded has a match probability at least this (0: off) ...
    list_sure: float = 0.0  # inference: after a <loc>, the answer may not end while a proposal it has not grounded has a match probability at least this, whatever the LM gives going on (list_doubt does not apply; 0: off)
    list_stop: bool = False  # inference: right after a <loc>, when no proposal is left that a <loc> may choose (each valid one grounded or ruled out by match_gate), the answer may only end (</s>, ':' or '.'): another object would ground nothing
    list_doubt: float = 0.02  # ... and the LM itself gives going on (any token but those ends) at least this probability (a one-object answer's LM is sure it ends)
    sure_gate: float = 0.0  # inference: when match_gate rules out every proposal but the LM gives starting by grounding (<p> or <loc>) at least this probability, the gate yields for that answer: it may ground, and its <loc>s choose among the proposals as without the gate (0: off)
    region_sure_gate: Optional[float] = None  # inference: sure_gate on a turn that names a region (<region1>); None: sure_gate. With relation_scores the match scores read the turn's relation to its regions directly (same colour, same object): 0 keeps the LM from overruling them there
    start_gate: float = 0.0  # inference: the answer must start by grounding (<p> or <loc>) when a proposal has a match probability at least this and the LM gives grounding first at least list_doubt (0: off)
    bidirectional: bool = False  # a turn's object tokens attend to one another both ways (the LM stays causal elsewhere): the first token can compare itself with the last ("the largest", "the leftmost")
    region_relation: bool = False  # each object token also gets a learned projection of how it relates to its turn's regions: same attribute words (the region read-out), same object (ObjectTokens.region_relations)
    relation_scores: bool = False  # the match scores and the pointer also read the region relation's features directly: the deciding state (the turn's decision state, a <loc>'s state) weighs them through a zero-initialised Linear (needs region_relation)
    region_overlap: bool = False  # the region relation's features also hold the box IoU of the turn's region with each object: "the same object" by place, where a look-alike reads nearly the same as the region's own object in appearance (needs region_relation)
    position_scores: bool = False  # the match scores and the pointer also read each object's place among its image's (centre and rank along x and y: objects.set_positions), weighed the same way ("the leftmost ...")
    own_proposals: float = 0.0  # training: probability that an image's object tokens come from the model's own proposals (matched ground truth keeps its slot; see ObjectTokens.from_batch)


@dataclass
class LoraSettings:
    """LoRA on the language model only (peft). Off for from-scratch presets."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list = field(default_factory=lambda: ["q_proj", "v_proj"])  # matched inside the LM only


@dataclass
class LossWeights:
    ce: float = 1.0  # next-token cross-entropy on the answer
    mask_bce: float = 2.0
    mask_dice: float = 1.0
    box_l1: float = 1.0
    box_giou: float = 0.5
    click: float = 0.5  # click-to-mask auxiliary (BCE + Dice)
    token_aux: float = 0.5  # dense attribute targets on image tokens (see TokenAuxConfig; off without attributes)
    region_aux: float = 0.5  # attribute targets on region-encoder outputs (regions and fed-back <loc>s; see TokenAuxConfig)
    pointer: float = 1.0  # object tokens: cross-entropy of the <loc> pointer over the turn's object tokens
    proposal: float = 1.0  # object tokens: focal loss of the centre heatmap
    match: float = 0.0  # object tokens: per-turn BCE read-out "this object is one the request asks for" on each object-token state (0: no read-out)


@dataclass
class PerceptionConfig:
    preset: str = "custom"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    mask_head: MaskHeadConfig = field(default_factory=MaskHeadConfig)
    box_head: BoxHeadConfig = field(default_factory=BoxHeadConfig)
    region: RegionEncoderConfig = field(default_factory=RegionEncoderConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    token_aux: TokenAuxConfig = field(default_factory=TokenAuxConfig)
    objects: ObjectTokensConfig = field(default_factory=ObjectTokensConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    max_new_tokens: int = 96  # generation cap per answer
    loc_feedback: bool = True  # each generated <loc>'s decoded mask, through the region encoder, is added to that <loc>'s input embedding (the LM sees what it grounded)
    loc_feedback_history: bool = False  # with loc_feedback, the <loc>s of earlier answers in the history are fed back too (their objects travel with the history), so a follow-up about "it" sees the object; False: only the answer being written
    image_position: str = "before_question"  # where the image tokens stand in the first turn: "before_question" (LLaVA's layout) | "after_question" (after the user's text: they can attend to the question)
    output_mode: str = "perception"  # "perception" (<loc> states -> heads) | "text_box" (baseline: boxes written as text, no masks; perception/baseline.py)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "PerceptionConfig":
        return _build(cls, _drop_retired(d))


# Options of superseded recipes: (path, the value that means today's behaviour). A saved config
# holding that value loads (the key is dropped); any other value was trained with code that is gone.
RETIRED = {("version",): None, ("region", "mode"): "roi"}


def _drop_retired(d):
    if not isinstance(d, dict):
        return d
    d = json.loads(json.dumps(d))
    for path, today in RETIRED.items():
        node = d
        for p in path[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and path[-1] in node:
            value = node.pop(path[-1])
            if today is not None and value != today:
                raise ValueError(f"{'.'.join(path)}={value!r} belongs to a superseded recipe that this code no "
                                 f"longer has; load such a checkpoint with the commit that trained it (docs/RESULTS.md)")
    return d


def _build(cls, d):
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} config must be a JSON object, got {type(d).__name__}")
    kwargs = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {sorted(unknown)}")
    for name, value in d.items():
        f = names[name]
        sub = _dataclass_type(f)
        kwargs[name] = _build(sub, value) if sub is not None and value is not None else value
    return cls(**kwargs)


def _dataclass_type(f):
    default = f.default_factory if f.default_factory is not dataclasses.MISSING else None
    if default is not None:
        probe = default()
        if dataclasses.is_dataclass(probe):
            return type(probe)
    return None


@dataclass
class DataConfig:
    """Where training samples come from."""

    source: str = "shapesref"  # "shapesref" (generated on the fly) | "jsonl" (native format) | "refcoco"
    path: Optional[str] = None  # jsonl file, or RefCOCO root folder
    dataset: str = "refcoco"  # refcoco: "refcoco" | "refcoco+" | "refcocog"
    split: str = "train"
    # ShapesRef tasks (perception.data.shapesref.TASKS; docs/SHAPESREF.md): v1, then v2
    tasks: list = field(default_factory=lambda: [
        "ground_A", "ground_S", "ground_R", "ground_all", "count",
        "region_what", "region_describe", "region_color", "region_shape", "click_seg",
        "ground_none", "ground_all_none", "count_none", "followup", "same_as_region",
    ])
    # one per task: the v1 mix scaled to 0.8, then 0.2 for v2
    weights: list = field(default_factory=lambda: [
        0.08, 0.176, 0.16, 0.096, 0.064, 0.036, 0.036, 0.036, 0.036, 0.08,
        0.04, 0.03, 0.03, 0.05, 0.05,
    ])
    same_target: Optional[float] = None  # same-as-a-region requests with a target, where the scene allows both (None: the contract's draw, ~38%)
    multi_turn: float = 0.15  # probability of a two-request conversation (a "followup" request is two turns itself)
    clicks_per_image: int = 1  # click-to-mask auxiliary samples per image
    click_teacher: float = 0.5  # probability a point region uses its true mask while training
    num_workers: int = 1  # data-loader worker processes


@dataclass
class TrainConfig:
    """A training run: ``python -m perception train --config configs/NAME.yaml``."""

    model: str = "tiny"  # preset name or checkpoint folder to start from
    init_from: Optional[str] = None  # warm start: copy every same-named, same-shaped tensor from this checkpoint folder
    init_skip: list = field(default_factory=list)  # warm start: tensors under these name prefixes keep their fresh init
    freeze: list = field(default_factory=list)  # parameters under these name prefixes are not trained (no gradient, no optimizer state)
    output_dir: str = "runs/tiny"
    seed: int = 0
    steps: int = 10000  # optimizer steps (the learning-rate schedule's length)
    batch_size: int = 16  # per process
    lr: float = 5e-4
    lr_scale: dict = field(default_factory=dict)  # module-name prefix -> lr multiplier, e.g. {"backbone.stem": 0.6}
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.98])
    warmup: int = 300
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm (0: no clipping); a DeepSpeed JSON's gradient_clipping must equal it
    save_every: int = 250
    keep_checkpoints: int = 2
    eval_every: int = 1000
    eval_scenes: int = 150  # held-out ShapesRef scenes per periodic evaluation
    eval_seed: int = 10_000_000  # held-out seeds start here (training seeds start at 0)
    eval_v2: bool = False  # the periodic evaluation also asks every scene ShapesRef v2's requests (N-acc, T-acc, follow-ups, same-as-region)
    threads: int = 0  # torch threads (0: leave default)
    deepspeed: Optional[str] = None  # path to a DeepSpeed JSON config (ZeRO stage; GPU or CPU); None: plain torch / DDP
    bf16: bool = False  # bf16 autocast in every engine (DeepSpeed also keeps bf16 weights when its JSON enables bf16)
    model_overrides: dict = field(default_factory=dict)  # nested PerceptionConfig fields to override
    data: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _build(cls, d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
