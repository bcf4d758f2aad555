"""What the ``robustaudit`` command's modules share: exit codes, consoles, one-line messages, the parser
class that raises instead of exiting, and this process's rank. Standard library and rich only."""

from __future__ import annotations

import argparse
import re

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4


class Rank:
    """This process's rank in a multi-process audit (0 otherwise): only rank 0 prints, except internal errors."""

    value = 0


class Parser(argparse.ArgumentParser):
    """argparse that raises one-line errors instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from robustaudit.core.errors import UserError

        raise UserError(f"{message}{self._close_match(message)} (see `{self.prog} --help`)")

    def _close_match(self, message: str) -> str:
        """A did-you-mean for argparse's two messages about names: a bad choice, an unknown flag."""
        from robustaudit.core.errors import suggest

        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice is not None:
            choices = [c.strip().strip("'\"") for c in choice.group(2).split(",")]
            return suggest(choice.group(1).lower(), choices)
        if message.startswith("unrecognized arguments:"):
            flags = self._all_flags()
            for word in message.partition(":")[2].split():
                if word.startswith("--"):
                    hint = suggest(word.partition("=")[0], flags)
                    if hint:
                        return hint
        return ""

    def _all_flags(self) -> list[str]:
        # unknown flags are reported by the top-level parser, which does not own the subcommands' flags
        parsers = [self]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
        return sorted({flag for p in parsers for flag in p._option_string_actions if flag.startswith("--")})


def console(*, stderr: bool = False):
    """A rich console; when output goes to a file or CI log (no terminal), wide enough that tables
    never truncate model names or intervals."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200, highlight=False)


def one_line(text: str) -> str:
    return " ".join(text.split())


def plain(text: str) -> str:
    """``text`` on one line, with rich markup escaped: messages quote paths, specs and TOML tables
    ("[[models]]", "data/[train]"), which rich would otherwise take for style tags and drop."""
    from rich.markup import escape

    return escape(one_line(text))


def raise_usage(message: str) -> None:
    from robustaudit.core.errors import UserError

    raise UserError(message)
