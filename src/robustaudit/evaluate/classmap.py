"""A model with more outputs than the data's classes, audited on the data's labels (an ImageNet model on a
subset of its classes): the label map, its default, its validation, and the restricted model.

The label map sends data class ``c`` to model output ``outputs[c]``. Where one is in use, the model is
wrapped in :class:`~robustaudit.models.wrappers.ClassSubset` and everything after the subject is opened --
the clean pass, every attack, the checks, the detectors, the cost -- sees the restricted logits ``(N, C)``:
a sample is correct when the argmax over the C mapped outputs is its label, and an attack succeeds only when
it changes that argmax. This is the usual evaluation of a model on a subset of its classes (ImageNet subsets
such as Imagenette; the 10 outputs of the data's classes compete, the other 990 do not). An attacker who may
also push the prediction to one of the K - C unmapped outputs is a different, stronger threat model that is
not offered as an option: to audit it, give data whose labels *are* the model's output indices (a
``tensors:`` file without ``class_names``), which is audited on all K outputs.

Which map, for a classification audit (C classes, a model with K outputs):

- ``--class-map`` given: that map, for every model (each index below the model's K); a permutation when K = C.
- the data names no classes (a tensor file, an ``(x, y)`` pair): none. Its labels are the model's
  output indices and every output counts, as always.
- K = C: none, unless the model names its outputs and the data's names are a reordering of them.
- K > C and the model names its outputs (a ``class_names`` attribute on the module, a Hugging Face
  ``config.id2label``, or the class names of the data set a catalog model was trained on): by name (case,
  ``_`` and ``-`` ignored; an output's comma-separated synonyms count, as in ImageNet's "tabby, tabby
  cat") when every data class matches exactly one output; when none matches, identity on the first C outputs (with a
  warning); when only some match, a one-line error asking for ``--class-map``.
- K > C and the model names nothing: identity on the first C outputs, with a warning.
- K < C: a one-line error (a classifier needs an output per class).
- C = 1 (named data of one class, or a one-class ``--class-map``): a one-line error, since the restricted
  model has one output and nothing to attack.

The map in use is in ``provenance["models"][i]["class_map"]``, the report's data section and the resume
fingerprint; nothing is added where no map is in use. Under a map, class indices in attack settings (a
patch's or a generator's ``target``) are the data's; the "outputs are probabilities" check reads all K
outputs (restricted probabilities no longer sum to 1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import torch

from robustaudit.core.errors import UserError, suggest
from robustaudit.core.modes import eval_mode
from robustaudit.data.base import ImageData
from robustaudit.evaluate.entries import ModelEntry
from robustaudit.evaluate.samples import model_forward
from robustaudit.models.wrappers import ClassSubset

__all__ = ["LabelMap", "apply_class_maps", "check_class_map", "data_class_names"]

#: How many pairs a message or a report line shows before "…".
SHOWN = 8


@dataclass(frozen=True)
class LabelMap:
    """Data class ``c`` (named ``names[c]``) is model output ``outputs[c]`` of ``num_outputs``; ``how``:
    ``given`` (``--class-map``), ``by name`` or ``identity``."""

    outputs: tuple[int, ...]
    names: tuple[str, ...]
    how: str
    num_outputs: int
    output_names: tuple[str, ...] | None = None

    def provenance(self) -> dict[str, Any]:
        """``provenance["models"][i]["class_map"]``: how it was chosen, K, and ``{class name: output}``."""
        doc: dict[str, Any] = {"how": self.how, "outputs": self.num_outputs,
                               "map": dict(zip(self.names, self.outputs))}
        if self.output_names is not None:
            doc["output_names"] = {n: self.output_names[k] for n, k in zip(self.names, self.outputs)}
        return doc


def data_class_names(data: ImageData) -> list[str]:
    """The data's class names, or ``"0" .. "C-1"`` when it names none (the keys ``--class-map`` takes)."""
    return list(data.class_names) if data.class_names is not None else [str(c) for c in range(data.num_classes)]


def check_class_map(pairs: Sequence[tuple[str, int]] | None, data: ImageData,
                    task: str) -> tuple[tuple[str, int], ...] | None:
    """``--class-map`` pairs checked against the data: every class once (no unknown, no missing one), no
    output twice; returned in the data's class order. One-line :class:`UserError` otherwise."""
    if pairs is None:
        return None
    if task != "classification":
        raise UserError(f"--class-map maps a classifier's outputs to the data's classes; it does not apply to a "
                        f"{task} audit")
    names = data_class_names(data)
    given = dict(pairs)
    for name in given:
        if name not in names:
            shown = ", ".join(names[:SHOWN]) + (", …" if len(names) > SHOWN else "")
            raise UserError(f"--class-map: '{name}' is not a class of data '{data.name}'{suggest(name, names)}; "
                            f"its classes: {shown}")
    missing = [n for n in names if n not in given]
    if missing:
        raise UserError(f"--class-map: no output given for class '{missing[0]}'"
                        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: every class of data "
                        f"'{data.name}' needs one ({len(names)} classes)")
    seen: dict[int, str] = {}
    for name in names:
        index = given[name]
        if index in seen:
            raise UserError(f"--class-map: classes '{seen[index]}' and '{name}' both map to output {index}; "
                            "each class needs its own output")
        seen[index] = name
    return tuple((n, given[n]) for n in names)


def apply_class_maps(entries: Sequence[ModelEntry], data: ImageData,
                     given: Sequence[tuple[str, int]] | None) -> None:
    """Restrict each classification model to the outputs of the data's classes where a map applies (see
    the module docstring): ``entry.module`` becomes a ``ClassSubset`` and ``entry.info["class_map"]`` says
    which. ``given``: the checked ``--class-map`` pairs, in the data's class order."""
    if given is None and data.class_names is None:
        return  # labels are the model's own output indices: every output counts
    if data.num_classes < 2:
        # each model is restricted to the one output of the one class: it predicts that class whatever the
        # input, so every sample is correct and no attack can change a prediction; say so before any runs
        raise UserError(f"data '{data.name}' has a single class ('{data_class_names(data)[0]}'): a classifier "
                        "audited on the data's classes always predicts it, so no attack can change a prediction; "
                        "give data of at least 2 classes")
    for entry in entries:
        k = _num_outputs(entry, data)
        if k is None:
            continue  # not logits (N, K): the clean pass says what is wrong, in one line
        c = data.num_classes
        if k < c:
            raise UserError(f"model '{entry.name}' has {k} outputs but data '{data.name}' has {c} classes: a "
                            "classifier needs an output per class (a model with more outputs is audited on the "
                            "data's classes)")
        found = _given_map(entry, data, given, k) if given is not None else _default_map(entry, data, k)
        if found is not None:
            entry.module = ClassSubset(entry.module, found.outputs)
            entry.info["class_map"] = found.provenance()


def _given_map(entry: ModelEntry, data: ImageData, given: Sequence[tuple[str, int]], k: int) -> LabelMap:
    for name, index in given:
        if index >= k:
            raise UserError(f"--class-map: output {index} of class '{name}' is out of range: model '{entry.name}' "
                            f"has {k} outputs (0..{k - 1})")
    names = _model_class_names(entry, k)
    return LabelMap(tuple(i for _, i in given), tuple(n for n, _ in given), "given", k,
                    tuple(names) if names is not None else None)


def _default_map(entry: ModelEntry, data: ImageData, k: int) -> LabelMap | None:
    """The map of named data without ``--class-map`` (``None``: the model's outputs are the classes)."""
    c, names = data.num_classes, data_class_names(data)
    # K = C: only names the module itself carries can reorder it (a catalog model's own data is not opened)
    model_names = _model_class_names(entry, k, catalog=k > c)
    if model_names is not None:
        index: dict[str, list[int]] = {}
        for j, n in enumerate(model_names):
            # an output is found by its name and by each of its comma-separated synonyms ("tabby, tabby cat")
            for key in dict.fromkeys([_plain(n), *(_plain(part) for part in str(n).split(","))]):
                if key:
                    index.setdefault(key, []).append(j)
        hits = [index.get(_plain(n), []) for n in names]
        outputs = tuple(h[0] for h in hits if len(h) == 1)
        if len(outputs) == c and len(set(outputs)) == c:
            if k == c and outputs == tuple(range(c)):
                return None
            return LabelMap(outputs, tuple(names), "by name", k, tuple(model_names))
        if k == c:
            return None  # as before: the outputs are the classes, in order
        if any(hits):
            raise UserError(f"model '{entry.name}' names its {k} outputs and data '{data.name}' names its {c} "
                            f"classes, but not every class name matches exactly one output: {_mismatch(names, hits)}; "
                            "give --class-map NAME=INDEX for every class")
    elif k == c:
        return None
    why = "none of whose names is an output's" if model_names is not None else "and the model names no outputs"
    warnings.warn(f"model '{entry.name}' has {k} outputs and data '{data.name}' {c} classes, {why}: it is audited "
                  f"on outputs 0..{c - 1} in the data's class order; give --class-map if the data's classes are "
                  "other outputs", stacklevel=3)
    return LabelMap(tuple(range(c)), tuple(names), "identity", k,
                    tuple(model_names) if model_names is not None else None)


def _mismatch(names: Sequence[str], hits: Sequence[list[int]]) -> str:
    """The first class whose name matches no output, several, or one another class also matches."""
    owner: dict[int, str] = {}
    for name, h in zip(names, hits):
        if not h:
            return f"class '{name}' matches no output's name"
        if len(h) > 1:
            return f"class '{name}' matches outputs {', '.join(map(str, h))}"
        if h[0] in owner:
            return f"classes '{owner[h[0]]}' and '{name}' both match output {h[0]}"
        owner[h[0]] = name
    return "no class matches"  # not reached: the caller found a mismatch


def _plain(name: str) -> str:
    """A class name for matching: case, ``_``, ``-`` and runs of spaces ignored."""
    return " ".join(str(name).casefold().replace("_", " ").replace("-", " ").split())


def _num_outputs(entry: ModelEntry, data: ImageData) -> int | None:
    """K, the model's outputs: the catalog card's classes, else from one forward pass on one sample (no
    gradients, eval mode, the global random state forked so a randomized model's draws stay the audit's)."""
    card = _catalog_card(entry)
    if card is not None:
        return int(card.num_classes)
    if len(data) == 0:
        return None
    module = entry.module
    dev = next((t.device for t in chain(module.parameters(), module.buffers())), torch.device("cpu"))
    x, _ = data.load([0])
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad(), eval_mode(module):
            logits = model_forward(module, x.to(dev), entry.name)
    except UserError:
        return None  # a model (or data) that fails: the clean pass says so, as it does without a map
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        return None
    return int(logits.shape[1])


def _model_class_names(entry: ModelEntry, k: int, *, catalog: bool = True) -> list[str] | None:
    """The names of the model's K outputs: a ``class_names`` attribute (list of strings) or a Hugging Face
    ``config.id2label`` on the module or a module it wraps, else (``catalog``) a catalog model's training
    data's class names; ``None`` when unknown."""
    m: Any = entry.module
    for _ in range(16):
        names = getattr(m, "class_names", None)
        labels = getattr(getattr(m, "config", None), "id2label", None)  # a Hugging Face model's config
        if names is None and isinstance(labels, dict) and sorted(labels) == list(range(k)):
            names = [labels[j] for j in range(k)]
        if isinstance(names, (list, tuple)) and len(names) == k and all(isinstance(n, str) for n in names):
            return list(names)
        m = getattr(m, "model", None)
        if not isinstance(m, torch.nn.Module):
            break
    card = _catalog_card(entry) if catalog else None
    if card is None:
        return None
    from robustaudit.data.registry import open_dataset

    try:
        names = open_dataset(card.dataset).class_names
    except UserError:
        return None
    return list(names) if names is not None and len(names) == k else None


def _catalog_card(entry: ModelEntry) -> Any:
    if entry.info.get("source") != "catalog" or not entry.info.get("spec"):
        return None
    from robustaudit.models.catalog import get_card

    try:
        return get_card(str(entry.info["spec"]))
    except UserError:
        return None
