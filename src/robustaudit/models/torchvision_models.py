"""``torchvision:ARCH[:k=v,...]``: a torchvision classification or segmentation architecture, built
without downloading weights; the user's weights are loaded strictly, their class count inferred."""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustaudit.core.errors import UserError, suggest, unknown
from robustaudit.models.factories import IDENT
from robustaudit.models.files import file_sha256, first_line
from robustaudit.models.state_dicts import load_state_dict, read_state_dict

__all__ = ["TORCHVISION_PREFIX", "class_count", "classes_from_weights", "from_torchvision", "parse_torchvision",
           "quiet_torchvision_init"]


TORCHVISION_PREFIX = "torchvision:"


def parse_torchvision(spec: str) -> tuple[str, dict[str, Any], bool]:
    """``torchvision:ARCH[:k=v,...]`` -> ``(arch, builder keyword arguments, is_segmentation)``; an
    unknown or unsupported architecture and a malformed setting are one-line UserErrors. The one parser
    of this form: the weights-enum loader (``weights=ENUM``) reads its settings from here too."""
    import torchvision

    arch, _, settings = spec[len(TORCHVISION_PREFIX) :].partition(":")
    arch = arch.strip()
    kwargs = _parse_settings(settings, spec)
    classification = torchvision.models.list_models(module=torchvision.models)
    segmentation = torchvision.models.list_models(module=torchvision.models.segmentation)
    if arch not in classification and arch not in segmentation:
        supported = classification + segmentation
        if arch in torchvision.models.list_models():
            raise UserError(
                f"'{spec}': '{arch}' is not a torchvision classification or segmentation architecture; "
                f"torchvision:ARCH takes one of: {', '.join(sorted(supported))}"
            )
        raise unknown("torchvision classification or segmentation architecture", arch, supported)
    return arch, kwargs, arch in segmentation


def from_torchvision(
    spec: str, weights: Path | None, num_classes: int | None
) -> tuple[nn.Module, str, str, str | None]:
    arch, kwargs, segmentation = parse_torchvision(spec)
    if "weights" in kwargs or "weights_backbone" in kwargs:
        # weights=ENUM is loaded by models.torchvision_weights before this point; here only a
        # weights_backbone (an ImageNet download under a segmentation head) is left
        raise UserError(
            f"'{spec}': weights_backbone is not supported; give the whole model's weights as "
            "weights=ENUM (torch hub's cache) or as a file with --weights"
        )

    state = read_state_dict(weights) if weights is not None else None
    if segmentation:
        # torchvision's segmentation builders fetch ImageNet backbone weights by default: never here
        kwargs["weights_backbone"] = None
        kwargs.setdefault("aux_loss", False)
        if state is not None and not kwargs["aux_loss"]:
            state = _drop_aux_classifier(state, weights, spec)
    given = class_count(spec, kwargs, num_classes)
    if given is not None:
        kwargs["num_classes"] = given
    elif state is not None:
        inferred = _infer_num_classes(arch, kwargs, state)
        if inferred is not None:
            kwargs["num_classes"] = inferred

    model = _build_torchvision(arch, kwargs, spec)
    if weights is None or state is None:
        warnings.warn(
            f"'{spec}' has no weights (random initialization): its accuracy will be at chance; "
            "pass the trained weights with --weights",
            stacklevel=4,
        )
        return model, "torchvision", spec, None
    load_state_dict(model, state, weights)
    return model, "torchvision", spec, file_sha256(weights)


def _drop_aux_classifier(state: dict[str, Any], path: Path | None, spec: str) -> dict[str, Any]:
    """Drop the ``aux_classifier.*`` keys of a torchvision segmentation checkpoint trained with
    ``aux_loss=True``: the auxiliary head only feeds ``dict['aux']``, which no attack or metric reads, and
    building it would cost a second head's compute at every attack step. ``aux_loss=true`` keeps it."""
    aux = [key for key in state if key.startswith("aux_classifier.")]
    if not aux:
        return state
    warnings.warn(
        f"'{spec}': {len(aux)} aux_classifier weights in '{path}' are not loaded (the auxiliary head is "
        "training-only; add ':aux_loss=true' to keep it)",
        stacklevel=5,
    )
    return {key: value for key, value in state.items() if not key.startswith("aux_classifier.")}


def _parse_settings(settings: str, spec: str) -> dict[str, Any]:
    """Parse ``num_classes=10,aux_logits=false`` into builder keyword arguments."""
    kwargs: dict[str, Any] = {}
    for item in (s.strip() for s in settings.split(",")):
        if not item:
            continue
        key, eq, raw = (part.strip() for part in item.partition("="))
        if not eq or not re.fullmatch(IDENT, key) or not raw:
            raise UserError(
                f"'{spec}': setting '{item}' is not KEY=VALUE (e.g. torchvision:resnet18:num_classes=10)"
            )
        kwargs[key] = _literal(raw)
    if "num_classes" in kwargs:
        value = kwargs["num_classes"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"'{spec}': num_classes must be a positive integer, got '{value}'")
    return kwargs


def _literal(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


@contextmanager
def quiet_torchvision_init() -> Iterator[None]:
    # GoogLeNet and Inception warn about a future change of their random init on every build with
    # weights=None; that is torchvision's note to itself, not something the user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The default weight initialization", category=FutureWarning
        )
        yield


def _build_torchvision(arch: str, kwargs: dict[str, Any], spec: str) -> nn.Module:
    import torchvision

    try:
        with quiet_torchvision_init():
            return torchvision.models.get_model(arch, weights=None, **kwargs)
    except (TypeError, ValueError) as err:
        hint = ""
        if isinstance(err, TypeError):
            with contextlib.suppress(Exception):  # only the hint is lost if the bare model will not build
                with quiet_torchvision_init(), torch.device("meta"):
                    bare = torchvision.models.get_model(arch, weights=None)
                hint = keyword_hint(err, type(bare), ("weights",))
        raise UserError(
            f"'{spec}': torchvision rejected the settings {kwargs}: {first_line(err)}{hint}"
        ) from None


def keyword_hint(err: TypeError, cls: type, extra: Sequence[str] = ()) -> str:
    """``" (did you mean 'weights'?)"`` for a builder's "unexpected keyword argument 'weigths'": the closest
    of ``cls.__init__``'s keyword parameters and ``extra`` (what the builder itself takes); ``""`` else."""
    found = re.search(r"unexpected keyword argument '([^']+)'", str(err))
    if not found:
        return ""
    try:
        params = [p.name for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        params = []
    return suggest(found.group(1), [*extra, *params])


def _infer_num_classes(
    arch: str, kwargs: dict[str, Any], state: Mapping[str, torch.Tensor]
) -> int | None:
    """The classes the weights were trained for: the out-features of the layers whose shape differs
    from the default (1000-class) model's only in the first dimension.

    The reference model is built on the meta device (no memory, no init cost); a few architectures
    (RegNet) compute their widths with tensors and cannot be built there, and are built on the CPU.
    """
    import torchvision

    try:
        with quiet_torchvision_init(), torch.device("meta"):
            reference = torchvision.models.get_model(arch, weights=None, **kwargs)
    except NotImplementedError:
        try:
            reference = _build_torchvision(arch, kwargs, arch)
        except UserError:
            return None
    except (TypeError, ValueError):
        return None  # the real build reports the bad setting
    return classes_from_weights(reference.state_dict(), state)


def classes_from_weights(reference: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> int | None:
    """The class count of weights ``state`` for an architecture whose default-head model has the state
    dict ``reference`` (meta tensors do): the out-features of the layers whose shape differs from the
    reference's only in the first dimension; ``None`` when no layer (or more than one count) does.
    Shared by the torchvision and timm sources."""
    found = set()
    for key, expected in reference.items():
        got = state.get(key)
        if not isinstance(got, torch.Tensor) or got.ndim != expected.ndim or got.ndim == 0:
            continue
        if got.shape[0] != expected.shape[0] and got.shape[1:] == expected.shape[1:]:
            found.add(int(got.shape[0]))
    # Several candidates means the weights differ in more than the head: strict loading will say how.
    return found.pop() if len(found) == 1 else None


def class_count(spec: str, kwargs: dict[str, Any], num_classes: int | None) -> int | None:
    """The class count a spec's own ``:num_classes=N`` and the caller's ``num_classes`` agree on (the
    spec's wins, with a warning when they differ); ``None`` when neither gives one (then the weights do)."""
    if "num_classes" in kwargs:
        if num_classes is not None and num_classes != kwargs["num_classes"]:
            warnings.warn(
                f"'{spec}' sets num_classes={kwargs['num_classes']}, "
                f"which overrides num_classes={num_classes}",
                stacklevel=5,
            )
        return int(kwargs["num_classes"])
    return num_classes
