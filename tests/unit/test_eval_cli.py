"""genlip-eval's command line on a random-init tiny model: --help everywhere, results as JSON, and clear
errors (exit 2, no traceback) for a missing model or data file, unlabelled data, and bad class files."""

import json

import pytest

from genlip.data.synthetic import write_imagefolder
from genlip.eval.cli import main
from genlip.model import build_model, get_preset
from genlip.weights import save_model
from tests.helpers import build_tiny_dataset


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalcli")
    ds, tars, tok = build_tiny_dataset(root, shards=1, per_shard=10)
    cfg = get_preset("tiny")
    model = save_model(root / "model" / "model.safetensors", build_model(cfg, seed=0).state_dict(), cfg, tokenizer=tok)
    write_imagefolder(root / "if", attribute="colour", per_class=2, size=64)
    classes = root / "classes.json"
    classes.write_text(json.dumps({"classes": ["red", "blue"], "templates": ["a large {} circle at the center."]}))
    return root, model, ds, tars, classes


@pytest.mark.parametrize("task", [None, "loss", "caption", "zeroshot", "probe"])
def test_help(task, capsys):
    with pytest.raises(SystemExit) as e:
        main(([task] if task else []) + ["--help"])
    assert e.value.code == 0
    assert "usage: genlip-eval" in capsys.readouterr().out


def _error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_loss_writes_json_and_uses_the_model_tokenizer(setup, tmp_path, capsys):
    root, model, ds, tars, _ = setup
    out = tmp_path / "loss.json"
    assert main(["loss", str(model.parent), str(ds), *map(str, tars), "--image-size", "64", "--quiet",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 20 and result["tokenizer"].endswith("tokenizer.model")
    assert result["loss"] > 5  # random init: about log(vocab)
    assert "image-blind trigram baseline" in capsys.readouterr().out


def test_clear_errors(setup, tmp_path, capsys):
    root, model, ds, tars, classes = setup
    assert "does not exist" in _error(["loss", str(tmp_path / "no_model"), str(ds)], capsys)
    assert f"input {tmp_path / 'missing'} does not exist" in _error(["loss", str(model), str(tmp_path / "missing")],
                                                                    capsys)
    err = _error(["zeroshot", str(model), *map(str, tars), "--classes", str(classes), "--image-size", "64"], capsys)
    assert "needs a class label for every image" in err and "--label-field" in err
    bad = tmp_path / "classes.xml"
    bad.write_text("<classes/>")
    assert "unknown format '.xml'" in _error(["zeroshot", str(model), str(root / "if"), "--classes", str(bad)], capsys)
    broken = tmp_path / "broken.json"
    broken.write_text("{classes: [")
    assert "is not valid JSON" in _error(["zeroshot", str(model), str(root / "if"), "--classes", str(broken)], capsys)
    assert "class file" in _error(["zeroshot", str(model), str(root / "if"), "--classes", str(tmp_path / "x.txt")],
                                  capsys)
    assert "not in the class file" in _error(["zeroshot", str(model), str(root / "if"), "--classes", str(classes),
                                              "--image-size", "64"], capsys)
    assert "tokenizer" in _error(["caption", str(model), str(ds), "--tokenizer", str(tmp_path / "tok.model")], capsys)
    assert "needs training data" in _error(["probe", str(model)], capsys)
    assert "needs a class label" in _error(["probe", str(model), *map(str, tars), "--image-size", "64"], capsys)
