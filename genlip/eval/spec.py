"""What to evaluate during training (the `eval.*` config section); imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass, field

TASKS = ("loss", "caption", "zeroshot", "probe")


@dataclass
class EvalSpec:
    """Which evaluations to run during training, on what, and how much."""

    probes: list[str] = field(default_factory=list)
    """Evaluations to run: any of loss, caption, zeroshot, probe."""
    loss_data: list[str] = field(default_factory=list)
    """Captioned held-out data for `loss` (shard directories or raw files)."""
    caption_data: list[str] = field(default_factory=list)
    """Captioned held-out data for `caption` (default: loss_data)."""
    zeroshot_data: list[str] = field(default_factory=list)
    """Labelled images for `zeroshot` (ImageFolder trees, or raw files with label_field)."""
    classes: str = ""
    """Class file for `zeroshot` (JSON/YAML with classes and templates, or one class per line)."""
    probe_train: list[str] = field(default_factory=list)
    """Labelled images the probes are trained on."""
    probe_test: list[str] = field(default_factory=list)
    """Labelled held-out images for the probes (default: probe_test_fraction of probe_train)."""
    probe_test_fraction: float = 0.25
    """Share of each class of probe_train held out when probe_test is empty."""
    label_field: str | None = None
    """Raw inputs: JSON field / column of the class label (`cls`: a tar's KEY.cls)."""
    image_size: int = 224
    """Side of raw images (resize + center crop, as stage-1 training); shard directories keep theirs."""
    max_samples: int | None = 512
    """Samples per evaluation (the first ones of each set; None: all)."""
    max_new_tokens: int = 64
    """Longest greedy caption."""
    probe_epochs: int = 50
    """Attentive probe epochs."""
    seed: int = 0
    """Probe seed (initialisation, shuffling, split)."""

    def validate(self) -> None:
        unknown = set(self.probes) - set(TASKS)
        if unknown:
            raise ValueError(f"eval probes {sorted(unknown)} unknown; choose from {', '.join(TASKS)}")
        needs = {"loss": self.loss_data, "caption": self.caption_data or self.loss_data,
                 "zeroshot": self.zeroshot_data, "probe": self.probe_train}
        for task in self.probes:
            if not needs[task]:
                raise ValueError(f"eval probe {task!r} has no data; set its data field in EvalSpec")
        if "zeroshot" in self.probes and not self.classes:
            raise ValueError("eval probe 'zeroshot' needs a classes file")
