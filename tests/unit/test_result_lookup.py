"""ResultMatrix.robust_accuracy on a cell the result lacks: one line saying which of model, attack and eps
is not there and what is (it once raised a bare KeyError of the tuple)."""

from __future__ import annotations

import pandas as pd
import pytest

from robustaudit.core.errors import UserError
from robustaudit.evaluate.result import ResultMatrix


@pytest.fixture
def result() -> ResultMatrix:
    rows = [{"model": "digits-cnn", "attack": a, "eps": e, "robust_accuracy": 0.5, "clean_accuracy": 0.9}
            for a in ("fgsm", "worst-case") for e in (0.1, 0.2)]
    return ResultMatrix(records=pd.DataFrame(rows))


def test_the_cell_that_is_there(result):
    assert result.robust_accuracy("digits-cnn", "worst-case", 0.2) == 0.5


def test_an_eps_off_the_grid_names_the_grid(result):
    with pytest.raises(UserError, match=r"attack 'worst-case' has no eps 0.3; its eps: 0.1, 0.2$"):
        result.robust_accuracy("digits-cnn", "worst-case", 0.3)


def test_an_unknown_attack_names_the_attacks_and_the_close_one(result):
    with pytest.raises(UserError, match=r"no attack 'fgsn' \(did you mean 'fgsm'\?\); its attacks: fgsm, worst-case"):
        result.robust_accuracy("digits-cnn", "fgsn", 0.2)


def test_an_unknown_model_names_the_models(result):
    with pytest.raises(UserError, match=r"no model 'digits-cn' \(did you mean 'digits-cnn'\?\); models: digits-cnn"):
        result.robust_accuracy("digits-cn", "fgsm", 0.2)


def test_it_is_still_a_key_error(result):
    # code that caught the old KeyError keeps working
    with pytest.raises(KeyError):
        result.robust_accuracy("digits-cnn", "fgsm", 0.3)
