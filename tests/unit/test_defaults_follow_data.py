"""Defaults follow the data (issue 17.7): without a model, the catalog models trained on the data are audited."""

from __future__ import annotations

import pytest

from robustaudit.data.registry import open_dataset
from robustaudit.evaluate.options import DEFAULT_MODELS
from robustaudit.evaluate.spec import resolve_spec
from robustaudit.models.catalog import get_card


@pytest.mark.parametrize(("data", "want"), [("digits", DEFAULT_MODELS), ("digits32", ("digits32-cnn", "digits32-resnet")),
                                            ("digit-scenes", ("unet-tiny",))])
def test_models_default_to_those_trained_on_the_data(data: str, want: tuple[str, ...]) -> None:
    spec = resolve_spec(open_dataset(data))
    assert tuple(m.spec for m in spec.models) == want
    assert {get_card(m).dataset for m in want} == {data}


def test_given_models_are_kept() -> None:
    from robustaudit.evaluate.plan import ModelSpec

    spec = resolve_spec(open_dataset("digits32"), models=[ModelSpec("digits32-cnn")])
    assert [m.spec for m in spec.models] == ["digits32-cnn"]


def test_default_detector_row_only_where_its_model_is_audited(tmp_path, capsys) -> None:
    """The default audit wraps the standard digits CNN in the squeeze detector; digits32's defaults have no
    such model: no detector stage, no empty detection block, no progress line claiming detectors ran."""
    import json

    from robustaudit.cli import main

    argv = ["audit", "--data", "digits32", "--n", "8", "--eps", "0.1", "--attack", "fgsm", "--checks", "off",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "detection" not in doc["provenance"]
    assert {r["model"] for r in doc["records"]} == {"digits32-cnn", "digits32-resnet"}
    assert "detectors" not in capsys.readouterr().err
