"""ShapesRef: procedurally drawn scenes of flat shapes with referring expressions.

The contract is ``SHAPESREF.md`` (shared docs); every option it allows is sampled here. The v1
requests are built here, the v2 ones (no target, follow-ups about "it", same as a region) in
``perception.data.shapesref_v2``; docs/SHAPESREF.md records the answer wording.

Frames: pixels of the image, x = column, y = row. Geometry is drawn in the continuous frame
where pixel (col i, row j) covers [i, i+1) x [j, j+1) (its centre is (i + 0.5, j + 0.5)).
Boxes are corners (x1, y1, x2, y2) with x2 = last column + 1, y2 = last row + 1. Object
positions used by expressions are the centres of the tight boxes of the *visible* masks.

Anti-aliased drawing supersamples each object's local crop ``SUPERSAMPLE`` x; a pixel belongs to
an object's mask when at least half of its sub-pixels are covered by the visible part of that
object. Later objects are drawn on top; composition is exact per sub-pixel.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from perception.data.sample import Sample, Turn
from perception.tokens import grounded
from perception.types import Region

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 45, 45),
    "green": (50, 165, 70),
    "blue": (45, 90, 215),
    "yellow": (235, 205, 40),
    "purple": (145, 65, 185),
    "orange": (240, 135, 30),
}
SHAPES: list[str] = ["circle", "square", "triangle", "star", "hexagon"]
SIZES: dict[str, tuple[float, float]] = {"small": (0.10, 0.16), "large": (0.22, 0.32)}  # x min(W, H)
V1_TASKS: list[str] = [
    "ground_A", "ground_S", "ground_R", "ground_all", "count",
    "region_what", "region_describe", "region_color", "region_shape", "click_seg",
]
NO_TARGET_TASKS: list[str] = ["ground_none", "ground_all_none", "count_none"]
V2_TASKS: list[str] = NO_TARGET_TASKS + ["followup", "same_as_region"]
TASKS: list[str] = V1_TASKS + V2_TASKS

IMAGE_SIDE = (192, 448)  # inclusive range of W and of H
COLOR_JITTER = 20  # +- per channel
MAX_ROTATION = 30.0  # degrees, uniform in [-30, 30] for every shape but the circle
STAR_RATIO = (0.38, 0.50)  # inner / outer radius
MIN_VISIBLE = 0.70  # fraction of its own area each object keeps after occlusion
MARGIN = 0.05  # of W (x) or H (y), for superlatives and relations
SUPERSAMPLE = 4  # sub-pixels per pixel side when anti-aliasing
NOISE_SIGMA = (0.0, 6.0)
JPEG_QUALITY = (75, 95)
LIGHT, DARK = (170, 250), (15, 75)  # near-grey background channel ranges
GREY_SPREAD = 15  # max difference between a background colour's channels
BACKGROUNDS = ("solid", "vertical", "horizontal")  # vertical: colour changes top -> bottom

_PLACEMENT_TRIES = 30  # positions tried per object before giving up on it (fewer objects)
_TASK_TRIES = 10  # task redraws per turn before falling back to ground_A
_SCENE_TRIES = 20  # scene redraws when not even ground_A is possible
_CIRCLE_VERTICES = 72

A_KINDS = ("color shape", "size color shape", "shape", "color object", "size shape")
S_KINDS = ("shape", "color object", "color shape")
SUPERLATIVES = {"leftmost": (0, -1), "rightmost": (0, 1), "topmost": (1, -1), "bottommost": (1, 1)}
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
GROUND_VERBS = ("Where is", "Find", "Locate", "Segment", "Show me", "Point out")
ALL_VERBS = ("Find", "Segment", "Show me")
PUNCT = ("", "?", ".")
REGION_KINDS = ("point", "box", "mask")


@dataclass
class ShapeObject:
    """One drawn shape.

    rgb: the jittered colour drawn. cx, cy: centre of ``box`` (pixels). diameter: circumscribed
    circle diameter (pixels). rotation: degrees, clockwise on screen. mask: H x W bool *visible*
    mask. box: (x1, y1, x2, y2) ints, tight box of ``mask``. full_area: pixels of the unoccluded
    mask. center: geometric centre (continuous pixel frame). star_ratio: inner/outer (stars).
    """

    shape: str
    color: str
    size: str
    rgb: tuple
    cx: float
    cy: float
    diameter: float
    rotation: float
    mask: np.ndarray
    box: tuple
    full_area: int = 0
    center: tuple = (0.0, 0.0)
    star_ratio: float | None = None

    @property
    def label(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass
class Scene:
    """image: RGB W x H. objects: in drawing order (later ones on top). meta: render options."""

    image: Image.Image
    objects: list
    meta: dict = field(default_factory=dict)


# --- drawing ---------------------------------------------------------------------------------


def _unit_polygon(shape: str, star_ratio: float | None) -> np.ndarray:
    """(N, 2) vertices of the shape with circumradius 1 centred at 0, y down, before rotation."""
    if shape == "circle":
        ang = np.arange(_CIRCLE_VERTICES) * (2 * math.pi / _CIRCLE_VERTICES)
        r = np.ones_like(ang)
    elif shape == "square":
        ang = np.deg2rad(45.0 + 90.0 * np.arange(4))
        r = np.ones(4)
    elif shape == "triangle":
        ang = np.deg2rad(-90.0 + 120.0 * np.arange(3))
        r = np.ones(3)
    elif shape == "hexagon":
        ang = np.deg2rad(-90.0 + 60.0 * np.arange(6))
        r = np.ones(6)
    elif shape == "star":
        ang = np.deg2rad(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, star_ratio)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.stack([r * np.cos(ang), r * np.sin(ang)], -1)


def _near_grey(rng: np.random.Generator) -> tuple[int, int, int]:
    lo, hi = LIGHT if rng.random() < 0.5 else DARK
    base = int(rng.integers(lo, hi + 1))
    half = GREY_SPREAD // 2
    a, b = max(lo, base - half), min(hi, base + half)
    return tuple(int(v) for v in rng.integers(a, b + 1, size=3))


def _background(rng, W: int, H: int, background) -> tuple[np.ndarray, dict]:
    """(H, W, 3) float32 background and its description."""
    if background is None or isinstance(background, str):
        kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))] if background is None else background
        if kind not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS} or an RGB tuple; got {kind!r}")
        colors = [_near_grey(rng)] + ([_near_grey(rng)] if kind != "solid" else [])
    else:
        kind, colors = "solid", [tuple(int(v) for v in background)]
    c0 = np.asarray(colors[0], np.float32)
    if kind == "solid":
        bg = np.broadcast_to(c0, (H, W, 3)).copy()
    else:
        c1 = np.asarray(colors[1], np.float32)
        n = H if kind == "vertical" else W
        t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
        ramp = c0 + t * (c1 - c0)  # (n, 3)
        bg = np.broadcast_to(ramp[:, None, :] if kind == "vertical" else ramp[None], (H, W, 3)).copy()
    return bg, {"kind": kind, "colors": colors}


def _reduce(sub: np.ndarray, s: int) -> np.ndarray:
    """(h*s, w*s) bool sub-pixels -> (h, w) uint8 counts of covered sub-pixels."""
    if s == 1:
        return sub.view(np.uint8).copy()
    h, w = sub.shape[0] // s, sub.shape[1] // s
    return sub.view(np.uint8).reshape(h, s, w, s).sum(3, dtype=np.uint8).sum(1, dtype=np.uint8)


class _Piece:
    """Working state of one placed object: crop origin (pixels), sub-pixel masks, counts."""

    __slots__ = ("attrs", "x0", "y0", "w", "h", "sub", "vis", "cnt", "full_sub", "full_px", "vis_sub", "vis_px")


def _raster(verts: np.ndarray, frac: tuple[float, float], s: int):
    """Rasterize vertices (offsets from the centre) for a centre at fractional offset ``frac``.

    Returns (ox, oy, sub): the crop's origin relative to the integer part of the centre and the
    (h*s, w*s) bool sub-pixel mask (sub-pixel centres inside the polygon).
    """
    px = verts + np.asarray(frac)
    ox, oy = math.floor(px[:, 0].min()), math.floor(px[:, 1].min())
    w = max(1, math.ceil(px[:, 0].max()) - ox)
    h = max(1, math.ceil(px[:, 1].max()) - oy)
    uv = (px - (ox, oy)) * s - 0.5
    canvas = Image.new("L", (w * s, h * s), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in uv.tolist()], fill=1)
    return ox, oy, np.array(canvas).view(bool)


def _overlap(a: _Piece, b: _Piece):
    x0, x1 = max(a.x0, b.x0), min(a.x0 + a.w, b.x0 + b.w)
    y0, y1 = max(a.y0, b.y0), min(a.y0 + a.h, b.y0 + b.h)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, y0, x1, y1


def _sample_attrs(rng, W: int, H: int) -> dict:
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    size = "small" if rng.random() < 0.5 else "large"
    lo, hi = SIZES[size]
    diameter = float(rng.uniform(lo, hi)) * min(W, H)
    rotation = 0.0 if shape == "circle" else float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    star_ratio = float(rng.uniform(*STAR_RATIO)) if shape == "star" else None
    jitter = rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)
    rgb = tuple(int(v) for v in np.clip(np.asarray(COLORS[color]) + jitter, 0, 255))
    return dict(shape=shape, color=color, size=size, diameter=diameter, rotation=rotation,
                star_ratio=star_ratio, rgb=rgb)


def _place(rng, attrs: dict, placed: list, W: int, H: int, s: int) -> _Piece | None:
    """Try positions for one object until every earlier object keeps MIN_VISIBLE of its area."""
    th = math.radians(attrs["rotation"])
    rot = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])
    verts = _unit_polygon(attrs["shape"], attrs["star_ratio"]) @ rot * (attrs["diameter"] / 2)
    frac = (float(rng.random()), float(rng.random()))
    ox, oy, sub = _raster(verts, frac, s)
    cnt = _reduce(sub, s)
    full_px = int((cnt.astype(np.int32) * 2 >= s * s).sum())
    if full_px == 0:
        return None
    # integer part n of the centre so that the shape lies wholly inside [0, W] x [0, H]
    lo = np.ceil(-np.asarray(frac) - verts.min(0)).astype(int)
    hi = np.floor(np.array([W, H]) - np.asarray(frac) - verts.max(0)).astype(int)
    if np.any(hi < lo):
        return None
    half = s * s
    for _ in range(_PLACEMENT_TRIES):
        nx, ny = int(rng.integers(lo[0], hi[0] + 1)), int(rng.integers(lo[1], hi[1] + 1))
        p = _Piece()
        p.attrs, p.sub, p.vis, p.cnt = attrs, sub, sub.copy(), cnt.copy()
        p.x0, p.y0, p.h, p.w = nx + ox, ny + oy, cnt.shape[0], cnt.shape[1]
        p.full_sub, p.full_px = int(cnt.sum(dtype=np.int64)), full_px
        p.vis_sub, p.vis_px = p.full_sub, full_px
        updates, ok = [], True
        for q in placed:
            ov = _overlap(p, q)
            if ov is None:
                continue
            x0, y0, x1, y1 = ov
            qs = np.s_[(y0 - q.y0) * s:(y1 - q.y0) * s, (x0 - q.x0) * s:(x1 - q.x0) * s]
            ps = np.s_[(y0 - p.y0) * s:(y1 - p.y0) * s, (x0 - p.x0) * s:(x1 - p.x0) * s]
            new_vis = q.vis[qs] & ~p.sub[ps]
            new_cnt = _reduce(new_vis, s)
            qc = np.s_[y0 - q.y0:y1 - q.y0, x0 - q.x0:x1 - q.x0]
            old_cnt = q.cnt[qc]
            vis_sub = q.vis_sub - int(old_cnt.sum(dtype=np.int64)) + int(new_cnt.sum(dtype=np.int64))
            vis_px = (q.vis_px - int((old_cnt.astype(np.int32) * 2 >= half).sum())
                      + int((new_cnt.astype(np.int32) * 2 >= half).sum()))
            if vis_sub < MIN_VISIBLE * q.full_sub or vis_px < MIN_VISIBLE * q.full_px or vis_px == 0:
                ok = False
                break
            updates.append((q, qs, qc, new_vis, new_cnt, vis_sub, vis_px))
        if ok:
            for q, qs, qc, new_vis, new_cnt, vis_sub, vis_px in updates:
                q.vis[qs] = new_vis
                q.cnt[qc] = new_cnt
                q.vis_sub, q.vis_px = vis_sub, vis_px
            p.attrs = dict(attrs, center=(nx + frac[0], ny + frac[1]))
            return p
    return None


def draw_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    width: int | None = None,
    height: int | None = None,
    antialias: bool | None = None,
    noise: float | bool | None = None,
    jpeg: int | bool | None = None,
    background=None,
) -> Scene:
    """Draw one scene; every option left as None is sampled from the spec's range.

    n_objects: 1..6 requested (fewer when placement keeps failing). width/height: pixels.
    antialias: supersampled drawing. noise: Gaussian sigma (False/0: none; True: U[0, 6];
    sampled: none or U[0, 6] with equal odds). jpeg: quality of a JPEG round trip (False: none; True: sampled in
    75..95; sampled: 30% of scenes). background: "solid" | "vertical" | "horizontal" (colours
    sampled) or an RGB tuple (solid). Masks are the geometric ones, before noise and JPEG.
    """
    W = int(width) if width is not None else int(rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1))
    H = int(height) if height is not None else int(rng.integers(IMAGE_SIDE[0], IMAGE_SIDE[1] + 1))
    if antialias is None:
        antialias = bool(rng.random() < 0.5)
    s = SUPERSAMPLE if antialias else 1
    bg, bg_meta = _background(rng, W, H, background)
    if noise is None:
        noise = float(rng.uniform(*NOISE_SIGMA)) if rng.random() < 0.5 else 0.0
    elif noise is True:
        noise = float(rng.uniform(*NOISE_SIGMA))
    sigma = float(noise or 0.0)
    if jpeg is None:
        jpeg = bool(rng.random() < 0.3)
    quality = None
    if jpeg is True:
        quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    elif jpeg:
        quality = int(jpeg)
    n = int(rng.integers(1, 7)) if n_objects is None else int(n_objects)
    if n < 1:
        raise ValueError(f"n_objects must be at least 1; got {n_objects}")

    placed: list[_Piece] = []
    for _ in range(n):
        piece = _place(rng, _sample_attrs(rng, W, H), placed, W, H, s)
        if piece is None:
            break
        placed.append(piece)

    img = bg.copy()  # exact sub-pixel composition: bg + sum_j coverage_j * (rgb_j - bg)
    objects = []
    for p in placed:
        a = p.cnt.astype(np.float32) * (1.0 / (s * s))
        crop = img[p.y0:p.y0 + p.h, p.x0:p.x0 + p.w]
        under = bg[p.y0:p.y0 + p.h, p.x0:p.x0 + p.w]
        crop += a[..., None] * (np.asarray(p.attrs["rgb"], np.float32) - under)
        local = p.cnt.astype(np.int32) * 2 >= s * s
        ys, xs = np.flatnonzero(local.any(1)), np.flatnonzero(local.any(0))
        box = (p.x0 + int(xs[0]), p.y0 + int(ys[0]), p.x0 + int(xs[-1]) + 1, p.y0 + int(ys[-1]) + 1)
        mask = np.zeros((H, W), bool)
        mask[p.y0:p.y0 + p.h, p.x0:p.x0 + p.w] = local
        at = p.attrs
        objects.append(ShapeObject(
            shape=at["shape"], color=at["color"], size=at["size"], rgb=at["rgb"],
            cx=(box[0] + box[2]) / 2, cy=(box[1] + box[3]) / 2, diameter=at["diameter"],
            rotation=at["rotation"], mask=mask, box=box, full_area=p.full_px,
            center=at["center"], star_ratio=at["star_ratio"]))
    if sigma > 0:
        img += rng.standard_normal((H, W, 3), dtype=np.float32) * sigma
    pixels = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if quality is not None:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            image = im.convert("RGB")
    meta = {"width": W, "height": H, "antialias": antialias, "supersample": s, "noise": sigma,
            "jpeg": quality, "background": bg_meta, "n_requested": n, "n_objects": len(objects)}
    return Scene(image=image, objects=objects, meta=meta)



# --- expressions -----------------------------------------------------------------------------


def attribute_key(o: ShapeObject, kind: str) -> tuple:
    """The attributes an attribute phrase of ``kind`` (one of A_KINDS) names."""
    return {
        "color shape": (o.color, o.shape),
        "size color shape": (o.size, o.color, o.shape),
        "shape": (o.shape,),
        "color object": (o.color, "object"),
        "size shape": (o.size, o.shape),
    }[kind]


def attribute_phrase(o: ShapeObject, kind: str) -> str:
    """Attribute phrase without "the", e.g. "small circle", "red object"."""
    return " ".join(attribute_key(o, kind))


def _groups(objs, kind) -> dict:
    out: dict = {}
    for i, o in enumerate(objs):
        out.setdefault(attribute_key(o, kind), []).append(i)
    return out


def _pos(o: ShapeObject) -> tuple[float, float]:
    return (o.cx, o.cy)


def _in_relation(a: ShapeObject, b: ShapeObject, axis: int, sign: int, margin: float) -> bool:
    """a stands in the relation to b: sign * (pos(a) - pos(b)) > margin along axis."""
    return sign * (_pos(a)[axis] - _pos(b)[axis]) > margin


def a_expressions(objs: list) -> list:
    """Every valid A expression: (template, expression, referent index)."""
    out = []
    for kind in A_KINDS:
        for key, idx in _groups(objs, kind).items():
            if len(idx) == 1:
                out.append((("A", kind), "the " + " ".join(key), idx[0]))
    return out


def s_expressions(objs: list, width: int, height: int) -> list:
    """Every valid superlative expression: (template, expression, referent index)."""
    out = []
    for kind in S_KINDS:
        for key, idx in _groups(objs, kind).items():
            if len(idx) < 2:
                continue
            for word, (axis, sign) in SUPERLATIVES.items():
                margin = MARGIN * (width if axis == 0 else height)
                # leftmost/topmost (sign -1): smallest first; rightmost/bottommost: largest first
                vals = sorted((-sign * _pos(objs[i])[axis], i) for i in idx)
                if vals[1][0] - vals[0][0] >= margin:
                    out.append((("S", word, kind), f"the {word} {' '.join(key)}", vals[0][1]))
    return out


def r_expressions(objs: list, width: int, height: int) -> list:
    """Every valid relation expression: (template, expression, referent index)."""
    groups = {k: _groups(objs, k) for k in A_KINDS}
    out = []
    for b, ob in enumerate(objs):
        anchors = [k for k in A_KINDS if len(groups[k][attribute_key(ob, k)]) == 1]
        if not anchors:
            continue
        for a, oa in enumerate(objs):
            if a == b:
                continue
            for rel, (axis, sign) in RELATIONS.items():
                margin = MARGIN * (width if axis == 0 else height)
                if not _in_relation(oa, ob, axis, sign, margin):
                    continue
                for k1 in A_KINDS:
                    others = [o for o in groups[k1][attribute_key(oa, k1)] if o != a]
                    if any(_in_relation(objs[o], ob, axis, sign, 0.0) for o in others):
                        continue
                    for k2 in anchors:
                        expr = f"the {attribute_phrase(oa, k1)} {rel} the {attribute_phrase(ob, k2)}"
                        out.append((("R", k1, rel, k2), expr, a))
    return out


def _pick_expression(rng, exprs: list):
    """Uniform over the valid templates, then uniform over that template's expressions."""
    by_template: dict = {}
    for t, e, i in exprs:
        by_template.setdefault(t, []).append((e, i))
    templates = list(by_template)
    options = by_template[templates[int(rng.integers(len(templates)))]]
    return options[int(rng.integers(len(options)))]


# --- turns -----------------------------------------------------------------------------------


def _punct(rng) -> str:
    return PUNCT[int(rng.integers(len(PUNCT)))]


def _choice(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _sorted_matches(objs, idx) -> list:
    """Object indices in listing order: left to right (box centre x, then y)."""
    return sorted(idx, key=lambda i: (objs[i].cx, objs[i].cy))


def _ground_request(rng, expr: str) -> str:
    """A one-object grounding request for ``expr``: verb, optional "?" / ".", random first-letter case."""
    user = f"{_choice(rng, GROUND_VERBS)} {expr}{_punct(rng)}"
    if rng.random() < 0.5:
        user = user[0].lower() + user[1:]
    return user


def group_nouns(key: tuple) -> tuple[str, str]:
    """A "shape" or "color object" group key -> (plural, singular) nouns: ("circles", "circle"),
    ("red objects", "red object")."""
    if len(key) == 1:
        return f"{key[0]}s", key[0]
    return f"{key[0]} objects", f"{key[0]} object"


def _region(rng, o: ShapeObject, kind: str) -> Region:
    if kind == "point":
        ys, xs = np.nonzero(o.mask)
        j = int(rng.integers(len(xs)))
        return Region(point=(int(xs[j]), int(ys[j])))
    if kind == "box":
        return Region(box=tuple(int(v) for v in o.box))
    if kind == "mask":
        return Region(mask=o.mask.copy())
    raise ValueError(f"region_kind must be one of {REGION_KINDS}; got {kind!r}")


def make_turn(scene: Scene, rng: np.random.Generator, task: str, region_kind: str | None = None,
              same_target: float | None = None) -> Turn | None:
    """One turn of a one-turn ``task`` about ``scene``; None when the task is impossible for this scene.

    region_kind: "point" | "box" | "mask" for region questions and same-as-a-region requests
    (sampled uniformly when None). "All" and counting answers name each object (left to right)
    by the question's noun ("the circle", "the red object"), never by an attribute the question
    did not give. "followup" is two turns: use make_request.
    """
    objs = scene.objects
    if not objs:
        return None
    W, H = scene.image.size
    if task in ("ground_A", "ground_S", "ground_R"):
        exprs = {"ground_A": lambda: a_expressions(objs),
                 "ground_S": lambda: s_expressions(objs, W, H),
                 "ground_R": lambda: r_expressions(objs, W, H)}[task]()
        if not exprs:
            return None
        expr, i = _pick_expression(rng, exprs)
        return Turn(user=_ground_request(rng, expr), assistant=grounded(expr), targets=[i], task=task)
    if task in ("ground_all", "count"):
        kind = _choice(rng, ("shape", "color object"))
        groups = _groups(objs, kind)
        key = _choice(rng, list(groups))
        idx = _sorted_matches(objs, groups[key])
        noun, one = group_nouns(key)
        listing = ", ".join(grounded(f"the {one}") for _ in idx)
        if task == "ground_all":
            user = f"{_choice(rng, ALL_VERBS)} all the {noun}{_punct(rng)}"
            return Turn(user=user, assistant=listing, targets=idx, task=task)
        n = len(idx)
        # ground first, then count what was grounded: the number follows from the listing
        return Turn(user=f"How many {noun} are there?", assistant=f"{listing}: {n} in total", targets=idx,
                    task=task, expect=[str(n)])
    if task in ("region_what", "region_describe", "region_color", "region_shape", "click_seg"):
        i = int(rng.integers(len(objs)))
        o = objs[i]
        if task == "click_seg":
            return Turn(user="Segment <region1>.", assistant=grounded(f"the {o.label}"),
                        regions=[_region(rng, o, "point")], targets=[i], task=task)
        kind = region_kind or _choice(rng, REGION_KINDS)
        region = _region(rng, o, kind)
        user, answer, expect = {
            "region_what": ("What is <region1>?", f"a {o.label}", o.label),
            "region_describe": ("Describe <region1>.", f"a {o.label}", o.label),
            "region_color": ("What color is <region1>?", o.color, o.color),
            "region_shape": ("What shape is <region1>?", o.shape, o.shape),
        }[task]
        return Turn(user=user, assistant=answer, regions=[region], task=task, expect=[expect])
    if task in V2_TASKS:
        from perception.data import shapesref_v2

        if task == "followup":
            raise ValueError("task 'followup' is a two-turn request; use make_request")
        return shapesref_v2.make_v2_turn(scene, rng, task, region_kind, same_target)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")


def make_request(scene: Scene, rng: np.random.Generator, task: str, region_kind: str | None = None,
                 same_target: float | None = None) -> list | None:
    """The turns of one request of ``task``: one Turn, or two for "followup" (a one-object
    grounding request, then a question about "it"); None when the task is impossible here."""
    if task == "followup":
        from perception.data.shapesref_v2 import make_followup

        return make_followup(scene, rng)
    turn = make_turn(scene, rng, task, region_kind, same_target)
    return None if turn is None else [turn]


def make_sample(
    seed: int,
    tasks: list[str] | None = None,
    weights: list[float] | None = None,
    n_requests: int = 1,
    same_target: float | None = None,
    **scene_kwargs,
) -> Sample:
    """A scene and a conversation of ``n_requests`` requests, deterministic in ``seed``.

    Each request's task is drawn from ``tasks`` (default TASKS, v1 and v2) with ``weights``
    (default uniform); an impossible task is redrawn a few times, then replaced by ground_A; a
    scene where not even ground_A is possible (every object has an identical twin) is redrawn.
    A request is one turn, a "followup" two. With only V1_TASKS the samples are those of v1,
    seed for seed. same_target (training only): same-as-a-region requests' target rate
    (shapesref_v2.same_as_region's target_rate; None: the contract's). ``scene_kwargs`` go to draw_scene. boxes: (K, 4) float32 pixel corners;
    masks: (K, H, W) bool visible masks.
    """
    tasks = list(TASKS if tasks is None else tasks)
    if not tasks:
        raise ValueError("tasks must not be empty")
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; expected one of {TASKS}")
    if weights is None:
        p = np.full(len(tasks), 1.0 / len(tasks))
    else:
        p = np.asarray(weights, np.float64)
        if p.shape != (len(tasks),) or np.any(p < 0) or p.sum() <= 0:
            raise ValueError(f"weights must be {len(tasks)} non-negative numbers, not all zero; got {weights}")
        p = p / p.sum()
    rng = np.random.default_rng(seed)
    for _ in range(_SCENE_TRIES):
        scene = draw_scene(rng, **scene_kwargs)
        turns, made = [], 0
        for _ in range(n_requests):
            request = None
            for _ in range(_TASK_TRIES):
                request = make_request(scene, rng, tasks[int(rng.choice(len(tasks), p=p))], same_target=same_target)
                if request is not None:
                    break
            if request is None:
                request = make_request(scene, rng, "ground_A")
            if request is None:
                break
            turns += request
            made += 1
        if made == n_requests:
            break
    else:
        raise RuntimeError(f"ShapesRef seed {seed}: no scene with a unique expression in {_SCENE_TRIES} draws")
    objs = scene.objects
    W, H = scene.image.size
    boxes = np.array([o.box for o in objs], np.float32).reshape(-1, 4)
    masks = np.stack([o.mask for o in objs]) if objs else np.zeros((0, H, W), bool)
    meta = dict(scene.meta, source="shapesref", seed=int(seed))
    return Sample(image=scene.image, boxes=boxes, masks=masks, labels=[o.label for o in objs],
                  turns=turns, meta=meta)


def write_dataset(
    out_dir: str | Path,
    seed: int,
    count: int,
    tasks: list[str] | None = None,
    weights: list[float] | None = None,
    n_requests: int = 1,
) -> Path:
    """Write ``count`` samples (sample i from seed ``seed + i``) as images/*.png + data.jsonl.

    Returns the path of data.jsonl (native format, see perception.data.jsonl).
    """
    from tqdm.auto import tqdm

    from perception.data.jsonl import write_jsonl

    samples = (make_sample(seed + i, tasks, weights, n_requests) for i in range(count))
    return write_jsonl(tqdm(samples, total=count, desc="ShapesRef", unit="sample"), out_dir)
