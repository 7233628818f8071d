"""Weights are checked before they are used: `train.init_from` refuses weights holding NaN and weights
trained with another tokenizer (even one whose vocabulary pads to the same size), exiting 2 with one line
before any step; every loader refuses NaN weights and names a truncated safetensors file; exported
files get the umask's mode like every other file (safetensors alone would make them 0600)."""

import json
import os
import shutil
import stat
from contextlib import contextmanager

import pytest
import torch

from genlip.config import load_config, padded_vocab, validate
from genlip.data.tokenizer import Tokenizer, train_sentencepiece
from genlip.model.genlip import GenLIP
from genlip.weights.load import ModelPathError, check_same_tokenizer, load_model, load_state
from genlip.weights.model_file import save_model
from genlip.weights.official import save_official
from tests.helpers import build_tiny_dataset, run_train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(root, run config, the data's tokenizer, model weights matching the run's model config)."""
    root = tmp_path_factory.mktemp("init_from")
    ds, _, _ = build_tiny_dataset(root, shards=1, per_shard=6)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny}}
data: {{datasets: [{ds}], seq_len: 256, max_samples_per_row: 8, num_workers: 0}}
train: {{total_samples: 1.0e6, max_steps: 1, global_batch_rows: 1, dtype: fp32, log_interval: 1}}
""")
    manifest = json.loads((ds / "manifest.json").read_text())
    cfg = load_config(config)
    model_cfg = validate(cfg, world_size=1, vocab_size=padded_vocab(manifest["tokenizer"]["vocab_size"],
                                                                     cfg.data.pad_vocab_to))
    state = GenLIP(model_cfg).state_dict()
    return root, config, ds / manifest["tokenizer"]["file"], state, model_cfg


def with_nan(state: dict) -> tuple[dict, str]:
    name = sorted(state)[len(state) // 2]
    bad = {k: v.clone() for k, v in state.items()}
    bad[name].view(-1)[1] = float("nan")
    return bad, name


def other_tokenizer(root, tokenizer):
    """A tokenizer trained on the same captions another way: other ids, a vocabulary that pads the same."""
    from data_tools.tokenizer import iter_captions
    from genlip.data.sources import SourceOptions

    texts = [" ".join(reversed(t.split())).upper() for t in iter_captions(sorted((root / "raw").glob("*.tar")),
                                                                           SourceOptions())]
    other = train_sentencepiece(texts, root / "other" / "tok.model", vocab_size=300, model_type="bpe")
    assert padded_vocab(Tokenizer(other).vocab_size, 128) == padded_vocab(Tokenizer(tokenizer).vocab_size, 128)
    return other


def test_loaders_refuse_nan_weights(setup, tmp_path):
    _, _, tok, state, model_cfg = setup
    bad, name = with_nan(state)
    save_model(tmp_path / "nan" / "model.safetensors", bad, model_cfg, tokenizer=tok)
    for load in (load_state, load_model):
        with pytest.raises(ModelPathError, match=rf"tensor {name} holds 1 NaN/Inf value"):
            load(tmp_path / "nan")
    save_official(tmp_path / "hf", bad, model_cfg, dtype=torch.float32)
    with pytest.raises(ModelPathError, match=rf"tensor {name} holds 1 NaN/Inf value"):
        load_state(tmp_path / "hf")


def test_truncated_safetensors_is_named(setup, tmp_path):
    _, _, tok, state, model_cfg = setup
    path = save_model(tmp_path / "export" / "model.safetensors", state, model_cfg, tokenizer=tok)
    hf = save_official(tmp_path / "hf", state, model_cfg, dtype=torch.float32)
    for f in (path, hf):
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
        with pytest.raises(ModelPathError, match=rf"{f}: not a readable safetensors file .* truncated or damaged"):
            load_state(f.parent)
    (tmp_path / "export" / "model.json").write_text("[1, 2")
    with pytest.raises(ModelPathError, match="model.json: not a model description"):
        load_state(tmp_path / "export" / "model.safetensors")


def test_tokenizer_identity(setup, tmp_path):
    root, _, tok, _, _ = setup
    other = other_tokenizer(root, tok)
    assert check_same_tokenizer(tok, tok, source="w") is None
    assert check_same_tokenizer(shutil.copyfile(tok, tmp_path / "copy.model"), tok, source="w") is None
    with pytest.raises(ModelPathError, match=rf"trained with tokenizer {other} .* this run's data with {tok}"):
        check_same_tokenizer(other, tok, source="w")
    assert "carries no record of its tokenizer" in check_same_tokenizer(None, tok, source="w")


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_exported_files_follow_the_umask(setup, tmp_path):
    _, _, tok, state, model_cfg = setup
    with umask(0o027):
        files = [save_model(tmp_path / "ours" / "model.safetensors", state, model_cfg, tokenizer=tok),
                 save_official(tmp_path / "hf", state, model_cfg)]
        files += [tmp_path / "ours" / "model.json", tmp_path / "ours" / "tokenizer.model"]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o640" for f in files}


def _refused(config, tmp_path, source, needle):
    out = tmp_path / "run"
    proc = run_train(1, config, f"train.output_dir={out}", f"train.init_from={source}", timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "train.init_from" in last and needle in last, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "model.safetensors").exists()  # the old code trained and exported with exit code 0


def test_init_from_refuses_nan_weights(setup, tmp_path):
    _, config, tok, state, model_cfg = setup
    bad, name = with_nan(state)
    save_model(tmp_path / "nan" / "model.safetensors", bad, model_cfg, tokenizer=tok)
    _refused(config, tmp_path, tmp_path / "nan", f"tensor {name} holds 1 NaN/Inf value")


def test_init_from_refuses_weights_of_another_tokenizer(setup, tmp_path):
    root, config, tok, state, model_cfg = setup
    other = other_tokenizer(root, tok)
    save_model(tmp_path / "other" / "model.safetensors", state, model_cfg, tokenizer=other)
    _refused(config, tmp_path, tmp_path / "other", f"this run's data with {tok}")
