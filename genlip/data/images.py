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
import os
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from genlip.errors import UserError


class BadImage(ValueError):
    """An image that cannot go into a dataset; `reason` is the skip-count key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageLimits:
    """Per-sample resource guards, checked before an image is read or decoded (hostile or broken inputs)."""

    max_bytes: int = 64 << 20
    """Largest encoded image read (file, tar member or table cell), in bytes."""
    max_pixels: int = 64 << 20
    """Largest image decoded, in pixels (width x height from its header); 64 Mpx is 8192 x 8192."""
    max_aspect_ratio: float = 20.0
    """Longest over shortest side; more elongated images (banners, 1-pixel strips) are skipped."""

    def validate(self) -> None:
        if self.max_bytes < 1 or self.max_pixels < 1 or self.max_aspect_ratio < 1:
            raise UserError(f"image limits {self}: bytes and pixels must be >= 1 and the aspect ratio >= 1")


def check_limits(limits: ImageLimits, *, nbytes: int | None = None, size: tuple[int, int] | None = None) -> None:
    """The one resource guard: raise BadImage if an encoded size or a header's (width, height) is out of `limits`."""
    if nbytes is not None and nbytes > limits.max_bytes:
        raise BadImage("image_too_large", f"{nbytes} bytes > {limits.max_bytes}")
    if size is not None:
        w, h = size
        if w < 1 or h < 1:
            raise BadImage("empty_image", f"{w}x{h}")
        if w * h > limits.max_pixels:
            raise BadImage("image_too_large", f"{w}x{h} > {limits.max_pixels} pixels")
        if max(w, h) / min(w, h) > limits.max_aspect_ratio:
            raise BadImage("extreme_aspect_ratio", f"{w}x{h}")


def read_image_file(path: Path, limits: ImageLimits) -> bytes:
    """The bytes of an image file, refusing what is not a regular file (/dev/zero, a FIFO) or too big to read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # NOTE: O_NONBLOCK: opening a FIFO must not wait
    except OSError:
        raise BadImage("missing_image", str(path)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadImage("image_not_a_file", str(path))
        check_limits(limits, nbytes=st.st_size)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limits.max_bytes + 1)  # bounded even if the file grows or lies about its size (/proc)
    except OSError as e:
        raise BadImage("missing_image", f"{path}: {e}") from None
    finally:
        os.close(fd)
    check_limits(limits, nbytes=len(data))
    return data


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
            raise UserError(f"image mode {self.kind!r}: choose fixed (stage 1) or native (stage 2)")
        if self.encoding not in ("jpeg", "raw"):
            raise UserError(f"image encoding {self.encoding!r}: choose jpeg or raw")
        if self.kind == "fixed" and (self.size < self.patch_size or self.size % self.patch_size):
            raise UserError(f"image size {self.size} is not a positive multiple of the patch size {self.patch_size}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"JPEG quality {self.quality}: choose 1..100 (95 is a good value)")
        if not 1 <= self.min_patches <= self.max_patches:
            raise UserError(f"need 1 <= min_patches ({self.min_patches}) <= max_patches ({self.max_patches})")

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


def load_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode untrusted bytes to RGB, refusing empty, truncated, undecodable and oversized images; the size is
    checked from the header before any pixel is decoded (Image.open is lazy)."""
    if not data:
        raise BadImage("empty_image", "0 bytes")
    check_limits(limits, nbytes=len(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            check_limits(limits, size=img.size)
            img.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("image_too_large", str(e)) from None
    except MemoryError:
        raise BadImage("image_too_large", "out of memory while decoding") from None
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
        left, top = (nw - mode.size) // 2, (nh - mode.size) // 2
        # The centre crop of the image resized to nw x nh, resampling only the source box it comes from:
        # memory is size x size whatever the source's shape (a 1 x 50000 strip would take 7.5 GB resized whole).
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + mode.size) * sx, (top + mode.size) * sy)
        return img.resize((mode.size, mode.size), Image.BICUBIC, box=box)
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
