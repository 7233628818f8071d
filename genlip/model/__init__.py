"""GenLIP model: plain single-device PyTorch; parallel layers come in through the layer kit."""

from genlip.model.batch import Layout, PackedBatch, make_layout
from genlip.model.config import PRESETS, ModelConfig, get_preset
from genlip.model.genlip import GenLIP, LossOutput, build_model
from genlip.model.generate import greedy_caption
from genlip.model.kit import PlainKit

__all__ = ["GenLIP", "Layout", "LossOutput", "ModelConfig", "PRESETS", "PackedBatch", "PlainKit",
           "build_model", "get_preset", "greedy_caption", "make_layout"]
