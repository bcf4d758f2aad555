"""Crash-safe runs: what must match to resume a stored run, and when an ``--out`` may be written.

A run's *fingerprint* is everything its numbers depend on, minus what only changes how they are shown
(``out``, ``fail_under``, ``fail_on``, ``trust_pickle``, ``allow_download``, ``model_dir``, the
``resume``/``overwrite`` switches; the weights' sha256 is in it, wherever they were read from): the
robustaudit and torch versions and the store layout (a resumed run mixes old and new batches, so both
halves must come from the same code), the device (GPU kernels round differently from CPU ones), the
data set's name and size, ``n``, the eps grid, the norm, the batch size (batches are keyed by their
exact ids), the seed, each attack's class and settings, and each model's name, normalization, label map
(only where one is in use: :mod:`robustaudit.evaluate.classmap`) and weights: the sha256 of the file they were read from, or of the ``state_dict`` for a module handed
over in Python. The data's *content* is not part of it: the clean pass hashes every batch it loads
anyway and compares with the stored batch (``runner._clean_pass``), which costs no extra read pass.
A segmentation run adds ``task: segmentation`` (absent means classification), so neither task's store
is ever resumed as the other's.

Policy for an ``--out`` that already holds a store:

- no store: a run starts; ``resume`` is a UserError (nothing to resume);
- a finished run (``results.json`` written): a run overwrites it, as it always did; ``resume`` reuses
  every batch and rewrites the same numbers;
- an unfinished run with finished batches: a run refuses (one line: pass ``resume`` or ``overwrite``),
  so work is never lost silently; ``overwrite`` discards it; ``resume`` continues it when the
  fingerprints match and otherwise names the first part that differs.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from robustaudit.core.errors import UserError
from robustaudit.evaluate.result import EXAMPLES_FILE, REPORT_HTML, REPORT_MD, RESULTS_FILE, SEG_EXAMPLES_FILE
from robustaudit.evaluate.runner import AttackEntry, ModelEntry
from robustaudit.evaluate.store import STORE_FILE, STORE_VERSION, Store, state_dict_sha256
from robustaudit.models.wrappers import unrestricted

if TYPE_CHECKING:
    from robustaudit.evaluate.spec import AuditSpec
    from robustaudit.evaluate.subject import Subject

__all__ = ["fingerprint", "fingerprint_difference", "open_store"]


def fingerprint(spec: AuditSpec, subject: Subject, *, n: int, device: torch.device) -> dict[str, Any]:
    """The JSON-able identity of a run's numbers (see the module docstring for what is in it and why): the
    spec's options that change numbers, with the opened data, attacks and models' weights.

    ``n`` is the number of samples audited (after capping at the data's size); ``device`` the resolved
    device, so ``auto`` and ``cpu`` on a machine without a GPU are the same run.
    """
    from robustaudit.core.version import __version__

    data = subject.data
    fp = {
        "robustaudit": __version__,
        "torch": torch.__version__,
        "store": STORE_VERSION,
        "device": device_label(device),
        "data": {"name": data.name, "size": len(data), "sample_shape": list(data.sample_shape),
                 "num_classes": data.num_classes},
        "n": int(n),
        "eps": [float(e) for e in spec.eps],
        "norm": spec.norm,
        "batch_size": int(spec.batch_size),
        "seed": int(spec.seed),
        "attacks": [{"name": a.name, "class": type(a.attack).__name__, "settings": _settings(a)}
                    for a in subject.attacks],
        "models": [{"name": m.name, "normalize": m.info.get("normalize"), "weights": _weights(m),
                    # the label map, only where one is in use: older stores (and runs without one) resume
                    **({"class_map": m.info["class_map"]["map"]} if m.info.get("class_map") else {})}
                   for m in subject.entries],
    }
    if spec.task != "classification":  # absent means classification (stores written before tasks existed)
        fp["task"] = spec.task
    return {**fp, **spec.fast.fingerprint(device)}


def device_label(device: torch.device) -> str:
    """``cpu``, ``mps`` or ``cuda (GPU name)``: two cards of one model give the same numbers, whatever
    their index."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def _weights(entry: ModelEntry) -> str:
    sha = entry.info.get("weights_sha256")
    # a file's hash also covers what a state_dict misses (TorchScript code); a module handed over in
    # Python, or built without a weights file, is identified by its tensors
    # (a label map's index is the fingerprint's own "class_map", not part of the weights)
    return f"file:{sha}" if sha else f"state_dict:{state_dict_sha256(unrestricted(entry.module))}"


def _settings(entry: AttackEntry) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in entry.attack.settings().items():
        if not isinstance(value, (int, float, str, bool, type(None))):
            # reprs of user callables carry a memory address that changes with every process
            value = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))
        out[key] = value
    return out


def fingerprint_difference(stored: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first part that differs between two fingerprints, as a phrase for a one-line message
    (``"the eps grid differs (stored [0.1, 0.2], now [0.1, 0.3])"``), or ``None`` when they match."""
    if stored == current:
        return None
    plain = {"task": "the task", "robustaudit": "the robustaudit version", "torch": "the torch version",
             "store": "the store layout", "device": "the device", "n": "n (the number of samples)", "eps": "the eps grid", "norm": "the norm",
             "batch_size": "the batch size", "seed": "the seed", "processes": "the number of processes",
             "precision": "the attack precision", "compile": "--compile", "tf32": "TF32"}
    for key, what in plain.items():
        # keys added after the first stores were written: absent means the default
        s, c = stored.get(key, _ABSENT.get(key)), current.get(key, _ABSENT.get(key))
        if s != c:
            return f"{what} differs (stored {_show(s)}, now {_show(c)})"
    if stored.get("data") != current.get("data"):
        s, c = stored.get("data") or {}, current.get("data") or {}
        return (f"the data differs (stored {s.get('name')}, {s.get('size')} samples of {s.get('sample_shape')}; "
                f"now {c.get('name')}, {c.get('size')} samples of {c.get('sample_shape')})")
    s_models, c_models = stored.get("models") or [], current.get("models") or []
    names = [m.get("name") for m in s_models], [m.get("name") for m in c_models]
    if names[0] != names[1]:
        return f"the models differ (stored {names[0]}, now {names[1]})"
    for s, c in zip(s_models, c_models):
        if s.get("weights") != c.get("weights"):
            return (f"the weights of model '{c['name']}' differ (sha256 stored {_short(s.get('weights'))}, "
                    f"now {_short(c.get('weights'))})")
        if s.get("normalize") != c.get("normalize"):
            return (f"the normalization of model '{c['name']}' differs (stored {_show(s.get('normalize'))}, "
                    f"now {_show(c.get('normalize'))})")
        if s.get("class_map") != c.get("class_map"):
            return (f"the label map of model '{c['name']}' differs (stored {_show(s.get('class_map'))}, "
                    f"now {_show(c.get('class_map'))})")
    s_attacks, c_attacks = stored.get("attacks") or [], current.get("attacks") or []
    names = [a.get("name") for a in s_attacks], [a.get("name") for a in c_attacks]
    if names[0] != names[1]:
        return f"the attacks differ (stored {names[0]}, now {names[1]})"
    for s, c in zip(s_attacks, c_attacks):
        if s != c:
            changed = sorted(k for k in set(s.get("settings", {})) | set(c.get("settings", {}))
                             if s.get("settings", {}).get(k) != c.get("settings", {}).get(k))
            detail = ", ".join(f"{k}: {_show(s['settings'].get(k))} -> {_show(c['settings'].get(k))}" for k in changed)
            return f"the settings of attack '{c['name']}' differ ({detail or 'class ' + str(c.get('class'))})"
    keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
    return f"the configuration differs ({', '.join(keys)})"


#: What a fingerprint key written only when it is not the default means when absent.
_ABSENT: dict[str, Any] = {"task": "classification", "processes": 1, "precision": "fp32", "compile": False,
                           "tf32": False}


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _short(weights: str | None) -> str:
    if not weights:
        return "none"
    kind, _, sha = weights.partition(":")
    return f"{sha[:12]}… ({'file' if kind == 'file' else 'state_dict'})"


def stored_batch_size(out: str | Path, store_path: str | Path | None = None) -> int | None:
    """The batch size of the run stored in ``out`` (or ``store_path``), read without changing the store;
    ``None`` when there is no readable store or fingerprint. A resumed run whose batch size was chosen
    automatically keeps this one: its stored batches are looked up by their exact ids."""
    path = Path(out) / STORE_FILE if store_path is None else Path(store_path)
    if not path.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
    except sqlite3.Error:
        return None  # open_store says what is wrong with the file
    try:
        size = json.loads(row[0]).get("batch_size") if row else None
    except (ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else None


def open_store(out: str | Path, fp: dict[str, Any], config: dict[str, Any], *, resume: bool, overwrite: bool,
               store_path: str | Path | None = None) -> Store:
    """Open ``out/results.sqlite`` (or ``store_path``: a rank's store of a multi-process run) for a run
    with fingerprint ``fp``, applying the policy of the module docstring; the store comes back ready to
    write (fresh, or holding the run to continue).

    ``resume`` and ``overwrite`` exclude each other (the spec refused both together).

    Raises:
        UserError: ``resume`` with nothing (or something else) stored; an unfinished run in ``out``
            without ``resume`` or ``overwrite``.
    """
    out = Path(out)
    path = out / STORE_FILE if store_path is None else Path(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if resume and not path.is_file():
        raise UserError(f"--resume: {out} holds no stored run (no {path.relative_to(out) if path.is_relative_to(out) else path}); "
                        "run without --resume to start one")
    try:
        store = Store(path)
    except sqlite3.DatabaseError as exc:  # a corrupt or foreign file where the store should be
        raise UserError(f"{path} is not a robustaudit results store ({exc}); delete it or give another --out"
                        ) from None
    try:
        if resume:
            stored = store.get_meta("fingerprint")
            if stored is None:
                raise UserError(f"--resume: {path} holds no resumable run (written by an older robustaudit?); "
                                "rerun with --overwrite to start over")
            diff = fingerprint_difference(stored, fp)
            if diff is not None:
                raise UserError(f"cannot resume {out}: {diff}; rerun with --overwrite to start over, "
                                "or give another --out")
            store.put_meta("config", config)  # presentation keys (out, fail_under...) may have changed
            return store
        done = store.count_batches()
        if not overwrite and done and not store.get_meta("finished", False):
            raise UserError(f"{out} holds an unfinished run ({done} batches done); pass --resume to continue "
                            "it or --overwrite to discard it")
        store.reset()
        # results and reports of the discarded run would otherwise sit next to the new run's store until it
        # finishes, and stay there for good if it does not
        for name in (RESULTS_FILE, EXAMPLES_FILE, SEG_EXAMPLES_FILE, REPORT_MD, REPORT_HTML):
            (out / name).unlink(missing_ok=True)
        store.put_meta("fingerprint", fp)
        store.put_meta("config", config)
        store.put_meta("finished", False)
        return store
    except BaseException:
        store.close()
        raise
