"""Model cost and attack cost: parameter and MAC counts against hand-computed values, pass counts
against what the attack did (and what early stopping saves), memory and latency figures, and the
default audit carrying every cost field into results.json and the reports."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from robustaudit.attacks import gradient
from robustaudit.attacks.gradient import PGD
from robustaudit.data.digits import digits_split
from robustaudit.evaluate.cost import (
    MemoryProbe,
    PassCounter,
    count_parameters,
    flops_per_input,
    measure_latency,
    model_cost,
    split_evenly,
    weights_bytes,
)
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, run
from robustaudit.evaluate.store import Store


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_conv() -> nn.Module:
    """(N, 1, 8, 8) -> (N, 10): conv 1->4 (3x3, pad 1), relu, pool 2, conv 4->8 (3x3), flatten, linear 32->10."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3),
                         nn.Flatten(), nn.Linear(32, 10))


def test_parameters_and_macs_of_two_small_architectures_by_hand():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    # weights 64*10 + bias 10; one MAC per weight
    assert count_parameters(linear) == (650, 650)
    assert flops_per_input(linear, (1, 8, 8)) == 2 * 640

    net = _tiny_conv()
    net[0].requires_grad_(False)  # a frozen layer counts in all parameters, not in the trainable ones
    conv1 = 4 * 1 * 9 + 4  # out x in x k*k + bias
    conv2 = 8 * 4 * 9 + 8
    fc = 32 * 10 + 10
    assert count_parameters(net) == (conv1 + conv2 + fc, conv2 + fc) == (666, 626)
    macs = (4 * 8 * 8) * (1 * 9)  # conv1: every output (4 channels x 8x8, padded) sums 1 channel x 3x3
    macs += (8 * 2 * 2) * (4 * 9)  # conv2 on the pooled 4x4: outputs 8 x 2x2, each over 4 channels x 3x3
    macs += 32 * 10  # linear; relu, pool, bias adds: element-wise, not counted
    assert macs == 3776
    cost = model_cost(net, (1, 8, 8), 4, torch.device("cpu"), memory={"bytes": 1, "error": None})
    assert (cost["macs_per_input"], cost["flops_per_input"]) == (macs, 2 * macs)
    assert (cost["parameters"], cost["trainable_parameters"]) == (666, 626)
    assert cost["peak_memory"]["weights_bytes"] == 666 * 4 == weights_bytes(net)
    assert cost["latency"]["median_seconds_per_batch"] > 0 and cost["latency"]["batch_size"] == 4
    assert cost["defense"] is None and cost["errors"] == {}


def test_default_audit_carries_every_cost_field(tmp_path, capsys):
    # first of the subprocess tests: it starts the memory probe server the later ones reuse
    from robustaudit.cli import EXIT_OK, main

    out = tmp_path / "run"
    # two of the default models with the default attacks and eps grid; sanity checks and the default
    # detector off: they are not what is tested here
    assert main(["audit", "--model", "digits-cnn", "--model", "digits-cnn-pgdat", "--n", "32", "--device", "cpu",
                 "--checks", "off", "--defense", "none", "--out", str(out)]) == EXIT_OK
    terminal = capsys.readouterr().out
    assert "fwd/bwd" in terminal and "Model cost" in terminal and "2.44 M" in terminal
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema_version"] == 1
    models = doc["provenance"]["models"]
    assert [m["name"] for m in models] == ["digits-cnn", "digits-cnn-pgdat"]
    for m in models:
        cost = m["cost"]
        assert cost["parameters"] == cost["trainable_parameters"] == 159_626
        # DigitsCNN by hand: convs 32x(1x9)x64 + 64x(32x9)x64 + 128x(64x9)x16, dense 512x128 + 128x10
        assert cost["macs_per_input"] == 32 * 9 * 64 + 64 * 32 * 9 * 64 + 128 * 64 * 9 * 16 + 512 * 128 + 128 * 10
        assert cost["flops_per_input"] == 2 * cost["macs_per_input"]
        assert cost["latency"]["median_seconds_per_batch"] > 0 and cost["latency"]["batch_size"] == 32
        assert cost["peak_memory"]["bytes"] > cost["peak_memory"]["weights_bytes"] > 0
        assert cost["peak_memory"]["batch_size"] == 32
        assert "defense" in cost and cost["defense"] is None and cost["errors"] == {}
    assert doc["provenance"]["cost"]["batch_size"] == 32
    for r in doc["records"]:
        assert r["n_attacked"] >= 0 and r["forward_passes"] >= r["backward_passes"] >= 0
        if r["n_attacked"]:
            assert r["forward_passes_per_attacked_sample"] == r["forward_passes"] / r["n_attacked"]
        if r["attack"] == "fgsm" and r["n_attacked"]:  # one gradient per sample, nothing more
            assert r["forward_passes"] == r["backward_passes"] == r["n_attacked"]
    md = (out / "report.md").read_text()
    assert "## Cost" in md and "| digits-cnn | 159,626 | 2.44 M | 4.89 M |" in md and "FLOPs = 2 × MACs" in md
    page = (out / "report.html").read_text()
    assert "<summary>Cost</summary>" in page and page.count("data:image/png;base64,") == 4  # curves, examples, scatter, transfer heat map


def _pgd_row(model, x, y, eps, **settings):
    data = digits_split("test")
    result = run([ModelEntry("m", model)], data, [AttackEntry("pgd", PGD(**settings))], [eps],
                 ids=list(range(len(x))), batch_size=32)
    return result.records[result.records["attack"] == "pgd"].iloc[0]


def test_pgd_early_stopping_spends_fewer_passes_than_steps_times_samples(digits_cnn, monkeypatch):
    """digits-cnn breaks quickly at eps 0.3: early stopping drops broken samples, so PGD spends far
    fewer passes than steps × samples; the counts equal what the attack did, sample for sample."""
    x, y = digits_split("test").load(range(64))
    grad_samples = []
    real = gradient._input_grad

    def counting(model, xa, *args):  # PGD's one forward + backward per step
        grad_samples.append(xa.shape[0])
        return real(model, xa, *args)

    monkeypatch.setattr(gradient, "_input_grad", counting)
    steps = 20
    row = _pgd_row(digits_cnn, x, y, 0.3, steps=steps)
    n = int(row["n_attacked"])
    assert n == int(row["n_clean_correct"]) >= 60
    assert row["backward_passes"] == sum(grad_samples)  # a hook on the output counts every backward
    # one more no-grad forward scores the last iterate of the samples still running
    assert row["backward_passes"] <= row["forward_passes"] <= row["backward_passes"] + n
    assert row["forward_passes"] < steps * n / 2  # broken within a few steps, dropped every 5
    assert row["forward_passes_per_attacked_sample"] == row["forward_passes"] / n

    # without early stopping every sample runs every step: exactly steps backward, steps + 1 forward
    grad_samples.clear()
    full = _pgd_row(digits_cnn, x, y, 0.3, steps=steps, early_stop=False)
    assert full["backward_passes"] == steps * n == sum(grad_samples)
    assert full["forward_passes"] == (steps + 1) * n
    assert full["n_robust"] == row["n_robust"] == 0


def test_pass_counter_counts_forward_and_backward_per_sample():
    net = _tiny_conv().eval()
    counted = PassCounter(net)
    assert counted.training is False and list(counted.parameters()) == list(net.parameters())
    x = torch.rand(5, 1, 8, 8, requires_grad=True)
    with torch.no_grad():
        counted(x[:3])
    out = counted(x)
    torch.autograd.grad(out[:2].sum(), x)  # a loss on part of the output still runs the whole backward
    assert counted.take() == (8, 5) and counted.take() == (0, 0)
    assert split_evenly(10, 4) == [3, 3, 2, 2] and sum(split_evenly(7, 3)) == 7


def test_store_keeps_pass_counts_per_batch(tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        store.write_adv("m", "pgd", 0.1, [4, 2], [3, 1], [5, 1], [0.1, 0.1], seconds=0.5, forward_passes=41,
                        backward_passes=40)
        got = store.adv_batch("m", "pgd", 0.1, [4, 2])
    assert (got.forward_passes, got.backward_passes, got.seconds) == (41, 40, 0.5)


def test_peak_memory_is_positive_and_larger_for_a_bigger_model():
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    big = nn.Sequential(nn.Flatten(), nn.Linear(64, 1024), nn.Linear(1024, 2048))  # 8.6 MB of weights
    probe = MemoryProbe([("small", small), ("big", big)], (1, 8, 8), 64)
    figures = probe.collect()
    assert figures["small"]["error"] is None and figures["big"]["error"] is None
    assert figures["small"]["bytes"] > 0
    assert figures["big"]["bytes"] > figures["small"]["bytes"] + weights_bytes(big) * 0.9
    latency = measure_latency(small, (1, 8, 8), 64)
    assert latency["median_seconds_per_batch"] > 0 and latency["runs"] >= 5 and latency["batch_size"] == 64


def test_a_model_that_cannot_be_traced_gets_no_memory_figure_and_a_reason(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("tracer says no")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    figures = MemoryProbe([("m", nn.Linear(4, 2))], (4,), 8).collect()
    assert figures["m"]["bytes"] is None
    assert "cannot trace" in figures["m"]["error"] and "tracer says no" in figures["m"]["error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_grows_with_the_model():
    from robustaudit.evaluate.cost import cuda_peak_memory

    dev = torch.device("cuda")
    small = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).to(dev)
    big = nn.Sequential(nn.Flatten(), nn.Linear(64, 1024), nn.Linear(1024, 2048)).to(dev)
    a, b = (cuda_peak_memory(m, (1, 8, 8), 64, dev) for m in (small, big))
    assert 0 < a < b and b >= weights_bytes(big)
    cost = model_cost(big, (1, 8, 8), 64, dev)
    assert cost["peak_memory"]["bytes"] > 0 and cost["latency"]["median_seconds_per_batch"] > 0
    assert cost["latency"]["device"].startswith("cuda")


def test_an_api_audit_leaves_no_unclosed_file_at_exit():
    """The memory probe server's pipes are closed at exit (Python warned of two unclosed files)."""
    import subprocess
    import sys

    code = ("import robustaudit; robustaudit.audit(model='digits-cnn', n=8, eps=0.1, attacks=['fgsm'], "
            "checks='off')")
    proc = subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c", code], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ResourceWarning" not in proc.stderr, proc.stderr
