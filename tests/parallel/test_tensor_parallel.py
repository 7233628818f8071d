"""TP=2 and TP=4 (megatron-core layers, gloo) equal TP=1 on the same full weights: loss, logits, grads."""

import pytest

from tests.helpers import run_torchrun


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_matches_single_process(tp, tmp_path):
    r = run_torchrun("tests/parallel/tp_worker.py", tp, tmp_path / "result.json")
    ref_loss, tp_loss = r["loss"]
    assert abs(ref_loss - tp_loss) <= 1e-6 * abs(ref_loss)
    assert r["logits_shape"][0] == r["logits_shape"][1]
    assert r["logits_max_diff"] < 1e-5
    assert r["num_params"] == len(r["grad_max_diff"]) > 20
    worst = max(r["grad_max_diff"].items(), key=lambda kv: kv[1])
    assert worst[1] < 1e-6 * max(1.0, r["grad_max_abs"]), worst
    assert r["init_max_diff"] == 0.0  # same seed -> same weights under any TP layout
    assert r["plan_mismatch"] == []  # the plain kit declares exactly the splits the TP kit makes
