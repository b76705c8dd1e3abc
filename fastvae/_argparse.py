"""Argument types shared by the command-line tools."""
from __future__ import annotations

import argparse
from typing import Callable, TypeVar

T = TypeVar("T")


def comma_separated(text: str, convert: Callable[[str], T], what: str, valid: Callable[[T], bool] = lambda v: True,
                    example: str = "") -> list[T]:
    """The values of a comma-separated option (spaces and empty items ignored), each ``convert``-ed and
    ``valid``; anything else is an :class:`argparse.ArgumentTypeError` that names ``what`` was expected."""
    hint = f" such as {example}" if example else ""
    try:
        values = [convert(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}{hint}, got {text!r}") from None
    if not values or not all(valid(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}{hint}, got {text!r}")
    return values
