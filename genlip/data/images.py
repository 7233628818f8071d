"""Image modes, safe decoding, resizing for a training stage, storage encoding and patchify.

Stage 1 ("fixed"): resize the shorter side to `size` and center-crop to size x size (224 by default).
Stage 2 ("native"): keep the aspect ratio, scale so the patch count lies in [min_patches, max_patches],
sides rounded to multiples of the patch size. Images are stored already resized, as JPEG (default) or
raw uint8 HxWx3. Pixels are normalised with mean = std = 0.5 and cut into patches laid out (C, p, p),
matching a Conv2d(3, D, p, stride p) weight.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

# Decoding anything larger is refused before pixels are allocated (decompression bombs).
MAX_SOURCE_PIXELS = 64 * 1024 * 1024


class BadImage(ValueError):
    """An image that cannot go into a dataset; `reason` is the skip-count key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageMode:
    """How images are sized for a stage and stored."""

    kind: str = "fixed"
    """fixed (stage 1: resize + center crop to size x size) or native (stage 2: aspect kept)."""
    size: int = 224
    """Side of fixed-mode images in pixels."""
    patch_size: int = 16
    """Patch side; native-mode sides are multiples of it."""
    min_patches: int = 16
    """Native mode: fewest patches per image."""
    max_patches: int = 1024
    """Native mode: most patches per image."""
    encoding: str = "jpeg"
    """Stored as jpeg or raw (uint8 HxWx3)."""
    quality: int = 95
    """JPEG quality."""

    def validate(self) -> None:
        if self.kind not in ("fixed", "native"):
            raise ValueError(f"image mode {self.kind!r}: choose fixed (stage 1) or native (stage 2)")
        if self.encoding not in ("jpeg", "raw"):
            raise ValueError(f"image encoding {self.encoding!r}: choose jpeg or raw")
        if self.kind == "fixed" and self.size % self.patch_size:
            raise ValueError(f"image size {self.size} is not a multiple of the patch size {self.patch_size}")
        if not 1 <= self.min_patches <= self.max_patches:
            raise ValueError(f"need 1 <= min_patches ({self.min_patches}) <= max_patches ({self.max_patches})")

    def to_dict(self) -> dict:
        return asdict(self)


def native_size(width: int, height: int, *, patch: int, min_patches: int, max_patches: int) -> tuple[int, int]:
    """(W, H), multiples of `patch`, aspect ratio kept as well as rounding allows, patches in range."""
    w, h = max(1, round(width / patch)), max(1, round(height / patch))
    if w * h > max_patches:
        scale = math.sqrt(max_patches / (width * height / patch**2))
        w, h = max(1, math.floor(width / patch * scale)), max(1, math.floor(height / patch * scale))
    elif w * h < min_patches:
        scale = math.sqrt(min_patches / (width * height / patch**2))
        w, h = max(1, math.ceil(width / patch * scale)), max(1, math.ceil(height / patch * scale))
    if not min_patches <= w * h <= max_patches:
        raise BadImage("extreme_aspect_ratio", f"{width}x{height} cannot fit {min_patches}..{max_patches} patches")
    return w * patch, h * patch


def load_image(data: bytes) -> Image.Image:
    """Decode untrusted bytes to RGB, refusing empty, truncated, undecodable and gigantic images."""
    if not data:
        raise BadImage("empty_image", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_SOURCE_PIXELS:
                raise BadImage("image_too_large", f"{w}x{h}")
            if w == 0 or h == 0:
                raise BadImage("empty_image", f"{w}x{h}")
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("image_too_large", str(e)) from None
    except Exception as e:  # PIL raises many types for corrupt data (OSError, SyntaxError, ValueError...)
        raise BadImage("undecodable_image", f"{type(e).__name__}: {e}") from None
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if "A" in img.getbands() or img.mode == "P" else img.convert("RGB")
    return img


def resize_for_mode(img: Image.Image, mode: ImageMode) -> Image.Image:
    if mode.kind == "fixed":
        w, h = img.size
        scale = mode.size / min(w, h)
        nw, nh = max(mode.size, round(w * scale)), max(mode.size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - mode.size) // 2, (nh - mode.size) // 2
        return img.crop((left, top, left + mode.size, top + mode.size))
    size = native_size(*img.size, patch=mode.patch_size, min_patches=mode.min_patches, max_patches=mode.max_patches)
    return img if img.size == size else img.resize(size, Image.BICUBIC)


def encode_image(img: Image.Image, mode: ImageMode) -> bytes:
    if mode.encoding == "raw":
        return np.asarray(img, dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=mode.quality, subsampling=0)  # 4:4:4 keeps small text legible
    return buf.getvalue()


def decode_stored(data, grid: tuple[int, int], mode: ImageMode) -> np.ndarray:
    """uint8 [H, W, 3] from stored bytes (`grid` = patch rows, cols)."""
    H, W = grid[0] * mode.patch_size, grid[1] * mode.patch_size
    if mode.encoding == "raw":
        return np.frombuffer(data, dtype=np.uint8).reshape(H, W, 3)
    img = Image.open(io.BytesIO(data))
    arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    if arr.shape[:2] != (H, W):
        raise ValueError(f"stored image is {arr.shape[1]}x{arr.shape[0]}, metadata says {W}x{H}")
    return arr


def patchify_uint8(arr: np.ndarray, patch: int) -> np.ndarray:
    """uint8 [h*w, 3*p*p]: row-major patches, each laid out (C, p, p) (the model normalises uint8 input)."""
    H, W, C = arr.shape
    h, w = H // patch, W // patch
    return arr.reshape(h, patch, w, patch, C).transpose(0, 2, 4, 1, 3).reshape(h * w, C * patch * patch)


def patchify(arr: np.ndarray, patch: int) -> np.ndarray:
    """float32 [h*w, 3*p*p] in [-1, 1]: row-major patches, each laid out (C, p, p)."""
    return patchify_uint8(arr, patch).astype(np.float32) * (2.0 / 255.0) - 1.0
