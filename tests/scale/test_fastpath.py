"""The fast path on CPU: bf16 autocast attacks with an fp32 verdict, fp16's gradient scaling, TF32
switched and restored, the torch.compile fallback, and out-of-memory batch halving that changes no
result."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustaudit.attacks.gradient import PGD
from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel
from robustaudit.evaluate import fastpath
from robustaudit.evaluate.fastpath import AutocastModel, FastPath

pytestmark = pytest.mark.usefixtures("one_thread")


def test_autocast_model_runs_bf16_inside_and_returns_float32(digits_cnn, digits_test):
    x, _ = digits_test
    seen = []
    hook = digits_cnn.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        xa = x[:8].clone().requires_grad_(True)
        logits = AutocastModel(digits_cnn, "bf16", "cpu")(xa)
        logits.logsumexp(1).sum().backward()
    finally:
        hook.remove()
    assert seen == [torch.bfloat16]  # the network ran in bf16 ...
    assert logits.dtype == torch.float32 and xa.grad.dtype == torch.float32  # ... and hands back float32
    assert torch.isfinite(xa.grad).all() and xa.grad.abs().sum() > 0


def test_fp16_gradient_scale_is_undone_at_the_input(digits_cnn, digits_test):
    x, y = digits_test
    grads = {}
    for precision in ("fp32", "fp16"):
        xa = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(AutocastModel(digits_cnn, precision, "cpu")(xa), y, reduction="sum")
        (grads[precision],) = torch.autograd.grad(loss, xa)
    # the scale (1024) is gone: same magnitude as the fp32 gradient, same direction up to fp16 rounding
    ratio = grads["fp16"].norm() / grads["fp32"].norm()
    cosine = nn.functional.cosine_similarity(grads["fp16"].flatten(), grads["fp32"].flatten(), dim=0)
    assert 0.95 < ratio < 1.05 and cosine > 0.99


def test_bf16_attack_stays_in_the_ball_and_close_to_fp32(digits_cnn, digits_test):
    x, y = digits_test
    threat = ThreatModel("linf", 0.1)
    attack = PGD(steps=10)
    adv32 = attack(digits_cnn, x, y, threat)
    adv16 = attack(AutocastModel(digits_cnn, "bf16", "cpu"), x, y, threat)
    assert adv16.dtype == torch.float32
    assert (adv16 - x).abs().max() <= 0.1 + 1e-6 and adv16.min() >= 0 and adv16.max() <= 1
    with torch.no_grad():  # the verdict in fp32
        acc32 = (digits_cnn(adv32).argmax(1) == y).float().mean().item()
        acc16 = (digits_cnn(adv16).argmax(1) == y).float().mean().item()
    assert abs(acc16 - acc32) <= 0.05  # measured: 0.698 (bf16) vs 0.688 (fp32) on these 96 samples
    assert acc32 < 0.8  # the attack works at all


def test_audit_at_bf16_records_the_precision_and_an_fp32_verdict(digits_cnn, digits_test, tmp_path):
    from robustaudit import audit
    from robustaudit.reports import write_reports

    x, y = digits_test
    kw = {"attacks": ["pgd:steps=10"], "eps": [0.1], "device": "cpu", "checks": "off", "cost": False}
    fp32 = audit(digits_cnn, (x, y), **kw)
    bf16 = audit(digits_cnn, (x, y), precision="bf16", **kw)
    block = bf16.provenance["precision"]
    assert block["attack"] == "bf16" and block["verdict"] == "fp32" and block["tf32"] is None  # n/a on CPU
    assert "verdict re-checked at fp32" in bf16.provenance["attack precision"]
    assert bf16.clean_accuracy("DigitsCNN") == fp32.clean_accuracy("DigitsCNN")  # the clean pass is fp32
    assert abs(bf16.robust_accuracy("DigitsCNN", "pgd:steps=10", 0.1)
               - fp32.robust_accuracy("DigitsCNN", "pgd:steps=10", 0.1)) <= 0.05
    paths = write_reports(bf16, tmp_path)  # the report says which precision produced the points
    for kind in ("markdown", "html"):
        assert "adversarial points found at bf16 (autocast), verdict re-checked at fp32" in paths[kind].read_text()


def test_fp16_on_cpu_and_unknown_precisions_are_refused(digits_cnn, digits_test):
    from robustaudit import audit

    with pytest.raises(UserError, match="--precision fp16 needs a GPU"):
        audit(digits_cnn, digits_test, attacks="fgsm", eps=0.1, device="cpu", precision="fp16", checks="off")
    with pytest.raises(UserError, match="--precision must be one of fp32, bf16, fp16, got 'fp8'"):
        audit(digits_cnn, digits_test, attacks="fgsm", eps=0.1, device="cpu", precision="fp8")


def test_tf32_is_set_for_the_audit_and_restored():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with fastpath.tf32_mode(False):
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32  # the caller's choice is back
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch, digits_cnn, digits_test):
    x, _ = digits_test

    def broken(model):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    model = fastpath.CompiledModel(digits_cnn)
    with pytest.warns(UserWarning, match="torch.compile failed .*no C\\+\\+ compiler found.*eagerly"):
        out = model(x)
    assert torch.equal(out, digits_cnn(x))
    assert model.failed is not None and torch.equal(model(x), out)  # warned once, eager from then on


class _Oom(nn.Module):
    """The digits model, out of memory (torch.OutOfMemoryError, as CUDA raises it) whenever an attack
    pushes more than ``limit`` samples through it with gradients."""

    def __init__(self, model: nn.Module, limit: int) -> None:
        super().__init__()
        self.model, self.limit, self.refused = model, limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.shape[0] > self.limit:
            self.refused += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} samples")
        return self.model(x)


def test_out_of_memory_halves_the_batch_and_changes_no_result(digits_cnn):
    from robustaudit.data.digits import digits_split
    from robustaudit.evaluate.api import attack_entries_from
    from robustaudit.evaluate.runner import ModelEntry, run

    data = digits_split("test")
    attacks = attack_entries_from(["fgsm", "pgd:steps=5", "deepfool:steps=3"])
    kw = {"ids": list(range(80)), "batch_size": 32, "device": "cpu", "seed": 1}
    plain = run([ModelEntry("m", digits_cnn)], data, attacks, [0.1, 0.2], **kw)
    oom = _Oom(digits_cnn, limit=7)
    with pytest.warns(UserWarning, match="out of memory: attack 'fgsm' on model 'm' continues in batches of 16"):
        halved = run([ModelEntry("m", oom)], data, attacks, [0.1, 0.2], **kw)
    assert oom.refused > 0
    drop = ["seconds"]
    assert halved.records.drop(columns=drop).equals(plain.records.drop(columns=drop))  # passes included
    assert halved.robust_ids == plain.robust_ids
    # DeepFool's norms are batch-independent up to float rounding (about 5e-8 between batch sizes)
    assert halved.minimal_norms.keys() == plain.minimal_norms.keys()
    for key, norms in plain.minimal_norms.items():
        assert halved.minimal_norms[key] == pytest.approx(norms, rel=1e-5)
    chain = [(h["from"], h["to"]) for h in halved.provenance["oom_halvings"] if h["attack"] == "fgsm"]
    assert chain == [(32, 16), (16, 8), (8, 4)]  # later batches start at the size that fit
    assert "fgsm on m: 32 -> 16 -> 8 -> 4" in fastpath.halving_summary(halved.provenance["oom_halvings"])


def test_out_of_memory_at_one_sample_is_a_user_error(digits_cnn):
    from robustaudit.data.digits import digits_split
    from robustaudit.evaluate.api import attack_entries_from
    from robustaudit.evaluate.runner import ModelEntry, run

    with pytest.raises(UserError, match="out of memory attacking a single sample with 'fgsm' on model 'm'"), \
            pytest.warns(UserWarning):
        run([ModelEntry("m", _Oom(digits_cnn, limit=0))], digits_split("test"), attack_entries_from(["fgsm"]),
            [0.1], ids=list(range(4)), device="cpu")


def test_allocator_messages_count_as_out_of_memory():
    assert fastpath.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert fastpath.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to ..."))
    assert not fastpath.is_out_of_memory(RuntimeError("shape mismatch"))


def test_channels_last_only_on_cuda_by_default():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not FastPath().uses_channels_last(cpu, (3, 32, 32))
    assert FastPath().uses_channels_last(cuda, (3, 32, 32))
    assert FastPath(channels_last=True).uses_channels_last(cpu, (3, 32, 32))
    assert not FastPath(channels_last=True).uses_channels_last(cpu, (32,))  # not an image


def test_channels_last_on_cpu_changes_no_result(digits_cnn, digits_test):
    x, y = digits_test
    with fastpath.channels_last(digits_cnn, True):
        xs = fastpath.to_device(x, torch.device("cpu"), nhwc=True)
        assert xs.is_contiguous(memory_format=torch.channels_last)
        nhwc = PGD(steps=5)(digits_cnn, xs, y, ThreatModel("linf", 0.1))
    assert all(p.is_contiguous() for p in digits_cnn.parameters())  # the caller's layout is back
    plain = PGD(steps=5)(digits_cnn, x, y, ThreatModel("linf", 0.1))
    with torch.no_grad():
        assert torch.equal(digits_cnn(nhwc).argmax(1), digits_cnn(plain).argmax(1))


def test_flags_and_toml_keys_reach_the_plan(tmp_path):
    from robustaudit.cli import _plan_from_args, build_parser

    args = build_parser().parse_args(["audit", "--precision", "bf16", "--tf32", "on", "--compile",
                                      "--out", str(tmp_path / "o")])
    plan = _plan_from_args(args)
    assert (plan.precision, plan.tf32, plan.compile) == ("bf16", True, True)
    toml = tmp_path / "a.toml"
    toml.write_text('model = "digits-cnn"\nprecision = "bf16"\ntf32 = true\ncompile = false\n')
    args = build_parser().parse_args(["audit", "--config", str(toml), "--tf32", "off", "--out", str(tmp_path / "o")])
    plan = _plan_from_args(args)
    assert (plan.precision, plan.tf32, plan.compile) == ("bf16", False, False)  # the flag overrides the file
    default = _plan_from_args(build_parser().parse_args(["audit", "--out", str(tmp_path / "o")]))
    assert (default.precision, default.tf32, default.compile) == ("fp32", False, False)
