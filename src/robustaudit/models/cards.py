"""Model cards beside checkpoints: ``FILE.json`` next to ``FILE`` records its sha256 (checked before the
file is read) and, for a checkpoint written by ``robustaudit train``, the architecture to rebuild."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from robustaudit.core.errors import UserError
from robustaudit.models.files import file_sha256, first_line
from robustaudit.models.wrappers import type_name

__all__ = ["CARD_SUFFIX", "card_path", "check_card", "checkpoint_card"]


#: The model card beside a checkpoint: ``FILE.json`` for ``FILE`` (e.g. ``net.safetensors.json``).
CARD_SUFFIX = ".json"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def card_path(path: str | os.PathLike[str]) -> Path:
    """Where the model card of the checkpoint ``path`` lives: ``path`` + ``.json``."""
    return Path(str(path) + CARD_SUFFIX)


def check_card(path: str | os.PathLike[str]) -> str | None:
    """Verify ``path`` against the ``"sha256"`` of its model card, if it has one.

    The card is ``FILE.json`` beside ``FILE``, in the format of the shipped
    ``robustaudit/models/weights/<name>.json`` manifests (``name``, ``sha256``, ``torch``, ``train``,
    ``reported``...); only ``sha256`` is read here. Returns the verified hex digest, or ``None`` when
    there is no card or it records no ``sha256``.

    Raises:
        UserError: the card is not a JSON object, its ``sha256`` is not 64 hex digits, or the file's
            digest differs from it (a corrupted or replaced checkpoint).
    """
    card = card_path(path)
    if not card.is_file():
        return None
    try:
        doc = json.loads(card.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"cannot read the model card '{card}' of '{path}': {first_line(err)}") from None
    if not isinstance(doc, dict):
        raise UserError(f"model card '{card}' must be a JSON object with a \"sha256\" key, got {type_name(doc)}")
    expected = doc.get("sha256")
    if expected is None:
        return None
    if not isinstance(expected, str) or not _SHA256_HEX.fullmatch(expected.strip().lower()):
        raise UserError(f"model card '{card}': \"sha256\" must be 64 hex digits, got {expected!r:.80}")
    expected = expected.strip().lower()
    digest = file_sha256(path)
    if digest != expected:
        raise UserError(
            f"'{path}' has sha256 {digest[:12]}…, but its card '{card.name}' expects {expected[:12]}…: "
            "refused: the file was corrupted or replaced, or the card belongs to another file"
        )
    return digest


def checkpoint_card(path: Path) -> dict[str, Any] | None:
    """The model card ``CKPT.json`` beside a state_dict checkpoint ``CKPT``, when it names an
    architecture; ``None`` otherwise (the file is then loaded as any other model file)."""
    card_file = card_path(path)
    if path.suffix.lower() == ".json" or not card_file.is_file():
        return None
    try:
        card = json.loads(card_file.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"model card '{card_file}' is not readable JSON: {first_line(err)}") from None
    if not isinstance(card, dict) or not isinstance(card.get("architecture"), str):
        return None
    return card
