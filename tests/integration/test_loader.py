"""The training loader: exact resume across restarts and DP-size changes, blending, worker processes,
what the model receives, and corruption caught at start-up and at read time."""

import re
import shutil

import pytest
import torch

from data_tools.cli import main as data_main
import numpy as np

from genlip.data.loader import LoaderSpec, MicroBatches, PackedRows, build_loader, sample_lengths
from genlip.data.packing import PackingSpec
from genlip.data.shards import DatasetError, open_dataset, read_sample
from genlip.model import build_model, get_preset, make_layout
from tests.helpers import make_raw_dataset

STEPS, G = 10, 4


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    tars, tok = make_raw_dataset(root, shards=3, per_shard=20)
    outs = []
    for name, inputs in (("a", tars), ("b", tars[:1])):
        out = root / name
        assert data_main(["build", *map(str, inputs), "--out", str(out), "--tokenizer", str(tok),
                          "--image-size", "64", "--quiet"]) == 0
        outs.append(out)
    return outs


def spec_for(paths, weights=(), **kw):
    return LoaderSpec(datasets=[str(p) for p in paths], weights=list(weights),
                      packing=PackingSpec(budget=256, max_samples_per_row=8, seed=5), global_rows=G, **kw)


def consumed(spec, steps, dp_size, start_step=0, via_loader=False):
    """[(dataset, samples...)] per global row, in global order, for `steps` steps from `start_step`."""
    per_rank = {}
    for d in range(dp_size):
        if via_loader:
            it = iter(build_loader(spec, dp_rank=d, dp_size=dp_size, rows_consumed=start_step * G))
            micro = MicroBatches(PackedRows(spec), dp_rank=d, dp_size=dp_size)
            per_rank[d] = [next(it) for _ in range(steps * micro.accum)]
        else:
            micro = MicroBatches(PackedRows(spec), dp_rank=d, dp_size=dp_size)
            per_rank[d] = [micro[k] for k in range(start_step * micro.accum, (start_step + steps) * micro.accum)]
    rows = []
    for s in range(steps):
        for d in range(dp_size):
            accum = len(per_rank[d]) // steps
            for _, infos in per_rank[d][s * accum:(s + 1) * accum]:
                rows += [(i.global_row, i.dataset, tuple(i.samples.tolist())) for i in infos]
    return rows


def test_restart_on_fewer_ranks_consumes_exactly_the_same_samples(datasets):
    spec = spec_for(datasets[:1], micro_rows=1, num_workers=0)
    full = consumed(spec, STEPS, dp_size=4)
    assert [r[0] for r in full] == list(range(STEPS * G))
    first = consumed(spec, 5, dp_size=4)
    spec2 = spec_for(datasets[:1], micro_rows=1, num_workers=2)
    resumed = consumed(spec2, STEPS - 5, dp_size=2, start_step=5, via_loader=True)  # worker processes
    assert first + resumed == full
    # every sample exactly once per epoch, epochs in order
    ds = open_dataset(datasets[0])
    source = PackedRows(spec).sources[0]
    epoch0 = source.plan.rows_in_epoch(0)
    assert STEPS * G > epoch0  # the run crosses an epoch boundary
    seen = [s for _, _, samples in full[:epoch0] for s in samples]
    assert sorted(seen) == list(range(ds.num_samples))
    epoch1 = [s for _, _, samples in full[epoch0:epoch0 + source.plan.rows_in_epoch(1)] for s in samples]
    assert epoch1 != seen[: len(epoch1)]


def test_resume_requires_whole_steps(datasets):
    with pytest.raises(ValueError, match="not a whole number of steps"):
        build_loader(spec_for(datasets[:1], micro_rows=1, num_workers=0), rows_consumed=G + 1)
    with pytest.raises(ValueError, match="not divisible by dp"):
        MicroBatches(PackedRows(spec_for(datasets[:1], micro_rows=3)), dp_rank=0, dp_size=1)


def test_blending_by_weight(datasets):
    rows = PackedRows(spec_for(datasets, weights=[3, 1], micro_rows=1))
    where = [rows.locate(r) for r in range(2000)]
    assert sum(i == 1 for i, _ in where) == 500
    for i in (0, 1):
        local = [j for k, j in where if k == i]
        assert local == list(range(len(local)))  # each dataset's rows in order, none skipped
    assert rows.row(1)[1].dataset == where[1][0]


def test_batches_are_what_the_model_takes(datasets):
    spec = spec_for(datasets[:1], micro_rows=2, num_workers=0)
    batch, infos = MicroBatches(PackedRows(spec), dp_rank=0, dp_size=1)[0]
    assert batch.pixels.dtype == torch.uint8 and batch.tokens.shape == (2, 256)
    ds = open_dataset(datasets[0])
    prompt = ds.manifest["prompt"]["ids"]
    layout = make_layout(batch.segments, 256)
    text = batch.tokens.reshape(-1)[layout.text_index].tolist()
    want = []
    for info in infos:
        for s in info.samples:
            _, t, _, _ = read_sample(ds, int(s))
            want += prompt + t.tolist()
    assert text == want
    cfg = get_preset("tiny", vocab_size=ds.manifest["tokenizer"]["vocab_size"])
    out = build_model(cfg)(batch)
    assert torch.isfinite(out.loss) and int(out.row_targets.sum()) == int(batch.segments[..., 3].sum())


def test_corrupt_bin_is_caught_by_verify_startup_and_reads(datasets, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(datasets[0], bad, ignore=shutil.ignore_patterns("packing"))
    target = bad / "shards" / "00001.image.bin"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    assert data_main(["verify", str(bad), "--quiet"]) == 1
    assert "00001.image.bin: sha256 differs" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="00001.image.bin: sha256 differs"):
        PackedRows(spec_for([bad], micro_rows=1))  # start-up check (auto = full for small datasets)
    rows = PackedRows(spec_for([bad], micro_rows=1, check="quick"))  # quick start-up: caught at read time
    with pytest.raises(DatasetError, match=r"00001\.\*\.bin: sample \d+ fails its CRC check"):
        for r in range(40):
            rows.row(r)
    # read by a worker process, the error reaches the training loop as it was raised: one line, no traceback
    with pytest.raises(DatasetError) as caught:
        for _ in zip(range(40), build_loader(spec_for([bad], micro_rows=1, check="quick", num_workers=2))):
            pass
    message = str(caught.value)
    assert re.fullmatch(r"\S+/00001\.\*\.bin: sample \d+ fails its CRC check.*", message), message
    assert "\n" not in message and "worker" not in message


def test_truncated_idx_is_caught(datasets, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(datasets[0], bad, ignore=shutil.ignore_patterns("packing"))
    idx = bad / "shards" / "00002.text.idx"
    idx.write_bytes(idx.read_bytes()[:50])
    assert data_main(["verify", str(bad), "--quiet"]) == 1
    assert "00002.text.idx" in capsys.readouterr().err
    with pytest.raises(DatasetError, match="00002.text.idx"):
        PackedRows(spec_for([bad], micro_rows=1, check="quick"))


def test_shards_open_as_they_are_read_and_stay_bounded(datasets):
    """A billion-sample dataset has ~10^5 shards: opening the dataset opens none, and reading keeps at most
    `max_open` shards (their descriptors and memory maps) open, with the same bytes as reading with all open."""
    eager = open_dataset(datasets[0], check="none")
    assert len(eager.shards) == 3 and eager.shards.num_open == 0
    expect = [[np.array(a) if a is not None else None for a in read_sample(eager, i)[:3]] for i in range(eager.num_samples)]
    assert eager.shards.num_open == 3
    lazy = open_dataset(datasets[0], check="none")
    lazy.shards.max_open = 1
    order = np.random.default_rng(0).permutation(lazy.num_samples)
    for i in order.tolist():
        got = read_sample(lazy, i)[:3]
        assert lazy.shards.num_open == 1
        for a, b in zip(got, expect[i]):
            assert (a is None and b is None) or np.array_equal(a, b)
    assert np.array_equal(lazy.lengths(6), eager.lengths(6))


def test_auto_check_at_scale_checks_sizes_then_each_shard_as_it_opens(datasets, tmp_path, monkeypatch):
    """Past ~30M samples "auto" no longer hashes the index files at start-up (68 GB at a billion samples):
    files must be present with their sizes, and a shard whose .idx was altered in place fails when opened."""
    from genlip.data import shards
    from genlip.data.indexed import HEADER_BYTES

    bad = tmp_path / "bad"
    shutil.copytree(datasets[0], bad, ignore=shutil.ignore_patterns("packing"))
    idx = bad / "shards" / "00001.text.idx"
    data = bytearray(idx.read_bytes())
    n = int(np.frombuffer(bytes(data[HEADER_BYTES - 16:HEADER_BYTES - 8]), np.int64)[0])
    data[HEADER_BYTES + 4 * n + 8] ^= 0x01  # sequence 1's pointer, same file size
    idx.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="00001.text.idx: sha256 differs"):
        open_dataset(bad)  # small: "auto" is "full"
    monkeypatch.setattr(shards, "FULL_CHECK_BYTES", 0)
    with pytest.raises(DatasetError, match="00001.text.idx: sha256 differs"):
        open_dataset(bad)  # "quick": the index files are hashed
    monkeypatch.setattr(shards, "QUICK_CHECK_BYTES", 0)
    ds = open_dataset(bad)  # "sizes"
    read_sample(ds, 0)
    with pytest.raises(DatasetError, match="00001.text.idx: sequence pointers do not follow the lengths"):
        read_sample(ds, int(ds.offsets[1]))
    (bad / "shards" / "00002.image.bin").write_bytes(b"short")
    with pytest.raises(DatasetError, match="00002.image.bin: 5 bytes, manifest says"):
        open_dataset(bad)


def test_plan_inputs_and_old_int64_plans(datasets, tmp_path):
    """The packing reads int32 lengths equal to the dataset's own; a plan stored in int64 (as plans were
    before) gives the loader the same rows as the int32 plan built now."""
    ds = open_dataset(datasets[0])
    lengths = sample_lengths(ds, len(ds.manifest["prompt"]["ids"]))
    assert lengths.dtype == np.int32 and np.array_equal(lengths, ds.lengths(len(ds.manifest["prompt"]["ids"])))
    copy = tmp_path / "copy"
    shutil.copytree(datasets[0], copy, ignore=shutil.ignore_patterns("packing"))
    spec = spec_for([copy], micro_rows=1, num_workers=0)
    new = consumed(spec, STEPS, dp_size=2)
    plan = PackedRows(spec).sources[0].plan
    for e in (0, 1):
        for path in plan._paths(e):
            assert np.load(path).dtype == np.int32
            np.save(path, np.load(path).astype(np.int64))
    assert consumed(spec, STEPS, dp_size=2) == new
    assert PackedRows(spec).sources[0].plan.epoch(0)[1].dtype == np.int64


def test_pack_builds_one_epoch_per_array_task(datasets, tmp_path):
    """`genlip-data pack --first-epoch E --epochs 1` (a SLURM array task) builds epoch E alone, the same
    files the loader would build itself."""
    copy = tmp_path / "copy"
    shutil.copytree(datasets[0], copy, ignore=shutil.ignore_patterns("packing"))
    for task in (2, 0):
        assert data_main(["pack", str(copy), "--budget", "256", "--max-samples-per-row", "8", "--seed", "5",
                          "--first-epoch", str(task), "--epochs", "1", "--check", "none"]) == 0
    plan = PackedRows(spec_for([copy])).sources[0].plan
    assert [plan.has(e) for e in range(3)] == [True, False, True]
    built = [np.load(p) for p in plan._paths(2)]
    shutil.rmtree(plan.dir)
    assert all(np.array_equal(a, b) for a, b in zip(built, PackedRows(spec_for([copy])).sources[0].plan.epoch(2)))
