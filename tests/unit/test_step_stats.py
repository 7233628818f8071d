"""The training loop's sync-free step numbers: the loss meter's window and newest-good-step values, the host
all-reduce, and the sync counter's bookkeeping (CUDA's sync-debug warnings simulated on CPU)."""

import warnings

import pytest
import torch
import torch.distributed as dist

from genlip.train import step_stats
from genlip.train.step_stats import LossMeter, SyncCounter, host_all_reduce, init_host_group
from tests.helpers import free_port


@pytest.fixture
def single_process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_loss_meter_window_mean_and_newest_loss():
    m = LossMeter(dp=1)
    assert m.read() == (None, None)
    for v in (1.0, 2.0, 4.5):
        m.add(torch.tensor(v, dtype=torch.float32))
    assert m.read(reset=False) == (pytest.approx(2.5), 4.5)  # a checkpoint reads without ending the window
    m.add(torch.tensor(0.5))
    assert m.read() == (pytest.approx(2.0), 0.5)  # mean of 1, 2, 4.5, 0.5
    assert m.read() == (None, 0.5)  # nothing new: the window is empty, the newest loss stays
    m.add(torch.tensor([3.0]))
    assert m.read() == (pytest.approx(3.0), 3.0)


def test_loss_meter_keeps_float64_sums():
    m = LossMeter(dp=1)
    for _ in range(1000):
        m.add(torch.tensor(0.1, dtype=torch.float32))
    mean, last = m.read()
    assert mean == pytest.approx(float(torch.tensor(0.1, dtype=torch.float32)), rel=1e-12)


def test_host_all_reduce_single_process(single_process_group):
    assert init_host_group() is None  # the default group is gloo (and alone) already
    assert host_all_reduce([3, 4.5, 1e18 + 2, 0.0]) == [3.0, 4.5, 1e18 + 2, 0.0]


def test_sync_counter_counts_sync_warnings_by_line(monkeypatch):
    modes = []
    monkeypatch.setattr(step_stats.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(step_stats.torch.cuda, "set_sync_debug_mode", modes.append)
    counter = SyncCounter(enabled=True, skip_steps=1)
    with pytest.warns(UserWarning, match="synchronizing"), counter.count("train step", step=1):
        warnings.warn("called a synchronizing CUDA operation")  # a warm-up step: not counted, mode untouched
    assert modes == [] and not counter.calls
    with pytest.warns(UserWarning, match="unrelated"):  # other warnings are passed on, not swallowed
        for step in (2, 3):
            with counter.count("train step", step=step):
                for _ in range(2):
                    warnings.warn("called a synchronizing CUDA operation")
                warnings.warn("unrelated")
    assert modes == ["warn", "default"] * 2
    lines = counter.summary()
    assert lines[0].startswith("sync debug: train step: 4 host-device synchronisations in 2 steady-state calls")
    assert "2.0 per call" in lines[0]
    assert len(lines) == 2 and lines[1].split()[0] == "4" and "test_step_stats.py:" in lines[1]


def test_sync_counter_is_off_without_cuda():
    counter = SyncCounter(enabled=True)
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    with counter.count("train step", step=10):
        pass
    assert counter.summary() == []
