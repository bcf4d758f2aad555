"""A fitted learned attack (:class:`GeneratorAttack`: one generator pass per batch) and its file format:
saving a generator with its card, reading one back with every check (see :mod:`robustaudit.attacks.learned`)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustaudit.attacks.base import Attack, AttackKind
from robustaudit.attacks.learned_nets import PerturbationNet, bound
from robustaudit.core.errors import UserError
from robustaudit.core.norms import clip_to_bounds

#: ``format`` of a saved generator file and of its card ``FILE.json``.
FORMAT = "robustaudit-generator/1"


# ---------------------------------------------------------------------------------------------- fitted attack
class GeneratorAttack(Attack):
    """A fitted learned attack: one generator forward per batch, ``x' = clip(x + bound(g(x)))``.

    ``meta`` is the generator's card: ``attack``, ``input_shape``, ``num_classes``, ``norm``, ``eps``,
    ``target``, ``arch`` (``width``, ``down``), ``settings``, ``model`` (what it was fit against),
    ``fit_seconds``, ``train``. Its ``name`` is the learned attack's (``atn``, ``advgan``) and its ``norms``
    the one it was fit for.
    """

    kind = AttackKind.FIXED_EPS

    def __init__(self, *, generator: nn.Module, meta: dict[str, Any]) -> None:
        self.generator = generator.eval()
        self.meta = meta
        self.name = str(meta["attack"])
        self.norms = (str(meta["norm"]),)
        self._copies: dict[tuple[str, torch.dtype], nn.Module] = {}

    def settings(self) -> dict[str, Any]:
        return {k: self.meta.get(k) for k in ("attack", "norm", "eps", "target", "input_shape")}

    @property
    def target(self) -> int | None:
        return self.meta.get("target")

    def perturbation(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        """The bounded perturbation ``(N, C, H, W)`` for clean inputs ``x`` (no gradient)."""
        shape = tuple(self.meta["input_shape"])
        if tuple(x.shape[1:]) != shape:
            raise UserError(f"the {self.name} generator was fit for inputs {_shape(shape)}, got {_shape(x.shape[1:])}")
        g = self._module_for(x)
        with torch.no_grad():
            return bound(g(x), self.meta["norm"], eps)

    def _module_for(self, x: torch.Tensor) -> nn.Module:
        # the stored generator stays as fitted; a copy per (device, dtype) serves other inputs
        p = next(self.generator.parameters())
        if p.device == x.device and p.dtype == x.dtype:
            return self.generator
        key = (str(x.device), x.dtype)
        if key not in self._copies:
            self._copies[key] = copy.deepcopy(self.generator).to(device=x.device, dtype=x.dtype).eval()
        return self._copies[key]

    def _run(self, model, x, y, threat, targets, ids, seed, task):
        return clip_to_bounds(x + self.perturbation(x, threat.eps), threat.bounds)

    def save(self, path: str | Path) -> Path:
        """Write the generator to ``path`` (a ``torch.save`` dict of plain types and tensors, readable with
        ``weights_only=True``) and its card to ``path.json`` (the meta plus the file's sha256)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.generator.state_dict().items()}
        torch.save({"format": FORMAT, "meta": json.dumps(self.meta), "state_dict": state}, path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        card = {"format": FORMAT, **self.meta, "weights": path.name, "sha256": digest}
        Path(f"{path}.json").write_text(json.dumps(card, indent=2) + "\n")
        return path


def _shape(shape: Any) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def read_generator(path: str | Path, what: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a saved generator: ``(meta, state_dict)``; a :class:`UserError` (one line) for anything else.

    A card ``path.json`` beside the file, when there, must match the file's sha256 (checked before the
    file is read).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what}: '{path}' is a directory, not a generator file (OUT/artifacts/NAME.pt)")
    if not p.is_file():
        raise UserError(f"{what}: generator file '{path}' does not exist")
    card = Path(f"{p}.json")
    if card.is_file():
        try:
            expected = json.loads(card.read_text()).get("sha256")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise UserError(f"{what}: the card {card} of generator '{path}' is not a JSON object") from None
        if expected is not None and expected != hashlib.sha256(p.read_bytes()).hexdigest():
            raise UserError(f"{what}: generator file '{path}' does not match the sha256 on its card {card.name}: "
                            "the file is corrupted or was replaced")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file is the user's to fix, whatever torch raised
        # torch's own messages (weights_only advice, zip errors) say nothing useful about a generator file
        raise UserError(f"{what}: cannot read generator file '{path}': not a torch.save file, truncated, or holding "
                        "Python objects (a generator file holds tensors and plain values only)") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or not isinstance(blob.get("state_dict"), dict):
        raise UserError(f"{what}: '{path}' is not a robustaudit generator file (saved by atn or advgan)")
    try:
        meta = json.loads(blob["meta"])
        if not isinstance(meta, dict):
            raise TypeError(type(meta).__name__)
    except (TypeError, ValueError):
        raise UserError(f"{what}: generator file '{path}' has an unreadable card") from None
    return meta, blob["state_dict"]


def generator_net(state: dict[str, torch.Tensor], channels: int, width: int, down: int, what: str,
                  path: str | Path) -> nn.Module:
    """The :class:`PerturbationNet` of a saved generator, its weights ``state`` loaded, in eval mode."""
    g = PerturbationNet(channels, width=width, down=down)
    try:
        g.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{what}: generator file '{path}' does not fit its architecture: "
                        f"{str(exc).splitlines()[0][:160]}") from None
    return g.eval()


def load_generator(path: str | Path) -> GeneratorAttack:
    """A generator as :meth:`GeneratorAttack.save` wrote it, meta unchanged (an audit's own artifact, read
    back on resume: the same perturbations as the generator that was fitted)."""
    what = "fitted generator"
    meta, state = read_generator(path, what)
    try:
        channels, width, down = int(meta["input_shape"][0]), int(meta["arch"]["width"]), int(meta["arch"]["down"])
    except (KeyError, TypeError, ValueError, IndexError):
        raise UserError(f"{what}: generator file '{path}' has an incomplete card") from None
    return GeneratorAttack(generator=generator_net(state, channels, width, down, what, path), meta=meta)
