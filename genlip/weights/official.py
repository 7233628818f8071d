"""The authors' Hugging Face checkpoint layout <-> the project's names, both ways.

The authors' `GenLIPModel` (github YanFangCS/GenLIP, `veomni/models/transformers/genlip/genlip_modeling.py`)
saves `config.json` (`model_type: genlip`) and `model.safetensors` (or shards listed in
`model.safetensors.index.json`) with these names (facts read from their code, checked by running it):

| theirs                                              | ours                                |
|-----------------------------------------------------|-------------------------------------|
| vision_embeddings.patch_embedding.{weight,bias}     | embed.patch_embed.*                 |
| embeddings.weight                                   | embed.tok_embed.weight              |
| in_proj.*, proj.* (only when text width != width)   | embed.in_proj.*, head.proj.*        |
| visual.layers.i.layer_norm1/2.*                     | blocks.i.ln1/ln2.*                  |
| visual.layers.i.self_attn.{q,k,v,out}_proj.*        | blocks.i.attn.{q,k,v,out}_proj.*    |
| visual.layers.i.mlp.gate_fc.* ++ mlp.fc1.*          | blocks.i.mlp.fc_in.* ([gate | up])  |
| visual.layers.i.mlp.fc2.*                           | blocks.i.mlp.fc2.*                  |
| visual.layers.i.layer_scale1/2.lambda1              | blocks.i.ls1/ls2.gamma              |
| ln_post.*, lm_head.weight                           | head.ln_post.*, head.lm_head.weight |

q_proj is [q for all heads | gate for all heads] in both (no permutation). Their rotary `inv_freq` is a
non-persistent buffer; `lm_head` is saved and untied. Their config rewrites `rope_scaling.type` "mrope"
to "default" on load, so both forms are read. A `model.` prefix (some merge tools add one) is tolerated.
"""

from __future__ import annotations

from genlip.errors import UserError

import json
import re
from pathlib import Path

import torch
from genlip.model.config import ModelConfig
from genlip.weights.model_file import load_safetensors, save_safetensors

CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"

# ours -> theirs, for names that are a plain rename (blocks use {i}).
_RENAMES = {
    "embed.patch_embed": "vision_embeddings.patch_embedding",
    "embed.tok_embed": "embeddings",
    "embed.in_proj": "in_proj",
    "head.proj": "proj",
    "head.ln_post": "ln_post",
    "head.lm_head": "lm_head",
}
_BLOCK_RENAMES = {
    "ln1": "layer_norm1", "ln2": "layer_norm2",
    "attn.q_proj": "self_attn.q_proj", "attn.k_proj": "self_attn.k_proj", "attn.v_proj": "self_attn.v_proj",
    "attn.out_proj": "self_attn.out_proj", "mlp.fc2": "mlp.fc2",
    "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1",
}
TRUNK_PREFIXES = ("embed.patch_embed.", "blocks.", "head.ln_post.")
"""What deployment keeps: patch embedding, blocks and the final LayerNorm (its output is the feature)."""


class OfficialFormatError(UserError):
    """An authors'-layout checkpoint this project cannot represent, or a malformed one."""


def is_official_dir(path: Path) -> bool:
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        config = json.loads(cfg.read_text())
    except ValueError:  # bad JSON or bad UTF-8
        return False
    return isinstance(config, dict) and config.get("model_type") == "genlip"


# ---- config ---------------------------------------------------------------------------------------
def config_to_official(cfg: ModelConfig, dtype: torch.dtype) -> dict:
    """Their config.json for our model (keys as in their shipped configs)."""
    return {
        "architectures": ["GenLIPModel"], "model_type": "genlip",
        "num_hidden_layers": cfg.num_layers, "hidden_size": cfg.width, "intermediate_size": cfg.ffn,
        "num_attention_heads": cfg.heads, "num_channels": cfg.channels, "patch_size": cfg.patch_size,
        "text_embed_dim": cfg.text_width, "vocab_size": cfg.vocab_size,
        "hidden_act": "silu", "use_swiglu_ffn": True, "gated_attention": True, "attention_dropout": 0.0,
        "ls_init_value": cfg.layer_scale_init, "drop_path_rate": cfg.drop_path, "layer_norm_eps": cfg.ln_eps,
        "initializer_range": cfg.init_std, "rope_theta": cfg.rope_theta, "mrope_interleaved": True,
        "rope_scaling": {"type": "mrope", "mrope_section": list(cfg.mrope_section)},
        "max_position_embeddings": 16384, "spatial_merge_size": 1, "tokens_per_second": 2,
        "use_llm_head": False, "llm_decoder": None, "use_liger_kernel": True, "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def config_from_official(c: dict, source: str = "config.json") -> ModelConfig:
    required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size")
    missing = [k for k in required if k not in c]
    if missing:
        raise OfficialFormatError(f"{source}: missing {missing}; is this a GenLIP config.json?")
    unsupported = [msg for ok, msg in (
        (c.get("gated_attention", False), "gated_attention must be true"),
        (c.get("use_swiglu_ffn", False), "use_swiglu_ffn must be true"),
        (c.get("mrope_interleaved", False), "mrope_interleaved must be true"),
        (not c.get("tie_word_embeddings", False), "tie_word_embeddings must be false"),
        (not c.get("use_llm_head", False), "use_llm_head (an LLM's embedding and head) is not supported"),
        (c.get("spatial_merge_size", 1) == 1 and c.get("temporal_patch_size", 1) == 1, "patch merging is not supported"),
    ) if not ok]
    if unsupported:
        raise OfficialFormatError(f"{source}: this GenLIP variant differs from the paper's model: {'; '.join(unsupported)}")
    section = (c.get("rope_scaling") or {}).get("mrope_section")
    if not section or len(section) != 3:
        raise OfficialFormatError(f"{source}: rope_scaling.mrope_section must list three sections (t, h, w)")
    return ModelConfig(
        num_layers=c["num_hidden_layers"], width=c["hidden_size"], heads=c["num_attention_heads"],
        ffn=c["intermediate_size"], text_width=c.get("text_embed_dim") or c["hidden_size"],
        vocab_size=c["vocab_size"], patch_size=c.get("patch_size", 16), channels=c.get("num_channels", 3),
        mrope_section=tuple(section), rope_theta=float(c.get("rope_theta", 10000.0)),
        drop_path=float(c.get("drop_path_rate", 0.0)), layer_scale_init=float(c.get("ls_init_value", 0.1)),
        ln_eps=float(c.get("layer_norm_eps", 1e-6)), init_std=float(c.get("initializer_range", 0.02)))


# ---- tensors --------------------------------------------------------------------------------------
def official_name(name: str) -> str:
    """Their name for one of ours (not for the fused `mlp.fc_in`, which becomes two tensors)."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+?)\.?(weight|bias|gamma)", name)
    if m:
        i, part, kind = m.groups()
        key = f"{part}.{kind}" if kind == "gamma" else part
        if key in _BLOCK_RENAMES:
            return f"visual.layers.{i}.{_BLOCK_RENAMES[key]}" + ("" if kind == "gamma" else f".{kind}")
    module, _, kind = name.rpartition(".")
    if module in _RENAMES:
        return f"{_RENAMES[module]}.{kind}"
    raise KeyError(f"no authors' name for {name}")


def _fc_in(name: str) -> tuple[str, str] | None:
    """(gate_fc name, fc1 name) when `name` is a fused SwiGLU input projection."""
    m = re.fullmatch(r"blocks\.(\d+)\.mlp\.fc_in\.(weight|bias)", name)
    return (f"visual.layers.{m[1]}.mlp.gate_fc.{m[2]}", f"visual.layers.{m[1]}.mlp.fc1.{m[2]}") if m else None


def state_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our names -> theirs; the fused [gate | up] input projection is split into gate_fc and fc1."""
    out = {}
    for name, t in state.items():
        pair = _fc_in(name)
        if pair:
            out[pair[0]], out[pair[1]] = t.chunk(2, dim=0)
        else:
            out[official_name(name)] = t
    return out


def state_from_official(tensors: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> dict[str, torch.Tensor]:
    """Their names -> ours (gate_fc and fc1 stacked into fc_in). Missing LayerScale (their ls_init_value
    <= 1e-6 builds none) becomes ones, which is the same function."""
    if tensors and all(k.startswith("model.") for k in tensors):
        tensors = {k[len("model."):]: v for k, v in tensors.items()}
    state, used, names = {}, set(), _our_names(cfg)
    for ours in names:
        pair = _fc_in(ours)
        if pair and all(p in tensors for p in pair):
            state[ours] = torch.cat([tensors[pair[0]], tensors[pair[1]]], dim=0)
            used |= set(pair)
        elif not pair and official_name(ours) in tensors:
            state[ours] = tensors[official_name(ours)]
            used.add(official_name(ours))
        elif ours.endswith("gamma"):
            state[ours] = torch.ones(cfg.width)
    missing = sorted(set(names) - set(state))
    unexpected = sorted(set(tensors) - used)
    if missing and not unexpected and all(not m.startswith(TRUNK_PREFIXES) for m in missing):
        raise OfficialFormatError(f"{source}: holds the vision encoder only (a trunk-only export: no text embedding "
                                  "or LM head), so it cannot make a full GenLIP; export without --trunk-only to "
                                  "continue training or to caption")
    if missing or unexpected:
        raise OfficialFormatError(f"{source}: tensors do not match the config: missing (our names) {missing[:6]}, "
                                  f"unexpected {unexpected[:6]}")
    return state


def _our_names(cfg: ModelConfig) -> list[str]:
    from genlip.model.genlip import GenLIP

    with torch.device("meta"):
        return [n for n, _ in GenLIP(cfg).named_parameters()]


# ---- files ----------------------------------------------------------------------------------------
def save_official(out_dir: Path, state: dict[str, torch.Tensor], cfg: ModelConfig, *,
                  dtype: torch.dtype = torch.bfloat16, trunk_only: bool = False) -> Path:
    """Write config.json + model.safetensors in the authors' layout (weights renamed into place last)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if trunk_only:
        state = {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}
    tensors = {k: v.to(dtype).contiguous() for k, v in state_to_official(state).items()}
    config = config_to_official(cfg, dtype)
    if trunk_only:
        config["genlip_trunk_only"] = True  # no text embedding or LM head: the vision encoder alone
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    save_safetensors(out_dir / WEIGHTS_FILE, tensors, {"format": "pt"})
    return out_dir / WEIGHTS_FILE


def load_official(path: Path) -> tuple[dict[str, torch.Tensor], ModelConfig]:
    """(our state dict in fp32, model config) from an authors'-layout directory."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    cfg = config_from_official(json.loads(cfg_file.read_text()), str(cfg_file))
    if (path / WEIGHTS_FILE).is_file():
        files = [path / WEIGHTS_FILE]
    elif (path / INDEX_FILE).is_file():
        try:
            files = [path / f for f in sorted(set(json.loads((path / INDEX_FILE).read_text())["weight_map"].values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise OfficialFormatError(f"{path / INDEX_FILE}: not a safetensors index ({type(e).__name__}: {e})") from None
    else:
        raise OfficialFormatError(f"{path}: has {CONFIG_FILE} but no {WEIGHTS_FILE} or {INDEX_FILE}")
    tensors = {}
    for f in files:
        if not f.is_file():
            raise OfficialFormatError(f"{f}: listed in {INDEX_FILE} but missing")
        tensors.update(load_safetensors(f))
    state = state_from_official(tensors, cfg, str(path))
    return {k: v.float() for k, v in state.items()}, cfg
