"""torchrun worker for the data-parallel test of genlip-eval: every subcommand through `genlip.eval.cli.main`,
then `run_evals`, in one process group; rank 0 writes {task: result JSON, "periodic": metrics}.

Run with 1 and with 2 processes: the outputs must be identical.
"""

import argparse
import json
import os
from pathlib import Path

import torch

from genlip.eval import EvalSpec, run_evals
from genlip.eval.cli import main as eval_main
from genlip.weights import load_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--colours", required=True)
    ap.add_argument("--classes", required=True)
    ap.add_argument("--probe", required=True)
    args = ap.parse_args()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    work = args.out.parent / f"{args.out.stem}_parts"
    common = ["--image-size", "64", "--quiet"]
    runs = {
        "loss": ["loss", args.model, args.heldout],
        "caption": ["caption", args.model, args.heldout, "--max-new-tokens", "24"],
        "zeroshot": ["zeroshot", args.model, args.colours, "--classes", args.classes],
        "probe": ["probe", args.model, args.probe, "--epochs", "20"],
    }
    results = {}
    for task, argv in runs.items():
        assert eval_main(argv + common + ["--out", str(work / f"{task}.json")]) == 0, task
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            results[task] = json.loads((work / f"{task}.json").read_text())
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        results["caption_predictions"] = (work / "caption.predictions.jsonl").read_text()
    loaded = load_model(args.model)
    spec = EvalSpec(probes=["loss", "caption", "zeroshot", "probe"], loss_data=[args.heldout],
                    zeroshot_data=[args.colours], classes=args.classes, probe_train=[args.probe], image_size=64,
                    max_samples=None, max_new_tokens=24, probe_epochs=20)
    metrics = run_evals(loaded.model, spec, tokenizer_path=loaded.tokenizer)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        results["periodic"] = metrics
        args.out.write_text(json.dumps(results, indent=1, sort_keys=True))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
