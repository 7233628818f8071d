"""Which checkpoint a run resumes from: the newest complete and intact one, found by scanning (not by
`latest`), with damaged ones named and skipped; pruning and name collisions never delete a complete
checkpoint. Real files and hashes, a real one-process gloo group."""

import json

import pytest
import torch.distributed as dist

from genlip.train.checkpoint import _prune, _set_aside, _shared_hashes, find_resumable
from genlip.weights.deepspeed_files import STATE_FILE


@pytest.fixture
def group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def make_ckpt(root, step, *, complete=True):
    d = root / f"step{step:09d}"
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * (step + 1))
    (d / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"adam" * 100 * step)
    if complete:
        files = _shared_hashes(d, sorted(p.name for p in d.iterdir()))
        (d / STATE_FILE).write_text(json.dumps({"progress": {"step": step}, "files": files}))
    return d


def scan(root):
    said = []
    found = find_resumable(root, log=said.append)
    return (found[0] if found else None), " ".join(said)


def test_newest_complete_is_found_without_latest(tmp_path, group):
    root = tmp_path / "ck"
    for s in (4, 8):
        make_ckpt(root, s)
    make_ckpt(root, 12, complete=False)  # a save killed half-way
    assert not (root / "latest").exists()
    assert scan(root) == ("step000000008", "")


@pytest.mark.parametrize("damage", ["delete_model", "truncate_optim", "flip_byte", "bad_state"])
def test_damaged_newest_falls_back_and_is_named(tmp_path, group, damage):
    root = tmp_path / "ck"
    make_ckpt(root, 4)
    d = make_ckpt(root, 8)
    model, optim = d / "mp_rank_00_model_states.pt", d / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    if damage == "delete_model":
        model.unlink()
    elif damage == "truncate_optim":
        optim.write_bytes(optim.read_bytes()[:-10])
    elif damage == "flip_byte":
        data = bytearray(model.read_bytes())
        data[100] ^= 0xFF
        model.write_bytes(bytes(data))
    else:
        (d / STATE_FILE).write_text("{not json")
    tag, said = scan(root)
    assert tag == "step000000004"
    named = {"delete_model": "mp_rank_00_model_states.pt is missing", "truncate_optim": "optim_states.pt has",
             "flip_byte": "mp_rank_00_model_states.pt does not match its sha256", "bad_state": "is unreadable"}[damage]
    assert "step000000008 is damaged" in said and named in said, said
    assert d.is_dir()  # reported and kept, never deleted


def test_nothing_intact_means_a_fresh_start(tmp_path, group):
    root = tmp_path / "ck"
    (make_ckpt(root, 4) / "mp_rank_00_model_states.pt").unlink()
    assert scan(root)[0] is None


def test_a_save_never_overwrites_a_damaged_checkpoint(tmp_path):
    d = tmp_path / "step000000008"
    d.mkdir()
    (d / STATE_FILE).write_text("{}")
    _set_aside(d)
    assert not d.exists() and (tmp_path / "step000000008.damaged" / STATE_FILE).is_file()
    partial = tmp_path / "step000000012"
    partial.mkdir()
    _set_aside(partial)  # an interrupted save (no state file) is not a checkpoint: removed
    assert not partial.exists()


def test_prune_keeps_the_newest_and_never_touches_later_ones(tmp_path, group):
    root = tmp_path / "ck"
    for s in (4, 8, 12, 20):
        make_ckpt(root, s)
    make_ckpt(root, 2, complete=False)
    _prune(root, keep_last=2, newest="step000000012")
    assert sorted(p.name for p in root.iterdir()) == ["step000000008", "step000000012", "step000000020"]


def test_ckpt_cli_verify_names_damage(tmp_path, capsys):
    from genlip.train.ckpt_cli import main as ckpt_main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg2'}", rank=0, world_size=1)
    try:
        root = tmp_path / "run" / "checkpoints"
        make_ckpt(root, 4)
        d = make_ckpt(root, 8)
    finally:
        dist.destroy_process_group()
    assert ckpt_main(["verify", str(tmp_path / "run")]) == 0
    data = bytearray((d / "mp_rank_00_model_states.pt").read_bytes())
    data[7] ^= 1
    (d / "mp_rank_00_model_states.pt").write_bytes(bytes(data))
    assert ckpt_main(["inspect", str(tmp_path / "run")]) == 0  # sizes only: a flipped byte needs verify
    assert ckpt_main(["verify", str(tmp_path / "run")]) == 1
    out = capsys.readouterr().out
    assert "step000000004" in out and "step000000008" in out and "does not match its sha256" in out

