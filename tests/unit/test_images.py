"""Image modes, safe decoding, storage round trips and patch layout."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from genlip.data.images import (BadImage, ImageLimits, ImageMode, decode_stored, encode_image, load_image,
                                native_size, patchify, read_image_file, resize_for_mode)


def png_bytes(w, h, color=(10, 200, 30)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(w, h):
    """A 1x1 PNG whose header claims w x h (a decompression bomb's signature)."""
    data = bytearray(png_bytes(1, 1))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", w, h)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty_image"),
    (b"\xff\xd8\xff\xe0 not really a jpeg", "undecodable_image"),
    (png_bytes(300, 200)[:120], "undecodable_image"),
    (png_claiming(30000, 30000), "image_too_large"),
])
def test_bad_images_are_refused_with_a_reason(data, reason):
    with pytest.raises(BadImage) as e:
        load_image(data)
    assert e.value.reason == reason


def test_limits_are_checked_from_the_header_before_decoding():
    thin = png_bytes(1, 50000)  # 280 bytes; stage 1 used to resize it to 224 x 11.2M pixels
    assert len(thin) < 1000
    with pytest.raises(BadImage) as e:
        load_image(thin)
    assert e.value.reason == "extreme_aspect_ratio"
    assert load_image(thin, ImageLimits(max_aspect_ratio=1e6)).size == (1, 50000)
    with pytest.raises(BadImage) as e:
        load_image(png_bytes(300, 200), ImageLimits(max_pixels=300 * 200 - 1))
    assert e.value.reason == "image_too_large"
    with pytest.raises(BadImage) as e:
        load_image(png_bytes(300, 200), ImageLimits(max_bytes=100))
    assert e.value.reason == "image_too_large"


def test_image_files_are_read_bounded_and_only_when_regular(tmp_path):
    data = png_bytes(30, 20)
    (tmp_path / "a.png").write_bytes(data)
    assert read_image_file(tmp_path / "a.png", ImageLimits()) == data
    os.mkfifo(tmp_path / "fifo.png")  # opening it for reading would wait for a writer forever
    for path, limits, reason in [(tmp_path / "a.png", ImageLimits(max_bytes=len(data) - 1), "image_too_large"),
                                 ("/dev/zero", ImageLimits(), "image_not_a_file"),
                                 (tmp_path / "fifo.png", ImageLimits(), "image_not_a_file"),
                                 (tmp_path, ImageLimits(), "image_not_a_file"),
                                 (tmp_path / "nope.png", ImageLimits(), "missing_image")]:
        with pytest.raises(BadImage) as e:
            read_image_file(path, limits)
        assert e.value.reason == reason, path


def test_native_size_brute_force():
    for w in range(1, 2000, 37):
        for h in range(1, 2000, 41):
            try:
                W, H = native_size(w, h, patch=16, min_patches=16, max_patches=1024)
            except BadImage as e:
                assert e.reason == "extreme_aspect_ratio" and max(w / h, h / w) > 10
                continue
            assert W % 16 == 0 and H % 16 == 0 and 16 <= (W // 16) * (H // 16) <= 1024
            if min(w, h) >= 64 and max(w / h, h / w) < 4:
                assert abs(np.log((W / H) / (w / h))) < 0.35  # aspect kept up to rounding


def test_fixed_mode_resizes_and_center_crops():
    img = load_image(png_bytes(400, 224))
    out = resize_for_mode(img, ImageMode(kind="fixed", size=224))
    assert out.size == (224, 224)


@pytest.mark.parametrize("w,h", [(400, 300), (301, 640), (97, 100)])
def test_fixed_mode_samples_only_the_centre_square(w, h):
    """Resampling the centre square (memory size x size for any shape) equals resizing all, then cropping."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    size = 64
    scale = size / min(w, h)
    nw, nh = round(w * scale), round(h * scale)
    left, top = (nw - size) // 2, (nh - size) // 2
    whole = img.resize((nw, nh), Image.BICUBIC).crop((left, top, left + size, top + size))
    got = np.asarray(resize_for_mode(img, ImageMode(kind="fixed", size=size)), dtype=int)
    assert np.abs(got - np.asarray(whole, dtype=int)).max() <= 1  # float rounding of the filter positions


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_storage_round_trip(encoding):
    mode = ImageMode(kind="native", encoding=encoding, quality=100)
    yy, xx = np.mgrid[0:160, 0:96]
    img = Image.fromarray(np.stack([yy, xx * 2, (yy + xx) % 256], -1).astype(np.uint8))
    img = resize_for_mode(img, mode)
    arr = decode_stored(encode_image(img, mode), (img.size[1] // 16, img.size[0] // 16), mode)
    if encoding == "raw":
        assert np.array_equal(arr, np.asarray(img))
    else:
        assert np.abs(arr.astype(int) - np.asarray(img).astype(int)).mean() < 2


def test_patchify_matches_conv2d_layout():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (48, 32, 3), dtype=np.uint8)
    patches = torch.from_numpy(patchify(arr, 16))  # [6, 768]
    conv = torch.nn.Conv2d(3, 5, 16, stride=16)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() * (2 / 255) - 1
    want = conv(x).flatten(2).transpose(1, 2)[0]  # row-major patches
    got = patches @ conv.weight.flatten(1).T + conv.bias
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
