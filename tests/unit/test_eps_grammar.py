"""One eps grammar (issue 17.5): the Python API, the CLI, a TOML file and the pytest marker accept the same
strings through one parser (evaluate.options.parse_eps); radii at or beyond the data range are refused."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from robustaudit.core.errors import UserError
from robustaudit.data.registry import open_dataset
from robustaudit.evaluate.options import check_eps_range
from robustaudit.evaluate.plan import load_toml
from robustaudit.evaluate.spec import resolve_spec
from robustaudit.plugin.settings import validate

GRAMMAR = [("8/255", (8 / 255,)), ("0.1,0.2", (0.1, 0.2)), ("0.03", (0.03,)), ("4/255, 0.05", (4 / 255, 0.05))]


@pytest.fixture(scope="module")
def digits():
    return open_dataset("digits")


@pytest.mark.parametrize(("text", "want"), GRAMMAR)
def test_the_same_strings_through_api_cli_toml_and_marker(text: str, want: tuple[float, ...], digits,
                                                          tmp_path: Path) -> None:
    from robustaudit.cli import build_parser, spec_from_args

    api = resolve_spec(digits, eps=text).eps
    cli = spec_from_args(build_parser().parse_args(["audit", "--eps", text])).eps
    (tmp_path / "a.toml").write_text(f'eps = "{text}"\n')
    toml = resolve_spec(digits, eps=load_toml(str(tmp_path / "a.toml"))["eps"]).eps
    marker = tuple(sorted(validate({"eps": text}, where="@pytest.mark.robustness")["eps"]))
    listed = tuple(sorted(validate({"eps": [text]}, where="@pytest.mark.robustness")["eps"]))
    assert api == cli == toml == marker == listed == pytest.approx(tuple(sorted(want)))


def test_eps_at_the_data_range_is_refused_and_above_half_warned() -> None:
    with pytest.raises(UserError, match=r"eps 8 \(linf\) reaches every image.*did you mean 8/255"):
        check_eps_range([0.1, 8.0], "linf", (1, 8, 8))
    with pytest.raises(UserError, match=r"below 8"):  # L2 range of a 1x8x8 image: sqrt(64)
        check_eps_range([8.0], "l2", (1, 8, 8))
    assert check_eps_range([0.1, 0.3, 0.5], "linf", (1, 8, 8)) == []
    (line,) = check_eps_range([0.6], "linf", (1, 8, 8))
    assert "above half the data range (0.5)" in line
    assert check_eps_range([0.6], "patch", (1, 8, 8)) == []  # area shares: the patch attack checks them


def test_spec_warns_above_half_the_range(digits) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolve_spec(digits, eps="0.1,0.7")
    assert [str(w.message) for w in caught if "data range" in str(w.message)]
