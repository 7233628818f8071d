"""Run configs: every shipped file validates; impossible layouts are refused with their message;
overrides are strict; the DeepSpeed JSON and LR schedule follow the config."""

import json
from pathlib import Path

import pytest

from genlip.config import ConfigError, field_help, load_config, padded_vocab, validate
from genlip.train.ds_config import build_ds_config
from genlip.train.schedule import lr_at

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "run_scripts" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    world = cfg.train.global_batch_rows  # one row per rank: the most ranks the batch allows
    m = validate(cfg, world_size=world, vocab_size=None if "stage" in path.name else 1024)
    assert m.num_layers > 0 and cfg.train.total_samples > 0


def test_stage_configs_follow_the_recipe():
    s1, s2 = load_config(CONFIGS[0].parent / "so16_stage1.yaml"), load_config(CONFIGS[0].parent / "so16_stage2.yaml")
    assert (s1.optim.lr, s2.optim.lr) == (1e-3, 1e-4) and s1.train.total_samples == 8e9
    assert s1.optim.betas == [0.9, 0.95] and s1.optim.weight_decay == 0.01 and s1.optim.grad_clip == 1.0
    assert s2.train.init_from.endswith("model.safetensors") and s1.data.seq_len == 16384
    assert load_config(CONFIGS[0].parent / "g16_stage1.yaml").optim.warmup_ratio == 0.02


@pytest.mark.parametrize("overrides,world,message", [
    (["model.preset=tiny", "parallel.tp=3"], 3, "heads \\(4\\) are not divisible by parallel.tp=3"),
    (["model.preset=tiny", "model.heads=2", "model.width=64", "model.ffn=130", "parallel.tp=4"], 4,
     "heads \\(2\\) are not divisible"),
    (["model.preset=tiny", "model.ffn=130", "parallel.tp=4"], 4, "ffn \\(130\\) is not divisible by parallel.tp=4"),
    (["model.preset=tiny", "model.vocab_size=1001", "parallel.tp=2"], 2, "vocab_size \\(1001\\) is not divisible"),
    (["model.preset=tiny", "parallel.pp=3"], 3, "parallel.pp=3 is more than the model's 2 layers"),
    (["parallel.pp=2", "parallel.zero_stage=2"], 2, "zero_stage=2 does not work with pipeline parallelism"),
    (["train.global_batch_rows=6", "train.micro_batch_rows=4"], 1, "global_batch_rows=6 must be a multiple of dp x"),
    (["parallel.tp=2"], 3, "world size 3 is not divisible by parallel.tp x parallel.pp = 2 x 1"),
    (["train.dtype=fp16"], 1, "train.dtype='fp16'"),
    (["parallel.zero_stage=4"], 1, "zero_stage=4 must be 0, 1, 2 or 3"),
])
def test_impossible_layouts_are_refused(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        validate(load_config(None, overrides), world_size=world, vocab_size=1024)


def test_overrides_are_strict_and_typed(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-4", "train.total_samples=8e9", "model.drop_path=0.2", "data.datasets=[a,b]"])
    assert cfg.optim.lr == 3e-4 and cfg.train.total_samples == 8e9 and cfg.data.datasets == ["a", "b"]
    assert cfg.model.build(1024).drop_path == 0.2
    for bad, msg in [("optim.lrr=1", "unknown key 'optim.lrr'"), ("model.widht=3", "unknown key model.widht"),
                     ("train.global_batch_rows=2.5", "must be an integer"), ("optim.lr=fast", "must be a number"),
                     ("train.activation_checkpointing=3", "true or false"), ("lr", "not key=value")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(None, [bad])
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: 1\n  warmup: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown key 'optim.warmup'"):
        load_config(tmp_path / "bad.yaml")
    assert "optim.warmup_ratio" in field_help() and "Linear warm-up" in field_help()


def test_deepspeed_json_is_generated_from_the_config():
    cfg = load_config(None, ["train.global_batch_rows=16", "train.micro_batch_rows=2", "parallel.zero_stage=2",
                             "train.dtype=bf16"])
    ds = build_ds_config(cfg, dp=4)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (2, 2, 16)
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and ds["gradient_clipping"] == 1.0
    assert ds["optimizer"]["params"]["betas"] == [0.9, 0.95]
    json.dumps(ds)


def test_lr_schedule_warmup_then_cosine_in_samples():
    kw = dict(peak=1e-3, floor=1e-6, total=8e9, warmup_ratio=0.007)
    assert lr_at(0, **kw) == 0 and lr_at(0.007 * 8e9 / 2, **kw) == pytest.approx(5e-4)
    assert lr_at(0.007 * 8e9, **kw) == pytest.approx(1e-3)
    assert lr_at(8e9, **kw) == pytest.approx(1e-6)
    mid = 0.007 * 8e9 + (8e9 - 0.007 * 8e9) / 2
    assert lr_at(mid, **kw) == pytest.approx((1e-3 + 1e-6) / 2)
    assert padded_vocab(151643, 128) == 151680
