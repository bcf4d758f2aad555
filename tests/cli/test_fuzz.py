"""Fuzzing ``main(argv)``: random argument strings and random data files never make robustaudit crash.

Whatever goes in, the exit code is 0 (done), 1 (a gate failed) or 2 (a user mistake, said in one
line), never 3 (an internal error), and stderr never holds a traceback. Runs stay tiny (at most 6
samples, FGSM-sized attacks with at most a few steps, no sanity checks, and no model cost measurement
except in the slow property) so that each fast property takes seconds; the table of known inputs and
their messages is tests/cli/test_hostile_inputs.py.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robustaudit.cli import main

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: attacks cheap enough to run for real in a property (square, cw, fab-t, autoattack take minutes)
ATTACKS = ["fgsm", "pgd", "bim", "illc", "mifgsm", "apgd", "deepfool"]
#: settings the attacks above take, plus names they do not
KEYS = ["steps", "restarts", "step_size", "rel_step_size", "random_start", "loss", "early_stop", "compact_every",
        "decay", "rho", "alpha", "overshoot", "candidates", "foo", "eps", "Steps"]
WORDS = ["true", "false", "none", "nan", "inf", "-inf", "1/0", "8/255", "abc", "", "1e9x", "ce", "margin", "0x10",
         "(", ")", ":", "=", ","]


@pytest.fixture
def no_cost():
    """Skip the model cost measurement (about 2 s per audit, tested in its own tests): the fast properties
    are about inputs, and a few of their draws really run. The slow property keeps it on."""
    from robustaudit.evaluate import options

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(options, "DEFAULT_COST", False)
        yield


def run(argv: list[str]) -> tuple[int, str]:
    """``main(argv)`` with stderr captured (rich writes to ``sys.stderr`` at print time)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


def check(code: int, err: str) -> None:
    event(f"exit {code}")  # --hypothesis-show-statistics: how many draws got past validation
    assert code in (0, 1, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:  # the mistake is said in one line
        assert sum(line.startswith("error:") for line in err.splitlines()) == 1, err


def _number_text(x: float) -> str:
    return repr(x) if math.isfinite(x) else str(x)


numbers = st.one_of(
    st.integers(-3, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(_number_text),
    st.tuples(st.integers(-3, 300), st.integers(-2, 300)).map(lambda t: f"{t[0]}/{t[1]}"),
)
free_text = st.text(alphabet="0123456789./-+,eEinfaxX :=()_", max_size=12)
eps_text = st.one_of(numbers, free_text, st.lists(numbers, min_size=1, max_size=3).map(",".join))
values = st.one_of(st.integers(-2, 4).map(str), st.floats(-1, 2).map(_number_text),
                   st.sampled_from(WORDS), free_text)


#: True one time in five (``st.integers(0, 4) == 0`` would be True far more often: Hypothesis favours 0)
ONE_IN_FIVE = st.sampled_from([False, False, True, False, False])


def mostly(valid: st.SearchStrategy, junk: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` four times in five: with six fields drawn independently, a quarter of the argument
    lists are valid and really run, instead of nearly none."""
    return ONE_IN_FIVE.flatmap(lambda odd: junk if odd else valid)


@st.composite
def attack_specs(draw: st.DrawFn) -> str:
    """A real attack name with random settings; iterative attacks get ``steps=2`` unless the draw sets
    steps itself (with at most 4), so a valid spec runs in well under a second."""
    name = draw(st.sampled_from(ATTACKS))
    pairs = draw(mostly(st.just([]), st.lists(st.tuples(st.sampled_from(KEYS), values), max_size=3)))
    if name != "fgsm" and not any(k == "steps" for k, _ in pairs):
        pairs.append(("steps", "2"))
    spec = name + (":" + ",".join(f"{k}={v}" for k, v in pairs) if pairs else "")
    if draw(ONE_IN_FIVE):
        spec = f"eot:k={draw(st.integers(-1, 2))}({spec})"
    if draw(ONE_IN_FIVE):
        spec += draw(st.sampled_from(["(", ")", ":", ",", "(fgsm)"]))
    return spec


def audit_argv(out: str, eps: str, attack: str, n: str, batch: str, device: str, norm: str) -> list[str]:
    # --flag=value, so that values starting with "-" stay values
    return ["audit", "--out", out, "--model", "digits-cnn", "--checks", "off", f"--eps={eps}", f"--attack={attack}",
            f"--n={n}", f"--batch-size={batch}", f"--device={device}", f"--norm={norm}"]


JUNK_N = st.one_of(st.integers(-3, 0).map(str), free_text)
JUNK_DEVICE = st.one_of(st.sampled_from(["auto", "gpu", "cuda:7", "", "meta", "mps", "CPU", "cuda:-1"]), free_text)
JUNK_NORM = st.one_of(st.sampled_from(["l0", "LINF", ""]), free_text)


@pytest.mark.usefixtures("no_cost")
@FUZZ
@given(
    eps=eps_text,
    attack=attack_specs(),
    n=st.one_of(st.integers(1, 6).map(str), JUNK_N),
    batch=st.one_of(st.integers(1, 5).map(str), JUNK_N),
    device=st.one_of(st.just("cpu"), JUNK_DEVICE),
    norm=st.one_of(st.sampled_from(["linf", "l2", "l1"]), JUNK_NORM),
)
def test_random_arguments_never_crash(eps: str, attack: str, n: str, batch: str, device: str, norm: str) -> None:
    """Mostly refusals (a few seconds): each field is junk half the time."""
    with tempfile.TemporaryDirectory() as out:
        check(*run(audit_argv(out, eps, attack, n, batch, device, norm)))


@pytest.mark.slow
@FUZZ
@given(
    eps=mostly(st.one_of(st.floats(0, 0.5).map(repr), st.integers(0, 64).map(lambda k: f"{k}/255")), eps_text),
    attack=attack_specs(),
    n=mostly(st.integers(1, 6).map(str), JUNK_N),
    batch=mostly(st.integers(1, 5).map(str), JUNK_N),
    device=mostly(st.just("cpu"), JUNK_DEVICE),
    norm=mostly(st.sampled_from(["linf", "l2", "l1"]), JUNK_NORM),
)
def test_mostly_valid_arguments_run_or_refuse(eps: str, attack: str, n: str, batch: str, device: str,
                                              norm: str) -> None:
    """A third of the draws run a real audit with random attack settings (20-45 s on 2 cores)."""
    with tempfile.TemporaryDirectory() as out:
        check(*run(audit_argv(out, eps, attack, n, batch, device, norm)))


# ---------------------------------------------------------------------------------------- data files

DTYPES = ["float16", "float32", "float64", ">f4", "int8", "int64", "uint8", "bool", "complex64", "<U3",
          "datetime64[s]"]
LABEL_DTYPES = ["int64", "int32", "uint8", ">i8", "float32", "float64", "bool", "<U2"]


def _shapes(draw: st.DrawFn, good: tuple[int, ...]) -> tuple[int, ...]:
    if draw(st.booleans()):
        return good
    return tuple(draw(st.lists(st.integers(0, 5), max_size=5)))


@st.composite
def xy_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """``x``/``y`` of random dtypes and shapes (half the time the right ones), NaN and Inf included;
    sometimes a key missing, or ``class_names`` of random shape."""
    n = draw(st.integers(0, 6))
    # one draw in five: float images and integer labels of the right shapes, so the values decide and
    # some files really run (each run costs ~2 s with the model cost measurement)
    good = draw(ONE_IN_FIVE)
    x_dtype = np.dtype(draw(st.sampled_from(DTYPES[:4] if good else DTYPES)))
    x = draw(hnp.arrays(x_dtype, (n, 1, 8, 8) if good else _shapes(draw, (n, 1, 8, 8)),
                        elements=_elements(x_dtype, 0.0, 1.0, odd=not good or draw(ONE_IN_FIVE))))
    y_dtype = np.dtype(draw(st.sampled_from(LABEL_DTYPES[:4] if good else LABEL_DTYPES)))
    y = draw(hnp.arrays(y_dtype, (n,) if good else _shapes(draw, (n,)),
                        elements=_elements(y_dtype, 0 if good else -2, 9 if good else 12)))
    doc = {"x": x, "y": y}
    if draw(ONE_IN_FIVE):
        del doc[draw(st.sampled_from(["x", "y"]))]
    if draw(ONE_IN_FIVE):
        doc["class_names"] = np.array([str(i) for i in range(draw(st.integers(0, 11)))]).reshape(
            draw(st.sampled_from([(-1,), (1, -1)])))
    return doc


def _elements(dtype: np.dtype, lo: float, hi: float, *, odd: bool = True) -> st.SearchStrategy | None:
    """Values in ``[lo, hi]``; with ``odd``, floats may also be NaN, Inf or 255."""
    if dtype.kind == "f":
        fine = st.floats(lo, hi, width=8 * dtype.itemsize)
        return st.one_of(fine, st.sampled_from([math.nan, math.inf, -math.inf, 255.0])) if odd else fine
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return st.integers(max(int(lo), info.min), min(int(hi), info.max))
    return None  # hypothesis' defaults for bool, complex, strings and dates


def _save(path: Path, doc: dict[str, np.ndarray], as_torch: bool) -> None:
    if not as_torch:
        np.savez(path, **doc)
        return
    entries = {}
    for key, array in doc.items():
        try:  # what a PyTorch user would save; numpy arrays torch cannot hold stay numpy (and are refused)
            entries[key] = torch.from_numpy(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("=")))
        except (TypeError, ValueError):
            entries[key] = array
    torch.save(entries, path)


@pytest.mark.usefixtures("no_cost")
@FUZZ
@given(doc=xy_arrays(), as_torch=st.booleans())
def test_random_arrays_never_crash(doc: dict[str, np.ndarray], as_torch: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("d.pt" if as_torch else "d.npz")
        _save(path, doc, as_torch)
        code, err = run(["audit", "--out", str(Path(tmp) / "out"), "--model", "digits-cnn", "--checks", "off",
                         "--data", f"tensors:{path}", "--n", "4", "--attack", "fgsm", "--eps", "0.1"])
    check(code, err)


HEADS = [b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95", b"\x93NUMPY\x01\x00", b"\x00\x00\x08\x03"]


@pytest.mark.usefixtures("no_cost")
@FUZZ
@given(head=st.sampled_from(HEADS), body=st.binary(max_size=2000), kind=st.sampled_from(["npz", "pt", "mnist"]))
def test_random_bytes_never_crash(head: bytes, body: bytes, kind: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "mnist":  # random bytes where MNIST's images file should be, next to good labels
            raw = Path(tmp) / "MNIST" / "raw"
            raw.mkdir(parents=True)
            (raw / "t10k-images-idx3-ubyte").write_bytes(head + body)
            labels = np.arange(10, dtype=np.uint8)
            (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + labels.tobytes())
            spec = f"mnist:{tmp}"
        else:
            path = Path(tmp) / f"d.{kind}"
            path.write_bytes(head + body)
            spec = f"tensors:{path}"
        code, err = run(["audit", "--out", str(Path(tmp) / "out"), "--model", "digits-cnn", "--checks", "off",
                         "--data", spec, "--n", "4", "--attack", "fgsm", "--eps", "0.1"])
    check(code, err)


@pytest.mark.usefixtures("no_cost")
@pytest.mark.parametrize("weights", ["random", "truncated"])
@FUZZ
@given(body=st.binary(min_size=1, max_size=1500))
def test_random_weights_files_never_crash(weights: str, body: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        if weights == "truncated":  # a real safetensors header, then random bytes
            from safetensors.torch import save_file

            save_file({"w": torch.zeros(3)}, str(path))
            path.write_bytes(path.read_bytes()[: 8 + len(body) % 64] + body)
        else:
            path.write_bytes(body)
        code, err = run(["audit", "--out", str(Path(tmp) / "out"), "--model", "digits-cnn", "--checks", "off",
                         "--weights", str(path), "--n", "4", "--attack", "fgsm", "--eps", "0.1"])
    check(code, err)
