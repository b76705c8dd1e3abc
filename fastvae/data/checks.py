"""What every dataset checks: :class:`DataError`, raised for data that cannot be used, and
:func:`check_index`, the index of one sample."""
from __future__ import annotations

import operator

import torch

__all__ = ["DataError", "check_index"]


class DataError(ValueError):
    """A dataset could not be used: the message names the source (file, dataset) and says what was
    expected and what was found."""


def check_index(index, length: int) -> int:
    """A Python int in [0, length) from an int-like ``index`` (negative counts from the end)."""
    if isinstance(index, torch.Tensor):
        if index.numel() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise TypeError(
                f"index: expected an int, got a tensor of shape {tuple(index.shape)} and dtype {index.dtype}"
            )
        index = int(index)
    try:
        index = operator.index(index)
    except TypeError:
        raise TypeError(f"index: expected an int, got {type(index).__name__}") from None
    if not -length <= index < length:
        raise IndexError(f"index: expected a value in [{-length}, {length}), got {index}")
    return index % length
