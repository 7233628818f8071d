"""A tiny checkpoint directory in the authors' Hugging Face layout, for importer/exporter tests.

`write_official_dir(path)` writes `config.json` and `model.safetensors` the way the authors'
`GenLIPModel` (github YanFangCS/GenLIP, `veomni/models/transformers/genlip/genlip_modeling.py`) names
and shapes its state dict; the names, shapes and config keys below are facts read from their code and
configs (`configs/model_configs/genlip/*.json`), not their code. The shape equals our `tiny` preset:
2 layers, width 64, 4 heads, FFN 128, text width 48 (so `in_proj`/`proj` exist), vocab 1024, patch 16,
`rope_scaling.mrope_section` [3, 3, 2] (the same numbers as our (t, h, w) `mrope_section`).

Their layout: `q_proj` is [2D, D] with rows [q for all heads | gate for all heads]; the SwiGLU is
`fc2(silu(gate_fc(x)) * fc1(x))`; LayerScale vectors are `layer_scale{1,2}.lambda1`; the rotary
`inv_freq` is a non-persistent buffer (never saved); `lm_head.weight` is saved; no key prefix.

Every tensor is drawn from its own name, so the values do not depend on the order of writing:
N(0, 0.05) by default, LayerNorm weights 1 + 0.1 N, LayerScale 0.1 + 0.05 N, biases 0.02 N (all nonzero,
so a wrong mapping shows). tests/data/golden_official.json holds the authors' module's outputs on
`write_official_dir(path, seed=0)`.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

LAYERS, WIDTH, HEADS, FFN, TEXT_WIDTH, VOCAB, PATCH = 2, 64, 4, 128, 48, 1024, 16
MROPE_SECTION = [3, 3, 2]


def official_config(dtype: torch.dtype = torch.float32, *, saved_form: bool = False) -> dict:
    """The config.json of the tiny checkpoint: the key set of the authors' shipped model configs.

    `saved_form=True` writes `rope_scaling` as their `GenLIPConfig.__init__` rewrites it (and so as
    `config.save_pretrained` saves it): type "mrope" becomes "default" and a `rope_type` key is added.
    """
    rope_type = "default" if saved_form else "mrope"
    rope_scaling = {"type": rope_type, "mrope_section": list(MROPE_SECTION)}
    if saved_form:
        rope_scaling["rope_type"] = rope_type
    return {
        "architectures": ["GenLIPModel"],
        "model_type": "genlip",
        "num_hidden_layers": LAYERS,
        "num_channels": 3,
        "hidden_size": WIDTH,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "patch_size": PATCH,
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "use_swiglu_ffn": True,
        "ls_init_value": 0.1,
        "drop_path_rate": 0.0,
        "initializer_range": 0.02,
        "text_embed_dim": TEXT_WIDTH,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "vocab_size": VOCAB,
        "max_position_embeddings": 16384,
        "use_llm_head": False,
        "llm_decoder": None,
        "use_liger_kernel": True,
        "tokens_per_second": 2,
        "spatial_merge_size": 1,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "gated_attention": True,
        "mrope_interleaved": True,
        "rope_theta": 10000.0,
        "rope_scaling": rope_scaling,
        "layer_norm_eps": 1e-6,  # not in the shipped files (their default); save_pretrained writes it
        "tie_word_embeddings": False,
    }


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the authors' state dict for the tiny config."""
    D, F, E = WIDTH, FFN, TEXT_WIDTH
    shapes = {
        "vision_embeddings.patch_embedding.weight": (D, 3, PATCH, PATCH),
        "vision_embeddings.patch_embedding.bias": (D,),
    }
    for i in range(LAYERS):
        p = f"visual.layers.{i}."
        for name, out_f, in_f in (("self_attn.q_proj", 2 * D, D), ("self_attn.k_proj", D, D),
                                  ("self_attn.v_proj", D, D), ("self_attn.out_proj", D, D),
                                  ("mlp.fc1", F, D), ("mlp.gate_fc", F, D), ("mlp.fc2", D, F)):
            shapes[p + name + ".weight"] = (out_f, in_f)
            shapes[p + name + ".bias"] = (out_f,)
        for name in ("layer_norm1", "layer_norm2"):
            shapes[p + name + ".weight"] = shapes[p + name + ".bias"] = (D,)
        shapes[p + "layer_scale1.lambda1"] = shapes[p + "layer_scale2.lambda1"] = (D,)
    shapes.update({
        "ln_post.weight": (D,), "ln_post.bias": (D,),
        "embeddings.weight": (VOCAB, E),
        "in_proj.weight": (D, E), "in_proj.bias": (D,),
        "proj.weight": (E, D), "proj.bias": (E,),
        "lm_head.weight": (VOCAB, E),
    })
    return shapes


def official_tensor(name: str, shape, seed: int = 0) -> torch.Tensor:
    """The fp32 value of tensor `name`, drawn from seed and name only."""
    g = torch.Generator().manual_seed(seed * 1000003 + zlib.crc32(name.encode()))
    x = torch.randn(shape, generator=g)
    is_norm = "layer_norm" in name or name.startswith("ln_post")
    if is_norm and name.endswith(".weight"):
        return 1.0 + 0.1 * x
    if name.endswith(".lambda1"):
        return 0.1 + 0.05 * x
    if name.endswith(".bias"):
        return 0.02 * x
    return 0.05 * x


def write_official_dir(path: Path, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                       saved_form: bool = False) -> dict:
    """Write config.json and model.safetensors of the tiny authors'-layout checkpoint; return the config."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = official_config(dtype, saved_form=saved_form)
    tensors = {n: official_tensor(n, s, seed).to(dtype).contiguous() for n, s in official_shapes().items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return cfg
