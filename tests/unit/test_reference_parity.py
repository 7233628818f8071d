"""Parity with the authors' GenLIP module: golden numbers their code produced on our seed-0 `tiny`
weights for one packed row (tests/data/golden_reference.json; their code is not in this repository).

Checked when the file was made: flipping any of the h/w axes, the rotation convention, the MRoPE
interleave, the q/gate halves or the SwiGLU gate/up halves moves these numbers by 0.02-11."""

import json
from pathlib import Path

from genlip.model import build_model, get_preset
from tests.helpers import assert_matches_golden

GOLDEN = json.loads((Path(__file__).resolve().parents[1] / "data" / "golden_reference.json").read_text())


def test_matches_authors_module_on_identical_weights():
    cfg = get_preset(GOLDEN["preset"], vocab_size=GOLDEN["vocab_size"])
    assert_matches_golden(build_model(cfg, seed=GOLDEN["seed"]).eval(), GOLDEN)
