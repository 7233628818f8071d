"""Parity with the authors' GenLIP module: golden numbers their code produced on our seed-0 `tiny`
weights for one packed row (tests/data/golden_reference.json; their code is not in this repository).

Checked when the file was made: flipping any of the h/w axes, the rotation convention, the MRoPE
interleave, the q/gate halves or the SwiGLU gate/up halves moves these numbers by 0.02-11."""

import json
from pathlib import Path

import pytest
import torch

from genlip.model import PackedBatch, build_model, get_preset, make_layout

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "data" / "golden_reference.json").read_text())


def test_matches_authors_module_on_identical_weights():
    cfg = get_preset(GOLDEN["preset"], vocab_size=GOLDEN["vocab_size"])
    model = build_model(cfg, seed=GOLDEN["seed"]).eval()
    scope = {"torch": torch, "make_layout": make_layout, "PackedBatch": PackedBatch}
    exec(GOLDEN["how_inputs_were_made"], scope)
    batch = scope["batch"]
    with torch.no_grad():
        h, layout = model.hidden(batch)
        h = h[0]
        logits = model.logits(h[layout.target_index])
        loss = model(batch).loss.item()
    assert h.double().abs().sum().item() == pytest.approx(GOLDEN["hidden_sum_abs"], rel=1e-6)
    n = len(GOLDEN["hidden_first_rows"])
    torch.testing.assert_close(h[:n, :8], torch.tensor(GOLDEN["hidden_first_rows"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(h[-n:, :8], torch.tensor(GOLDEN["hidden_last_rows"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[:, :8], torch.tensor(GOLDEN["target_logits_first8"]), atol=1e-6, rtol=0)
    assert loss == pytest.approx(GOLDEN["loss"], abs=1e-6)
