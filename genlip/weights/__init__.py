"""Model weights outside the training processes: the project's model file, the authors' Hugging Face
layout, offline reading of DeepSpeed checkpoints, and `load_model` (any of those -> a plain GenLIP)."""

from genlip.weights.load import LoadedModel, load_model
from genlip.weights.model_file import load_model_file, save_model

__all__ = ["LoadedModel", "load_model", "load_model_file", "save_model"]
