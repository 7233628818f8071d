"""Zero-shot classification by caption likelihood.

Each class name is put into each template ("a photo of a {}."); the score of class c for an image is

    score(c) = log( mean over templates t of p(t(c) + end tokens | image, prompt) )

the log-likelihood of the class's captions averaged in probability space (a uniform mixture over
templates: the best-fitting template dominates, and no template needs to fit every class). Image +
prompt run once per image (KV cache); every candidate caption is scored as a continuation of it
(`genlip.model.generate.score_continuations`). `cached=False` scores each `[image][prompt][caption]`
with a plain packed forward instead (the reference the cache is tested against; much slower).

Class files: JSON or YAML `{"classes": [...], "templates": ["a photo of a {}.", ...], "labels": [...]}`
(`labels`, optional, maps the data's label values to the classes in order; default: the class names
themselves), or a text file with one class per line and the default template.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from genlip.eval.batching import Sequence, score_sequences
from genlip.eval.dist import EvalGroup
from genlip.eval.inputs import EvalData, EvalInputError, EvalSample, need_labels
from genlip.model.generate import score_continuations

DEFAULT_TEMPLATES = ["a photo of a {}."]


@dataclass
class ClassSpec:
    classes: list[str]
    """Class names, put into the templates."""
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    """Caption templates with one `{}` for the class name."""
    labels: list[str] | None = None
    """The data's label value of each class (default: the class names)."""

    def label_index(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels or self.classes)}


def load_classes(path: str | Path) -> ClassSpec:
    """Read a class file (see module docstring); errors name the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"class file {path} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        classes = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        spec = ClassSpec(classes)
    elif suffix in (".json", ".yaml", ".yml"):
        try:
            if suffix == ".json":
                obj = json.loads(text)
            else:
                import yaml

                obj = yaml.safe_load(text)
        except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
            raise EvalInputError(f"class file {path} is not valid {suffix[1:].upper()}: {e}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("classes"), list):
            raise EvalInputError(f"class file {path}: expected an object with a \"classes\" list (and optionally "
                                 "\"templates\" and \"labels\" lists)")
        unknown = set(obj) - {"classes", "templates", "labels"}
        if unknown:
            raise EvalInputError(f"class file {path}: unknown key(s) {sorted(unknown)}; allowed: classes, templates, "
                                 "labels")
        spec = ClassSpec([str(c) for c in obj["classes"]], [str(t) for t in obj.get("templates") or DEFAULT_TEMPLATES],
                         [str(x) for x in obj["labels"]] if obj.get("labels") is not None else None)
    else:
        raise EvalInputError(f"class file {path}: unknown format {suffix or '(no suffix)'!r}; use .json, .yaml/.yml "
                             "({\"classes\": [...], \"templates\": [...]}) or .txt (one class per line)")
    _validate(spec, path)
    return spec


def _validate(spec: ClassSpec, path: Path) -> None:
    if len(spec.classes) < 2:
        raise EvalInputError(f"class file {path}: needs at least 2 classes, found {len(spec.classes)}")
    if len(set(spec.classes)) != len(spec.classes):
        raise EvalInputError(f"class file {path}: class names repeat")
    bad = [t for t in spec.templates if t.count("{}") != 1]
    if bad:
        raise EvalInputError(f"class file {path}: every template needs exactly one {{}} for the class name: {bad[0]!r}")
    if spec.labels is not None and (len(spec.labels) != len(spec.classes) or len(set(spec.labels)) != len(spec.labels)):
        raise EvalInputError(f"class file {path}: \"labels\" must list one distinct label per class")


def candidate_ids(spec: ClassSpec, tokenizer) -> list[list[int]]:
    """Token ids of every (class, template) caption + end tokens, class-major."""
    out = []
    for c in spec.classes:
        for t in spec.templates:
            ids = tokenizer.encode(t.format(c))
            if not ids:
                raise EvalInputError(f"template {t!r} with class {c!r} gives an empty caption")
            out.append(ids + tokenizer.end_ids)
    return out


def label_keeper(spec: ClassSpec):
    """`keep` filter: every sample needs a label that is one of the classes (an error otherwise)."""
    index = spec.label_index()
    has_label = need_labels("zeroshot")

    def keep(sample: EvalSample):
        has_label(sample)
        if sample.label not in index:
            shown = ", ".join(list(index)[:8])
            raise EvalInputError(f"{sample.key}: label {sample.label!r} is not in the class file ({shown}"
                                 f"{', ...' if len(index) > 8 else ''}); add a \"labels\" list mapping the data's "
                                 "labels to the classes")
        return None

    return keep


@torch.no_grad()
def class_scores(model, samples: list[EvalSample], candidates: list[list[int]], num_classes: int, *,
                 cached: bool = True, batch_size: int = 8, max_rows: int = 256,
                 row_tokens: int = 1024) -> dict[int, torch.Tensor]:
    """{sample index: [num_classes] float64 class scores} for one chunk of samples."""
    T = len(candidates) // num_classes
    device = next(model.parameters()).device
    groups: dict[tuple, list[EvalSample]] = defaultdict(list)
    for s in samples:
        groups[(s.grid, tuple(s.prompt))].append(s)
    out: dict[int, torch.Tensor] = {}
    for (grid, prompt), members in groups.items():
        for lo in range(0, len(members), batch_size):
            part = members[lo:lo + batch_size]
            if cached:
                pixels = torch.stack([torch.from_numpy(s.pixels) for s in part]).to(device)
                logp = score_continuations(model, pixels, grid, list(prompt), candidates, max_rows=max_rows)
            else:
                seqs = [Sequence(s.pixels, grid, list(prompt), c) for s in part for c in candidates]
                scores = score_sequences(model, seqs, row_tokens=row_tokens)
                logp = torch.tensor([-x.nll for x in scores], dtype=torch.float64).view(len(part), -1)
            per_class = torch.logsumexp(logp.view(len(part), num_classes, T), dim=-1) - math.log(T)
            for s, row in zip(part, per_class):
                out[s.index] = row
    return out


def run_zeroshot(model, data: EvalData, spec: ClassSpec, group: EvalGroup, *, cached: bool = True,
                 batch_size: int = 8, max_rows: int = 256, progress: bool = True) -> dict:
    """Top-1/top-5/per-class accuracy of caption-likelihood classification (same result on every rank)."""
    if data.tokenizer is None:
        raise EvalInputError("zeroshot needs a tokenizer (--tokenizer, or a model exported with one)")
    candidates = candidate_ids(spec, data.tokenizer)
    data.keep = label_keeper(spec)
    mine: dict[int, list[float]] = {}
    for chunk in data.chunks(group, desc="zeroshot", progress=progress):
        for i, row in class_scores(model, chunk, candidates, len(spec.classes), cached=cached,
                                   batch_size=batch_size, max_rows=max_rows).items():
            mine[i] = row.tolist()
    scores = group.gather_indexed(mine)
    left_out = data.left_out_counts(group)
    if not scores:
        raise EvalInputError(f"zeroshot: no images could be read from {', '.join(map(str, data.paths))}")
    index = spec.label_index()
    truth = torch.tensor([index[data.samples[i].label] for i in scores])
    S = torch.tensor(list(scores.values()), dtype=torch.float64)
    C = len(spec.classes)
    k = min(5, C)
    top = S.topk(k, dim=1).indices  # ties: torch picks the lower index first on CPU
    hit1 = top[:, 0] == truth
    hit5 = (top == truth[:, None]).any(1)
    per_class = {spec.classes[c]: float(hit1[truth == c].double().mean()) for c in range(C) if (truth == c).any()}
    result = {
        "task": "zeroshot", "images": len(scores), "left_out": left_out, "classes": C,
        "templates": len(spec.templates), "top1": float(hit1.double().mean()),
        "top5": float(hit5.double().mean()) if C >= 5 else None, "chance_top1": 1.0 / C,
        "chance_top5": min(5, C) / C if C >= 5 else None,
        "mean_per_class": sum(per_class.values()) / len(per_class), "per_class": per_class,
        "score": "log of the template-averaged caption probability (probability space)",
    }
    result["predictions"] = [{"key": data.samples[i].key, "label": data.samples[i].label,
                              "top5": [spec.classes[j] for j in top[r].tolist()]}
                             for r, i in enumerate(scores)]
    return result
