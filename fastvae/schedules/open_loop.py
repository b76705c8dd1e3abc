"""The open-loop schedules: the value is a function of the step count ``t`` alone."""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

from .base import Schedule, count, in_range, nonneg

__all__ = ["OpenLoopSchedule", "BetaSchedule", "ConstantBeta", "LinearWarmup", "CyclicalBeta", "CapacityRamp"]

Number = Union[int, float]


class OpenLoopSchedule(Schedule):
    """A schedule whose value is ``value_at(t)``: subclasses implement :meth:`_value_at` and list
    their hyper-parameters in ``_config``.  ``value`` is a python float."""

    def _value_at(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def value_at(self, t: int) -> float:
        """The value at step ``t`` (``t`` = number of :meth:`step` calls so far), a python float;
        does not change the schedule."""
        return self._value_at(count("t", t))

    @property
    def value(self) -> float:
        """The current value, ``value_at(t)``: a python float."""
        return self._value_at(self.t)

    def step(self, rate: Any = None) -> float:
        """Advance one iteration and return the new value. ``rate`` is accepted and ignored
        (so a training loop can call ``step(rate=...)`` on every kind of schedule)."""
        self.t += 1
        return self.value

    def state_dict(self) -> Dict[str, Any]:
        """The schedule's state (step count and hyper-parameters) as plain python numbers."""
        return self._config_state()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (hyper-parameters included, as
        ``torch.optim.lr_scheduler`` does)."""
        fresh = self._fresh_from(state)
        self.__dict__.update(fresh.__dict__)
        self.t = count("t", state["t"])


#: The name of :class:`OpenLoopSchedule` before the schedules became a package; kept so that
#: ``from fastvae.schedules import BetaSchedule`` goes on working.
BetaSchedule = OpenLoopSchedule


class ConstantBeta(OpenLoopSchedule):
    """A constant weight: ``beta(t) = beta``.

    ``beta = 1`` is the plain VAE (ELBO); ``beta > 1`` is the beta-VAE of Higgins et al. 2017,
    "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework" (ICLR).
    Exists so that every kind of schedule has the same interface.
    """

    _config = ("beta",)

    def __init__(self, beta: Number = 1.0) -> None:
        super().__init__()
        self.beta = nonneg("beta", beta)

    def _value_at(self, t: int) -> float:
        return self.beta


class _Ramp(OpenLoopSchedule):
    """A linear ramp from ``start`` to ``end`` over ``steps`` steps, then ``end``."""

    def _ramp(self, t: int, start: float, end: float, steps: int) -> float:
        if t >= steps:
            return end
        return start + (end - start) * (t / steps)


class LinearWarmup(_Ramp):
    """Linear KL warm-up (annealing)::

        beta(t) = start + (beta - start) * min(t / warmup_steps, 1)

    so ``beta(0) = start`` and ``beta(t) = beta`` for ``t >= warmup_steps`` (immediately if
    ``warmup_steps == 0``).  KL annealing against posterior collapse: Bowman et al. 2016,
    "Generating Sentences from a Continuous Space"; Sønderby et al. 2016, "Ladder Variational
    Autoencoders" (deterministic warm-up).
    """

    _config = ("beta", "warmup_steps", "start")

    def __init__(self, beta: Number = 1.0, warmup_steps: int = 0, start: Number = 0.0) -> None:
        super().__init__()
        self.beta, self.warmup_steps, self.start = (
            nonneg("beta", beta), count("warmup_steps", warmup_steps), nonneg("start", start))

    def _value_at(self, t: int) -> float:
        return self._ramp(t, self.start, self.beta, self.warmup_steps)


class CyclicalBeta(OpenLoopSchedule):
    """Cyclical KL annealing (Fu et al. 2019, "Cyclical Annealing Schedule: A Simple Approach to
    Mitigating KL Vanishing", NAACL).

    Training is split into cycles of ``cycle_steps`` iterations. With ``tau = (t mod cycle_steps) /
    cycle_steps`` the position within the cycle::

        beta(t) = beta * tau / ratio    if tau < ratio      (linear increase from 0)
                  beta                  otherwise            (hold)

    After ``n_cycles`` complete cycles (if given) beta stays at ``beta``.  ``ratio = 1`` ramps over
    the whole cycle; the paper uses ``ratio = 0.5`` (the default) and e.g. 4 cycles.
    """

    _config = ("beta", "cycle_steps", "ratio", "n_cycles")

    def __init__(
        self,
        beta: Number = 1.0,
        cycle_steps: int = 10_000,
        ratio: Number = 0.5,
        n_cycles: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.beta = nonneg("beta", beta)
        self.cycle_steps = count("cycle_steps", cycle_steps, minimum=1)
        self.ratio = in_range("ratio", ratio, 0.0, 1.0, low_open=True, high_open=False)
        self.n_cycles = None if n_cycles is None else count("n_cycles", n_cycles, minimum=1)

    def _value_at(self, t: int) -> float:
        if self.n_cycles is not None and t >= self.n_cycles * self.cycle_steps:
            return self.beta
        pos = t % self.cycle_steps
        ramp = self.ratio * self.cycle_steps
        if pos >= ramp:
            return self.beta
        return self.beta * (pos / ramp)


class CapacityRamp(_Ramp):
    """The capacity ``C(t)`` of Burgess et al. 2018, "Understanding disentangling in beta-VAE"::

        C(t) = start + (max_capacity - start) * min(t / ramp_steps, 1)      [nats]

    used in ``loss = distortion + gamma * |rate - C(t)|`` (pass ``capacity=sched.value`` and
    ``beta=gamma`` to :func:`fastvae.beta_vae_loss`).  The encoder is allowed to transmit a
    gradually growing amount of information about x; the paper ramps C from 0 to 25 nats
    with gamma = 1000 (dSprites).  ``value`` is C(t), not a beta.
    """

    _config = ("max_capacity", "ramp_steps", "start")

    def __init__(self, max_capacity: Number = 25.0, ramp_steps: int = 0, start: Number = 0.0) -> None:
        super().__init__()
        self.max_capacity = nonneg("max_capacity", max_capacity)
        self.ramp_steps = count("ramp_steps", ramp_steps)
        self.start = nonneg("start", start)
        if self.start > self.max_capacity:
            raise ValueError(
                f"start must be <= max_capacity, got start={self.start!r} > max_capacity={self.max_capacity!r}"
            )

    def _value_at(self, t: int) -> float:
        return self._ramp(t, self.start, self.max_capacity, self.ramp_steps)
