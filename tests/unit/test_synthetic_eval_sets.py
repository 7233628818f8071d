"""Synthetic evaluation sets: one-object scenes with fixed attributes, class-per-folder trees, caption
templates in the exact caption grammar, and one-object tar shards."""

import tarfile

import numpy as np
import pytest
from PIL import Image

from genlip.data.synthetic import (
    ATTRIBUTE_VALUES, COLOURS, caption_from_spec, class_templates, object_scene_spec, parse_caption, render_spec,
    write_imagefolder, write_webdataset_shards,
)


def test_object_scenes_fix_what_is_asked_and_draw_the_rest():
    specs = [object_scene_spec(4, i, colour="red", position="top left") for i in range(40)]
    assert all(len(s["objects"]) == 1 and s["word"] is None for s in specs)
    assert {s["objects"][0]["colour"] for s in specs} == {"red"}
    assert {s["objects"][0]["cell"] for s in specs} == {(0, 0)}
    assert len({s["objects"][0]["shape"] for s in specs}) == 5 and len({s["objects"][0]["size"] for s in specs}) == 2
    assert object_scene_spec(4, 3) == object_scene_spec(4, 3)
    with pytest.raises(ValueError, match="not one of"):
        object_scene_spec(0, 0, colour="teal")
    with pytest.raises(ValueError, match="unknown attribute"):
        object_scene_spec(0, 0, texture="smooth")


def test_image_folder_holds_one_folder_per_class_with_the_drawn_colour(tmp_path):
    classes = write_imagefolder(tmp_path, attribute="colour", per_class=3, seed=1, size=64, fixed={"size": "large"})
    assert classes == list(COLOURS) and sorted(p.name for p in tmp_path.iterdir()) == sorted(COLOURS)
    for c in classes:
        files = sorted((tmp_path / c).glob("*.png"))
        assert len(files) == 3
        pixels = np.asarray(Image.open(files[0]).convert("RGB")).reshape(-1, 3)
        assert (pixels == COLOURS[c]).all(1).sum() > 50  # a large object of that exact colour is drawn
    with pytest.raises(ValueError, match="cannot also be fixed"):
        write_imagefolder(tmp_path / "x", attribute="colour", fixed={"colour": "red"})


def test_templates_follow_the_caption_grammar():
    fixed = {"size": "large", "shape": "circle"}
    templates = class_templates("colour", fixed)
    assert len(templates) == 9 and len(class_templates("colour")) == 2 * 5 * 9
    spec = object_scene_spec(2, 7, colour="blue", **fixed)
    assert caption_from_spec(spec) in {t.format("blue") for t in templates}
    assert all(parse_caption(t.format("red"))["objects"][0]["colour"] == "red" for t in templates)
    assert len(class_templates("position", {"colour": "red"})) == 2 * 5
    assert set(ATTRIBUTE_VALUES) == {"colour", "shape", "size", "position"}


def test_one_object_tar_shards(tmp_path):
    [tar] = write_webdataset_shards(tmp_path, num_samples=4, samples_per_shard=4, seed=3, size=64, one_object=True)
    with tarfile.open(tar) as tf:
        captions = [tf.extractfile(m).read().decode() for m in tf.getmembers() if m.name.endswith(".txt")]
    assert captions == [caption_from_spec(object_scene_spec(3, i)) for i in range(4)]
    assert all(" and " not in c and "word" not in c for c in captions)
    assert render_spec(object_scene_spec(3, 0), 64).size == (64, 64)
