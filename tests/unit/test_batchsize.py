"""The automatic batch size (evaluate/batchsize.py): the probe's memory and FLOP figures, the bounds they
give, the choice's precedence (given > resumed > probed) and the images/s block."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from robustaudit.data.base import TensorData
from robustaudit.evaluate import batchsize as bs
from robustaudit.evaluate.aggregate import WORST_CASE
from robustaudit.evaluate.resume import stored_batch_size
from robustaudit.evaluate.store import STORE_FILE, Store

CPU = torch.device("cpu")


def _data(shape=(3, 8, 8), n=4) -> TensorData:
    g = torch.Generator().manual_seed(0)
    return TensorData(torch.rand((n, *shape), generator=g), torch.zeros(n, dtype=torch.long), name="t")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def test_flops_are_twice_the_macs_of_convolutions_and_linear_layers():
    info = bs._probe_model(_net(), _data(), CPU, bs.FastPath())
    conv = 8 * 8 * 8 * 3 * 9  # output elements x (in_channels x kernel)
    linear = 10 * 512
    assert info["forward_flops"] == 2 * (conv + linear)


def test_bytes_per_sample_is_what_autograd_saves_per_sample_doubled():
    info = bs._probe_model(_net(), _data(), CPU, bs.FastPath())
    # per sample the graph keeps: the conv's input (3x8x8) and output-after-ReLU (8x8x8, saved by ReLU and
    # by the linear layer: one storage), and the logits for logsumexp (10 values + 1 result); weights cancel
    saved = 4 * (3 * 64 + 8 * 64 + 10 + 1)
    assert info["bytes_per_sample"] == pytest.approx(2 * saved, rel=0.05)


def test_the_memory_bound_is_the_largest_power_of_two_within_the_share(monkeypatch):
    data = _data()
    info = bs._probe_model(_net(), data, CPU, bs.FastPath())
    per_sample = info["bytes_per_sample"] + bs.INPUT_COPIES * 4 * 3 * 64
    free = int(per_sample * 37 / bs.MEMORY_SHARE)  # room for 37 samples: 32 is the power of two below
    monkeypatch.setattr(bs, "free_memory", lambda device: free)
    choice = bs.choose_batch_size([("net", _net())], data, CPU)
    assert choice.size == 32 and choice.source == "auto"
    assert choice.reason.startswith("memory:") and choice.reason.endswith("(net)")
    assert choice.models["net"]["bound"] == 32


def test_the_flop_budget_bounds_a_cpu_batch(monkeypatch):
    flops = 2 * (8 * 8 * 8 * 3 * 9 + 10 * 512)
    monkeypatch.setattr(bs, "CPU_FLOP_BUDGET", 3 * flops * 20.5)  # 20.5 batches' worth: 16
    monkeypatch.setattr(bs, "free_memory", lambda device: 1 << 40)
    choice = bs.choose_batch_size([("net", _net())], _data(), CPU)
    assert choice.size == 16 and "FLOPs" in choice.reason


def test_the_smallest_bound_over_models_wins_and_the_cap_holds(monkeypatch):
    monkeypatch.setattr(bs, "free_memory", lambda device: 1 << 40)
    small = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 10))
    assert bs.choose_batch_size([("small", small)], _data(), CPU).size == bs.CPU_CAP == 256
    assert bs.choose_batch_size([("small", small)], _data(), CPU, cap=32).size == 32
    monkeypatch.setattr(bs, "CPU_FLOP_BUDGET", 3 * 2 * (8 * 8 * 8 * 3 * 9 + 10 * 512) * 5)
    choice = bs.choose_batch_size([("small", small), ("net", _net())], _data(), CPU)
    # small: 2 x 1920 FLOPs per forward, 49 batches' worth of the budget -> 32
    assert choice.size == 4 and choice.reason.endswith("(net)") and choice.models["small"]["bound"] == 32


def test_a_probe_that_fails_gives_the_cap_and_says_why():
    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("needs 5 channels")

    choice = bs.choose_batch_size([("broken", Broken())], _data(), CPU)
    assert choice.size == bs.CPU_CAP
    assert choice.models["broken"] == {"error": "needs 5 channels", "bound": bs.CPU_CAP}
    assert choice.reason == "the cap for cpu (256); probe failed, the cap assumed for broken (needs 5 channels)"


def test_the_digits_models_keep_the_old_batch_of_256():
    from robustaudit.data.digits import digits_split
    from robustaudit.models.catalog import create_model

    models = [(n, create_model(n)) for n in ("digits-cnn", "digits-cnn-pgdat")]
    assert bs.choose_batch_size(models, digits_split("test"), CPU).size == 256


def test_stored_batch_size_reads_the_fingerprint(tmp_path):
    assert stored_batch_size(tmp_path) is None
    store = Store(tmp_path / STORE_FILE)
    store.put_meta("fingerprint", {"batch_size": 8, "n": 4})
    store.close()
    assert stored_batch_size(tmp_path) == 8
    (tmp_path / "other.sqlite").write_bytes(b"not a database")
    assert stored_batch_size(tmp_path, tmp_path / "other.sqlite") is None


def test_throughput_counts_attacked_samples_over_seconds_without_the_worst_case():
    records = pd.DataFrame([
        {"model": "m", "attack": "fgsm", "eps": 0.1, "n_attacked": 10, "seconds": 0.5},
        {"model": "m", "attack": "pgd", "eps": 0.1, "n_attacked": 10, "seconds": 1.5},
        {"model": "m", "attack": "pgd", "eps": 0.2, "n_attacked": 4, "seconds": 1.0},
        {"model": "m", "attack": WORST_CASE, "eps": 0.1, "n_attacked": 10, "seconds": 3.0},
        {"model": "z", "attack": "fgsm", "eps": 0.1, "n_attacked": 0, "seconds": 0.0},
    ])
    out = bs.throughput(records)
    assert out["m"] == {"attacked_samples": 24, "attack_seconds": 3.0, "images_per_second": 8.0}
    assert out["z"]["images_per_second"] is None and not math.isnan(out["z"]["attacked_samples"])


def test_pow2():
    assert [bs._pow2(v) for v in (0.3, 1, 1.9, 2, 255.9, 256, 1000)] == [1, 1, 1, 2, 128, 256, 512]


def test_given_wins_then_a_resumed_runs_stored_size(tmp_path, monkeypatch):
    from robustaudit.evaluate.spec import AuditSpec

    def no_probe(*args, **kwargs):
        raise AssertionError("probed although the batch size was known")

    monkeypatch.setattr(bs, "choose_batch_size", no_probe)
    spec = AuditSpec(models=(), data="digits", attacks=(), eps=(0.1,), out=str(tmp_path), batch_size=5)
    sized, choice = bs.sized(spec, None, CPU)
    assert sized is spec and choice.record() == {"size": 5, "source": "given",
                                                 "reason": "given by the user (--batch-size)"}
    store = Store(tmp_path / STORE_FILE)
    store.put_meta("fingerprint", {"batch_size": 8})
    store.close()
    resumed = AuditSpec(models=(), data="digits", attacks=(), eps=(0.1,), out=str(tmp_path), resume=True)
    sized, choice = bs.sized(resumed, None, CPU)
    assert (sized.batch_size, choice.source) == (8, "resumed")
