"""Schedules for the KL weight ``beta`` and the capacity ``C`` of the beta-VAE objective.

The training objective is (see :func:`fastvae.beta_vae_loss`)::

    loss = distortion + beta * rate                  # beta-VAE (Higgins et al. 2017)
    loss = distortion + beta * |rate - C|            # capacity form (Burgess et al. 2018)

where ``rate = KL(q(z|x) || p(z))`` in nats.  Every schedule here is a small stateful object
that is stepped once per training iteration::

    sched = LinearWarmup(beta=4.0, warmup_steps=10_000)
    for x in loader:
        out = fastvae.beta_vae_loss(recon, x, mu, logvar, beta=sched.value)
        out.loss.backward(); opt.step(); opt.zero_grad()
        sched.step(rate=out.rate.detach())   # open-loop schedules ignore ``rate``

All schedules share the same interface:

* ``value`` (property) and ``__call__()``: the current value (beta, or C for :class:`CapacityRamp`);
* ``step(rate=None)``: advance one iteration.  Open-loop schedules ignore ``rate``;
  :class:`ConstrainedBeta` needs it (it is a feedback controller);
* ``t``: the number of steps taken so far;
* ``state_dict()`` / ``load_state_dict(state)``: plain python numbers (and strings / None), so the
  state can go in a checkpoint and training resumes exactly where it stopped.

The open-loop schedules (:class:`ConstantBeta`, :class:`LinearWarmup`, :class:`CyclicalBeta`,
:class:`CapacityRamp`) also have ``value_at(t)``, the value at any step without changing state.
Their ``value`` is a python float.  :class:`ConstrainedBeta` returns a 0-dim tensor once it is
updated with tensors (no host synchronisation), which :func:`fastvae.beta_vae_loss` accepts as
``beta=``.

:func:`make_beta_schedule` and :func:`make_capacity_schedule` build schedules from keyword
arguments (for the command line) and validate them.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Optional, Union

import torch

__all__ = [
    "BetaSchedule",
    "ConstantBeta",
    "LinearWarmup",
    "CyclicalBeta",
    "CapacityRamp",
    "ConstrainedBeta",
    "make_beta_schedule",
    "make_capacity_schedule",
    "BETA_SCHEDULE_KINDS",
]

Number = Union[int, float]


# ----------------------------------------------------------------------------- validation helpers


def _real(name: str, value: Any) -> float:
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


def _nonneg(name: str, value: Any) -> float:
    value = _real(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return value


def _positive(name: str, value: Any) -> float:
    value = _real(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _count(name: str, value: Any, minimum: int = 0) -> int:
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


def _check_kind(state: Dict[str, Any], cls_name: str) -> None:
    kind = state.get("schedule")
    if kind != cls_name:
        raise ValueError(f"state_dict is for schedule {kind!r}, cannot load it into {cls_name}")


# ----------------------------------------------------------------------------- open-loop schedules


class BetaSchedule:
    """Base class of the open-loop schedules: the value is a function of the step count ``t``.

    Subclasses implement :meth:`value_at` and list their hyper-parameters in ``_config``.
    """

    _config: tuple = ()

    def __init__(self) -> None:
        self.t = 0

    def _value_at(self, t: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def value_at(self, t: int) -> float:
        """The value at step ``t`` (``t`` = number of :meth:`step` calls so far), a python float;
        does not change the schedule."""
        return self._value_at(_count("t", t))

    @property
    def value(self) -> float:
        """The current value, ``value_at(t)``: a python float."""
        return self._value_at(self.t)

    def __call__(self) -> float:
        return self.value

    def step(self, rate: Any = None) -> float:
        """Advance one iteration and return the new value. ``rate`` is accepted and ignored
        (so a training loop can call ``step(rate=...)`` on every kind of schedule)."""
        self.t += 1
        return self.value

    def state_dict(self) -> Dict[str, Any]:
        """The schedule's state (step count and hyper-parameters) as plain python numbers."""
        state: Dict[str, Any] = {"schedule": type(self).__name__, "t": self.t}
        for key in self._config:
            state[key] = getattr(self, key)
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict` (hyper-parameters included, as
        ``torch.optim.lr_scheduler`` does)."""
        _check_kind(state, type(self).__name__)
        missing = [k for k in ("t",) + tuple(self._config) if k not in state]
        if missing:
            raise ValueError(f"state_dict for {type(self).__name__} is missing {missing}")
        # Re-run the constructor's validation on the stored hyper-parameters.
        fresh = type(self)(**{k: state[k] for k in self._config})
        self.__dict__.update(fresh.__dict__)
        self.t = _count("t", state["t"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._config)
        return f"{type(self).__name__}({args}, t={self.t})"


class ConstantBeta(BetaSchedule):
    """A constant weight: ``beta(t) = beta``.

    ``beta = 1`` is the plain VAE (ELBO); ``beta > 1`` is the beta-VAE of Higgins et al. 2017,
    "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational Framework" (ICLR).
    Exists so that every kind of schedule has the same interface.
    """

    _config = ("beta",)

    def __init__(self, beta: Number = 1.0) -> None:
        super().__init__()
        self.beta = _nonneg("beta", beta)

    def _value_at(self, t: int) -> float:
        return self.beta


class LinearWarmup(BetaSchedule):
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
        self.beta = _nonneg("beta", beta)
        self.warmup_steps = _count("warmup_steps", warmup_steps)
        self.start = _nonneg("start", start)

    def _value_at(self, t: int) -> float:
        if t >= self.warmup_steps:
            return self.beta
        return self.start + (self.beta - self.start) * (t / self.warmup_steps)


class CyclicalBeta(BetaSchedule):
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
        self.beta = _nonneg("beta", beta)
        self.cycle_steps = _count("cycle_steps", cycle_steps, minimum=1)
        ratio = _real("ratio", ratio)
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
        self.ratio = ratio
        self.n_cycles = None if n_cycles is None else _count("n_cycles", n_cycles, minimum=1)

    def _value_at(self, t: int) -> float:
        if self.n_cycles is not None and t >= self.n_cycles * self.cycle_steps:
            return self.beta
        pos = t % self.cycle_steps
        ramp = self.ratio * self.cycle_steps
        if pos >= ramp:
            return self.beta
        return self.beta * (pos / ramp)


class CapacityRamp(BetaSchedule):
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
        self.max_capacity = _nonneg("max_capacity", max_capacity)
        self.ramp_steps = _count("ramp_steps", ramp_steps)
        self.start = _nonneg("start", start)
        if self.start > self.max_capacity:
            raise ValueError(
                f"start must be <= max_capacity, got start={self.start!r} > max_capacity={self.max_capacity!r}"
            )

    def _value_at(self, t: int) -> float:
        if t >= self.ramp_steps:
            return self.max_capacity
        return self.start + (self.max_capacity - self.start) * (t / self.ramp_steps)


# ----------------------------------------------------------------------------- constrained beta


class ConstrainedBeta:
    """beta as a Lagrange multiplier for a rate constraint, updated by dual ascent.

    The constrained form of the VAE objective (Higgins et al. 2017, eq. 2-4)::

        max_{theta, phi}  E_q[log p(x|z)]   s.t.  KL(q(z|x) || p(z)) <= delta

    has the Lagrangian ``E_q[log p(x|z)] - beta * (KL - delta)``: the model minimises
    ``distortion + beta * rate`` (``beta`` fixed) while ``beta >= 0`` does gradient *ascent* on the
    constraint violation ``rate - delta``.  As in GECO (Rezende & Viola 2018, "Taming VAEs"),
    which applies the same idea to a reconstruction constraint, the multiplier is kept in log
    space (so it stays positive and adapts multiplicatively) and the constraint may be smoothed
    by a moving average::

        c_t       = rate_t - delta
        c_ema     = c_t                                    (first update)
        c_ema     = alpha * c_ema + (1 - alpha) * c_t      (afterwards; alpha = 0: no averaging)
        log_beta  = clamp(log_beta + lr * c_ema, log(beta_min), log(beta_max))
        beta      = exp(log_beta)

    When the rate is above ``delta`` beta grows (more pressure on the KL), below ``delta`` it
    shrinks, so the rate settles at ``delta`` (unless ``delta`` cannot be reached inside
    ``[beta_min, beta_max]``; the clamp also stops the multiplier winding up).  ``lr`` is in
    units of 1/nat: the change of ``log(beta)`` per step per nat of violation.

    Args:
        target_rate: ``delta``, the target rate in nats (the KL per sample, as reported by
            :func:`fastvae.beta_vae_loss` with ``reduction='mean'``).
        init_beta: the initial multiplier, in ``[beta_min, beta_max]``.
        lr: step size of the dual ascent on ``log(beta)``.
        alpha: moving-average factor of the constraint, in ``[0, 1)`` (GECO uses 0.99).
        beta_min, beta_max: clamp of beta (``0 < beta_min <= beta_max``).
        device: if given, the state is a tensor on this device from the start, so ``value`` is
            always a 0-dim tensor (e.g. to avoid a recompilation when it first becomes one).

    :meth:`update` (alias ``step(rate)``) takes the measured rate as a python float or a 0-dim
    tensor.  With a tensor the update is done on the tensor's device with tensor ops only (no
    ``.item()``, no host synchronisation) and ``value`` is a 0-dim tensor (float32, or float64 for
    a float64 rate) that can be passed as ``beta=`` to :func:`fastvae.beta_vae_loss`.  With python
    floats it stays python floats.  The rate is detached; beta never carries gradients.
    """

    def __init__(
        self,
        target_rate: Number,
        init_beta: Number = 1.0,
        lr: Number = 1e-2,
        alpha: Number = 0.0,
        beta_min: Number = 1e-4,
        beta_max: Number = 1e4,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        self.target_rate = _nonneg("target_rate", target_rate)
        self.lr = _positive("lr", lr)
        alpha = _real("alpha", alpha)
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        self.alpha = alpha
        self.beta_min = _positive("beta_min", beta_min)
        self.beta_max = _positive("beta_max", beta_max)
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"beta_min must be <= beta_max, got beta_min={self.beta_min!r} > beta_max={self.beta_max!r}"
            )
        init_beta = _positive("init_beta", init_beta)
        if not self.beta_min <= init_beta <= self.beta_max:
            raise ValueError(
                f"init_beta must be in [beta_min, beta_max] = [{self.beta_min!r}, {self.beta_max!r}], got {init_beta!r}"
            )
        self.init_beta = init_beta
        self.t = 0  # number of updates
        # State: python floats, or 0-dim tensors once updated with a tensor (or a device is given).
        self._log_beta: Union[float, torch.Tensor] = math.log(init_beta)
        self._ema: Union[None, float, torch.Tensor] = None
        self._beta: Union[float, torch.Tensor] = init_beta
        self._dtype: Optional[torch.dtype] = None  # tensor dtype of the state (None: python floats)
        self._device: Optional[torch.device] = None if device is None else torch.device(device)
        self._pending_dtype: Optional[torch.dtype] = None  # dtype to use at the first tensor update
        if self._device is not None:
            self._to_tensor(self._device, torch.float32)

    # -- state held as tensors -------------------------------------------------------------------

    def _to_tensor(self, device: torch.device, dtype: torch.dtype) -> None:
        """Turn the state into 0-dim tensors on ``device`` (no-op if it already is)."""
        def conv(v):
            if v is None:
                return None
            if isinstance(v, torch.Tensor):
                return v.to(device=device, dtype=dtype)
            return torch.tensor(v, dtype=dtype, device=device)

        self._log_beta = conv(self._log_beta)
        self._ema = conv(self._ema)
        self._beta = conv(self._beta)
        self._dtype = dtype
        self._device = device

    @property
    def log_beta(self) -> Union[float, torch.Tensor]:
        """``log(beta)``: python float, or 0-dim tensor in tensor mode."""
        return self._log_beta

    @property
    def constraint_ema(self) -> Union[None, float, torch.Tensor]:
        """The (averaged) constraint ``rate - delta`` used at the last update (None before any)."""
        return self._ema

    @property
    def value(self) -> Union[float, torch.Tensor]:
        """The current beta: python float, or a 0-dim tensor after tensor updates."""
        return self._beta

    def __call__(self) -> Union[float, torch.Tensor]:
        return self.value

    # -- the dual-ascent update ------------------------------------------------------------------

    def update(self, rate: Union[Number, torch.Tensor]) -> Union[float, torch.Tensor]:
        """One dual-ascent step with the measured rate (nats); returns the new beta.

        ``rate`` is a python number or a 0-dim (or one-element) floating tensor; a tensor is
        detached and the update runs on its device without synchronising with the host.
        """
        lo, hi = math.log(self.beta_min), math.log(self.beta_max)
        a = self.alpha
        if isinstance(rate, torch.Tensor):
            if not rate.is_floating_point():
                raise TypeError(f"rate must be a floating tensor, got dtype {rate.dtype}")
            if rate.numel() != 1:
                raise ValueError(f"rate must be a scalar (0-dim tensor), got shape {tuple(rate.shape)}")
            rate = rate.detach().reshape(())
            if self._dtype is None:  # first tensor update (after a load: the checkpoint's dtype)
                dtype = self._pending_dtype or torch.promote_types(rate.dtype, torch.float32)
                self._pending_dtype = None
                self._to_tensor(rate.device, dtype)
            elif self._device != rate.device:
                self._to_tensor(rate.device, self._dtype)
            c = rate.to(self._dtype) - self.target_rate
            if self._ema is None or a == 0.0:
                ema = c
            else:
                ema = self._ema * a + c * (1.0 - a)
            log_beta = torch.clamp(self._log_beta + self.lr * ema, lo, hi)
            self._ema, self._log_beta = ema, log_beta
            self._beta = torch.exp(log_beta)
        else:
            c = _real("rate", rate) - self.target_rate
            if self._dtype is not None:  # state is on a device: keep it there
                c_t = torch.tensor(c, dtype=self._dtype, device=self._device)
                ema = c_t if (self._ema is None or a == 0.0) else self._ema * a + c_t * (1.0 - a)
                self._log_beta = torch.clamp(self._log_beta + self.lr * ema, lo, hi)
                self._ema = ema
                self._beta = torch.exp(self._log_beta)
            else:
                ema = c if (self._ema is None or a == 0.0) else a * self._ema + (1.0 - a) * c
                self._ema = ema
                self._log_beta = min(max(self._log_beta + self.lr * ema, lo), hi)
                self._beta = math.exp(self._log_beta)
        self.t += 1
        return self._beta

    def step(self, rate: Union[Number, torch.Tensor, None] = None) -> Union[float, torch.Tensor]:
        """Same as :meth:`update`; ``rate`` is required (ValueError if it is None)."""
        if rate is None:
            raise ValueError("rate is required: ConstrainedBeta.step(rate) needs the measured rate (KL, nats)")
        return self.update(rate)

    # -- checkpointing ---------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly, as plain python numbers.

        Tensor state is read back with ``.item()`` (one host sync; float32 values are exact as
        python floats) and its dtype is stored, so that a resumed run continues bit for bit.
        """
        def num(v):
            return None if v is None else (v.item() if isinstance(v, torch.Tensor) else float(v))

        dtype = self._dtype or self._pending_dtype
        return {
            "schedule": type(self).__name__,
            "t": self.t,
            "target_rate": self.target_rate,
            "init_beta": self.init_beta,
            "lr": self.lr,
            "alpha": self.alpha,
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "log_beta": num(self._log_beta),
            "beta": num(self._beta),
            "constraint_ema": num(self._ema),
            "dtype": None if dtype is None else str(dtype).replace("torch.", ""),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        If this object already holds its state on a device (``device=`` given, or tensor updates
        made) the state is restored there; otherwise it is held as python floats and moved to the
        device of the first tensor passed to :meth:`update`, with the stored dtype.
        """
        _check_kind(state, type(self).__name__)
        keys = ("t", "target_rate", "init_beta", "lr", "alpha", "beta_min", "beta_max", "log_beta")
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"state_dict for ConstrainedBeta is missing {missing}")
        fresh = ConstrainedBeta(
            target_rate=state["target_rate"], init_beta=state["init_beta"], lr=state["lr"],
            alpha=state["alpha"], beta_min=state["beta_min"], beta_max=state["beta_max"],
        )
        device = self._device if self._dtype is not None else None
        self.__dict__.update(fresh.__dict__)
        self.t = _count("t", state["t"])
        self._log_beta = _real("log_beta", state["log_beta"])
        ema = state.get("constraint_ema")
        self._ema = None if ema is None else _real("constraint_ema", ema)
        beta = state.get("beta")
        self._beta = math.exp(self._log_beta) if beta is None else _positive("beta", beta)
        dtype = state.get("dtype")
        if dtype is not None:
            if dtype not in ("float32", "float64"):
                raise ValueError(f"state_dict has unsupported dtype {dtype!r}")
            dtype = getattr(torch, dtype)
            if device is not None:
                self._to_tensor(device, dtype)
            else:
                self._pending_dtype = dtype
        else:
            if device is not None:
                self._to_tensor(device, torch.float32)

    def __repr__(self) -> str:
        return (
            f"ConstrainedBeta(target_rate={self.target_rate!r}, init_beta={self.init_beta!r}, lr={self.lr!r}, "
            f"alpha={self.alpha!r}, beta_min={self.beta_min!r}, beta_max={self.beta_max!r}, t={self.t})"
        )


# ----------------------------------------------------------------------------- factories

BETA_SCHEDULE_KINDS = ("constant", "warmup", "cyclical", "constrained")

_KIND_CLASSES = {
    "constant": ConstantBeta,
    "warmup": LinearWarmup,
    "cyclical": CyclicalBeta,
    "constrained": ConstrainedBeta,
}

_KIND_ARGS = {
    "constant": ("beta",),
    "warmup": ("beta", "warmup_steps", "start"),
    "cyclical": ("beta", "cycle_steps", "ratio", "n_cycles"),
    "constrained": ("target_rate", "init_beta", "lr", "alpha", "beta_min", "beta_max", "device"),
}


def make_beta_schedule(kind: str = "constant", **kwargs: Any):
    """Build a beta schedule from its name and keyword arguments (for the command line).

    ============== ============================ ===================================================
    kind           class                        arguments
    ============== ============================ ===================================================
    'constant'     :class:`ConstantBeta`        beta
    'warmup'       :class:`LinearWarmup`        beta, warmup_steps, start
    'cyclical'     :class:`CyclicalBeta`        beta, cycle_steps, ratio, n_cycles
    'constrained'  :class:`ConstrainedBeta`     target_rate (alias delta), init_beta (alias beta),
                                                lr, alpha, beta_min, beta_max, device
    ============== ============================ ===================================================

    ``kind`` is case-insensitive.  Arguments whose value is ``None`` count as not given (so a
    command line can pass all of its options); any other argument the kind does not take is a
    ValueError, as is an unknown kind or an invalid value (the message names the argument).
    """
    if not isinstance(kind, str):
        raise ValueError(f"kind must be one of {BETA_SCHEDULE_KINDS}, got {kind!r}")
    key = kind.strip().lower()
    if key not in _KIND_CLASSES:
        raise ValueError(f"kind must be one of {BETA_SCHEDULE_KINDS}, got {kind!r}")
    args = {k: v for k, v in kwargs.items() if v is not None}
    if key == "constrained":
        for alias, name in (("delta", "target_rate"), ("beta", "init_beta")):
            if alias in args:
                if name in args:
                    raise ValueError(f"give either {name} or its alias {alias}, not both")
                args[name] = args.pop(alias)
        if "target_rate" not in args:
            raise ValueError("target_rate (delta) is required for kind 'constrained'")
    unexpected = sorted(set(args) - set(_KIND_ARGS[key]))
    if unexpected:
        raise ValueError(
            f"unexpected argument(s) {unexpected} for kind {key!r}; it takes {list(_KIND_ARGS[key])}"
        )
    return _KIND_CLASSES[key](**args)


def make_capacity_schedule(
    max_capacity: Optional[Number] = None, ramp_steps: Optional[int] = None, start: Optional[Number] = None
) -> Optional[CapacityRamp]:
    """A :class:`CapacityRamp`, or ``None`` (no capacity term) when ``max_capacity`` is None.

    ``ramp_steps`` defaults to 0 (C = max_capacity from the start) and ``start`` to 0.
    """
    if max_capacity is None:
        if ramp_steps is not None or start is not None:
            raise ValueError("max_capacity is required when ramp_steps or start is given")
        return None
    return CapacityRamp(
        max_capacity=max_capacity,
        ramp_steps=0 if ramp_steps is None else ramp_steps,
        start=0.0 if start is None else start,
    )
