"""Argument parsing shared by the ``towhee-rt`` commands: a parser whose usage errors are one
line (exit code 2), and argument types that turn a bad number into such an error."""
from __future__ import annotations

import argparse
from typing import Callable

#: The highest TCP port number.
MAX_PORT = 65535


class Parser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose usage errors are one line on stderr:
    ``towhee-rt serve: error: ... (see towhee-rt serve --help)``, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def port(text: str) -> int:
    """A TCP port number, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-{MAX_PORT}; 0 picks "
                                         "a free port)")
    return value


def _number(kind: Callable[[str], float], name: str, minimum: float, inclusive: bool):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        if value < minimum or (value == minimum and not inclusive) or value != value:
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value
    parse.__name__ = name  # argparse names the type in some messages
    return parse


#: Seconds and other quantities that must be above zero.
positive_float = _number(float, "a number", 0, inclusive=False)
#: Counts that must be at least one.
positive_int = _number(int, "a whole number", 1, inclusive=True)
#: Levels and counts that may be zero.
non_negative_int = _number(int, "a whole number", 0, inclusive=True)
