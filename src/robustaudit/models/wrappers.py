"""Wrappers that give every model the same face: [0, 1] NCHW inputs in, a logits tensor out.

Attacks measure ε in pixel space and read a plain tensor, so the two ways users' models differ from
that (normalized inputs, structured outputs) are absorbed here, once, instead of in every attack.

Example::

    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    >>> model = prepare(net, normalize=parse_normalize("mean=0.5,0.5,0.5,std=0.25,0.25,0.25"))
    >>> model(torch.rand(2, 3, 4, 4)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from robustaudit.core.errors import UserError

__all__ = [
    "NORMALIZE_PRESETS",
    "ClassSubset",
    "ExportedModule",
    "LogitsOutput",
    "Normalize",
    "parse_normalize",
    "prepare",
    "raised_by_model",
    "type_name",
    "unrestricted",
]

# Only statistics that are standard and unambiguous; CIFAR-10's std, for one, circulates in two
# different versions, so it is better typed out than guessed.
NORMALIZE_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "mnist": ((0.1307,), (0.3081,)),
}


def _channel_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Validate mean/std (lengths equal, or one of them a single value; std > 0; all finite)."""
    try:
        mean_f = [float(v) for v in mean]
        std_f = [float(v) for v in std]
    except (TypeError, ValueError) as err:
        raise UserError(f"normalize mean/std must be sequences of numbers: {err}") from None
    if not mean_f or not std_f:
        raise UserError("normalize needs at least one mean and one std value")
    if len(mean_f) != len(std_f) and 1 not in (len(mean_f), len(std_f)):
        raise UserError(
            f"normalize has {len(mean_f)} mean values but {len(std_f)} std values; give one per "
            "channel for both (or a single value that applies to every channel)"
        )
    if not all(math.isfinite(v) for v in mean_f + std_f):
        raise UserError(f"normalize mean/std must be finite, got mean={mean_f} std={std_f}")
    if any(v <= 0 for v in std_f):
        raise UserError(f"normalize std must be > 0 for every channel, got std={std_f}")
    return mean_f, std_f


class Normalize(nn.Module):
    """Apply ``(x - mean) / std`` per channel before ``model``, so the model takes [0, 1] pixels.

    Args:
        model: the network that expects normalized inputs.
        mean, std: one value per channel, or a single value for all channels; every std > 0.

    Shapes: ``x`` is ``(N, C, H, W)`` in [0, 1]; ``mean``/``std`` are buffers of shape
    ``(1, C, 1, 1)`` (``(1, 1, 1, 1)`` when a single value is given). The output is the model's.

    The buffers are not persistent: they are configuration, not learned state, so the wrapper's
    ``state_dict`` holds the wrapped model's tensors only (under ``model.``).
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_f, std_f = _channel_stats(mean, std)
        channels = max(len(mean_f), len(std_f))
        self.model = model
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean_f).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_f).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> Any:
        """``x``: ``(N, C, H, W)`` in [0, 1]; returns ``model((x - mean) / std)``."""
        # A shape check costs no device sync; without it a channel mismatch would surface as a
        # broadcasting error deep inside the model, or worse, broadcast silently.
        if x.ndim != 4:
            raise UserError(f"Normalize expects (N, C, H, W) inputs, got shape {tuple(x.shape)}")
        if self.channels > 1 and x.shape[1] != self.channels:
            raise UserError(
                f"normalize has {self.channels} channels (mean/std) but the input has "
                f"{x.shape[1]} (shape {tuple(x.shape)})"
            )
        # Follow the input's dtype so half-precision inputs are not promoted back to float32.
        mean = self.mean.to(dtype=x.dtype)
        std = self.std.to(dtype=x.dtype)
        return self.model((x - mean) / std)

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:g}" for v in self.mean.flatten().tolist())
        std = ", ".join(f"{v:g}" for v in self.std.flatten().tolist())
        return f"mean=({mean}), std=({std})"


_KEY = re.compile(r"^(mean|std)=(.*)$")
_EXAMPLE = "'mean=0.49,0.48,0.45,std=0.25,0.24,0.26'"


def parse_normalize(spec: str) -> tuple[list[float], list[float]]:
    """Parse the CLI form ``mean=0.49,0.48,0.45,std=0.25,0.24,0.26`` into ``(mean, std)``.

    Either key may come first; spaces are tolerated (``mean = 0.5, 0.5 std=0.2``). A named preset is
    accepted too: ``imagenet`` or ``mnist``. A single value applies to every channel.

    Raises:
        UserError: on an unknown key, a missing or repeated key, a non-numeric value, std <= 0,
            or mean/std lengths that differ (other than a single value).
    """
    if not isinstance(spec, str):
        raise UserError(
            f"normalize must be a string like 'mean=0.5,0.5,0.5,std=0.25,0.25,0.25', got {spec!r}"
        )
    text = spec.strip()
    preset = NORMALIZE_PRESETS.get(text.lower())
    if preset is not None:
        return list(preset[0]), list(preset[1])
    if not text:
        raise UserError(
            f"empty normalize setting; expected e.g. {_EXAMPLE} or one of: {', '.join(NORMALIZE_PRESETS)}"
        )
    # Glue "key = value" together, then commas, semicolons and spaces all separate tokens.
    text = re.sub(r"\s*=\s*", "=", text)
    values = _key_values([t for t in re.split(r"[,;\s]+", text) if t], spec)
    for key in ("mean", "std"):
        if key not in values:
            raise UserError(f"normalize setting '{spec}' lacks '{key}='; expected e.g. {_EXAMPLE}")
        if not values[key]:
            raise UserError(
                f"normalize setting '{spec}' gives no values for '{key}'; expected e.g. {_EXAMPLE}"
            )
    return _channel_stats(values["mean"], values["std"])


def _key_values(tokens: list[str], spec: str) -> dict[str, list[float]]:
    """``['mean=0.5', '0.4', 'std=0.2']`` -> ``{'mean': [0.5, 0.4], 'std': [0.2]}``; a value belongs to
    the last key before it."""
    values: dict[str, list[float]] = {}
    current: str | None = None
    for token in tokens:
        match = _KEY.match(token)
        if match is not None:
            current = match.group(1)
            if current in values:
                raise UserError(
                    f"normalize setting '{spec}' gives '{current}' twice; expected e.g. {_EXAMPLE}"
                )
            values[current] = []
            token = match.group(2)
            if not token:
                continue
        elif "=" in token:
            key = token.split("=", 1)[0]
            raise UserError(
                f"unknown normalize key '{key}' in '{spec}' (keys: mean, std); expected e.g. {_EXAMPLE}"
            )
        if current is None:
            raise UserError(
                f"normalize setting '{spec}' must start with 'mean=' or 'std='; expected e.g. {_EXAMPLE}"
            )
        try:
            number = float(token)
        except ValueError:
            raise UserError(
                f"normalize value '{token}' in '{spec}' is not a number; expected e.g. {_EXAMPLE}"
            ) from None
        values[current].append(number)
    return values


def type_name(obj: object) -> str:
    """A type's name as a user would write it: ``int``, ``dict``, ``mypkg.Net``."""
    kind = type(obj)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _logits(out: object, depth: int = 0) -> torch.Tensor:
    """Pull the logits tensor out of a model's output (see :class:`LogitsOutput`)."""
    if isinstance(out, torch.Tensor):
        return out
    if depth > 2:
        raise UserError(
            f"the model's output is nested too deeply to find its logits ({type_name(out)})"
        )
    # `.logits` comes before the dict and tuple cases: Hugging Face outputs are dicts and torchvision's
    # GoogLeNet/Inception training outputs are namedtuples, and both name their logits explicitly.
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping):
        for key in ("out", "logits"):
            if key in out:
                return _logits(out[key], depth + 1)
        keys = ", ".join(repr(k) for k in out)
        raise UserError(
            f"the model returned a dict without an 'out' or 'logits' entry (keys: {keys}); return the logits "
            "tensor, or a dict with the logits under 'out' or 'logits'"
        )
    if isinstance(out, (tuple, list)) and out:
        return _logits(out[0], depth + 1)
    raise UserError(
        f"the model returned {type_name(out)}; expected a logits tensor, a dict with 'out' or 'logits', "
        "a tuple whose first element is the logits, or an object with .logits"
    )


class LogitsOutput(nn.Module):
    """Return ``model(x)``'s logits as a plain tensor, whatever container the model wraps them in.

    Understood outputs, in this order: a tensor; anything with a ``.logits`` tensor (Hugging Face
    outputs, namedtuples); a dict, taking ``'out'`` (torchvision segmentation) or ``'logits'``; a
    tuple or list, taking element 0. Anything else raises :class:`UserError`.

    Shapes: ``x`` as the model takes it; the result is ``(N, K)`` for classification or
    ``(N, K, H, W)`` for segmentation — whatever the model's logits are.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: the model's input, e.g. ``(N, C, H, W)``; returns the logits tensor."""
        logits = _logits(self.model(x))
        # Shape and dtype checks cost no device sync. Without them a model that returns argmax
        # labels fails deep inside a loss function, and one that returns the wrong number of rows
        # is silently broadcast against the labels into wrong accuracies.
        if not logits.is_floating_point():
            raise UserError(
                f"the model returned {str(logits.dtype).replace('torch.', '')} outputs; it must return "
                "float logits (N, K), not class indices or one-hot integers"
            )
        if isinstance(x, torch.Tensor) and x.ndim >= 1 and logits.ndim >= 1 and logits.shape[0] != x.shape[0]:
            raise UserError(
                f"the model returned {logits.shape[0]} rows of logits (shape {tuple(logits.shape)}) for a "
                f"batch of {x.shape[0]} inputs; the first dimension must be the batch"
            )
        return logits


def prepare(
    model: nn.Module, *, normalize: tuple[Sequence[float], Sequence[float]] | None = None
) -> nn.Module:
    """Wrap ``model`` so it takes [0, 1] NCHW inputs and returns a logits tensor.

    Always adds :class:`LogitsOutput` (an ``isinstance`` check per call); adds :class:`Normalize`
    inside it when ``normalize=(mean, std)`` is given. A model that is already a ``LogitsOutput``
    is not wrapped twice.

    Returns:
        ``LogitsOutput(Normalize(model, mean, std))`` or ``LogitsOutput(model)``.
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"expected a torch.nn.Module, got {type_name(model)}")
    inner = model.model if isinstance(model, LogitsOutput) else model
    if normalize is not None:
        mean, std = normalize
        inner = Normalize(inner, mean, std)
    elif inner is not model:
        return model
    return LogitsOutput(inner)


class ClassSubset(nn.Module):
    """The model restricted to some of its outputs: ``logits[:, class_index]``.

    An ImageNet model audited on a subset of its classes is attacked and scored on the outputs of the
    data's classes only (``class_index[c]`` is the model output of data class ``c``); see
    :mod:`robustaudit.evaluate.classmap`. ``model`` is the full model (a :class:`LogitsOutput`).

    Shapes: ``x`` as the model takes it; the model's logits ``(N, K)`` become ``(N, C)``, C = len(class_index).
    The index is a persistent buffer, so the state_dict hash (resume, detector cache) tells maps apart.
    """

    class_index: torch.Tensor

    def __init__(self, model: nn.Module, class_index: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("class_index", torch.tensor(list(class_index), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: the model's input; returns the mapped logits ``(N, C)``."""
        return self.model(x).index_select(1, self.class_index)

    def extra_repr(self) -> str:
        return f"outputs={self.class_index.tolist()}"


def unrestricted(model: nn.Module) -> nn.Module:
    """``model`` without a :class:`ClassSubset` around it (the full model's logits, for checks that read
    every output, such as "outputs are probabilities")."""
    return model.model if isinstance(model, ClassSubset) else model


class ExportedModule(nn.Module):
    """Hold the module of a ``torch.export`` program so it behaves like any other model here.

    Two differences from a plain ``nn.Module`` are absorbed:

    * ``train()``/``eval()`` on an exported graph raise ``NotImplementedError``: its behaviour
      (dropout, batch-norm statistics) was fixed when it was exported. Here they only set the flag,
      so ``model.eval()`` and ``core.modes.eval_mode`` work on a model that contains one.
    * A call with a shape the export did not allow fails a guard with a bare ``AssertionError``; here
      it becomes a :class:`UserError` naming the file and, for the batch size, the fix.

    Shapes: ``x`` is ``(N, C, H, W)`` as allowed by the export; the output is the program's.
    """

    def __init__(self, graph: nn.Module, path: str) -> None:
        super().__init__()
        self.graph = graph
        self.path = path

    def train(self, mode: bool = True) -> ExportedModule:
        # Set the flags without calling the graph's own train(), which raises.
        self.training = mode
        self.graph.training = mode
        return self

    def forward(self, x: torch.Tensor) -> Any:
        """``x``: ``(N, C, H, W)``; returns what the exported program returns."""
        try:
            return self.graph(x)
        except AssertionError as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            if "guard" not in message.lower():
                raise
            hint = ""
            if "size()[0]" in message:
                hint = (
                    "; it was exported with a fixed batch size: export with "
                    "dynamic_shapes=({0: torch.export.Dim('batch')},)"
                )
            raise UserError(
                f"the exported model '{self.path}' rejects inputs of shape {tuple(x.shape)} "
                f"({message}){hint}"
            ) from None

    def extra_repr(self) -> str:
        return f"path={self.path!r}"


def raised_by_model(exc: BaseException, model: nn.Module) -> bool:
    """Whether ``exc`` was raised inside the ``forward`` of one of ``model``'s own modules.

    Tells "the user's model failed on the input an attack gave it" (a user error: say so in one line)
    apart from a bug in the attack that called it. robustaudit's wrappers are looked through: an
    exception that only passed through :class:`LogitsOutput` or :class:`Normalize` is not the model's.
    """
    ours = (LogitsOutput, Normalize, ClassSubset)
    theirs = {id(m) for m in model.modules() if not isinstance(m, ours)}
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_name == "forward" and id(frame.f_locals.get("self")) in theirs:
            return True
    return False
