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
