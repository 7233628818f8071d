"""Model weights outside the training processes: the project's model file, the authors' Hugging Face
layout, offline reading of DeepSpeed checkpoints, and `load_model` (any of those -> a plain GenLIP).

Names load on first use (they need torch), so the `genlip-export` command parses its arguments first.
"""

import importlib

_HOME = {"LoadedModel": "load", "load_model": "load", "load_model_file": "model_file", "save_model": "model_file"}

__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"genlip.weights.{_HOME[name]}"), name)
    raise AttributeError(f"module 'genlip.weights' has no attribute {name!r}")
