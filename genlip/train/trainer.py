"""The training run: `Trainer(cfg).fit()` on one rank of a launch (the `genlip-train` command is cli.py).

TP from megatron-core, PP from DeepSpeed's pipeline engine, DP with DeepSpeed ZeRO. The schedule and
the logs count samples. Checkpoints every `train.save_interval` steps; the run resumes from the newest
complete checkpoint in `train.output_dir` by itself. SIGTERM / SIGUSR1 or `train.time_limit_minutes`
checkpoint and exit with code 75 (requeue); too many non-finite steps in a row checkpoint and exit 3.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from genlip import __version__
from genlip.config import Config, ConfigError
from genlip.data.loader import LoaderSpec, PackedRows, build_loader
from genlip.data.packing import PackingSpec
from genlip.data.shards import DatasetError, manifest_hash
from genlip.eval import run_evals
from genlip.info import count_params
from genlip.model.attention import resolve_backend
from genlip.model.batch import PackedBatch
from genlip.model.genlip import GenLIP
from genlip.model.kit import PlainKit
from genlip.model.init import init_weights, load_full_state_dict
from genlip.parallel.pipeline import build_pipeline_model, pipeline_batch
from genlip.train.checkpoint import (SaveError, check_resume_compatible, find_resumable, load_checkpoint,
                                     save_checkpoint)
from genlip.train.ds_config import build_ds_config
from genlip.train.elastic import load_universal_into
from genlip.parallel.consolidate import consolidated_state_dict
from genlip.weights.deepspeed_files import STATE_FILE, CheckpointError, canonical_name, find_checkpoint
from genlip.weights.load import ModelPathError, check_same_tokenizer, load_state, run_tokenizer
from genlip.weights.model_file import save_model
from genlip.weights.official import OfficialFormatError
from genlip.weights.universal import UNIVERSAL_DIR, Universal, deepspeed_universal_info, save_universal
from genlip.train.preflight import check_run
from genlip.train.metrics import Logger, batch_stats, memory_gib, peak_tflops
from genlip.train.schedule import lr_at
from genlip.train.step_stats import LossMeter, SyncCounter, host_all_reduce, init_host_group
from genlip.train.validation import batch_targets, plan_validation, val_batches
from megatron_ext import (MegatronMpu, TensorParallelKit, assert_groups_match, destroy_parallel, dp_rank,
                          dp_world_size, init_parallel, pp_rank, tp_rank)

EXIT_REQUEUE = 75
EXIT_BAD_STEPS = 3
EXIT_CONFIG = 2
EXIT_SAVE_FAILED = 74  # sysexits EX_IOERR: a checkpoint could not be written; the older ones are intact
REQUEUE_MARKER = "REQUEUE"


def set_env_from_launcher() -> None:
    """Fill torch.distributed's variables for srun and for a bare single process."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in env:
        if env["WORLD_SIZE"] != "1":
            raise RuntimeError("MASTER_PORT is not set: launch with torchrun, the deepspeed launcher, or srun via "
                               "run_scripts/slurm (which exports MASTER_ADDR/MASTER_PORT)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            env["MASTER_PORT"] = str(s.getsockname()[1])


def code_version() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            return f"{__version__}+{rev.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return __version__


class Flags:
    """Signals turn into a flag the loop checks at step boundaries."""

    def __init__(self):
        self.stop = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.stop = True


def _all_reduce(value: float, op=dist.ReduceOp.SUM, group=None) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=op, group=group)
    return float(t.item())


def _param_groups(module, weight_decay: float):
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Trainer:
    def __init__(self, cfg: Config):
        import deepspeed

        self.cfg = cfg
        p, t = cfg.parallel, cfg.train
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        world = int(os.environ["WORLD_SIZE"])
        # Everything that can be checked before a process group exists is checked now (as genlip-train did).
        self.model_cfg, _ = check_run(cfg, world_size=world)

        init_parallel(tp=p.tp, pp=p.pp, backend=backend)
        deepspeed.init_distributed(dist_backend=backend)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.dp, self.dp_rank, self.pp_rank, self.tp_rank = dp_world_size(), dp_rank(), pp_rank(), tp_rank()
        self.run_dir = Path(t.output_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.rank == 0:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(json.dumps(cfg.to_dict(), indent=1))
        dist.barrier()
        self.log = Logger(self.run_dir, enabled=self.rank == 0)
        self.accum = t.global_batch_rows // (self.dp * t.micro_batch_rows)
        torch.manual_seed(t.seed + self.dp_rank)  # DropPath: same draws in a TP group, different per replica

        # Without tensor parallelism plain torch layers (same parameters, names and init as megatron-core's
        # layers at tp=1, whose autograd functions add ~4% to a CPU step: benchmarks/trainer_overhead.py).
        kit = TensorParallelKit() if p.tp > 1 else PlainKit()
        if p.pp > 1:
            module = build_pipeline_model(self.model_cfg, kit, pp=p.pp, tp=p.tp, dp=self.dp,
                                          partition=p.pipe_partition,
                                          checkpoint_interval=1 if t.activation_checkpointing else 0)
            self.name_map = lambda n: canonical_name(n, self.model_cfg.num_layers)
        else:
            module = GenLIP(self.model_cfg, kit)
            module.activation_checkpointing = t.activation_checkpointing
            self.name_map = None
        init_weights(module, t.seed, name_map=self.name_map)
        if t.init_from:
            self._init_from(module, Path(t.init_from))
        self.params_local = sum(q.numel() for q in module.parameters())
        ds_config = build_ds_config(cfg, dp=self.dp)
        if self.rank == 0:
            (self.run_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=1))
        self.engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=_param_groups(module, cfg.optim.weight_decay),
                                                    config=ds_config, mpu=None if p.pp > 1 else MegatronMpu())
        if p.pp > 1:
            assert_groups_match(self.engine.grid)
        self.device = torch.device(self.engine.device)
        self.host_group = init_host_group()
        self.losses = LossMeter(self.dp, MegatronMpu.get_data_parallel_group() if p.pp == 1 else None)
        self.datasets_id = [manifest_hash(d) for d in cfg.data.datasets]
        self.state = {"step": 0, "samples": 0, "rows": 0, "tokens": 0, "skipped_steps": 0, "flops": 0.0,
                      "wall_time": 0.0, "last_loss": None, "last_step_loss": None, "last_val_loss": None,
                      "last_val_step": None}
        self.samples_log = None
        self.val_rows = None
        if t.record_samples and self.tp_rank == 0 and self.pp_rank == 0:
            (self.run_dir / "samples").mkdir(parents=True, exist_ok=True)
            self.samples_log = open(self.run_dir / "samples" / f"dp_{self.dp_rank:05d}.jsonl", "a")
        if t.debug_nan_steps and p.pp > 1:
            raise ConfigError("train.debug_nan_steps needs parallel.pp=1")

    # ---- set-up helpers --------------------------------------------------------------------------
    def _init_from(self, module, path: Path) -> None:
        """Start from given weights (stage 2, or a released model): a project export, the authors' Hugging
        Face layout, or a checkpoint of any layout (fresh optimizer and schedule). Refused: weights with
        NaN/Inf, damaged files, and weights trained with another tokenizer than this run's data."""
        try:
            state, saved_cfg, tokenizer, source = load_state(path)
            note = check_same_tokenizer(tokenizer, run_tokenizer(self.run_dir), source=source)
        except (ModelPathError, CheckpointError, OfficialFormatError) as e:
            raise ConfigError(f"train.init_from={str(path)!r}: {e}") from None
        if note:
            self.log.print(f"warning: train.init_from: {note}")
        keep = {"drop_path": self.model_cfg.drop_path, "attn_backend": self.model_cfg.attn_backend}
        if dataclasses.replace(saved_cfg, **keep) != self.model_cfg:
            diff = {k: (v, getattr(self.model_cfg, k)) for k, v in dataclasses.asdict(saved_cfg).items()
                    if k not in keep and v != getattr(self.model_cfg, k)}
            raise ConfigError(f"train.init_from={path}: its model differs from this run's (theirs, ours): {diff}")
        if self.name_map is not None:
            state = {n: state[self.name_map(n)] for n, _ in module.named_parameters()}
        load_full_state_dict(module, state)
        self.log.print(f"initialised from {source}")

    def _resume_identity(self) -> dict:
        return json.loads(json.dumps({"model": dataclasses.asdict(self.model_cfg) | {"drop_path": None, "attn_backend": None},
                "datasets": self.datasets_id,
                "layout": {"tp": self.cfg.parallel.tp, "pp": self.cfg.parallel.pp, "dp": self.dp,
                           "zero_stage": self.cfg.parallel.zero_stage},
                "global_batch_rows": self.cfg.train.global_batch_rows}))  # as stored: JSON types

    def _maybe_resume(self) -> None:
        found = find_resumable(self.ckpt_dir, log=self.log.print)
        if found is None:
            return
        tag, saved = found
        check_resume_compatible(saved["identity"], self._resume_identity())
        old, now = saved["identity"]["layout"], self._resume_identity()["layout"]
        if old == now:
            load_checkpoint(self.engine, self.ckpt_dir, tag)
        else:
            self._resume_elastic(self.ckpt_dir / tag, old, now)
        self.state.update(saved["progress"])
        self.log.resume(self.state["step"], self.state["samples"])
        self.log.print(f"resumed from {self.ckpt_dir / tag}: step {self.state['step']}, "
                       f"{self.state['samples']:,} samples, {self.state['rows']:,} rows consumed")

    def _resume_elastic(self, step_dir: Path, old: dict, now: dict) -> None:
        """Another layout wrote the checkpoint: rank 0 converts it to a universal state once (kept inside the
        checkpoint), every rank loads its share. DropPath's random streams restart from (seed, dp rank, step)."""
        describe = lambda lay: f"tp {lay['tp']} x pp {lay['pp']} x dp {lay['dp']}, ZeRO-{lay['zero_stage']}"  # noqa: E731
        self.log.print(f"layout changed: {step_dir.name} was written by {describe(old)}, this run is {describe(now)}; "
                       "converting through a universal checkpoint")
        error = ""
        if self.rank == 0:
            try:
                save_universal(find_checkpoint(step_dir))
            except CheckpointError as e:
                error = str(e)
        if _all_reduce(float(bool(error)), op=dist.ReduceOp.MAX) > 0:
            raise ConfigError(f"cannot convert {step_dir} to the new layout: {error or 'see rank 0'}")
        n = load_universal_into(self.engine, Universal(step_dir / UNIVERSAL_DIR), name_map=self.name_map)
        saved = json.loads((step_dir / STATE_FILE).read_text())["progress"]
        torch.manual_seed(self.cfg.train.seed + self.dp_rank + 1_000_003 * saved["step"])
        self.log.print(f"loaded {n} parameters with their fp32 masters and Adam moments into the new layout")

    def _loader(self, datasets, rows_consumed: int, global_rows: int):
        d = self.cfg.data
        spec = LoaderSpec(datasets=list(datasets), weights=list(d.weights) if datasets == d.datasets else [],
                          packing=PackingSpec(budget=d.seq_len, max_samples_per_row=d.max_samples_per_row, seed=d.seed),
                          global_rows=global_rows, micro_rows=self.cfg.train.micro_batch_rows,
                          num_workers=d.num_workers, check="none")  # rank 0 checked them in _build_plans
        return build_loader(spec, dp_rank=self.dp_rank, dp_size=self.dp, rows_consumed=rows_consumed,
                            pin_memory=torch.cuda.is_available())

    def _build_plans(self) -> None:
        """Rank 0 checks the datasets against their manifests and builds missing first-epoch packing plans
        while the others wait; a data error stops every rank with rank 0's message."""
        error = ""
        if self.rank == 0:
            d = self.cfg.data
            spec = LoaderSpec(datasets=list(d.datasets) + list(d.val_datasets), check=d.check,
                              packing=PackingSpec(d.seq_len, d.max_samples_per_row, d.seed))
            try:
                for src in PackedRows(spec).sources:
                    if not src.plan.has(0):
                        fill = src.plan.build(0)
                        self.log.print(f"packing plan {src.plan.dir}: epoch 0 fill rate {100 * fill:.2f}%")
            except (DatasetError, ValueError) as e:
                error = str(e)
        if _all_reduce(float(bool(error)), op=dist.ReduceOp.MAX) > 0:
            raise ConfigError(error or "rank 0 found a problem with the data (see its message)")

    def _banner(self) -> None:
        c, p, t = self.cfg, self.cfg.parallel, self.cfg.train
        n = count_params(self.model_cfg)
        self.log.print(
            f"GenLIP {c.model.preset}: {n.total:,} params ({n.trunk:,} trunk); world {self.world} = tp {p.tp} x pp {p.pp} "
            f"x dp {self.dp}; ZeRO-{p.zero_stage}; {t.dtype}; rows of {c.data.seq_len} slots; micro-batch "
            f"{t.micro_batch_rows} rows x {self.accum} accumulation x {self.dp} dp = {t.global_batch_rows} rows/step; "
            f"{self.params_local:,} params on rank 0; attention {resolve_backend(self.model_cfg.attn_backend, self.device)}; "
            f"schedule {t.total_samples:,.0f} samples; run dir {self.run_dir}")

    # ---- one step -------------------------------------------------------------------------------
    # No host-device synchronisation of ours in a steady-state step beyond the few that genlip/train/step_stats.py
    # lists (ZeRO-0's non-finite guard, the pipeline's loss under ZeRO-0, log steps) and explains.
    def _next(self, it):
        t0 = time.perf_counter()
        batch, infos = next(it)
        return batch, infos, time.perf_counter() - t0

    def _to_device(self, batch):
        """Pixels and tokens to the device without waiting (the loader pins them on CUDA machines); the
        segment table stays on the host, where the model's make_layout reads it."""
        if self.device.type == "cpu":
            return batch
        return PackedBatch(batch.pixels.to(self.device, non_blocking=True),
                           batch.tokens.to(self.device, non_blocking=True), batch.segments)

    def _train_step(self, it, stop_vote) -> dict:
        """One optimizer step; `stop_vote()` is this rank's wish to stop, asked after the step's work is queued."""
        has_data = it is not None
        wait, samples, tokens, flops = 0.0, 0, 0, 0.0
        batches, infos = [], []
        if has_data:
            for _ in range(self.accum):
                batch, info, w = self._next(it)
                wait += w
                s, tk, f = batch_stats(batch.segments, self.model_cfg)  # host: the table is on the CPU here
                samples, tokens, flops = samples + s, tokens + tk, flops + f
                batches.append(batch)
                infos += info
        skipped_before = self.engine.skipped_steps
        finite = True
        if self.cfg.parallel.pp > 1:
            loss = self.engine.train_batch(iter([pipeline_batch(b) for b in batches]) if has_data else None)
            skipped = self.engine.skipped_steps > skipped_before
            if self.cfg.parallel.zero_stage == 0:  # no DeepSpeed check there: read the loss (a sync)
                finite = math.isfinite(float(loss))
        else:
            loss, skipped = self._local_step(batches)
        # Counted once per data-parallel replica: by its (tp 0, pp 0) rank, which always holds the data.
        first = self.tp_rank == 0 and self.pp_rank == 0
        if first and self.samples_log is not None:
            self.samples_log.write(json.dumps({"step": self.state["step"] + 1, "rows": [i.global_row for i in infos],
                                               "keys": [[str(k) for k in i.key_hashes] for i in infos]}) + "\n")
            self.samples_log.flush()
        n = (samples, tokens, flops) if first else (0, 0, 0.0)
        totals = host_all_reduce([*n, float(stop_vote())], group=self.host_group)
        return {"loss": loss, "samples": int(totals[0]), "tokens": int(totals[1]), "flops": totals[2],
                "stop": totals[3] > 0, "data_wait": wait, "skipped": skipped, "finite": finite}

    def _local_step(self, batches) -> tuple[torch.Tensor, bool]:
        """Micro-batches through DeepSpeed's engine (no pipeline); returns (this rank's mean loss as a device
        tensor, step skipped)."""
        skipped_before = self.engine.skipped_steps
        poison = self.state["step"] + 1 in self.cfg.train.debug_nan_steps
        losses = []
        for i, batch in enumerate(batches):
            out = self.engine(self._to_device(batch))
            loss = out.loss * float("nan") if poison else out.loss
            self.engine.backward(loss)
            losses.append(loss.detach().float())
            if i == len(batches) - 1 and self.cfg.parallel.zero_stage == 0:
                self._guard_zero0(torch.stack(losses))
            self.engine.step()
        skipped = self.engine.skipped_steps > skipped_before or self._zero0_skipped
        return torch.stack(losses).mean(), skipped

    _zero0_skipped = False

    def _guard_zero0(self, losses: torch.Tensor) -> None:
        """ZeRO-0 has no DeepSpeed overflow check: a non-finite loss anywhere zeroes this step's
        gradients and its learning rate, so the weights are unchanged (Adam's moments decay one step).
        One flag is all-reduced on the device and read: the one synchronisation of a ZeRO-0 step."""
        flag = (~torch.isfinite(losses)).any().to(torch.float32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = bool(flag.item() > 0)
        self._zero0_skipped = bad
        if bad:
            for p in self.engine.module.parameters():
                if p.grad is not None:
                    p.grad.zero_()
            for group in self.engine.optimizer.param_groups:
                group["lr"] = 0.0

    def _validate(self) -> dict | None:
        """Token-mean caption loss over the held-out rows (genlip.train.validation); same on every rank."""
        d, t, pp = self.cfg.data, self.cfg.train, self.cfg.parallel.pp
        if not d.val_datasets:
            return None
        if self.val_rows is None:
            self.val_rows = PackedRows(LoaderSpec(datasets=list(d.val_datasets), check="none", packing=PackingSpec(
                d.seq_len, d.max_samples_per_row, d.seed)))
        plan = plan_validation(self.val_rows, eval_rows=t.eval_rows, micro_rows=t.micro_batch_rows, dp=self.dp,
                               dp_rank=self.dp_rank)
        holds_data = pp == 1 or self.pp_rank in (0, pp - 1)
        batches = val_batches(self.val_rows, plan, micro_rows=t.micro_batch_rows, fixed_shape=pp > 1,
                              num_workers=d.num_workers) if holds_data else ((None, w) for w in plan.weights)
        contributes = self.tp_rank == 0 and self.pp_rank == pp - 1
        loss_sum = targets = 0.0
        self.engine.module.eval()
        with torch.no_grad():
            for batch, weight in batches:
                if pp > 1:
                    data = iter([pipeline_batch(batch)]) if batch is not None else None
                    loss = float(self.engine.eval_batch(data, num_micro_batches=1))
                else:
                    loss = float(self.engine.module(batch.to(self.device)).loss)
                if contributes and weight:
                    n = batch_targets(batch)
                    loss_sum, targets = loss_sum + loss * n, targets + n
        self.engine.module.train()
        loss_sum, targets = _all_reduce(loss_sum), _all_reduce(targets)
        return {"loss": loss_sum / targets if targets else float("nan"), "targets": int(targets),
                "rows": plan.total_rows}

    def _log_validation(self, final: bool = False) -> None:
        val = self._validate()
        if val is None:
            return
        self.state["last_val_loss"] = val["loss"]
        self.state["last_val_step"] = self.state["step"]
        self.log.print(f"step {self.state['step']} | {'final ' if final else ''}validation loss {val['loss']:.4f} "
                       f"({val['rows']:,} held-out rows, {val['targets']:,} target tokens)")
        self.log.scalars(self.state["step"], self.state["samples"], {"val/loss": val["loss"]})

    def _periodic_eval(self) -> None:
        """eval.probes on the consolidated weights: every rank builds the single-process model and evaluates its
        share of the samples (genlip.eval.run_evals over the world group); logged under eval/."""
        if not self.cfg.eval.probes:
            return
        state = consolidated_state_dict(self.engine.module, name_map=self.name_map,
                                        zero3=self.cfg.parallel.zero_stage == 3)
        box = [state]
        dist.broadcast_object_list(box, src=0)
        model = GenLIP(self.model_cfg)
        model.load_state_dict(box[0])
        del state, box
        metrics = run_evals(model.to(self.device).eval(), self.cfg.eval, tokenizer_path=run_tokenizer(self.run_dir))
        self.state["last_eval"] = {"step": self.state["step"], **metrics}
        self.log.print(f"step {self.state['step']} | " + " | ".join(f"{k.removeprefix('eval/')} {v:.4f}"
                                                                    for k, v in metrics.items()))
        self.log.scalars(self.state["step"], self.state["samples"], metrics)

    def _save(self) -> bool:
        """Checkpoint; False if the save failed (already reported; the caller decides to go on or stop)."""
        self._read_losses(reset=False)  # the progress it stores holds the newest good step's loss
        state = {"identity": self._resume_identity(), "progress": dict(self.state), "config": self.cfg.to_dict(),
                 "code_version": code_version(), "time": time.time()}
        t = self.cfg.train
        fault = _disk_full if self.state["step"] in t.debug_save_fail_steps else None
        try:
            # DeepSpeed's ds_to_universal reads these TP patterns; its pipeline names ("3.attn...") have none
            info = deepspeed_universal_info(self.model_cfg) if self.cfg.parallel.pp == 1 else None
            tag = save_checkpoint(self.engine, self.ckpt_dir, self.state["step"], state, keep_last=t.keep_last,
                                  universal_info=info, fault=fault)
        except SaveError as e:
            self.log.print(f"step {self.state['step']} | checkpoint FAILED: {e}"
                           + ("; training goes on (train.save_failure=warn)" if t.save_failure == "warn" else ""))
            return False
        self.log.print(f"saved checkpoint {self.ckpt_dir / tag}")
        return True

    def export(self) -> Path:
        path = self.run_dir / "model.safetensors"
        state = consolidated_state_dict(self.engine.module, name_map=self.name_map,
                                        zero3=self.cfg.parallel.zero_stage == 3)
        if self.rank == 0:
            save_model(path, state, self.model_cfg, {"progress": self.state, "code_version": code_version()},
                       tokenizer=run_tokenizer(self.run_dir))
            self.log.print(f"exported consolidated weights to {path}")
        dist.barrier()
        return path

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> int:
        t, o = self.cfg.train, self.cfg.optim
        flags = Flags()
        start_time = time.time()
        self._maybe_resume()
        self.losses.last_value = self.state["last_step_loss"]
        self._build_plans()
        self._banner()
        needs_data = self.cfg.parallel.pp == 1 or self.pp_rank in (0, self.cfg.parallel.pp - 1)
        it = iter(self._loader(self.cfg.data.datasets, self.state["rows"], t.global_batch_rows)) if needs_data else None
        peak = peak_tflops()
        window = dict.fromkeys(("steps", "time", "wait", "samples", "tokens", "flops"), 0.0)

        def stop_vote() -> bool:  # this rank's vote, summed over all ranks in the step's all-reduce
            return flags.stop or bool(t.time_limit_minutes and time.time() - start_time > 60 * t.time_limit_minutes)

        syncs = SyncCounter.from_env()
        bad_in_a_row, code, carry = 0, 0, 0.0
        while self.state["samples"] < t.total_samples and not (t.max_steps and self.state["step"] >= t.max_steps):
            step = self.state["step"] + 1
            t0 = time.perf_counter()
            lr = lr_at(self.state["samples"], peak=o.lr, floor=o.min_lr, total=t.total_samples, warmup_ratio=o.warmup_ratio)
            for group in self.engine.optimizer.param_groups:
                group["lr"] = lr
            with syncs.count("train step", step):
                r = self._train_step(it, stop_vote)
            if r["skipped"] or not r["finite"]:
                self.state["skipped_steps"] += 1
                bad_in_a_row += 1
            else:
                bad_in_a_row = 0
                self.losses.add(r["loss"])
            # The step's time includes the loop's own bookkeeping and logging (the previous step's, carried),
            # not validation, evaluation or checkpoints.
            t1 = time.perf_counter()
            dt = t1 - t0 + carry
            self.state.update(step=step, rows=self.state["rows"] + t.global_batch_rows,
                              samples=self.state["samples"] + r["samples"], tokens=self.state["tokens"] + r["tokens"],
                              flops=self.state["flops"] + r["flops"], wall_time=self.state["wall_time"] + dt)
            for k, v in (("steps", 1), ("time", dt), ("wait", r["data_wait"]), ("samples", r["samples"]),
                         ("tokens", r["tokens"]), ("flops", r["flops"])):
                window[k] += v
            if step % t.log_interval == 0 or step == 1:
                with syncs.count("log", step):
                    self._log_window(window, lr, peak)
                window = dict.fromkeys(window, 0.0)
            carry = time.perf_counter() - t1
            if t.eval_interval and step % t.eval_interval == 0:
                self._log_validation()
            if self.cfg.eval.interval and step % self.cfg.eval.interval == 0:
                self._periodic_eval()
            if bad_in_a_row >= t.max_bad_steps:
                self.log.print(f"stopping: {bad_in_a_row} consecutive steps had a non-finite loss or gradient norm "
                               "and were skipped; the checkpoint holds the last good weights. Lower optim.lr, check "
                               "the data, or resume to retry.")
                code = EXIT_BAD_STEPS
                break
            if r["stop"]:  # a signal or the time limit on any rank (voted in the step's all-reduce)
                self.log.print(f"stop requested (signal or time limit) at step {step}: checkpointing, exit {EXIT_REQUEUE}")
                code = EXIT_REQUEUE
                break
            if t.save_interval and step % t.save_interval == 0 and not self._save() and t.save_failure == "stop":
                code = EXIT_SAVE_FAILED
                break
        for line in syncs.summary():
            self.log.print(line)
        if window["steps"]:
            self._log_window(window, lr, peak)
        self._read_losses(reset=False)
        saved_now = t.save_interval and self.state["step"] % t.save_interval == 0 and code == 0
        if code != EXIT_SAVE_FAILED and not saved_now and not self._save() and t.save_failure == "stop":
            code = EXIT_SAVE_FAILED
        if code == EXIT_SAVE_FAILED:
            self.log.print(f"stopping (exit {EXIT_SAVE_FAILED}): a checkpoint could not be written; the newest complete "
                           "checkpoint is intact. Free space or fix the file system, then resume.")
        if code == 0:
            if self.state["last_val_step"] != self.state["step"]:
                self._log_validation(final=True)
            if (self.state.get("last_eval") or {}).get("step") != self.state["step"]:
                self._periodic_eval()
            self.export()
        self._write_result(code)
        if code == EXIT_REQUEUE and self.rank == 0:
            # The job script requeues on this file as well as on the exit code: srun may report another
            # code when it stops the remaining tasks after the first one exits.
            (self.run_dir / REQUEUE_MARKER).write_text(f"{self.state['step']}\n")
        self.log.close()
        return code

    def _write_result(self, code: int) -> None:
        """RUN/result.json: what a sweep report reads (written at every exit, status says which)."""
        if self.rank != 0:
            return
        n, st = count_params(self.model_cfg), self.state
        status = {0: "done", EXIT_REQUEUE: "requeued", EXIT_BAD_STEPS: "stopped_bad_steps",
                  EXIT_SAVE_FAILED: "save_failed"}.get(code, "failed")
        result = {"status": status, "preset": self.cfg.model.preset, "config": self.cfg.to_dict(),
                  "step": st["step"], "samples": st["samples"], "tokens": st["tokens"],
                  "final_loss": st["last_step_loss"], "train_loss_last_interval": st["last_loss"],
                  "val_loss": st["last_val_loss"], "val_step": st["last_val_step"], "eval": st.get("last_eval"),
                  "params_total": n.total, "params_trunk": n.trunk,
                  "train_flops": st["flops"], "wall_time_s": st["wall_time"],
                  "samples_per_s": st["samples"] / st["wall_time"] if st["wall_time"] else None}
        (self.run_dir / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")

    def _read_losses(self, reset: bool) -> float | None:
        """Read the loss meter (a collective over data parallelism, and a sync): the window's mean loss."""
        mean, self.state["last_step_loss"] = self.losses.read(reset=reset)
        return mean

    def _log_window(self, w: dict, lr: float, peak: float | None) -> None:
        if w["time"] <= 0:
            return
        step = self.state["step"]
        loss = self._read_losses(reset=True)
        tflops = w["flops"] / w["time"] / self.world / 1e12
        values = {"train/loss": float("nan") if loss is None else loss, "train/lr": self.engine.get_lr()[0],
                  "train/grad_norm": _grad_norm(self.engine), "perf/samples_per_s": w["samples"] / w["time"],
                  "perf/tokens_per_s": w["tokens"] / w["time"], "perf/data_wait": w["wait"] / w["time"],
                  "perf/step_time": w["time"] / w["steps"],
                  "perf/tflops_per_device": tflops, "perf/mfu": tflops / peak if peak else None,
                  "perf/memory_gib": memory_gib(), "train/skipped_steps": self.state["skipped_steps"]}
        if loss is not None:
            self.state["last_loss"] = loss
        mfu = f" | MFU {100 * values['perf/mfu']:.1f}%" if peak else ""
        gn = values["train/grad_norm"]
        self.log.print(
            f"step {step} | samples {self.state['samples']:,} | loss {values['train/loss']:.4f} | lr {lr:.3e} | "
            f"grad norm {gn if gn is None else f'{gn:.3f}'} | {values['perf/samples_per_s']:.1f} samples/s | "
            f"{values['perf/tokens_per_s']:.0f} tok/s | data wait {100 * values['perf/data_wait']:.0f}% | "
            f"{tflops:.3f} TFLOP/s/device{mfu} | mem {values['perf/memory_gib']:.2f} GiB | "
            f"skipped {self.state['skipped_steps']}")
        self.log.scalars(step, self.state["samples"], values)


def _disk_full(rank: int) -> None:
    if rank == dist.get_world_size() - 1:
        raise OSError(28, "No space left on device (injected by train.debug_save_fail_steps)")


def _grad_norm(engine) -> float | None:
    g = engine.get_global_grad_norm()
    if g is None:
        return None
    return float(g.item() if torch.is_tensor(g) else g)


def train(cfg: Config) -> int:
    """Run `cfg` in this process (one rank of the launch); the exit code of the run."""
    # DeepSpeed's ZeRO gathers call a torch collective torch deprecated (not ours to change): noise at every save.
    warnings.filterwarnings("ignore", message=r".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    set_env_from_launcher()
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        destroy_parallel()


if __name__ == "__main__":  # torchrun / deepspeed / srun: `python -m genlip.train.trainer CONFIG ...`
    from genlip.train.cli import main

    sys.exit(main())
