"""Evaluation of GenLIP models: `genlip-eval` (cli.py) and `run_evals` for use during training.

Small versions of the paper's protocols (GENLIP_SPEC section 8): held-out caption loss against
image-blind baselines (loss.py, ngram.py), greedy captions with CIDEr/BLEU-4 (caption.py), zero-shot
classification by caption likelihood (zeroshot.py), attentive and linear probes on frozen patch
features (features.py, probe.py). Inputs (inputs.py): shard directories, raw tar/JSONL/CSV/Parquet
files and ImageFolder trees; data parallel over a torch.distributed group (dist.py).
"""

from genlip.eval.spec import EvalSpec

__all__ = ["EvalSpec", "run_evals"]


def __getattr__(name):  # run_evals needs torch: imported on first use, so the config stays light
    if name == "run_evals":
        from genlip.eval.periodic import run_evals

        return run_evals
    raise AttributeError(name)
