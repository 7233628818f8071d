"""Validation means something: it covers the whole held-out set by default (every sample once, checked
against the exported model scored sample by sample, outside the trainer), `train.eval_rows` changes
what it sees, it runs at the end of every run, and result.json carries the final numbers. Periodic
evaluations (eval.*) run at their interval and at the end, logged under eval/, the same under TP=2 as in
one process."""

import json

import pytest
import torch

from genlip.data.images import decode_stored
from genlip.data.images import patchify_uint8
from genlip.data.shards import open_dataset, read_sample
from genlip.model import PackedBatch
from genlip.weights import load_model
from tests.helpers import build_tiny_dataset, read_metrics, run_train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("validation")
    build_tiny_dataset(root, shards=1)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny}}
data: {{datasets: [{root / 'ds'}], val_datasets: [{root / 'ds'}], seq_len: 128, max_samples_per_row: 8,
       num_workers: 0}}
train: {{total_samples: 1.0e6, max_steps: 3, global_batch_rows: 2, dtype: fp32, log_interval: 1, save_interval: 0}}
""")
    return root, config


def held_out_loss(model_dir, data_dir) -> float:
    """Token mean of the caption loss over every sample, each run alone (no packing, no plan)."""
    model = load_model(model_dir).model
    ds = open_dataset(data_dir)
    prompt = list(ds.manifest["prompt"]["ids"])
    total = count = 0.0
    for i in range(ds.num_samples):
        image, text, _, meta = read_sample(ds, i)
        h, w = int(meta["grid_h"]), int(meta["grid_w"])
        pixels = torch.from_numpy(patchify_uint8(decode_stored(image, (h, w), ds.image_mode), 16))
        tokens = torch.tensor([[0] * (h * w) + prompt + text.tolist()])
        out = model(PackedBatch(pixels, tokens, torch.tensor([[[h, w, len(prompt), len(text)]]])))
        total += float(out.row_loss_sum.sum())
        count += int(out.row_targets.sum())
    return total / count


def test_final_validation_covers_the_whole_held_out_set(setup):
    root, config = setup
    run = root / "full"
    proc = run_train(1, config, f"train.output_dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final validation loss" in proc.stdout
    metrics = read_metrics(run)
    result = json.loads((run / "result.json").read_text())
    assert result["val_step"] == 3 and result["val_loss"] == metrics[3]["val/loss"]
    assert result["final_loss"] == pytest.approx(metrics[3]["train/loss"])  # the last step, log_interval 1
    with torch.no_grad():
        expected = held_out_loss(run, root / "ds")
    assert result["val_loss"] == pytest.approx(expected, rel=1e-5)


def test_eval_rows_changes_what_validation_sees(setup):
    root, config = setup
    run = root / "rows1"
    proc = run_train(1, config, f"train.output_dir={run}", "train.eval_rows=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(1 held-out rows" in proc.stdout
    one_row = json.loads((run / "result.json").read_text())["val_loss"]
    full = json.loads((root / "full" / "result.json").read_text())["val_loss"]
    assert abs(one_row - full) > 1e-4 * full, (one_row, full)  # same weights (same seed, data, steps)


def test_periodic_evaluation_runs_under_any_layout(setup):
    root, config = setup
    from genlip.data.synthetic import class_templates, write_imagefolder

    write_imagefolder(root / "colours", attribute="colour", per_class=3, seed=2, size=64,
                      fixed={"size": "large", "shape": "circle"})
    classes = root / "colours.yaml"
    classes.write_text(json.dumps({"classes": sorted(p.name for p in (root / "colours").iterdir()),
                                   "templates": class_templates("colour", {"size": "large", "shape": "circle"})}))
    evals = ["eval.probes=[loss,zeroshot,probe]", f"eval.loss_data=[{root / 'ds'}]", f"eval.zeroshot_data=[{root / 'colours'}]",
             f"eval.classes={classes}", f"eval.probe_train=[{root / 'colours'}]", "eval.probe_test_fraction=0.34",
             "eval.image_size=64", "eval.probe_epochs=5", "eval.interval=2", "train.max_steps=3"]
    results = {}
    for name, nproc, layout in (("eval1", 1, []), ("eval_tp2", 2, ["parallel.tp=2"])):
        proc = run_train(nproc, config, f"train.output_dir={root / name}", *evals, *layout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        logged = read_metrics(root / name)
        assert {k for k in logged[2] if k.startswith("eval/")} == {k for k in logged[3] if k.startswith("eval/")}
        results[name] = json.loads((root / name / "result.json").read_text())["eval"]
    one, tp2 = results["eval1"], results["eval_tp2"]
    assert one["step"] == 3 and {"eval/loss/loss", "eval/zeroshot/top1", "eval/probe/linear_top1"} <= set(one)
    assert one.keys() == tp2.keys()
    for k in one:  # the same weights up to reduction order
        assert tp2[k] == pytest.approx(one[k], rel=1e-4, abs=1e-6), k

