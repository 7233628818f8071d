"""Run configuration: typed nested dataclasses, YAML run files, strict dotted overrides, one validate().

    cfg = load_config("run_scripts/configs/so16_stage1.yaml", ["optim.lr=3e-4", "parallel.tp=2"])

A run file holds only what differs from the defaults; `model.preset` picks a size from
`genlip.model.config.PRESETS` and any other `model.*` key overrides that preset's field. Unknown keys
are errors that list the valid ones. Every field's docstring is its help text (`genlip-train --help-config`).
"""

from __future__ import annotations

from genlip.errors import UserError

import ast
import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from genlip.eval.periodic import EvalSpec
from genlip.model.config import PRESETS, ModelConfig, get_preset


class ConfigError(UserError):
    """A run configuration that cannot work; the message says which field and what to change."""


@dataclass
class ModelSection:
    """Model size and its overrides."""

    preset: str = "tiny"
    """Named size (l16, so16, g16, l16_paper, b16, small, tiny)."""
    overrides: dict = field(default_factory=dict)
    """Fields of genlip.model.config.ModelConfig that differ from the preset (set as model.<field>=...)."""

    def build(self, vocab_size: int | None = None) -> ModelConfig:
        over = dict(self.overrides)
        if vocab_size is not None and "vocab_size" not in over:
            over["vocab_size"] = vocab_size
        return get_preset(self.preset, **over)


@dataclass
class DataSection:
    """Training and validation data."""

    datasets: list = field(default_factory=list)
    """Dataset directories made by genlip-data build."""
    weights: list = field(default_factory=list)
    """Blend weights of the datasets (default: equal)."""
    val_datasets: list = field(default_factory=list)
    """Held-out dataset directories: validation loss every train.eval_interval steps and at the end (default: none)."""
    seq_len: int = 16384
    """Token slots per packed row (the packing budget)."""
    max_samples_per_row: int = 128
    """Most samples in one row."""
    seed: int = 0
    """Packing-order seed."""
    num_workers: int = 4
    """Loader worker processes per rank."""
    check: str = "auto"
    """Dataset integrity check at start-up: auto, full, quick, none."""
    pad_vocab_to: int = 128
    """When model.vocab_size is unset, the tokenizer's vocab is padded to a multiple of this (same for any tp)."""


@dataclass
class OptimSection:
    """AdamW and the learning-rate schedule (counted in samples)."""

    lr: float = 1e-3
    """Peak learning rate (1e-3 stage 1, 1e-4 stage 2)."""
    min_lr: float = 1e-6
    """Cosine floor."""
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 0.01
    """Decoupled weight decay on matrices and embeddings (not on biases, norms, LayerScale)."""
    warmup_ratio: float = 0.007
    """Linear warm-up over this fraction of the samples (0.7%; the paper uses 2% for g/16)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""


@dataclass
class ParallelSection:
    """Parallel layout: tp x pp x dp = world size."""

    tp: int = 1
    """Tensor-parallel size (megatron-core)."""
    pp: int = 1
    """Pipeline-parallel stages (DeepSpeed pipeline engine)."""
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-3 (only 0/1 with pp > 1)."""
    pipe_partition: str = "uniform"
    """How blocks are split over pipeline stages: uniform or parameters."""


@dataclass
class TrainSection:
    """The run: batch, length, precision, checkpoints, logging."""

    total_samples: float = 8e9
    """Samples to train on (the schedule is counted in samples)."""
    global_batch_rows: int = 8
    """Packed rows per optimizer step over all data-parallel ranks."""
    micro_batch_rows: int = 1
    """Packed rows per forward/backward on one rank."""
    dtype: str = "bf16"
    """Compute dtype: bf16 (fp32 master weights) or fp32."""
    activation_checkpointing: bool = True
    """Recompute each block in the backward pass."""
    seed: int = 1234
    """Initialisation and dropout seed."""
    output_dir: str = "runs/default"
    """Run directory: checkpoints, TensorBoard logs, resolved config, DeepSpeed JSON."""
    log_interval: int = 10
    """Steps between console/TensorBoard lines."""
    eval_interval: int = 0
    """Steps between validation losses (0: only the final one, at the end of the run)."""
    eval_rows: int = 0
    """Held-out rows per validation, from each val dataset's first packing epoch (0: all of them, every
    held-out sample once)."""
    save_interval: int = 1000
    """Steps between checkpoints (0: only at the end and on signals)."""
    keep_last: int = 3
    """Checkpoints kept (older ones are deleted after a new one is complete)."""
    save_failure: str = "stop"
    """When writing a checkpoint fails (disk full, I/O error): stop (exit 74, older checkpoints intact) or warn
    (log it and keep training)."""
    time_limit_minutes: float = 0.0
    """Wall-clock budget; when reached, checkpoint and exit with the requeue code (0: none)."""
    max_bad_steps: int = 10
    """Consecutive skipped (non-finite) steps that stop the run."""
    init_from: str = ""
    """Stage 2: checkpoint directory whose model weights start this run (fresh optimizer and schedule)."""
    max_steps: int = 0
    """Stop after this many steps even if samples remain (0: no limit; for tests and smoke runs)."""
    record_samples: bool = False
    """Audit trail: write the rows and sample keys of every step to RUN/samples/dp_RANK.jsonl."""
    debug_nan_steps: list = field(default_factory=list)
    """Fault injection (tests): make the loss NaN at these steps to exercise the skip path (pp=1 only)."""
    debug_save_fail_steps: list = field(default_factory=list)
    """Fault injection (tests): the last rank fails with "No space left on device" while saving at these steps."""


@dataclass
class EvalSection(EvalSpec):
    """Evaluations during training (genlip.eval.periodic): every eval.interval steps and at the end of the run,
    logged under eval/ in TensorBoard and metrics.jsonl, and in result.json. Nothing runs while eval.probes is empty."""

    interval: int = 0
    """Steps between evaluations (0: only at the end of the run)."""


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model"] = {"preset": self.model.preset, **self.model.overrides}
        return d


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
MODEL_FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def _set(cfg: Config, dotted: str, value, source: str) -> None:
    section, _, key = dotted.partition(".")
    if section not in SECTIONS or not key:
        raise ConfigError(f"{source}: unknown key {dotted!r}; sections are {', '.join(SECTIONS)}")
    if section == "model" and key != "preset":
        if key not in MODEL_FIELDS:
            raise ConfigError(f"{source}: unknown key model.{key}; model fields: preset, {', '.join(sorted(MODEL_FIELDS))}")
        cfg.model.overrides[key] = tuple(value) if isinstance(value, list) else value
        return
    obj = getattr(cfg, section)
    names = {f.name: f for f in dataclasses.fields(obj)}
    if key not in names:
        raise ConfigError(f"{source}: unknown key {dotted!r}; {section} fields: {', '.join(names)}")
    current = getattr(obj, key)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{source}: {dotted} must be true or false, got {value!r}")
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {dotted} must be a number, got {value!r}")
        if isinstance(current, int) and not isinstance(value, int):
            if float(value).is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{source}: {dotted} must be an integer, got {value!r}")
    if isinstance(current, list) and not isinstance(value, list):
        value = [value]
    if isinstance(current, str) and not isinstance(value, str):
        value = str(value)
    setattr(obj, key, value)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and not (prefix.startswith("model") and k == "overrides"):
            out.update(_flatten(v, name + "."))
        else:
            out[name] = v
    return out


def _parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML run file <- `key=value` overrides, then `validate()`."""
    cfg = Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"run config {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
        for key, value in _flatten(raw).items():
            _set(cfg, key, value, str(path))
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        _set(cfg, key.strip(), _parse_value(text), "override")
    return cfg


def validate(cfg: Config, *, world_size: int, vocab_size: int | None = None) -> ModelConfig:
    """Check everything that can be checked before any process group exists; return the model config."""
    p, t, d = cfg.parallel, cfg.train, cfg.data
    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"model.preset={cfg.model.preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        m = cfg.model.build(vocab_size)
    except (KeyError, ValueError) as e:
        raise ConfigError(str(e).strip("'\"")) from None
    if p.tp < 1 or p.pp < 1:
        raise ConfigError(f"parallel.tp={p.tp} and parallel.pp={p.pp} must be >= 1")
    if world_size % (p.tp * p.pp):
        raise ConfigError(f"world size {world_size} is not divisible by parallel.tp x parallel.pp = {p.tp} x {p.pp}; "
                          f"launch a multiple of {p.tp * p.pp} processes")
    dp = world_size // (p.tp * p.pp)
    if m.heads % p.tp:
        raise ConfigError(f"model heads ({m.heads}) are not divisible by parallel.tp={p.tp}; pick tp from "
                          f"{[k for k in range(1, m.heads + 1) if m.heads % k == 0]}")
    if m.ffn % p.tp:
        raise ConfigError(f"model ffn ({m.ffn}) is not divisible by parallel.tp={p.tp}")
    if m.vocab_size % p.tp:
        raise ConfigError(f"model vocab_size ({m.vocab_size}) is not divisible by parallel.tp={p.tp}; leave "
                          "model.vocab_size unset to pad the tokenizer's vocabulary automatically")
    if p.pp > m.num_layers:
        raise ConfigError(f"parallel.pp={p.pp} is more than the model's {m.num_layers} layers")
    if p.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"parallel.zero_stage={p.zero_stage} must be 0, 1, 2 or 3")
    if p.pp > 1 and p.zero_stage > 1:
        raise ConfigError(f"parallel.zero_stage={p.zero_stage} does not work with pipeline parallelism "
                          f"(parallel.pp={p.pp}); use zero_stage 0 or 1")
    if p.pipe_partition not in ("uniform", "parameters"):
        raise ConfigError(f"parallel.pipe_partition={p.pipe_partition!r}: choose uniform or parameters")
    if t.global_batch_rows % (dp * t.micro_batch_rows):
        raise ConfigError(f"train.global_batch_rows={t.global_batch_rows} must be a multiple of dp x "
                          f"train.micro_batch_rows = {dp} x {t.micro_batch_rows} = {dp * t.micro_batch_rows}")
    if t.save_failure not in ("stop", "warn"):
        raise ConfigError(f"train.save_failure={t.save_failure!r}: choose stop or warn")
    if t.dtype not in ("bf16", "fp32"):
        raise ConfigError(f"train.dtype={t.dtype!r}: choose bf16 or fp32")
    if t.total_samples <= 0 or not math.isfinite(t.total_samples):
        raise ConfigError(f"train.total_samples={t.total_samples} must be a positive number")
    if d.seq_len < 16 or d.max_samples_per_row < 1:
        raise ConfigError(f"data.seq_len={d.seq_len} and data.max_samples_per_row={d.max_samples_per_row} are too small")
    if not 0 <= cfg.optim.warmup_ratio < 1:
        raise ConfigError(f"optim.warmup_ratio={cfg.optim.warmup_ratio} must be in [0, 1)")
    if cfg.eval.probes:
        try:
            cfg.eval.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if cfg.eval.interval < 0:
        raise ConfigError(f"eval.interval={cfg.eval.interval} must be >= 0")
    if d.weights and len(d.weights) != len(d.datasets):
        raise ConfigError(f"data.weights has {len(d.weights)} entries for {len(d.datasets)} datasets")
    return m


def padded_vocab(vocab: int, multiple: int) -> int:
    return -(-vocab // multiple) * multiple


def field_help() -> str:
    """Every key with its default and help text (the field docstrings)."""
    lines = []
    for section, cls in ((s, globals()[t] if isinstance(t, str) else t) for s, t in SECTIONS.items()):
        lines.append(f"{section}:")
        docs = _field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {section}.{f.name} = {default!r}\n      {docs.get(f.name, '')}")
    lines.append("model.<field>: any of " + ", ".join(sorted(MODEL_FIELDS)))
    return "\n".join(lines)


def _field_docs(cls) -> dict[str, str]:
    """Docstrings written under dataclass fields (attribute docstrings), base classes included."""
    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for a, b in zip(body, body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(getattr(b, "value", None), ast.Constant):
                docs[a.target.id] = str(b.value.value)
    return docs
