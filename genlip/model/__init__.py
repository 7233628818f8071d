"""GenLIP model: plain single-device PyTorch; parallel layers come in through the layer kit.

Names are imported on first use, so `genlip.model.config` (sizes, presets) loads without torch.
"""

import importlib

_HOME = {"Layout": "batch", "PackedBatch": "batch", "make_layout": "batch",
         "PRESETS": "config", "ModelConfig": "config", "get_preset": "config",
         "GenLIP": "genlip", "LossOutput": "genlip", "build_model": "genlip",
         "greedy_caption": "generate", "PlainKit": "kit"}

__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"genlip.model.{_HOME[name]}"), name)
    raise AttributeError(f"module 'genlip.model' has no attribute {name!r}")
