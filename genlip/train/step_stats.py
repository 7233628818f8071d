"""Per-step numbers of the training loop without host-device synchronisation, and a counter of the rest.

What a steady-state step (not a log step) synchronises, by inspection (counted on CUDA by
`benchmarks/gpu_suite.sh --sync-debug`, which sets GENLIP_SYNC_DEBUG=1 for `SyncCounter`):
- trainer, every layout: none. Host counters (samples, tokens, FLOPs of the step) and the stop votes
  (signal, time limit) are summed over all ranks in one all-reduce on a gloo group, so NCCL runs never
  copy them to the device and back; the loss stays a device tensor (`LossMeter`); pixels and tokens go to
  the device with non_blocking copies from the loader's pinned memory; the segment table stays on the host.
- trainer, ZeRO-0 (pp=1): one: the non-finite guard all-reduces a flag on the device and reads it, since
  DeepSpeed does not check there and a bad step must be undone before `engine.step()`.
- trainer, pp > 1 with ZeRO-0: one: the pipeline's loss is read to tell a non-finite step.
- ZeRO-1/2/3 skip a step whose gradient norm is not finite and count it in `engine.skipped_steps`, a host
  int (their fp32 path tests the norm; bf16 has `check_grad_overflow` on): a NaN loss gives NaN gradients,
  so that count is the non-finite test and the loss itself is not read. DeepSpeed's own reads remain:
  `is_invalid_grad_norm` in ZeRO-1/2 `step()` and in its clipping, plus `has_overflow` in bf16 (2-3 per step).
- the model: `make_layout` builds the layout on the host and copies about a dozen index tensors to the
  device with blocking copies (sync-debug mode counts each); a pipeline stage reads its segment table.
- log steps (`train.log_interval`) add two reads: the loss window (`LossMeter.read`, after one all-reduce
  over data parallelism) and DeepSpeed's gradient norm. Checkpoints and validation read the loss too.
"""

from __future__ import annotations

import collections
import contextlib
import os
import warnings

import torch
import torch.distributed as dist


def init_host_group():
    """A process group for host values: the default group when it is gloo already, else a gloo twin of it
    (a NCCL all-reduce of Python numbers costs a copy to the device and a synchronising copy back)."""
    if dist.get_world_size() == 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")


def host_all_reduce(values: list[float], group=None) -> list[float]:
    """Sum of `values` over the ranks of `group` (default: all), on the host; float64 keeps counts exact."""
    if dist.get_world_size(group) == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return t.tolist()


class LossMeter:
    """The training loss of the good (not skipped) steps, kept on the device.

    `add` queues an addition on the device (no synchronisation); `read` all-reduces over `dp_group` (None:
    the losses are data-parallel means already, as DeepSpeed's pipeline engine returns them)."""

    def __init__(self, dp: int, dp_group=None):
        self.dp, self.dp_group = dp, dp_group
        self.sum = self.last = None
        self.count = 0
        self.last_value: float | None = None

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.detach().to(torch.float64).reshape(())
        self.sum = loss if self.sum is None else self.sum + loss
        self.last = loss
        self.count += 1

    def read(self, reset: bool = True) -> tuple[float | None, float | None]:
        """(mean over the steps added since the last reset or None, newest good step's loss or None); a
        collective over `dp_group` when anything was added since the last read, so every rank calls it."""
        if self.last is None:
            return None, self.last_value
        t = torch.stack([self.sum, self.last])
        if self.dp_group is not None and self.dp > 1:
            dist.all_reduce(t, group=self.dp_group)
            t = t / self.dp
        window_sum, last = t.tolist()  # the one synchronisation, when a log line or a checkpoint asks
        mean = window_sum / self.count
        self.last_value = last
        if reset:
            self.sum = self.last = None
            self.count = 0
        return mean, last


class SyncCounter:
    """Host-device synchronisations per training step, by source line (CUDA only; a diagnostic).

    Wraps parts of steady-state steps in torch.cuda.set_sync_debug_mode("warn") and counts the
    "synchronizing CUDA operation" warnings it raises; `summary()` is printed at the end of the run."""

    MESSAGE = "synchroniz"

    def __init__(self, enabled: bool, skip_steps: int = 3):
        self.enabled = enabled and torch.cuda.is_available()
        self.skip_steps = skip_steps
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.calls: collections.Counter = collections.Counter()

    @classmethod
    def from_env(cls) -> "SyncCounter":
        return cls(os.environ.get("GENLIP_SYNC_DEBUG", "") not in ("", "0"))

    @contextlib.contextmanager
    def count(self, part: str, step: int):
        """Count the synchronisations inside the block as `part` of step `step` (after the warm-up steps)."""
        if not self.enabled or step <= self.skip_steps:
            yield
            return
        self.calls[part] += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
        for w in caught:
            if self.MESSAGE in str(w.message):
                self.counts[part][f"{w.filename}:{w.lineno}"] += 1
            else:  # not ours to swallow
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def summary(self) -> list[str]:
        if not self.enabled:
            return []
        lines = []
        for part, n in self.calls.items():
            total = sum(self.counts[part].values())
            lines.append(f"sync debug: {part}: {total} host-device synchronisations in {n} steady-state calls "
                         f"({total / n:.1f} per call)")
            lines += [f"  {count:5d}  {where}" for where, count in self.counts[part].most_common()]
        return lines
