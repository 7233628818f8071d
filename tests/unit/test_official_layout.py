"""The authors' Hugging Face layout: an official-layout checkpoint loads into our model with the logits
their module computed on it (tests/data/golden_official.json: numbers only, from their code run outside
this repository on `tests/official_fixture.write_official_dir(seed=0)`), and export -> import is exact."""

import json
from pathlib import Path

import pytest
import torch

from genlip.model import GenLIP, build_model, get_preset
from genlip.weights import load_model
from genlip.weights.official import OfficialFormatError, load_official, save_official, state_to_official
from tests.helpers import assert_matches_golden
from tests.official_fixture import write_official_dir

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "data" / "golden_official.json").read_text())


@pytest.mark.parametrize("saved_form", [False, True])
def test_official_checkpoint_gives_the_authors_logits(tmp_path, saved_form):
    write_official_dir(tmp_path, seed=GOLDEN["fixture_seed"], saved_form=saved_form)
    assert_matches_golden(load_model(tmp_path).model, GOLDEN)  # the layout is detected from config.json


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_export_then_import_is_exact(tmp_path, dtype):
    cfg = get_preset("tiny", vocab_size=1024, drop_path=0.1)
    state = {k: v.detach() for k, v in build_model(cfg, seed=4).state_dict().items()}
    save_official(tmp_path, state, cfg, dtype=dtype)
    back, back_cfg = load_official(tmp_path)
    assert back_cfg == cfg
    assert sorted(back) == sorted(state)
    for k in state:
        assert torch.equal(back[k], state[k].to(dtype).float()), k
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["torch_dtype"] == str(dtype).removeprefix("torch.") and on_disk["gated_attention"] is True


def test_fused_weights_are_split_the_authors_way():
    cfg = get_preset("tiny", vocab_size=1024)
    state = build_model(cfg, seed=0).state_dict()
    theirs = state_to_official(state)
    F = cfg.ffn
    assert torch.equal(theirs["visual.layers.0.mlp.gate_fc.weight"], state["blocks.0.mlp.fc_in.weight"][:F])
    assert torch.equal(theirs["visual.layers.0.mlp.fc1.weight"], state["blocks.0.mlp.fc_in.weight"][F:])
    assert torch.equal(theirs["visual.layers.1.self_attn.q_proj.weight"], state["blocks.1.attn.q_proj.weight"])
    assert len(theirs) == len(state) + 2 * 2 * cfg.num_layers - 2 * cfg.num_layers  # fc_in w/b -> 2 tensors each


def test_trunk_only_keeps_what_deployment_keeps(tmp_path):
    cfg = get_preset("tiny", vocab_size=1024)
    save_official(tmp_path, build_model(cfg, seed=0).state_dict(), cfg, trunk_only=True)
    from safetensors.torch import load_file

    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert names and all(n.startswith(("vision_embeddings.", "visual.layers.", "ln_post.")) for n in names)
    assert "ln_post.weight" in names and "visual.layers.1.mlp.fc2.bias" in names
    with pytest.raises(OfficialFormatError, match="vision encoder"):
        load_official(tmp_path)


def test_a_different_variant_is_refused_with_its_reason(tmp_path):
    write_official_dir(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["gated_attention"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OfficialFormatError, match="gated_attention"):
        load_official(tmp_path)


def test_model_prefix_is_tolerated(tmp_path):
    from safetensors.torch import load_file, save_file

    write_official_dir(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    save_file({f"model.{k}": v for k, v in tensors.items()}, str(tmp_path / "model.safetensors"))
    state, cfg = load_official(tmp_path)
    GenLIP(cfg).load_state_dict(state)
