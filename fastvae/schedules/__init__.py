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

All schedules share the interface of :class:`Schedule` (``base.py``): ``value``, ``step(rate=None)``,
``t``, ``state_dict()`` / ``load_state_dict(state)``.

* ``open_loop.py``: :class:`ConstantBeta`, :class:`LinearWarmup`, :class:`CyclicalBeta` and
  :class:`CapacityRamp` (C, not a beta), whose value is a python float and a function of the step
  (``value_at(t)``);
* ``constrained.py``: :class:`ConstrainedBeta`, a feedback controller that needs the rate; its
  ``value`` is a 0-dim tensor once it is updated with tensors (no host synchronisation), which
  :func:`fastvae.beta_vae_loss` accepts as ``beta=``;
* ``kinds.py``: the table of kinds (:data:`KINDS`), :func:`make_beta_schedule` and
  :func:`make_capacity_schedule`, which build schedules from keyword arguments (for the command
  line) and validate them.
"""
from .base import Schedule
from .constrained import ConstrainedBeta
from .kinds import BETA_SCHEDULE_KINDS, KINDS, Kind, default_kind, make_beta_schedule, make_capacity_schedule
from .open_loop import BetaSchedule, CapacityRamp, ConstantBeta, CyclicalBeta, LinearWarmup, OpenLoopSchedule

__all__ = [
    "Schedule",
    "OpenLoopSchedule",
    "BetaSchedule",
    "ConstantBeta",
    "LinearWarmup",
    "CyclicalBeta",
    "CapacityRamp",
    "ConstrainedBeta",
    "Kind",
    "KINDS",
    "BETA_SCHEDULE_KINDS",
    "default_kind",
    "make_beta_schedule",
    "make_capacity_schedule",
]
