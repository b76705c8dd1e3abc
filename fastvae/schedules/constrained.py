"""beta as the Lagrange multiplier of a rate constraint (:class:`ConstrainedBeta`)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import torch

from .base import Schedule, count, in_range, nonneg, positive, real

__all__ = ["ConstrainedBeta"]

Number = Union[int, float]
#: How the violation of the constraint is measured (see :class:`ConstrainedBeta`).
ERRORS = ("nats", "log_ratio")
#: ``error='log_ratio'``: the rate is floored at this fraction of the target inside the logarithm.
_LOG_FLOOR = 1e-3
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ConstrainedBeta(Schedule):
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

    Three options make the controller hold a target from the first step of a training run (what
    ``fastvae train --target-rate`` uses; their defaults give the plain update above):

    * ``error='log_ratio'`` measures the violation as ``log(rate / delta)`` instead of
      ``rate - delta``: a rate twice the target pushes as hard as half the target pulls, whatever
      the target (3 nats or 30), and a rate of 100 nats early in training is not 100 times a
      rate of 4 (the rate is floored at ``1e-3 * delta`` in the logarithm);
    * ``max_step`` bounds ``|lr * c_ema|``, the change of ``log(beta)`` in one step;
    * ``warmup_steps`` ``W``: for ``t < W`` beta is ``init_beta * t / W`` (a linear warm-up from
      0, while the decoder learns to use z) and the multiplier is not updated; the constraint's
      average is still tracked, and the dual ascent starts at step ``W`` from ``init_beta``.

    Args:
        target_rate: ``delta``, the target rate in nats (the KL per sample, as reported by
            :func:`fastvae.beta_vae_loss` with ``reduction='mean'``).
        init_beta: the initial multiplier, in ``[beta_min, beta_max]``.
        lr: step size of the dual ascent on ``log(beta)``.
        alpha: moving-average factor of the constraint, in ``[0, 1)`` (GECO uses 0.99).
        beta_min, beta_max: clamp of beta (``0 < beta_min <= beta_max``).
        device: if given, the state is a tensor on this device from the start, so ``value`` is
            always a 0-dim tensor (e.g. to avoid a recompilation when it first becomes one).
        error: ``'nats'`` (``rate - delta``, the default) or ``'log_ratio'`` (``log(rate / delta)``).
        max_step: bound of the change of ``log(beta)`` per update (None: unbounded).
        warmup_steps: steps of the linear warm-up of beta before the dual ascent starts.

    :meth:`update` (alias ``step(rate)``) takes the measured rate as a python float or a 0-dim
    tensor.  With a tensor the update is done on the tensor's device with tensor ops only (no
    ``.item()``, no host synchronisation) and ``value`` is a 0-dim tensor (float32, or float64 for
    a float64 rate) that can be passed as ``beta=`` to :func:`fastvae.beta_vae_loss`.  With python
    floats it stays python floats.  The rate is detached; beta never carries gradients.

    The state is three 0-dim tensors (``log(beta)``, ``beta`` and the averaged constraint) of one
    dtype on one device, and one update formula serves every kind of rate.  Until the schedule is
    placed on a device (``device=`` given, or the first tensor rate) the tensors are float64 on the
    CPU and ``value`` reads them back as python floats; placing them takes the dtype a loaded
    state recorded, else float32 (float64 for a float64 rate).
    """

    _config = ("target_rate", "init_beta", "lr", "alpha", "beta_min", "beta_max")
    #: Hyper-parameters added after the first version, with the values that give its update.  The
    #: state holds them only when they differ from these, so a state of the first version (which
    #: has none of them) loads as it was, and a default schedule's state has the same entries.
    _optional = {"error": "nats", "max_step": None, "warmup_steps": 0}

    def __init__(
        self,
        target_rate: Number,
        init_beta: Number = 1.0,
        lr: Number = 1e-2,
        alpha: Number = 0.0,
        beta_min: Number = 1e-4,
        beta_max: Number = 1e4,
        device: Optional[Union[str, torch.device]] = None,
        error: str = "nats",
        max_step: Optional[Number] = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if error not in ERRORS:
            raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
        self.error = error
        self.max_step = None if max_step is None else positive("max_step", max_step)
        self.warmup_steps = count("warmup_steps", warmup_steps)
        self.target_rate = nonneg("target_rate", target_rate)
        self.lr = positive("lr", lr)
        self.alpha = in_range("alpha", alpha, 0.0, 1.0, low_open=False, high_open=True)
        self.beta_min = positive("beta_min", beta_min)
        self.beta_max = positive("beta_max", beta_max)
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"beta_min must be <= beta_max, got beta_min={self.beta_min!r} > beta_max={self.beta_max!r}"
            )
        init_beta = positive("init_beta", init_beta)
        if not self.beta_min <= init_beta <= self.beta_max:
            raise ValueError(
                f"init_beta must be in [beta_min, beta_max] = [{self.beta_min!r}, {self.beta_max!r}], got {init_beta!r}"
            )
        self.init_beta = init_beta
        self._log_beta = torch.tensor(math.log(init_beta), dtype=torch.float64)
        self._beta = torch.tensor(init_beta * self._ramp(0), dtype=torch.float64)
        self._ema: Optional[torch.Tensor] = None   # None until the first update
        self._placed = False                       # True: the state lives on a device, ``value`` is a tensor
        self._dtype: Optional[torch.dtype] = None  # the dtype of the placed state (a loaded state's, or chosen)
        if device is not None:
            self._place(torch.device(device), torch.float32)

    def _ramp(self, t: int) -> float:
        """The warm-up factor of beta at step ``t`` (1 after the warm-up)."""
        return 1.0 if t >= self.warmup_steps else t / self.warmup_steps

    def _place(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the state to ``device`` as ``dtype``; from now on ``value`` is a tensor."""
        self._log_beta = self._log_beta.to(device=device, dtype=dtype)
        self._beta = self._beta.to(device=device, dtype=dtype)
        self._ema = None if self._ema is None else self._ema.to(device=device, dtype=dtype)
        self._dtype = dtype
        self._placed = True

    def _out(self, v: Optional[torch.Tensor]) -> Union[None, float, torch.Tensor]:
        if v is None or self._placed:
            return v
        return v.item()

    @property
    def log_beta(self) -> Union[float, torch.Tensor]:
        """``log(beta)``: python float, or 0-dim tensor once placed on a device."""
        return self._out(self._log_beta)

    @property
    def constraint_ema(self) -> Union[None, float, torch.Tensor]:
        """The (averaged) constraint ``rate - delta`` used at the last update (None before any)."""
        return self._out(self._ema)

    @property
    def value(self) -> Union[float, torch.Tensor]:
        """The current beta: python float, or a 0-dim tensor once placed on a device."""
        return self._out(self._beta)

    # -- the dual-ascent update ------------------------------------------------------------------

    def _constraint(self, rate: Union[Number, torch.Tensor]) -> torch.Tensor:
        """``rate - target_rate`` as a 0-dim tensor of the state's dtype on its device; a tensor
        rate places the state on its device first (no host read of it)."""
        if not isinstance(rate, torch.Tensor):
            rate = real("rate", rate)
            if self.error == "log_ratio":
                c = math.log(max(rate, _LOG_FLOOR * self.target_rate) / self.target_rate)
            else:
                c = rate - self.target_rate
            return torch.tensor(c, dtype=self._log_beta.dtype, device=self._log_beta.device)
        if not rate.is_floating_point():
            raise TypeError(f"rate must be a floating tensor, got dtype {rate.dtype}")
        if rate.numel() != 1:
            raise ValueError(f"rate must be a scalar (0-dim tensor), got shape {tuple(rate.shape)}")
        rate = rate.detach().reshape(())
        if not self._placed:
            self._place(rate.device, self._dtype or torch.promote_types(rate.dtype, torch.float32))
        elif self._log_beta.device != rate.device:
            self._place(rate.device, self._log_beta.dtype)
        rate = rate.to(self._log_beta.dtype)
        if self.error == "log_ratio":
            return torch.log(torch.clamp(rate, min=_LOG_FLOOR * self.target_rate) / self.target_rate)
        return rate - self.target_rate

    def update(self, rate: Union[Number, torch.Tensor]) -> Union[float, torch.Tensor]:
        """One dual-ascent step with the measured rate (nats); returns the new beta.

        ``rate`` is a python number or a 0-dim (or one-element) floating tensor; a tensor is
        detached and the update runs on its device without synchronising with the host.
        """
        c = self._constraint(rate)
        a = self.alpha
        ema = c if (self._ema is None or a == 0.0) else self._ema * a + c * (1.0 - a)
        self._ema = ema
        self.t += 1
        if self.t <= self.warmup_steps:  # warm-up: beta ramps, the multiplier waits
            self._beta = torch.exp(self._log_beta) * self._ramp(self.t)
            return self.value
        change = self.lr * ema
        if self.max_step is not None:
            change = torch.clamp(change, -self.max_step, self.max_step)
        self._log_beta = torch.clamp(self._log_beta + change, math.log(self.beta_min), math.log(self.beta_max))
        self._beta = torch.exp(self._log_beta)
        return self.value

    def step(self, rate: Union[Number, torch.Tensor, None] = None) -> Union[float, torch.Tensor]:
        """Same as :meth:`update`; ``rate`` is required (ValueError if it is None)."""
        if rate is None:
            raise ValueError("rate is required: ConstrainedBeta.step(rate) needs the measured rate (KL, nats)")
        return self.update(rate)

    # -- checkpointing ---------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly, as plain python numbers.

        The state is read back with ``.item()`` (one host sync once placed on a device; float32
        values are exact as python floats) and its dtype is stored, so that a resumed run continues
        bit for bit.
        """
        state = self._config_state()
        for key, legacy in self._optional.items():
            if getattr(self, key) != legacy:
                state[key] = getattr(self, key)
        state.update(
            log_beta=self._log_beta.item(),
            beta=self._beta.item(),
            constraint_ema=None if self._ema is None else self._ema.item(),
            dtype=None if self._dtype is None else str(self._dtype).replace("torch.", ""),
        )
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        If this object is already placed on a device (``device=`` given, or tensor updates made) the
        state is restored there; otherwise it is held on the host and placed on the device of the
        first tensor passed to :meth:`update`, with the stored dtype.
        """
        self._fresh_from(state, extra=("log_beta",))  # the kind and the entries checked
        options = {key: state.get(key, legacy) for key, legacy in self._optional.items()}
        fresh = type(self)(**{k: state[k] for k in self._config}, **options)
        device = self._log_beta.device if self._placed else None
        log_beta = real("log_beta", state["log_beta"])
        ema = state.get("constraint_ema")
        beta = state.get("beta")
        dtype = state.get("dtype")
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError(f"state_dict has unsupported dtype {dtype!r}")
        self.__dict__.update(fresh.__dict__)
        self.t = count("t", state["t"])
        self._log_beta = torch.tensor(log_beta, dtype=torch.float64)
        self._beta = torch.tensor(math.exp(log_beta) if beta is None else nonneg("beta", beta), dtype=torch.float64)
        self._ema = None if ema is None else torch.tensor(real("constraint_ema", ema), dtype=torch.float64)
        self._dtype = None if dtype is None else _DTYPES[dtype]
        if device is not None:
            self._place(device, self._dtype or torch.float32)
