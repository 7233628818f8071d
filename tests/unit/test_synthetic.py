"""Synthetic scenes: determinism, captions against the sampled attributes, drawn pixels, and the writers."""

import hashlib
import json
import re
import tarfile

import numpy as np
import pytest
import webdataset
from PIL import Image

from genlip.data.synthetic import (
    COLOURS, POSITIONS, SHAPES, SIZES, TEXT_RGB, WORD_POSITIONS, WORDS, caption_from_spec, render_scene,
    render_spec, scene_layout, scene_spec, write_jsonl, write_webdataset_shards,
)

N = 300  # scenes per statistical check; rendering one takes ~2 ms

_OBJ = rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) at the ({'|'.join(p for row in POSITIONS for p in row)})"
GRAMMAR = re.compile(rf'{_OBJ}( and {_OBJ})?\.( the word "({"|".join(WORDS)})" is written ({"|".join(WORD_POSITIONS)})\.)?')


def test_same_seed_and_index_give_identical_scene():
    a_img, a_cap = render_scene(5, 17)
    b_img, b_cap = render_scene(5, 17)
    assert a_img.mode == "RGB" and a_img.size == (224, 224)
    assert a_img.tobytes() == b_img.tobytes() and a_cap == b_cap
    assert scene_spec(5, 17) == scene_spec(5, 17)


def test_different_index_or_seed_gives_different_scene():
    base = render_scene(5, 17)[0].tobytes()
    assert render_scene(5, 18)[0].tobytes() != base
    assert render_scene(6, 17)[0].tobytes() != base


def test_golden_scene_is_machine_independent():
    # Pins the pixels and caption of one scene with a word: changes to sampling, drawing or the font
    # show up here (then bump VERSION in synthetic.py and update these values).
    image, caption = render_scene(0, 3)
    assert caption == 'a small black star at the right. the word "hat" is written at the top.'
    assert hashlib.sha256(image.tobytes()).hexdigest() == GOLDEN_SHA256


GOLDEN_SHA256 = "f57bd0b0f1dd4eadb68b81f6e8d3116362fa5abf01792e0137fae4e1aebb5906"


def test_captions_follow_grammar_and_state_every_attribute():
    for index in range(N):
        spec = scene_spec(1, index)
        caption = caption_from_spec(spec)
        assert render_scene(1, index, size=96)[1] == caption  # caption does not depend on the pixels
        assert GRAMMAR.fullmatch(caption), caption
        assert 7 <= len(caption.split()) <= 25, caption
        for obj in spec["objects"]:
            assert f"a {obj['size']} {obj['colour']} {obj['shape']} at the {obj['position']}" in caption
            assert obj["position"] == POSITIONS[obj["cell"][0]][obj["cell"][1]]
        assert [o["cell"] for o in spec["objects"]] == sorted(o["cell"] for o in spec["objects"])
        if spec["word"] is None:
            assert "the word" not in caption
        else:
            assert f'the word "{spec["word"]["text"]}" is written {spec["word"]["position"]}.' in caption


def test_every_attribute_value_occurs():
    specs = [scene_spec(2, i) for i in range(1000)]
    objects = [o for s in specs for o in s["objects"]]
    assert {o["colour"] for o in objects} == set(COLOURS)
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {o["size"] for o in objects} == set(SIZES)
    assert {o["position"] for o in objects} == {p for row in POSITIONS for p in row}
    words = [s["word"] for s in specs if s["word"] is not None]
    assert {w["text"] for w in words} == set(WORDS)
    assert {w["position"] for w in words} == set(WORD_POSITIONS)
    assert 0.4 < len(words) / len(specs) < 0.6
    assert {len(s["objects"]) for s in specs} == {1, 2}


def _boxes_overlap(a, b) -> bool:
    """Half-open boxes (x0, y0, x1, y1)."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("size", [224, 64, 301])
def test_objects_and_word_are_drawn_without_overlap(size):
    for index in range(N if size == 224 else 50):
        spec = scene_spec(3, index)
        pixels = np.asarray(render_spec(spec, size))
        layout = scene_layout(spec, size)
        boxes = [(cx - r, cy - r, cx + r + 1, cy + r + 1) for cx, cy, r in layout["objects"]]
        if layout["word"] is not None:
            boxes.append(layout["word"])
            x0, y0, x1, y1 = layout["word"]
            assert (pixels[y0:y1, x0:x1] == TEXT_RGB).all(axis=-1).sum() > 0.15 * (x1 - x0) * (y1 - y0)
        for i, box in enumerate(boxes):
            assert 0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size, (index, box)
            assert not any(_boxes_overlap(box, other) for other in boxes[i + 1:]), (index, boxes)
        for obj, (cx, cy, r) in zip(spec["objects"], layout["objects"]):
            # The centre is filled for every shape but the ring; probe the ring in its band instead.
            y = cy - (r * 8) // 10 if obj["shape"] == "ring" else cy
            assert tuple(pixels[y, cx]) == COLOURS[obj["colour"]], (index, obj)
            if obj["shape"] == "ring":
                assert tuple(pixels[cy, cx]) == spec["background"], (index, obj)


def test_too_small_image_is_rejected():
    with pytest.raises(ValueError):
        render_scene(0, 0, size=32)


def test_webdataset_shards_read_back(tmp_path):
    paths = write_webdataset_shards(tmp_path / "a", num_samples=7, samples_per_shard=3, seed=4, size=96,
                                    start_index=10, caption_json=True)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    samples = list(webdataset.WebDataset([str(p) for p in paths], shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(10, 17)]
    for s, index in zip(samples, range(10, 17)):
        image, caption = render_scene(4, index, size=96)
        assert s["txt"] == caption
        assert s["json"] == {"caption": caption, "key": f"{index:09d}"}
        assert isinstance(s["jpg"], Image.Image) and s["jpg"].size == (96, 96)
        # JPEG is lossy, but at quality 95 without chroma subsampling it stays close.
        assert np.abs(np.asarray(s["jpg"].convert("RGB"), int) - np.asarray(image, int)).mean() < 3
    again = write_webdataset_shards(tmp_path / "b", num_samples=7, samples_per_shard=3, seed=4, size=96,
                                    start_index=10, caption_json=True)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_png_shards_are_lossless_and_json_is_optional(tmp_path):
    (path,) = write_webdataset_shards(tmp_path, num_samples=2, samples_per_shard=5, image_format="png")
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["000000000.png", "000000000.txt", "000000001.png", "000000001.txt"]
        image = Image.open(tar.extractfile("000000001.png"))
        assert image.tobytes() == render_scene(0, 1)[0].tobytes()
        assert tar.extractfile("000000001.txt").read().decode() == render_scene(0, 1)[1]
    assert write_webdataset_shards(tmp_path / "empty", num_samples=0, samples_per_shard=5) == []
    with pytest.raises(ValueError):
        write_webdataset_shards(tmp_path, num_samples=1, samples_per_shard=1, image_format="gif")


def test_jsonl_rows_point_to_existing_images(tmp_path):
    jsonl = write_jsonl(tmp_path / "set", num_samples=5, seed=2, size=128, start_index=3)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert jsonl == tmp_path / "set" / "data.jsonl" and len(rows) == 5
    for row, index in zip(rows, range(3, 8)):
        assert row["image"] == f"images/{index:09d}.png"
        image, caption = render_scene(2, index, size=128)
        assert row["caption"] == caption
        with Image.open(jsonl.parent / row["image"]) as stored:
            assert stored.tobytes() == image.tobytes()


def test_parse_caption_inverts_caption_from_spec_and_scores():
    from genlip.data.synthetic import caption_from_spec, parse_caption, scene_spec, score_captions

    caps = []
    for i in range(50):
        spec = scene_spec(3, i)
        cap = caption_from_spec(spec)
        parsed = parse_caption(cap)
        assert [{k: o[k] for k in ("size", "colour", "shape", "position")} for o in spec["objects"]] == parsed["objects"]
        assert (parsed["word"] is None) == (spec["word"] is None)
        caps.append(cap)
    perfect = score_captions(caps, caps)
    assert all(acc == 1.0 for acc, _ in perfect.values())
    shifted = score_captions(caps[1:] + caps[:1], caps)
    assert shifted["colour"][0] < 0.5 and shifted["colour"][1] == 1 / 8
