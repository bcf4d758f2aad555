"""Every attack in the catalog runs from the CLI on the default data (with small budgets)."""

from __future__ import annotations

import json

import pytest

from robustaudit.attacks.registry import names
from robustaudit.cli import main

SPECS = {
    "fgsm": "fgsm",
    "pgd": "pgd:steps=5",
    "detector-aware-pgd": "detector-aware-pgd:steps=5",  # on a plain model: the classifier alone
    "bim": "bim:steps=5",
    "illc": "illc:steps=5",
    "mifgsm": "mifgsm:steps=5",
    "apgd": "apgd:steps=5,loss=dlr",
    "apgd-t": "apgd-t:steps=5,n_target_classes=2",
    "square": "square:queries=50",
    "cw": "cw:steps=20,binary_search_steps=2",
    "deepfool": "deepfool:steps=10",
    "fab-t": "fab-t:steps=5,n_target_classes=2",
    "autoattack": "autoattack:steps=5,queries=50,n_target_classes=2",
    "fast": "fast:steps=5,target_steps=3,targets=2,screen_queries=50,fallback_queries=50",
    "eot": "eot:k=2(pgd:steps=3)",
    "bpda": "bpda(pgd:steps=3)",
    "transfer": "transfer:surrogate=digits-cnn(mifgsm:steps=3)",
    "foolbox": "foolbox:LinfPGD:steps=3",
    "patch": "patch:target=3,steps=3,batch_size=16",
    "atn": "atn:epochs=1,width=8,samples=128",
    "advgan": "advgan:epochs=1,width=8,samples=128",
    "uap": "uap:fit_n=64,passes=1",
}
NORM = {"cw": "l2", "patch": "patch"}
EPS = {"l2": "1.5", "patch": "0.1"}
#: attacks that need other data and models than the 8x8 digits (a patch needs room)
DATA_MODEL = {"patch": ("digits32", "digits32-cnn")}


def test_every_registered_attack_has_a_cli_case():
    assert set(names(wrappers=True)) <= set(SPECS), set(names(wrappers=True)) - set(SPECS)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_attack_runs_from_the_cli(name, tmp_path, capsys):
    if name == "bpda":
        pytest.skip("bpda needs a model with a .preprocess module; covered in tests/unit/test_wrappers_attacks.py")
    if name == "foolbox":
        pytest.importorskip("foolbox")
    out = tmp_path / name
    data, model = DATA_MODEL.get(name, ("digits", "digits-cnn-pgdat"))
    norm = NORM.get(name, "linf")
    args = ["audit", "--model", model, "--data", data, "--attack", SPECS[name], "--eps", EPS.get(norm, "0.2"),
            "--n", "12", "--out", str(out), "--norm", norm]
    assert main(args) == 0, capsys.readouterr().err
    doc = json.loads((out / "results.json").read_text())
    rows = [r for r in doc["records"] if r["attack"] != "worst-case"]
    assert len(rows) == 1 and rows[0]["robust_accuracy"] <= rows[0]["clean_accuracy"]
