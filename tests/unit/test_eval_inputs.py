"""genlip-eval inputs: ImageFolder trees, raw tars/tables with labels, shard directories, the stage-1 prompt,
the split of samples over ranks, and the errors for inputs that cannot work."""

import dataclasses
import io
import json
import tarfile

import numpy as np
import pytest

from genlip.data.images import ImageMode
from genlip.data.synthetic import ATTRIBUTE_VALUES, class_templates, render_scene, write_imagefolder
from genlip.data.tokenizer import STAGE1_PROMPT, Tokenizer, train_sentencepiece
from genlip.eval.dist import CHUNK, EvalGroup
from genlip.eval.inputs import EvalData, EvalInputError, InputOptions
from genlip.eval.zeroshot import ClassSpec, label_keeper
from tests.helpers import build_tiny_dataset

OPTS64 = InputOptions(image_mode=ImageMode(size=64))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    ds, tars, tok = build_tiny_dataset(root, shards=1, per_shard=12)
    return ds, tars, Tokenizer(tok)


def _all(data, group=EvalGroup()):
    """This rank's samples with their pixels (copies: the stream drops pixels once a chunk is evaluated)."""
    return [dataclasses.replace(s) for chunk in data.chunks(group, progress=False) for s in chunk]


def test_image_folder_labels_are_folder_names_and_images_are_resized(tmp_path):
    classes = write_imagefolder(tmp_path / "if", attribute="shape", per_class=2, size=64)
    assert classes == list(ATTRIBUTE_VALUES["shape"])
    data = EvalData([tmp_path / "if"], tokenizer=None, options=OPTS64)
    samples = _all(data)
    assert all(s.pixels is None for s in data.samples)  # pixels are not kept once a chunk is evaluated
    assert [s.label for s in samples] == [c for c in sorted(classes) for _ in range(2)]
    assert all(s.grid == (4, 4) and s.pixels.shape == (16, 768) and s.pixels.dtype == np.uint8 for s in samples)
    assert all(s.caption is None and s.text is None for s in samples)
    small = _all(EvalData([tmp_path / "if"], tokenizer=None, options=InputOptions(image_mode=ImageMode(size=32))))
    assert {s.grid for s in small} == {(2, 2)}


def test_raw_tar_and_table_labels(tmp_path, shards):
    _, _, tok = shards
    tar = tmp_path / "labelled.tar"
    with tarfile.open(tar, "w") as tf:
        for i, cls in enumerate(["cat", "dog", "7"]):
            img, cap = render_scene(0, i, 64)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            for name, data in ((f"k{i}.png", buf.getvalue()), (f"k{i}.txt", cap.encode()), (f"k{i}.cls", cls.encode()),
                               (f"k{i}.json", json.dumps({"animal": cls, "n": i}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    for field, expected in (("cls", ["cat", "dog", "7"]), ("animal", ["cat", "dog", "7"]), ("n", ["0", "1", "2"])):
        data = EvalData([tar], tokenizer=tok, options=InputOptions(image_mode=ImageMode(size=64), label_field=field))
        samples = _all(data)
        assert [s.label for s in samples] == expected
        assert [s.key for s in samples] == ["labelled.tar/k0", "labelled.tar/k1", "labelled.tar/k2"]
    s = samples[0]
    assert s.caption == render_scene(0, 0, 64)[1]
    assert s.text == tok.encode(s.caption) + tok.end_ids
    assert s.prompt == tok.encode(STAGE1_PROMPT)  # the same ids `genlip-data build` records
    rows = tmp_path / "t.jsonl"
    img_path = tmp_path / "a.png"
    render_scene(0, 5, 64)[0].save(img_path)
    rows.write_text(json.dumps({"image": "a.png", "caption": "x", "label": "red"}) + "\n"
                    + json.dumps({"image": "a.png", "caption": "y"}) + "\n")
    data = EvalData([rows], tokenizer=tok, options=InputOptions(image_mode=ImageMode(size=64), label_field="label"))
    assert [s.label for s in _all(data)] == ["red", None]


def test_shard_directories_keep_their_prompt_and_captions(shards):
    ds, _, tok = shards
    samples = _all(EvalData([ds], tokenizer=tok))
    manifest = json.loads((ds / "manifest.json").read_text())
    assert len(samples) == 12
    assert all(s.prompt == manifest["prompt"]["ids"] == tok.encode(STAGE1_PROMPT) for s in samples)
    assert [s.caption for s in samples] == [render_scene(0, i, 64)[1] for i in range(12)]
    assert all(s.text[-len(tok.end_ids):] == tok.end_ids for s in samples)
    assert {s.grid for s in samples} == {(4, 4)}


def test_ranks_own_disjoint_chunks_and_see_the_same_metadata(tmp_path):
    write_imagefolder(tmp_path / "if", attribute="colour", per_class=10, size=64)  # 80 images: two chunks
    views = []
    for rank in range(2):
        data = EvalData([tmp_path / "if"], tokenizer=None, options=OPTS64)
        owned = [s.index for s in _all(data, EvalGroup(rank, 2))]
        views.append((owned, [(s.key, s.label) for s in data.samples]))
    assert views[0][0] == list(range(CHUNK)) and views[1][0] == list(range(CHUNK, 80))
    assert views[0][1] == views[1][1] and len(views[0][1]) == 80
    limited = EvalData([tmp_path / "if"], tokenizer=None, options=InputOptions(image_mode=ImageMode(size=64), limit=5))
    assert [s.index for s in _all(limited)] == [0, 1, 2, 3, 4]


def test_clear_errors_for_inputs_that_cannot_work(tmp_path, shards):
    ds, tars, tok = shards
    with pytest.raises(EvalInputError, match="does not exist"):
        EvalData([tmp_path / "nope"], tokenizer=None)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.md").write_text("x")
    with pytest.raises(EvalInputError, match="not a dataset"):
        EvalData([tmp_path / "junk"], tokenizer=None)
    other_tok = Tokenizer(train_sentencepiece(["a b c d e f g"] * 20 + ["red green blue"] * 20,
                                              tmp_path / "other.model", vocab_size=40, model_type="bpe"))
    with pytest.raises(EvalInputError, match="tokenized with"):
        EvalData([ds], tokenizer=other_tok)
    spec = ClassSpec(["red", "blue"], class_templates("colour"))
    unlabelled = EvalData(tars, tokenizer=tok, options=OPTS64, keep=label_keeper(spec))
    with pytest.raises(EvalInputError, match="needs a class label for every image"):
        _all(unlabelled)
    write_imagefolder(tmp_path / "shapes", attribute="shape", per_class=1, size=64)
    wrong = EvalData([tmp_path / "shapes"], tokenizer=tok, options=OPTS64, keep=label_keeper(spec))
    with pytest.raises(EvalInputError, match="is not in the class file"):
        _all(wrong)
