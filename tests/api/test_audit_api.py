"""``robustaudit.audit``: every accepted form of model and data gives the same numbers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import robustaudit
from robustaudit.attacks.gradient import PGD
from robustaudit.core.errors import UserError


@pytest.fixture(scope="module")
def xy():
    from robustaudit.data.digits import digits_split

    return digits_split("test").load(range(48))


def test_pair_dataset_loader_agree(digits_cnn, xy):
    x, y = xy
    forms = [(x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=16)]
    results = [robustaudit.audit(digits_cnn, d, attacks=["fgsm", PGD(steps=5)], eps=[0.1]) for d in forms]
    for r in results[1:]:
        assert r.records["n_robust"].tolist() == results[0].records["n_robust"].tolist()
    r = results[0]
    assert r.models == ["DigitsCNN"] and r.attacks == ["fgsm", "pgd"]
    assert r.robust_accuracy("DigitsCNN", "worst-case", 0.1) <= r.robust_accuracy("DigitsCNN", "fgsm", 0.1)
    assert r.robust_accuracy("DigitsCNN", "pgd", 0.1) < r.clean_accuracy("DigitsCNN")


def test_model_mode_and_device_restored(xy):
    from robustaudit.models.zoo.digits import DigitsCNN

    model = DigitsCNN()
    model.train()
    robustaudit.audit(model, xy, attacks="fgsm", eps=0.1)
    assert model.training and all(m.training for m in model.modules())


def test_dict_of_models_and_spec_strings(digits_cnn, xy, tmp_path):
    r = robustaudit.audit({"a": digits_cnn, "b": "digits-cnn-pgdat"}, xy, attacks="fgsm", eps=[0.2], out=tmp_path)
    assert r.models == ["a", "b"]
    assert r.robust_accuracy("b", "fgsm", 0.2) > r.robust_accuracy("a", "fgsm", 0.2)
    loaded = robustaudit.ResultMatrix.load(tmp_path)
    assert loaded.records["n_robust"].tolist() == r.records["n_robust"].tolist()
    assert loaded.provenance["models"][1]["weights_sha256"] is not None


def test_same_seed_same_numbers(digits_cnn, xy):
    runs = [robustaudit.audit(digits_cnn, xy, attacks="pgd:steps=5", eps=[0.05, 0.1], seed=7).records
            for _ in range(2)]
    assert runs[0]["n_robust"].tolist() == runs[1]["n_robust"].tolist()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"attacks": "nope"}, "unknown attack"),
        ({"eps": [-1.0]}, ">= 0"),
        ({"device": "cuda:9"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
        ({"n": 0}, "n"),
    ],
)
def test_bad_arguments_raise_user_error(digits_cnn, xy, kwargs, match):
    with pytest.raises(UserError, match=match):
        robustaudit.audit(digits_cnn, xy, **kwargs)


def test_a_comma_separated_attack_string_names_several_attacks_as_on_the_command_line():
    from robustaudit.evaluate.api import attack_entries_from

    names = [e.name for e in attack_entries_from("fgsm,pgd:steps=50,restarts=2")]
    assert names == ["fgsm", "pgd:steps=50,restarts=2"]
    entries = attack_entries_from(["atn,advgan", "eot:k=2(pgd)"])
    assert [e.name for e in entries] == ["atn", "advgan", "eot:k=2(pgd)"]
    assert entries[2].attack.settings()["k"] == 2


class _Recorder:
    """A progress reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.stages: list[tuple[str, int]] = []
        self.done = 0

    def start(self, description: str, total: int) -> None:
        self.stages.append((description, total))

    def advance(self, amount: int) -> None:
        self.done += amount


def _progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("[")]


def test_progress_takes_a_bool_or_a_reporter(digits_cnn, xy, capsys):
    # checks="basic" (the default): its stage used to call progress.start on the bool itself
    kwargs = {"attacks": "fgsm", "eps": 0.1, "checks": "basic", "cost": False}
    recorder = _Recorder()
    told = robustaudit.audit(digits_cnn, xy, progress=recorder, **kwargs)
    assert [d for d, _ in recorder.stages] == ["DigitsCNN: clean", "DigitsCNN: fgsm", "sanity checks"]
    assert recorder.done >= len(xy[1])  # at least the clean pass, one unit per sample
    silent = robustaudit.audit(digits_cnn, xy, progress=False, **kwargs)
    assert _progress_lines(capsys.readouterr().err) == []
    shown = robustaudit.audit(digits_cnn, xy, progress=True, **kwargs)
    lines = _progress_lines(capsys.readouterr().err)  # no terminal here: the CLI's plain lines
    assert [line.split("] ")[1].split(":")[0] for line in lines] == ["DigitsCNN", "DigitsCNN", "sanity checks"]
    assert all("done in" in line for line in lines)
    for result in (silent, shown):  # how progress is shown changes no figure
        assert result.records["n_robust"].tolist() == told.records["n_robust"].tolist()
        assert [c["status"] for c in result.checks] == [c["status"] for c in told.checks]


@pytest.mark.parametrize("progress", ["yes", 1, object()])
def test_progress_of_another_type_is_a_one_line_error(digits_cnn, xy, progress):
    with pytest.raises(UserError, match=r"^progress must be True, False, None or an object with "
                                        r"start\(description, total\) and advance\(amount\) methods, got ") as info:
        robustaudit.audit(digits_cnn, xy, attacks="fgsm", eps=0.1, progress=progress)
    assert "\n" not in str(info.value)
