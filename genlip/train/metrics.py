"""Throughput, FLOPs and MFU of a step, the device's peak, and the console + TensorBoard logger."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import torch

from genlip.atomic import atomic_write
from genlip.info import PEAK_BF16_TFLOPS, train_flops_per_sample
from genlip.model.config import ModelConfig


def peak_tflops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def batch_stats(segments: torch.Tensor, cfg: ModelConfig) -> tuple[int, int, float]:
    """(samples, real tokens, training matmul FLOPs) of a micro-batch's segment table."""
    seg = segments.detach().to("cpu", torch.long).reshape(-1, 4)
    seg = seg[(seg[:, 0] * seg[:, 1]) > 0]
    flops = sum(train_flops_per_sample(cfg, patches=int(h * w), prompt_tokens=int(p), caption_tokens=int(c))
                for h, w, p, c in seg.tolist())
    return len(seg), int((seg[:, 0] * seg[:, 1] + seg[:, 2] + seg[:, 3]).sum()), flops


def memory_gib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # peak RSS (KiB on Linux)


class Logger:
    """Rank-0 console lines, TensorBoard scalars and a JSONL copy of every logged record."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled, self.run_dir = enabled, run_dir
        self.tb = None
        self.jsonl = None
        if enabled:
            self._open()

    def _open(self, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a")

    def resume(self, step: int, samples: int) -> None:
        """Forget what was logged after the checkpoint a run resumes from, so no step appears twice:
        metrics.jsonl keeps records up to `step`, and TensorBoard purges events past `samples` (its x axis)."""
        if not self.enabled:
            return
        self.close()
        path = self.run_dir / "metrics.jsonl"
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write(path, "".join(line + "\n" for line in kept))
        self._open(purge_step=samples + 1)

    def print(self, msg: str) -> None:
        if self.enabled:
            print(msg, flush=True)

    def scalars(self, step: int, samples: int, values: dict) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            if v is not None:
                self.tb.add_scalar(k, v, global_step=samples)
        self.jsonl.write(json.dumps({"step": step, "samples": samples, **values}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.jsonl.close()
