"""Errors that a user caused and can fix.

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything else is a bug in
robustaudit and is reported as such.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(ValueError):
    """A mistake in what the user asked for: a bad name, file, value or combination."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""`` when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """Build the error for an unknown registry name, with a close-match suggestion and the valid names."""
    choices = sorted(choices)
    return UserError(f"unknown {kind} '{name}'{suggest(name, choices)}; known: {', '.join(choices)}")
