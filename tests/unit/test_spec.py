"""AuditSpec: every default resolved once, the same from the CLI flags, a TOML file, ``audit()`` and the
pytest plugin; values parsed and refused in one place."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustaudit.cli import build_parser, main
from robustaudit.cli_audit import spec_from_args
from robustaudit.core.errors import UserError
from robustaudit.evaluate import api
from robustaudit.evaluate import options as opt
from robustaudit.evaluate.spec import AuditSpec


class _Captured(Exception):
    """Raised by the patched executor: the spec an entry point built, nothing run."""

    def __init__(self, spec: AuditSpec) -> None:
        super().__init__("captured")
        self.spec = spec


@pytest.fixture
def capture(monkeypatch):
    """Replace the executor ``audit()`` calls; ``capture(fn)`` returns the spec ``fn`` built."""
    def execute(spec, subject, progress=None):
        raise _Captured(spec)

    monkeypatch.setattr(api, "execute", execute)

    def run(fn) -> AuditSpec:
        with pytest.raises(_Captured) as info:
            fn()
        return info.value.spec

    return run


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def _cli(tmp_path, *words: str) -> AuditSpec:
    return spec_from_args(build_parser().parse_args(["audit", *words, "--out", str(tmp_path / "out")]))


def _toml(tmp_path, text: str) -> AuditSpec:
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return _cli(tmp_path, "--config", str(path))


def _plugin(model, data, **kwargs):
    from robustaudit.plugin.fixture import ItemRecord, Robustness
    from robustaudit.plugin.settings import SessionOptions

    fixture = Robustness(SessionOptions(profile="smoke"), ItemRecord({}), lambda name, value: None)
    return lambda: fixture.audit(model, data, **kwargs)


def test_patch_norm_gets_the_patch_grid_from_every_entry_point(tmp_path, capture):
    want = opt.PATCH_DEFAULT_EPS
    assert want == (0.02, 0.05, 0.1, 0.15, 0.2)
    assert capture(lambda: api.audit(_net(), "digits", attacks="patch", norm="patch")).eps == want
    assert _cli(tmp_path, "--model", "digits-cnn", "--attack", "patch", "--norm", "patch").eps == want
    assert _toml(tmp_path, 'model = "digits-cnn"\nattack = "patch"\nnorm = "patch"\n').eps == want
    assert capture(_plugin(_net(), "digits", attacks="patch", norm="patch")).eps == want
    # an explicit grid stays what it is, sorted and without duplicates
    assert capture(lambda: api.audit(_net(), "digits", attacks="patch", norm="patch",
                                     eps=[0.1, 0.05, 0.1])).eps == (0.05, 0.1)


def test_segmentation_data_alone_gets_the_segmentation_defaults(tmp_path):
    spec = _cli(tmp_path, "--data", "digit-scenes")
    assert spec.task == "segmentation"
    assert [m.spec for m in spec.models] == ["unet-tiny"]
    assert spec.attacks == ("pgd", "segpgd", "cospgd")
    assert spec.eps == (0.01, 0.02, 0.04)
    assert (spec.n, spec.batch_size) == (100, None)  # chosen when the audit runs, at most 32 (batchsize.py)
    assert spec.detectors == ()  # the embedded default's detector wraps classifiers only
    # the same audit on classification data: the default detector, all samples, the batch chosen at run time
    default = _cli(tmp_path)
    assert (default.task, default.detectors, default.n, default.batch_size) == ("classification", ("squeeze",),
                                                                                None, None)
    assert [m.spec for m in default.models] == list(opt.DEFAULT_MODELS) and default.eps == opt.EMBEDDED_EPS
    # the embedded default: the 2×2 table's two models, a scale-invariant attack, one detector row
    assert opt.DEFAULT_MODELS == ("digits-cnn", "digits-cnn-pgdat") and default.eps == (0.1, 0.2, 0.3)
    assert "pgd:loss=margin" in default.attacks and default.defense_models == ("digits-cnn",)
    # the detector given explicitly wraps every model; a model given keeps the full default grid
    assert _cli(tmp_path, "--defense", "squeeze").defense_models == ()
    assert _cli(tmp_path, "--model", "digits-cnn").eps == opt.DEFAULT_EPS
    # a TOML file saying only the data resolves like the flag (no detector: a config file was given)
    toml = _toml(tmp_path, 'data = "digit-scenes"\n')
    assert (toml.attacks, toml.eps, toml.n, toml.detectors) == (spec.attacks, spec.eps, 100, ())


def test_segmentation_model_from_the_api_keeps_all_samples(capture):
    spec = capture(lambda: api.audit("unet-tiny", "digit-scenes"))
    assert (spec.task, spec.attacks, spec.eps) == ("segmentation", ("pgd", "segpgd", "cospgd"), (0.01, 0.02, 0.04))
    assert (spec.n, spec.batch_size, spec.detectors) == (None, None, ())  # a model was named: no n cap


def test_eps_fractions_are_accepted_everywhere_and_parsed_once(tmp_path, capture, monkeypatch):
    calls = []
    parse = opt.parse_eps
    monkeypatch.setattr(opt, "parse_eps", lambda value, *a: calls.append(value) or parse(value, *a))
    want = (4 / 255, 8 / 255)
    assert capture(lambda: api.audit(_net(), "digits", eps="8/255,4/255")).eps == want
    assert capture(lambda: api.audit(_net(), "digits", eps=["8/255", 4 / 255])).eps == want
    assert _cli(tmp_path, "--model", "digits-cnn", "--eps", "4/255,8/255").eps == want
    assert _toml(tmp_path, 'model = "digits-cnn"\neps = ["4/255", "8/255"]\n').eps == want
    assert len(calls) == 4  # once per audit, by the spec
    assert capture(_plugin(_net(), "digits", eps=["4/255", "8/255"])).eps == want


def test_every_entry_point_resolves_the_same_plain_defaults(tmp_path, capture):
    api_spec = capture(lambda: api.audit(_net(), "digits"))
    cli_spec = _cli(tmp_path, "--model", "digits-cnn")
    for spec in (api_spec, cli_spec):
        assert (spec.norm, spec.batch_size, spec.device, spec.seed, spec.checks, spec.precision, spec.tf32,
                spec.compile, spec.detectors, spec.eps, spec.attacks) == (
            "linf", None, "auto", 0, "basic", "fp32", False, False, (), opt.DEFAULT_EPS, opt.DEFAULT_ATTACKS)
    assert (api_spec.out, cli_spec.out) == (None, str(tmp_path / "out"))  # only the CLI writes by default
    plugin_spec = capture(_plugin(_net(), "digits"))
    assert (plugin_spec.n, plugin_spec.checks, plugin_spec.eps) == (64, "off", opt.DEFAULT_EPS)  # smoke profile


def test_the_check_levels_are_defined_once():
    from robustaudit import checks, pytest_plugin
    from robustaudit.plugin import settings

    assert settings.CHECK_LEVELS is opt.CHECK_LEVELS and pytest_plugin.CHECK_LEVELS is opt.CHECK_LEVELS
    assert checks.LEVELS is opt.CHECK_LEVELS


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"eps": "abc"}, "cannot parse eps 'abc': expected numbers like 0.1 or 8/255"),
    ({"eps": -0.1}, "eps must be >= 0, got -0.1"),
    ({"checks": "ful"}, "--checks must be one of off, basic, full, got 'ful' (did you mean 'full'?)"),
    ({"device": "gpu"}, "unknown device 'gpu' (did you mean 'cuda'?); use auto, cpu, cuda, cuda:N or mps"),
    ({"resume": True, "overwrite": True, "out": "o"},
     "--resume and --overwrite exclude each other: continue the stored run or discard it"),
    ({"resume": True}, "resume needs the output directory of the run to continue (out=...)"),
    ({"n": 0}, "--n must be >= 1, got 0"),
])
def test_a_bad_value_is_refused_in_one_line_by_the_api(kwargs, message, capture):
    with pytest.raises(UserError) as info:
        api.audit(_net(), "digits", **kwargs)
    assert str(info.value) == message


def test_a_bad_value_is_refused_in_one_line_by_the_cli(tmp_path, capsys):
    assert main(["audit", "--model", "digits-cnn", "--eps", "0.1,abc", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: cannot parse eps 'abc': expected numbers like 0.1 or 8/255"]
    assert main(["audit", "--model", "digits-cnn", "--resume", "--overwrite", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --resume and --overwrite exclude each other: continue the stored run or discard it"]


def test_segmentation_refuses_detectors_in_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^detectors \(--defense\) wrap classifiers; a segmentation audit takes none$"):
        _cli(tmp_path, "--data", "digit-scenes", "--defense", "squeeze")


def test_the_resume_fingerprint_derives_from_the_spec(tmp_path):
    from robustaudit.data.registry import open_dataset
    from robustaudit.evaluate.resume import fingerprint
    from robustaudit.evaluate.spec import resolve_spec
    from robustaudit.evaluate.subject import Subject, model_entries, model_specs

    data = open_dataset("digits")
    entries = model_entries(_net())
    spec = resolve_spec(data, models=model_specs(entries), eps="8/255,2/255", precision="bf16", batch_size=7)
    fp = fingerprint(spec, Subject(entries, data, []), n=10, device=torch.device("cpu"))
    assert (fp["eps"], fp["batch_size"], fp["precision"], fp["norm"]) == ([2 / 255, 8 / 255], 7, "bf16", "linf")
    assert "task" not in fp  # absent means classification, as in stores written before tasks existed
    scenes = open_dataset("digit-scenes")
    seg = resolve_spec(scenes, batch_size=64)
    fp = fingerprint(seg, Subject([], scenes, []), n=3, device=torch.device("cpu"))
    assert (fp["task"], fp["batch_size"], fp["eps"]) == ("segmentation", 32, [0.01, 0.02, 0.04])


def test_weights_are_hashed_by_one_function_each(tmp_path):
    from robustaudit.core import hashing
    from robustaudit.defenses.detection import model_hash
    from robustaudit.evaluate import store
    from robustaudit.models import catalog, loading

    assert catalog.sha256_of is loading.file_sha256 is hashing.file_sha256
    assert store.state_dict_sha256 is hashing.state_dict_sha256
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert hashing.file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    net = _net()
    assert model_hash(net) == hashing.state_dict_sha256(net)
    with torch.no_grad():
        net[1].bias[0] += 1
    assert model_hash(net) == hashing.state_dict_sha256(net) != hashing.state_dict_sha256(_net())
