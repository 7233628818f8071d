"""torchrun worker: a TP=world GenLIP against the single-process model on the same full weights.

Every rank builds the plain model (seed 0), loads its full state dict into the TP model, runs the same
packed batch through both, and compares loss, full-vocabulary logits at the target slots and every
gradient (gathered to full shape). Rank 0 writes the max differences as JSON.
"""

import argparse
import json

import torch

from genlip.model import build_model, get_preset
from genlip.model.init import load_full_state_dict
from genlip.parallel.tensor_parallel import build_tp_model, gather_full_state_dict
from megatron_ext import destroy_parallel, init_parallel
from tests.helpers import MIXED_SEGMENTS, make_batch


def run(model, batch):
    model.zero_grad()
    out = model(batch)
    out.loss.backward()
    with torch.no_grad():
        h, layout = model.hidden(batch)
        logits = model.logits(h.reshape(-1, h.shape[-1])[layout.target_index])
    return out.loss.detach(), logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    init_parallel(tp=torch.distributed.get_world_size() if torch.distributed.is_initialized() else int(
        __import__("os").environ["WORLD_SIZE"]))
    cfg = get_preset(args.preset, vocab_size=1024)
    batch = make_batch(MIXED_SEGMENTS, 40, cfg.vocab_size, cfg.patch_dim, seed=1)

    ref = build_model(cfg, seed=0)
    tp_model = build_tp_model(cfg, seed=None)
    load_full_state_dict(tp_model, ref.state_dict())
    same_init = build_tp_model(cfg, seed=0)  # layout-independent init: equal to ref without copying

    ref_loss, ref_logits = run(ref, batch)
    tp_loss, tp_logits = run(tp_model, batch)
    tp_grads = gather_full_state_dict(tp_model, grads=True)
    init_full = gather_full_state_dict(same_init)

    grad_diff = {n: (tp_grads[n] - p.grad).abs().max().item() for n, p in ref.named_parameters()}
    result = {
        "loss": [ref_loss.item(), tp_loss.item()],
        "logits_shape": [list(ref_logits.shape), list(tp_logits.shape)],
        "logits_max_diff": (ref_logits - tp_logits).abs().max().item(),
        "grad_max_diff": grad_diff,
        "grad_max_abs": max(p.grad.abs().max().item() for p in ref.parameters()),
        "init_max_diff": max((init_full[n] - p).abs().max().item() for n, p in ref.named_parameters()),
        "num_params": len(grad_diff),
        # the plain kit's declared split (offline tools use it) against the split the TP kit made
        "plan_mismatch": [n for n, p in tp_model.named_parameters()
                          if getattr(p, "tp_split", (None, None))[:2] != getattr(dict(ref.named_parameters())[n], "tp_plan",
                                                                                 (None, None))],
    }
    if torch.distributed.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(result, f)
    destroy_parallel()


if __name__ == "__main__":
    main()
