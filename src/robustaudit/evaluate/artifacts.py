"""The fitted attacks of one audit: typed objects saved in one place, ``OUT/artifacts/``, and reloaded on resume.

A universal attack (adversarial patch, UAP, ATN, AdvGAN, a user's) is fitted once per model, attack column and
eps (:func:`robustaudit.evaluate.attacking.fitted_attack`, lazily). :meth:`Artifacts.put` saves the fitted
object at once (``OUT/artifacts/MODEL-ATTACK-epsEPS.pt``, by its own ``save``) and then commits its fit
record (seconds, passes, the artifact's path) to the store as a ``fit`` stage, in fit order. A resumed run
starts from those records, so ``provenance["fits"]`` and every section built from the fitted objects (the
learned report, the patch section, the physical proxies) equal the uninterrupted run's; :meth:`Artifacts.get`
reads an object back from its file only when something must still use it. Kinds known to load back:
:class:`~robustaudit.attacks.patch.FittedPatch` (``patch``) and
:class:`~robustaudit.attacks.learned_fitted.GeneratorAttack` (``generator``) and
:class:`~robustaudit.attacks.uap.UniversalPerturbation` (``uap``); any other fitted object is
fitted again when a resumed run needs it. A stored fit whose artifact is missing or damaged stops the resume
with one line (rerun with ``--overwrite``): fitting it again could give a second, different artifact.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustaudit.attacks.base import Attack
from robustaudit.core.errors import UserError
from robustaudit.evaluate.store import Store

__all__ = ["ARTIFACTS_DIR", "Artifacts", "Key"]

ARTIFACTS_DIR = "artifacts"
#: (model, attack column, eps)
Key = tuple[str, str, float]
#: The store's stage name of a fit record.
_FIT = "fit"


def _kind(attack: Attack) -> str | None:
    from robustaudit.attacks.learned_fitted import GeneratorAttack
    from robustaudit.attacks.patch import FittedPatch
    from robustaudit.attacks.uap import UniversalPerturbation

    kinds = ((FittedPatch, "patch"), (GeneratorAttack, "generator"), (UniversalPerturbation, "uap"))
    return next((kind for cls, kind in kinds if isinstance(attack, cls)), None)


def _loader(kind: str | None) -> Callable[[Path], Attack] | None:
    from robustaudit.attacks.learned_fitted import load_generator
    from robustaudit.attacks.patch import load_patch
    from robustaudit.attacks.uap import load_uap

    return {"patch": load_patch, "generator": load_generator, "uap": load_uap}.get(kind or "")


def _name(key: Key) -> str:
    model, attack, eps = key
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{model}-{attack}-eps{eps:g}")


class Artifacts:
    """The run's fitted attacks by (model, attack, eps), their fit records in fit order (``records``:
    ``provenance["fits"]``), saved under ``out/artifacts`` and recorded in ``store`` when given.

    With ``reuse`` (a resumed run) the records start as the store holds them; their objects are read back
    from their files on first use.
    """

    def __init__(self, out: str | Path | None = None, store: Store | None = None, *, reuse: bool = False) -> None:
        self.out = None if out is None else Path(out)
        self.store = store
        self._objects: dict[Key, Attack] = {}
        self._stored: dict[Key, dict[str, Any]] = {}
        if reuse and store is not None:
            for doc in sorted(store.stage_outputs(_FIT), key=lambda d: d["position"]):
                self._stored[(doc["record"]["model"], doc["record"]["attack"], float(doc["record"]["eps"]))] = doc
        self.records: list[dict[str, Any]] = [doc["record"] for doc in self._stored.values()]

    def keys(self) -> list[Key]:
        """The fitted keys, in fit order."""
        return [(r["model"], r["attack"], float(r["eps"])) for r in self.records]

    def fit_seconds(self, key: Key) -> float:
        """What fitting the attack at ``key`` cost when it was fitted (a resumed run: the stored record's
        seconds); 0.0 when nothing was fitted there."""
        doc = self._stored.get((key[0], key[1], float(key[2])))
        return float(doc["record"].get("seconds") or 0.0) if doc is not None else 0.0

    def get(self, key: Key) -> Attack | None:
        """The attack fitted at ``key``: in memory, else read back from its artifact; ``None`` when it was
        not fitted or is of a kind that cannot be read back (the caller fits it again).

        Raises:
            UserError: the stored fit's artifact is missing or damaged (a resumed run would otherwise mix
                two fits of one attack).
        """
        if key in self._objects:
            return self._objects[key]
        doc = self._stored.get(key)
        load = _loader(doc.get("kind")) if doc is not None else None
        path = doc["record"].get("artifact") if doc is not None else None
        if load is None or path is None or self.out is None:
            return None
        try:
            self._objects[key] = load(self.out / path)
        except UserError as exc:
            raise UserError(f"cannot resume {self.out}: the fitted attack {path} cannot be read back ({exc}); "
                            "rerun with --overwrite to start over") from None
        return self._objects[key]

    def put(self, key: Key, attack: Attack, record: dict[str, Any]) -> None:
        """Keep ``attack`` fitted at ``key``; save its artifact (when it has ``save`` and the run an ``out``),
        whose path relative to ``out`` goes into ``record["artifact"]``; then store the record."""
        save = getattr(attack, "save", None)
        if save is not None and self.out is not None:
            path = self.out / ARTIFACTS_DIR / f"{_name(key)}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            save(path)
            record["artifact"] = str(path.relative_to(self.out))
        self._objects[key] = attack
        if key in self._stored:  # fitted again (a kind that cannot be read back): the record keeps its place
            doc = {**self._stored[key], "kind": _kind(attack), "record": record}
            self.records[self.records.index(self._stored[key]["record"])] = record
        else:
            doc = {"kind": _kind(attack), "record": record, "position": len(self._stored)}
            self.records.append(record)
        self._stored[key] = doc
        if self.store is not None:
            self.store.put_stage(_FIT, "|".join(map(str, key)), doc, 0.0)

    def adopt(self, key: Key, attack: Attack, record: dict[str, Any]) -> None:
        """Keep ``attack``, read back from a store of the task's own (segmentation's fits), without saving it
        again; its record joins ``records`` unless this run's stage records already hold it."""
        self._objects[key] = attack
        if key not in self._stored:
            self._stored[key] = {"kind": None, "record": record, "position": len(self._stored)}
            self.records.append(record)

    def fitted(self) -> dict[Key, Attack]:
        """Every fitted attack that is at hand (in memory or read back), in fit order."""
        out = {}
        for key in self.keys():
            attack = self.get(key)
            if attack is not None:
                out[key] = attack
        return out
