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

from genlip.eval.spec import EvalSpec
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
    """Dataset integrity check at start-up: auto, full, quick, sizes, none (genlip.data.shards.open_dataset)."""
    pad_vocab_to: int = 128
    """When model.vocab_size is unset, the tokenizer's vocab is padded to a multiple of this (same for any tp)."""


@dataclass
class OptimSection:
    """AdamW and the learning-rate schedule (counted in samples)."""

    lr: float = 1e-3
    """Peak learning rate (1e-3 stage 1, 1e-4 stage 2; 0 freezes the weights)."""
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
    """Checkpoints kept (older ones are deleted after a new one is complete; 0: keep all)."""
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
        value = _coerce(dotted, getattr(ModelConfig(), key), value, source)
        cfg.model.overrides[key] = tuple(value) if isinstance(value, list) else value
        return
    obj = getattr(cfg, section)
    names = {f.name: f for f in dataclasses.fields(obj)}
    if key not in names:
        raise ConfigError(f"{source}: unknown key {dotted!r}; {section} fields: {', '.join(names)}")
    if value is None and "None" in str(names[key].type):  # optional keys (eval.max_samples: null = all)
        setattr(obj, key, None)
        return
    setattr(obj, key, _coerce(dotted, getattr(obj, key), value, source))


def _coerce(dotted: str, current, value, source: str):
    """`value` in the type of the key's default (`current`), or ConfigError naming the key."""
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {dotted} must be true or false, got {value!r}")
        return value
    if isinstance(current, (int, float)):
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: {dotted} must be a number, got {value!r}")
        if isinstance(current, int) and not isinstance(value, int):
            if not float(value).is_integer():
                raise ConfigError(f"{source}: {dotted} must be an integer, got {value!r}")
            value = int(value)
        return value
    if isinstance(current, (list, tuple)):
        if isinstance(value, dict) or value is None:
            raise ConfigError(f"{source}: {dotted} must be a list, got {value!r}")
        return list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(current, str):
        if isinstance(value, (list, dict)) or value is None:
            raise ConfigError(f"{source}: {dotted} must be a string, got {value!r}")
        return str(value)
    return value


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


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file; give a YAML run config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML ({what}); fix that line") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, ...), got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- YAML run file <- `key=value` overrides; types and ranges are checked (`check_values`)."""
    cfg = Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"run config {path} does not exist")
        for key, value in _flatten(_read_yaml(path)).items():
            _set(cfg, key, value, str(path))
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        _set(cfg, key.strip(), _parse_value(text), "override")
    check_values(cfg)
    return cfg


# Allowed values of each numeric key (every number must also be finite). Checked before any cross-field
# rule, so those never divide by zero or compare with NaN.
_POSITIVE, _NON_NEGATIVE, _AT_LEAST_1 = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0"), (lambda v: v >= 1, ">= 1")
_FRACTION, _OPEN_FRACTION = (lambda v: 0 <= v < 1, "in [0, 1)"), (lambda v: 0 < v < 1, "in (0, 1)")
RANGES = {
    "data.seq_len": (lambda v: v >= 16, ">= 16"), "data.max_samples_per_row": _AT_LEAST_1, "data.seed": _NON_NEGATIVE,
    "data.num_workers": _NON_NEGATIVE, "data.pad_vocab_to": _AT_LEAST_1, "data.weights": _POSITIVE,
    "optim.lr": _NON_NEGATIVE, "optim.min_lr": _NON_NEGATIVE, "optim.betas": _FRACTION, "optim.eps": _POSITIVE,
    "optim.weight_decay": _NON_NEGATIVE, "optim.warmup_ratio": _FRACTION, "optim.grad_clip": _NON_NEGATIVE,
    "parallel.tp": _AT_LEAST_1, "parallel.pp": _AT_LEAST_1, "parallel.zero_stage": (lambda v: v in (0, 1, 2, 3), "0, 1, 2 or 3"),
    "train.total_samples": _POSITIVE, "train.global_batch_rows": _AT_LEAST_1, "train.micro_batch_rows": _AT_LEAST_1,
    "train.seed": _NON_NEGATIVE, "train.log_interval": _AT_LEAST_1, "train.eval_interval": _NON_NEGATIVE,
    "train.eval_rows": _NON_NEGATIVE, "train.save_interval": _NON_NEGATIVE, "train.keep_last": _NON_NEGATIVE,
    "train.time_limit_minutes": _NON_NEGATIVE, "train.max_bad_steps": _AT_LEAST_1, "train.max_steps": _NON_NEGATIVE,
    "train.debug_nan_steps": _AT_LEAST_1, "train.debug_save_fail_steps": _AT_LEAST_1,
    "eval.interval": _NON_NEGATIVE, "eval.probe_test_fraction": _OPEN_FRACTION, "eval.image_size": _AT_LEAST_1,
    "eval.max_samples": _AT_LEAST_1, "eval.max_new_tokens": _AT_LEAST_1, "eval.probe_epochs": _AT_LEAST_1,
    "eval.seed": _NON_NEGATIVE,
}
CHOICES = {"data.check": ("auto", "full", "quick", "sizes", "none"), "train.dtype": ("bf16", "fp32"),
           "train.save_failure": ("stop", "warn"), "parallel.pipe_partition": ("uniform", "parameters")}
INT_LISTS = {"train.debug_nan_steps", "train.debug_save_fail_steps"}
STR_LISTS = {"data.datasets", "data.val_datasets", "eval.probes", "eval.loss_data", "eval.caption_data",
             "eval.zeroshot_data", "eval.probe_train", "eval.probe_test"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_values(cfg: Config) -> None:
    """Types, finiteness, ranges and choices of every key (ConfigError naming the first bad one)."""
    for section in SECTIONS:
        if section == "model":
            continue
        for name, value in dataclasses.asdict(getattr(cfg, section)).items():
            key = f"{section}.{name}"
            items = value if isinstance(value, list) else [value]
            if key in STR_LISTS and not all(isinstance(v, str) and v for v in items):
                raise ConfigError(f"{key} must be a list of non-empty strings (paths or names), got {value!r}")
            if key in INT_LISTS and not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                raise ConfigError(f"{key} must be a list of integers, got {value!r}")
            if key in ("optim.betas", "data.weights") and not all(_is_number(v) for v in items):
                raise ConfigError(f"{key} must be a list of numbers, got {value!r}")
            if key == "optim.betas" and len(items) != 2:
                raise ConfigError(f"optim.betas must be two numbers [beta1, beta2], got {value!r}")
            numbers = [v for v in items if _is_number(v)]
            if any(not math.isfinite(v) for v in numbers):
                raise ConfigError(f"{key}={value!r} must be a finite number")
            if key in RANGES:
                ok, need = RANGES[key]
                if not all(ok(v) for v in numbers):
                    raise ConfigError(f"{key}={value!r} must be {need}")
            if key in CHOICES and value not in CHOICES[key]:
                raise ConfigError(f"{key}={value!r}: choose one of {', '.join(CHOICES[key])}")
    if cfg.optim.min_lr > cfg.optim.lr:
        raise ConfigError(f"optim.min_lr={cfg.optim.min_lr} is above optim.lr={cfg.optim.lr}")


def validate(cfg: Config, *, world_size: int, vocab_size: int | None = None) -> ModelConfig:
    """Check everything that can be checked before any process group exists; return the model config."""
    check_values(cfg)
    p, t, d = cfg.parallel, cfg.train, cfg.data
    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"model.preset={cfg.model.preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        m = cfg.model.build(vocab_size)
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError(str(e).strip("'\"")) from None
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
    if p.pp > 1 and p.zero_stage > 1:
        raise ConfigError(f"parallel.zero_stage={p.zero_stage} does not work with pipeline parallelism "
                          f"(parallel.pp={p.pp}); use zero_stage 0 or 1")
    if t.global_batch_rows % (dp * t.micro_batch_rows):
        raise ConfigError(f"train.global_batch_rows={t.global_batch_rows} must be a multiple of dp x "
                          f"train.micro_batch_rows = {dp} x {t.micro_batch_rows} = {dp * t.micro_batch_rows}")
    if cfg.eval.probes:
        try:
            cfg.eval.validate()
        except ValueError as e:
            raise ConfigError(str(e)) from None
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
