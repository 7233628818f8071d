"""Synthetic captioned scenes: a dataset the project generates itself, for the demo and the tests.

Each sample is a flat, lightly tinted grey canvas with one or two coloured shapes placed in a coarse
3x3 grid and, in half of the samples, a short word written in large letters across one row. The caption
states every attribute exactly, in a fixed grammar:

    a large red circle at the top left and a small blue square at the bottom right. the word "tree" is written in the middle.

Why this exists: the demo and the tests must train a GenLIP end to end without any download, and a tiny
model trained for a few minutes on a laptop CPU should visibly learn to caption. Real image-text data
cannot show that; this can, because the caption is a pure function of what is drawn, the grammar is
small and regular, and chance level follows from the vocabulary constants below.

Determinism: a scene is a pure function of ``(seed, index)``. Every random draw comes from SHA-256 in
counter mode and every shape is rasterised with exact integer arithmetic in numpy, so neither numpy's
generator internals nor Pillow's drawing code (both of which have changed between versions) can move a
pixel. The only thing taken from Pillow is its embedded bitmap font (``load_default_imagefont``, or the
bitmap ``load_default()`` of older versions), which is data shipped inside Pillow, not a system font.
The decoded pixels are therefore identical on any machine; encoded JPEG/PNG bytes are identical for the
same libjpeg/zlib build.

Scene layout, pixel geometry and captions are separate steps so that tests can check captions and
pixels against the sampled attributes: ``scene_spec`` -> ``scene_layout`` -> ``render_spec`` and
``caption_from_spec``; ``render_scene`` does all of it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np
import webdataset
from PIL import Image, ImageFont

T = TypeVar("T")

# Bump when the sampling or drawing changes: it feeds the random stream, so old (seed, index) pairs
# then give new scenes instead of silently different pixels under the same caption.
VERSION = "genlip-synthetic-v1"

# Saturated or extreme colours; the background is a mid grey, so all of them stand out from it.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 225),
    "yellow": (245, 220, 30),
    "purple": (145, 45, 190),
    "orange": (250, 135, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring")
SIZES: tuple[str, ...] = ("small", "large")
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
# Object positions, indexed [row][col]; every one reads "at the <position>".
POSITIONS: tuple[tuple[str, ...], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
# A word fills a whole row band, indexed by row.
WORD_POSITIONS: tuple[str, ...] = ("at the top", "in the middle", "at the bottom")
# Short everyday words, none a colour, shape, size or position word (the caption stays unambiguous),
# at most five letters (so the word fits across the image at the fixed letter size).
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "tree", "go", "car", "fish", "bird", "moon", "ball",
    "book", "cup", "hat", "key", "home", "boat", "cake", "milk", "rain", "snow",
    "frog", "bee", "egg", "leaf", "door", "bus", "pen", "map", "yes", "no",
    "up", "stop",
)
MAX_OBJECTS = 2
MIN_SIZE = 64  # below this the word no longer fits its row

TEXT_RGB = (0, 0, 0)

# Shape outlines in thousandths of the object's half-extent r, y pointing down, centred on the object
# centre. Hard-coded (not computed with sin/cos) so that no libm rounding can move a vertex.
_TRIANGLE = ((0, -1000), (1000, 750), (-1000, 750))
_STAR = ((0, -1000), (247, -340), (951, -309), (399, 130), (588, 809),
         (0, 420), (-588, 809), (-399, 130), (-951, -309), (-247, -340))
_SQUARE_HALF = 850  # the square looks as heavy as the circle instead of filling the whole box
_RING_INNER = 600


class _Draws:
    """Deterministic integer draws: SHA-256 of (version, seed, index, counter), platform independent."""

    def __init__(self, seed: int, index: int):
        self._prefix = f"{VERSION}:{seed}:{index}:".encode()
        self._count = 0

    def below(self, n: int) -> int:
        """An integer in [0, n); the modulo bias (< n / 2**64) is irrelevant here."""
        digest = hashlib.sha256(self._prefix + str(self._count).encode()).digest()
        self._count += 1
        return int.from_bytes(digest[:8], "big") % n

    def choice(self, options: Sequence[T]) -> T:
        return options[self.below(len(options))]

    def permille(self) -> int:
        """A position inside an allowed range, in thousandths, so layouts work at any image size."""
        return self.below(1001)


# --------------------------------------------------------------------------- sampling and captions


def scene_spec(seed: int, index: int) -> dict[str, Any]:
    """Sample the attributes of scene `index` of dataset `seed` (independent of the image size).

    Returns ``{"seed", "index", "background": (r, g, b), "objects": [...], "word": {...} | None}``.
    Each object is ``{"size", "colour", "shape", "position", "cell": (row, col), "jitter": (jx, jy)}``
    and the word ``{"text", "position", "row", "jitter": (jx, jy)}``; jitters are thousandths of the
    room left to move inside the cell or row. Objects are listed in reading order of their cells,
    which is also the caption order.
    """
    draws = _Draws(seed, index)
    grey = 96 + draws.below(65)
    background = tuple(grey - 12 + draws.below(25) for _ in range(3))

    word = None
    if draws.below(2):
        row = draws.below(3)
        word = {"text": draws.choice(WORDS), "position": WORD_POSITIONS[row], "row": row,
                "jitter": (draws.permille(), draws.permille())}

    # One object per cell and none in the word's row: that alone guarantees nothing overlaps.
    free_cells = [(r, c) for r in range(3) for c in range(3) if word is None or r != word["row"]]
    cells = []
    for _ in range(1 + draws.below(MAX_OBJECTS)):
        cells.append(free_cells.pop(draws.below(len(free_cells))))
    objects = []
    for row, col in sorted(cells):
        objects.append({
            "size": draws.choice(SIZES),
            "colour": draws.choice(tuple(COLOURS)),
            "shape": draws.choice(SHAPES),
            "position": POSITIONS[row][col],
            "cell": (row, col),
            "jitter": (draws.permille(), draws.permille()),
        })
    return {"seed": seed, "index": index, "background": background, "objects": objects, "word": word}


def caption_from_spec(spec: dict[str, Any]) -> str:
    """The exact caption of a scene: one sentence for the objects, one for the word if any."""
    phrases = [f"a {o['size']} {o['colour']} {o['shape']} at the {o['position']}" for o in spec["objects"]]
    caption = " and ".join(phrases) + "."
    if spec["word"] is not None:
        caption += f' the word "{spec["word"]["text"]}" is written {spec["word"]["position"]}.'
    return caption


# --------------------------------------------------------------------------- pixel geometry


def _edges(size: int) -> list[int]:
    """Pixel boundaries of the 3x3 grid (cells differ by at most one pixel)."""
    return [i * size // 3 for i in range(4)]


def _margin(size: int) -> int:
    return max(1, size // 75)


def _place(lo: int, hi: int, extent: int, permille: int) -> int:
    """Start of an `extent`-long span inside [lo, hi), `permille` of the way along the free room."""
    room = hi - lo - extent
    if room < 0:
        raise ValueError(f"{extent} px do not fit in [{lo}, {hi})")
    return lo + room * permille // 1000


def _half_extent(size_word: str, cell: int) -> int:
    # Large objects have about 2.5 times the area of small ones: easy to tell apart, and a small star
    # still spans about 2.5 patches of 14 px at 224 px.
    return cell * 2 // 5 if size_word == "large" else cell // 4


def _text_scale(size: int) -> int:
    # 6x the bitmap font at 224 px: lowercase letters 30 px tall, a five-letter word ~200 px wide.
    return max(1, size * 6 // 224)


def scene_layout(spec: dict[str, Any], size: int) -> dict[str, Any]:
    """Pixel geometry of a scene at `size` x `size`.

    Returns ``{"objects": [(cx, cy, r), ...], "word": (x0, y0, x1, y1) | None}``: each object lies in
    the box [cx - r, cx + r] x [cy - r, cy + r] (inclusive), the word in [x0, x1) x [y0, y1).
    """
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")
    edges, margin = _edges(size), _margin(size)
    objects = []
    for obj in spec["objects"]:
        row, col = obj["cell"]
        x_lo, x_hi, y_lo, y_hi = edges[col], edges[col + 1], edges[row], edges[row + 1]
        r = _half_extent(obj["size"], min(x_hi - x_lo, y_hi - y_lo))
        jx, jy = obj["jitter"]
        cx = _place(x_lo + margin, x_hi - margin, 2 * r + 1, jx) + r
        cy = _place(y_lo + margin, y_hi - margin, 2 * r + 1, jy) + r
        objects.append((cx, cy, r))
    word = None
    if spec["word"] is not None:
        height, width = _word_mask(spec["word"]["text"], _text_scale(size)).shape
        row = spec["word"]["row"]
        jx, jy = spec["word"]["jitter"]
        x0 = _place(margin, size - margin, width, jx)
        y0 = _place(edges[row] + margin, edges[row + 1] - margin, height, jy)
        word = (x0, y0, x0 + width, y0 + height)
    return {"objects": objects, "word": word}


# --------------------------------------------------------------------------- rasterisation


def _polygon_mask(xs: np.ndarray, ys: np.ndarray, vertices: list[tuple[int, int]]) -> np.ndarray:
    """Even-odd point-in-polygon test in exact integer arithmetic (handles the non-convex star)."""
    inside = np.zeros(np.broadcast(xs, ys).shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(vertices, vertices[1:] + vertices[:1]):
        if y1 == y2:
            continue
        crosses = (y1 > ys) != (y2 > ys)
        # px < x1 + (py - y1) * (x2 - x1) / (y2 - y1), multiplied through by (y2 - y1) with its sign.
        lhs, rhs = (xs - x1) * (y2 - y1), (ys - y1) * (x2 - x1)
        left_of_edge = lhs < rhs if y2 > y1 else lhs > rhs
        inside ^= crosses & left_of_edge
    return inside


def _shape_mask(shape: str, r: int) -> np.ndarray:
    """Boolean mask of `shape` on the (2r+1) x (2r+1) box around the object centre."""
    ys, xs = np.ogrid[-r:r + 1, -r:r + 1]
    if shape == "circle":
        return xs * xs + ys * ys <= r * r
    if shape == "ring":
        d2, inner = xs * xs + ys * ys, r * _RING_INNER // 1000
        return (d2 <= r * r) & (d2 > inner * inner)
    if shape == "square":
        half = r * _SQUARE_HALF // 1000
        return (np.abs(xs) <= half) & (np.abs(ys) <= half)
    outline = {"triangle": _TRIANGLE, "star": _STAR}[shape]
    return _polygon_mask(xs, ys, [(r * ux // 1000, r * uy // 1000) for ux, uy in outline])


def _default_bitmap_font() -> ImageFont.ImageFont:
    """Pillow's embedded bitmap font (never FreeType, whose rendering differs between versions)."""
    if hasattr(ImageFont, "load_default_imagefont"):  # Pillow >= 10.1
        return ImageFont.load_default_imagefont()
    return ImageFont.load_default()  # older Pillow: this is the same bitmap font


@lru_cache(maxsize=None)
def _glyph(char: str) -> np.ndarray:
    """One character of the bitmap font as a boolean array (rows x cols)."""
    mask = _default_bitmap_font().getmask(char)
    width, height = mask.size
    return np.asarray(mask, dtype=np.uint8).reshape(height, width) > 0


@lru_cache(maxsize=None)
def _word_mask(text: str, scale: int) -> np.ndarray:
    """The word in the bitmap font, one blank column between letters, cropped to ink, scaled up."""
    # The font packs its 6-px glyphs edge to edge; the extra column keeps letters apart once enlarged.
    glyphs = [_glyph(c) for c in text]
    blank = np.zeros((glyphs[0].shape[0], 1), dtype=bool)
    spaced = [part for g in glyphs for part in (g, blank)][:-1]
    mask = np.concatenate(spaced, axis=1)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # Nearest-neighbour upscaling by repetition: crisp blocky letters, no resampling filter involved.
    return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)


def render_spec(spec: dict[str, Any], size: int = 224) -> Image.Image:
    """Draw a scene spec as an RGB `size` x `size` image."""
    layout = scene_layout(spec, size)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = spec["background"]
    for obj, (cx, cy, r) in zip(spec["objects"], layout["objects"]):
        box = canvas[cy - r:cy + r + 1, cx - r:cx + r + 1]
        box[_shape_mask(obj["shape"], r)] = COLOURS[obj["colour"]]
    if layout["word"] is not None:
        x0, y0, x1, y1 = layout["word"]
        canvas[y0:y1, x0:x1][_word_mask(spec["word"]["text"], _text_scale(size))] = TEXT_RGB
    return Image.fromarray(canvas, "RGB")


def render_scene(seed: int, index: int, size: int = 224) -> tuple[Image.Image, str]:
    """Scene `index` of dataset `seed`: its RGB `size` x `size` image and exact caption."""
    spec = scene_spec(seed, index)
    return render_spec(spec, size), caption_from_spec(spec)


# --------------------------------------------------------------------------- writers


def encode_image(image: Image.Image, image_format: str = "jpg") -> bytes:
    """Encode as JPEG (quality 95, no chroma subsampling: keeps colours and letter edges) or PNG."""
    buf = io.BytesIO()
    if image_format == "jpg":
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    elif image_format == "png":
        image.save(buf, format="PNG")
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    return buf.getvalue()


def sample_key(index: int) -> str:
    """img2dataset-style sample key."""
    return f"{index:09d}"


def write_webdataset_shards(
    out_dir: str | Path,
    *,
    num_samples: int,
    samples_per_shard: int,
    seed: int = 0,
    size: int = 224,
    start_index: int = 0,
    image_format: str = "jpg",
    caption_json: bool = False,
    one_object: bool = False,
) -> list[Path]:
    """Write scenes start_index .. start_index + num_samples - 1 as tar shards 00000.tar, 00001.tar, ...

    img2dataset layout: each sample has ``KEY.<image_format>`` and ``KEY.txt`` (the caption), plus
    ``KEY.json`` = {"caption", "key"} when `caption_json`. Tar headers carry a fixed mtime, so the
    shards are byte-identical across runs. `one_object`: scenes of `object_scene_spec` (one object,
    no word; an easier task that a tiny model learns in a minute or two). Returns the shard paths in order.
    """
    if num_samples < 0 or samples_per_shard < 1 or start_index < 0:
        raise ValueError("need num_samples >= 0, samples_per_shard >= 1 and start_index >= 0")
    encode_image(Image.new("RGB", (1, 1)), image_format)  # reject a bad format before writing anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard, first in enumerate(range(0, num_samples, samples_per_shard)):
        path = out / f"{shard:05d}.tar"
        with open(path, "wb") as stream, webdataset.TarWriter(stream, encoder=False, mtime=0) as sink:
            stop = start_index + min(first + samples_per_shard, num_samples)
            for index in range(start_index + first, stop):
                sink.write(_webdataset_sample(seed, index, size, image_format, caption_json, one_object))
        paths.append(path)
    return paths


def _webdataset_sample(seed: int, index: int, size: int, image_format: str, caption_json: bool,
                       one_object: bool = False) -> dict:
    if one_object:
        spec = object_scene_spec(seed, index)
        image, caption = render_spec(spec, size), caption_from_spec(spec)
    else:
        image, caption = render_scene(seed, index, size)
    key = sample_key(index)
    sample = {"__key__": key, image_format: encode_image(image, image_format), "txt": caption.encode()}
    if caption_json:
        sample["json"] = json.dumps({"caption": caption, "key": key}).encode()
    return sample


def write_jsonl(
    out_dir: str | Path,
    *,
    num_samples: int,
    seed: int = 0,
    size: int = 224,
    start_index: int = 0,
) -> Path:
    """Write scenes as ``out_dir/images/KEY.png`` plus ``out_dir/data.jsonl`` with one
    ``{"image": "images/KEY.png", "caption": ...}`` row per scene (paths relative to the jsonl file).
    Returns the jsonl path."""
    if num_samples < 0 or start_index < 0:
        raise ValueError("need num_samples >= 0 and start_index >= 0")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jsonl = out / "data.jsonl"
    with open(jsonl, "w", encoding="utf-8") as rows:
        for index in range(start_index, start_index + num_samples):
            image, caption = render_scene(seed, index, size)
            rel = f"images/{sample_key(index)}.png"
            (out / rel).write_bytes(encode_image(image, "png"))
            rows.write(json.dumps({"image": rel, "caption": caption}) + "\n")
    return jsonl



# --------------------------------------------------------------------------- class-per-folder sets

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES,
    "position": tuple(p for row in POSITIONS for p in row),
}


def object_scene_spec(seed: int, index: int, **fixed: str) -> dict[str, Any]:
    """A scene with one object and no word; attributes in `fixed` (colour, shape, size, position) are set,
    the others drawn from ``(seed, index)`` as in `scene_spec`."""
    unknown = set(fixed) - set(ATTRIBUTE_VALUES)
    if unknown:
        raise ValueError(f"unknown attribute(s) {sorted(unknown)}; choose from {sorted(ATTRIBUTE_VALUES)}")
    draws = _Draws(seed, index)
    grey = 96 + draws.below(65)
    background = tuple(grey - 12 + draws.below(25) for _ in range(3))
    values = {k: fixed[k] if k in fixed else draws.choice(v) for k, v in ATTRIBUTE_VALUES.items()}
    for k, v in values.items():
        if v not in ATTRIBUTE_VALUES[k]:
            raise ValueError(f"{k} {v!r} is not one of {ATTRIBUTE_VALUES[k]}")
    cell = next((r, c) for r in range(3) for c in range(3) if POSITIONS[r][c] == values["position"])
    obj = {"size": values["size"], "colour": values["colour"], "shape": values["shape"],
           "position": values["position"], "cell": cell, "jitter": (draws.permille(), draws.permille())}
    return {"seed": seed, "index": index, "background": background, "objects": [obj], "word": None}


def write_imagefolder(root: str | Path, *, attribute: str = "colour", per_class: int = 8, seed: int = 0,
                      size: int = 224, fixed: dict[str, str] | None = None, image_format: str = "png") -> list[str]:
    """An ImageFolder tree ``root/VALUE/KEY.<format>`` of one-object scenes, one folder per value of
    `attribute` (the class), the other attributes drawn per image unless given in `fixed`. Scene ids
    (``seed``, index) differ between images and classes. Returns the class names (folder names) in order."""
    fixed = dict(fixed or {})
    if attribute not in ATTRIBUTE_VALUES:
        raise ValueError(f"attribute {attribute!r}: choose from {sorted(ATTRIBUTE_VALUES)}")
    if attribute in fixed:
        raise ValueError(f"{attribute} is the class attribute; it cannot also be fixed")
    classes = list(ATTRIBUTE_VALUES[attribute])
    for c, value in enumerate(classes):
        folder = Path(root) / value
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            index = c * per_class + k
            spec = object_scene_spec(seed, index, **fixed, **{attribute: value})
            image = render_spec(spec, size)
            (folder / f"{sample_key(index)}.{image_format}").write_bytes(encode_image(image, image_format))
    return classes


def class_templates(attribute: str, fixed: dict[str, str] | None = None) -> list[str]:
    """Caption templates with ``{}`` for `attribute`: one per combination of the attributes not in `fixed`
    (in the exact caption grammar), e.g. ``a large {} circle at the top left.``."""
    fixed = dict(fixed or {})
    if attribute not in ATTRIBUTE_VALUES:
        raise ValueError(f"attribute {attribute!r}: choose from {sorted(ATTRIBUTE_VALUES)}")
    slots = ["size", "colour", "shape", "position"]
    options = [["{}"] if k == attribute else [fixed[k]] if k in fixed else list(ATTRIBUTE_VALUES[k]) for k in slots]
    return [caption_from_spec({"objects": [dict(zip(slots, combo))], "word": None})
            for combo in itertools.product(*options)]


_OBJECT_RE = re.compile(r"a (\w+) (\w+) (\w+) at the ([a-z ]+?)(?= and a |\.|$)")
_WORD_RE = re.compile(r'the word "(\w+)" is written ([a-z ]+?)\.')


def parse_caption(caption: str) -> dict[str, Any]:
    """The attributes a caption states (the inverse of `caption_from_spec`, tolerant of bad captions)."""
    objects_part, _, _ = caption.partition(" the word ")
    objects = [dict(zip(("size", "colour", "shape", "position"), m.groups())) for m in _OBJECT_RE.finditer(objects_part)]
    word = _WORD_RE.search(caption)
    return {"objects": objects, "word": {"text": word.group(1), "position": word.group(2)} if word else None}


def score_captions(predicted: Sequence[str], truth: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Per attribute: (accuracy, chance) over the true objects (matched by order) and written words."""
    hits: dict[str, list[bool]] = {k: [] for k in ("size", "colour", "shape", "position", "word")}
    for p, t in zip(predicted, truth):
        pp, tt = parse_caption(p), parse_caption(t)
        for i, obj in enumerate(tt["objects"]):
            got = pp["objects"][i] if i < len(pp["objects"]) else {}
            for k in ("size", "colour", "shape", "position"):
                hits[k].append(got.get(k) == obj[k])
        if tt["word"] is not None:
            hits["word"].append(pp["word"] is not None and pp["word"]["text"] == tt["word"]["text"])
    chance = {"size": 1 / len(SIZES), "colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES),
              "position": 1 / sum(len(r) for r in POSITIONS), "word": 1 / len(WORDS)}
    return {k: (sum(v) / len(v) if v else float("nan"), chance[k]) for k, v in hits.items()}
