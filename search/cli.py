"""The command lines' shared conventions (`python -m search.run`, `.ensemble`, `.predict`, ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from search.errors import did_you_mean


class Parser(argparse.ArgumentParser):
    """argparse with no prefix abbreviations, examples printed as written, and a
    "did you mean" for a mistyped option (argparse itself only says it is unrecognized)."""

    def __init__(self, prog: str, description: str, examples: str | None = None):
        super().__init__(
            prog=prog, description=description, epilog=examples,
            formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        )

    def add_saved_search(self) -> None:
        """SPACE and --runs-dir, for commands that read a search already run."""
        self.add_argument("space", help="the space file (e.g. spaces/digits.py) or the name of a searched space")
        self.add_argument("--runs-dir", default="runs", metavar="DIR",
                          help="where the search's results are (default: runs/)")

    def error(self, message: str) -> NoReturn:
        if "unrecognized arguments:" in message:
            wrong = message.split("unrecognized arguments:")[1].split()[0]
            options = [o for action in self._actions for o in action.option_strings]
            message += did_you_mean(wrong, options)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(error: Any) -> int:
    """A user's mistake: one line on stderr, exit status 2, no traceback."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def entry(main: Callable[[Sequence[str] | None], int]) -> None:
    """`python -m search.X`: run a command's main with native library noise filtered from stderr."""
    from search.console import filter_native_stderr

    filter_native_stderr()
    sys.exit(main(None))
