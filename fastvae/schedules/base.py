"""The interface every schedule has (:class:`Schedule`) and the checks of their arguments."""
from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import Any, Dict, Tuple

import torch

__all__ = ["Schedule"]


class Schedule(ABC):
    """A value of the objective (beta, or the capacity C) that changes once per training step.

    * ``value`` (property) and ``__call__()``: the current value;
    * ``step(rate=None)``: advance one step; open-loop schedules ignore ``rate``, a feedback
      schedule (:class:`~fastvae.schedules.ConstrainedBeta`) needs it;
    * ``t``: the number of steps taken so far;
    * ``state_dict()`` / ``load_state_dict(state)``: plain python numbers (and strings / None), so
      the state goes in a checkpoint and training resumes exactly where it stopped.

    ``_config`` names the hyper-parameters: the constructor's arguments, stored in the state and
    shown by ``repr``.
    """

    _config: Tuple[str, ...] = ()

    def __init__(self) -> None:
        self.t = 0

    @property
    @abstractmethod
    def value(self) -> Any:
        """The current value."""

    def __call__(self) -> Any:
        return self.value

    @abstractmethod
    def step(self, rate: Any = None) -> Any:
        """Advance one step and return the new value."""

    @abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly, as plain python values."""

    @abstractmethod
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (hyper-parameters included, as
        ``torch.optim.lr_scheduler`` does)."""

    def _config_state(self) -> Dict[str, Any]:
        """The start of every state: the kind, the step count and the hyper-parameters."""
        state: Dict[str, Any] = {"schedule": type(self).__name__, "t": self.t}
        for key in self._config:
            state[key] = getattr(self, key)
        return state

    def _fresh_from(self, state: Dict[str, Any], extra: Tuple[str, ...] = ()) -> "Schedule":
        """A new schedule of this kind made from the hyper-parameters in ``state`` (so the
        constructor validates them), after checking that ``state`` is of this kind and complete."""
        kind = state.get("schedule")
        if kind != type(self).__name__:
            raise ValueError(f"state_dict is for schedule {kind!r}, cannot load it into {type(self).__name__}")
        missing = [k for k in ("t",) + tuple(self._config) + extra if k not in state]
        if missing:
            raise ValueError(f"state_dict for {type(self).__name__} is missing {missing}")
        return type(self)(**{k: state[k] for k in self._config})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._config)
        return f"{type(self).__name__}({args}, t={self.t})"


# ----------------------------------------------------------------------------- argument checks


def real(name: str, value: Any) -> float:
    """``value`` as a finite python float, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
            value = value.item()
        else:
            raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def nonneg(name: str, value: Any) -> float:
    value = real(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def positive(name: str, value: Any) -> float:
    value = real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def count(name: str, value: Any, minimum: int = 0) -> int:
    """A step count: an integer (or integral float) >= minimum."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if isinstance(value, numbers.Integral):
        value = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        value = int(value)
    else:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def in_range(name: str, value: Any, low: float, high: float, *, low_open: bool, high_open: bool) -> float:
    """A real in the interval from ``low`` to ``high`` (each end open or closed)."""
    value = real(name, value)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value
