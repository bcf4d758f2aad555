"""The CLI through ``main(argv)``: outputs, exit codes, and one clear line for every bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from robustaudit.cli import main

SMALL = ["--n", "40", "--attack", "fgsm", "--attack", "pgd:steps=5", "--eps", "0.1,0.2"]


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    # progress lines of the stages finished before the error ("[  1.2 s] digits-cnn: clean: 8/8, done in 1s")
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"\[ *\d+\.\d s\] ", line)]
    assert len(lines) == 1, err
    return lines[0]


def test_small_audit_writes_four_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["audit", *SMALL, "--out", str(out)]) == 0
    for name in ("results.json", "results.sqlite", "report.md", "report.html"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema_version"] == 1
    prov = doc["provenance"]
    assert prov["seed"] == 0 and prov["device"].startswith("cpu") and prov["torch"] == torch.__version__
    assert [m["name"] for m in prov["models"]] == ["digits-cnn", "digits-cnn-pgdat"]  # the 2×2 table
    assert all(len(m["weights_sha256"]) == 64 for m in prov["models"])
    recs = doc["records"]
    plain = [r for r in recs if "+" not in r["model"]]
    detected = [r for r in recs if r["model"].endswith("+squeeze")]  # the default audit's detector rows
    assert len(plain) == 2 * 3 * 2  # models × (2 attacks + worst case) × eps
    # digits-cnn alone behind the detector: (2 attacks, 2 adaptive, worst case) × eps
    assert {r["model"] for r in detected} == {"digits-cnn+squeeze"} and len(detected) == 5 * 2
    assert len(recs) == len(plain) + len(detected)
    for r in recs:
        assert isinstance(r["eps"], float) and isinstance(r["robust_accuracy"], float) and r["n"] == 40
        assert r["ci_low"] <= r["robust_accuracy"] <= r["ci_high"]
        # a detector row's defended accuracy counts rejected adversarial inputs as defended, so only
        # the plain rows are bounded by clean accuracy
        assert r["robust_accuracy"] <= r["clean_accuracy"] or "+" in r["model"]
    std = {(r["attack"], r["eps"]): r["robust_accuracy"] for r in recs if r["model"] == "digits-cnn"}
    adv = {(r["attack"], r["eps"]): r["robust_accuracy"] for r in recs if r["model"] == "digits-cnn-pgdat"}
    assert adv[("worst-case", 0.2)] > std[("worst-case", 0.2)] + 0.2
    stdout = capsys.readouterr().out
    assert "digits-cnn-pgdat" in stdout and "worst-case" in stdout


def test_json_on_stdout_and_report_rerender(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["audit", "--model", "digits-cnn", "--attack", "fgsm", "--eps", "0.1", "--n", "30",
                 "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["records"][0]["model"] == "digits-cnn"
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "digits-cnn" in (out / "report.md").read_text()
    # the results.json path itself names the run (it once made write_reports mkdir a file: exit 3)
    (out / "report.md").unlink()
    (out / "report.html").unlink()
    assert main(["report", str(out / "results.json")]) == 0
    assert "digits-cnn" in (out / "report.md").read_text() and (out / "report.html").is_file()
    assert (out / "results.json").is_file() and not (out / "results.json").is_dir()


@pytest.mark.parametrize("threshold,bound,code", [("0.99", "point", 1), ("0.99", "lower", 1), ("0.0", "lower", 0)])
def test_fail_under_gate(tmp_path, capsys, threshold, bound, code):
    args = ["audit", "--model", "digits-cnn", "--attack", "fgsm", "--eps", "0.2", "--n", "30",
            "--out", str(tmp_path), "--fail-under", threshold, "--fail-on", bound]
    assert main(args) == code
    assert ("FAIL" if code else "PASS") in capsys.readouterr().err


def test_config_file_with_flag_override(tmp_path, capsys):
    cfg = tmp_path / "audit.toml"
    cfg.write_text('model = "digits-cnn"\nattack = ["fgsm"]\neps = [0.1, "8/255"]\nn = 20\nseed = 3\n')
    out = tmp_path / "o"
    assert main(["audit", "--config", str(cfg), "--eps", "0.3", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert {r["eps"] for r in doc["records"]} == {0.3}
    assert doc["provenance"]["seed"] == 3 and doc["records"][0]["n"] == 20


def test_two_checkpoints_of_one_model_are_told_apart_by_their_files(tmp_path, capsys):
    """Before and after fine-tuning: one spec, two weights files, two rows named after their files; a
    [[models]] table names them itself; two rows of the same name and file are refused with the way out."""
    from robustaudit.models.catalog import create_model

    plain, robust = tmp_path / "plain.pt", tmp_path / "runs" / "robust.pt"
    robust.parent.mkdir()
    torch.save(create_model("digits-cnn").state_dict(), plain)
    torch.save(create_model("digits-cnn-pgdat").state_dict(), robust)
    fast = ["--n", "20", "--attack", "fgsm", "--eps", "0.2", "--checks", "off", "--transfer", "off"]
    out = tmp_path / "o"
    assert main(["audit", "--model", "digits-cnn", "--weights", str(plain), "--model", "digits-cnn",
                 "--weights", str(robust), *fast, "--out", str(out)]) == 0
    rows = {r["model"]: r["robust_accuracy"] for r in json.loads((out / "results.json").read_text())["records"]
            if r["attack"] == "fgsm"}
    assert set(rows) == {"digits-cnn[plain.pt]", "digits-cnn[robust.pt]"}
    assert rows["digits-cnn[robust.pt]"] > rows["digits-cnn[plain.pt]"]  # the two checkpoints, not one twice
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f"[[models]]\nspec = 'digits-cnn'\nweights = '{plain}'\nname = 'before'\n"
                   f"[[models]]\nspec = 'digits-cnn'\nweights = '{robust}'\nname = 'after'\n")
    assert main(["audit", "--config", str(cfg), *fast, "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert {r["model"] for r in doc["records"]} == {"before", "after"}
    assert main(["audit", "--model", "digits-cnn", "--weights", str(plain), "--model", "digits-cnn",
                 "--weights", str(plain), *fast, "--out", str(out)]) == 2
    assert _err_line(capsys) == ("error: model name 'digits-cnn' appears twice; each row needs its own name; name "
                                 "them: 'name' in each [[models]] table of --config, or audit(model={name: model})")


@pytest.mark.parametrize("what,expect", [("models", "digits-cnn-pgdat"), ("attacks", "pgd"), ("datasets", "cifar10")])
def test_list(capsys, what, expect):
    assert main(["list", what]) == 0
    assert expect in capsys.readouterr().out


def test_help_has_examples(capsys):
    assert main(["audit", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "--fail-under" in text and "lower bound" in text


def _tensor_file(tmp_path, x, y, name="d.pt"):
    path = tmp_path / name
    torch.save({"x": x, "y": y}, path)
    return f"tensors:{path}"


BAD = {
    "unknown model": (["--model", "digits-cnnn"], "did you mean 'digits-cnn'"),
    "unknown attack": (["--attack", "pgdd"], "did you mean 'pgd'"),
    "unknown attack setting": (["--attack", "pgd:stepz=3"], "did you mean 'steps'"),
    "bad attack value": (["--attack", "pgd:steps=-3"], "steps must be"),
    "unknown dataset": (["--data", "digitz"], "did you mean 'digits'"),
    "bad eps": (["--eps", "abc"], "cannot parse eps"),
    "negative eps": (["--eps", "0.1,-0.2"], ">= 0"),
    "missing model file": (["--model", "nope.py:net"], "nope.py"),
    "bad device": (["--device", "tpu"], "device"),
    "cuda absent": (["--device", "cuda:7"], "cuda"),
    "n zero": (["--n", "0"], "--n must be >= 1"),
    "batch zero": (["--batch-size", "0"], "batch-size"),
    "unknown flag": (["--epz", "0.1"], "unrecognized"),
    "fail-under range": (["--fail-under", "7"], "fail-under"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2(case, capsys, tmp_path):
    if case == "cuda absent" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args, expect = BAD[case]
    assert main(["audit", "--out", str(tmp_path), *args]) == 2
    assert expect.lower() in _err_line(capsys).lower()


def test_bad_data_files_exit_2(tmp_path, capsys):
    x = torch.rand(10, 1, 8, 8)
    y = torch.randint(0, 10, (10,))
    cases = {
        "outside": (_tensor_file(tmp_path, x * 3, y, "a.pt"), "[0"),
        "shape": (_tensor_file(tmp_path, x[:, 0], y, "b.pt"), "unsqueeze"),
        "labels": (_tensor_file(tmp_path, x, y + 20, "c.pt"), "label"),
        "dtype": (_tensor_file(tmp_path, (x * 255).to(torch.uint8), y, "d.pt"), "float"),
    }
    for name, (spec, expect) in cases.items():
        assert main(["audit", "--model", "digits-cnn", "--data", spec, "--out", str(tmp_path)]) == 2, name
        assert expect.lower() in _err_line(capsys).lower(), name


def test_model_output_size_mismatch(tmp_path, capsys):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.rand(12, 1, 8, 8).astype(np.float32), y=np.arange(12) % 12)
    assert main(["audit", "--model", "digits-cnn", "--data", f"tensors:{path}", "--out", str(tmp_path)]) == 2
    assert "10 outputs" in _err_line(capsys)


def test_weights_that_do_not_fit(tmp_path, capsys):
    w = tmp_path / "w.pt"
    torch.save({"weight": torch.zeros(3, 3)}, w)
    assert main(["audit", "--model", "digits-cnn", "--weights", str(w), "--out", str(tmp_path)]) == 2
    assert "w.pt" in _err_line(capsys)


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "audit" in capsys.readouterr().out
