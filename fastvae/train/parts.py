"""What a run trains and keeps: the model, the optimizer, the schedules and the metrics, built
from the run's plan and, on resume, restored from its checkpoint (:func:`build_parts`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..models import ConvVAE
from ..schedules import KINDS, Schedule, make_beta_schedule, make_capacity_schedule
from .checkpoint import restore_checkpoint
from .config import TrainConfig, schedule_kind
from .distributed import Dist
from .errors import TrainError
from .metrics import Meter
from .model import build_model
from .objective import EXTRA_TERMS
from .optim import WeightAverage, make_scaler
from .plan import RunPlan
from .process import ProcessState
from .resume import Resumed

__all__ = ["Parts", "build_parts", "make_schedules"]


@dataclass
class Parts:
    """The trained and stateful parts of a run, the step they are at, and whether they come from a
    checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    kind: str
    beta_schedule: Schedule
    capacity_schedule: Optional[Schedule]
    meter: Meter
    step: int
    resumed: bool
    ema: Optional[WeightAverage] = None
    scaler: Optional[object] = None   # torch.amp.GradScaler of --amp fp16

    @property
    def eval_model(self) -> nn.Module:
        """The weights to evaluate and plot: the moving average when there is one."""
        return self.ema.model if self.ema is not None else self.model


def make_schedules(c: TrainConfig, kind: str, device: torch.device) -> tuple:
    """(beta schedule, capacity schedule or None) of the config; the beta schedule is chosen by its
    kind in :data:`fastvae.schedules.KINDS`."""
    entry = KINDS[kind]
    args = entry.options(c.to_dict())
    if "device" in entry.arguments:
        args["device"] = device
    try:
        beta = make_beta_schedule(kind, **args)
        capacity = make_capacity_schedule(c.capacity, c.capacity_steps if c.capacity is not None else None)
    except ValueError as exc:
        raise TrainError(f"beta schedule: {exc}") from None
    return beta, capacity


def build_parts(plan: RunPlan, d: Dist, process: ProcessState, resumed: Optional[Resumed]) -> Parts:
    """The parts of ``plan``'s run: the model initialized from the seed, or everything restored
    from the checkpoint of ``resumed``."""
    c, device = plan.config, plan.device
    process.seed_cpu(c.seed)
    model = build_model(c, tuple(plan.dataset.sample_shape)).to(device)
    if device.type == "cpu" and isinstance(model, ConvVAE):
        # oneDNN's convolutions in NHWC: a training step of the default ConvVAE at batch 32 takes ~1/1.35 the
        # time of the NCHW one on a 2-core CPU (bench/NOTES.md). Only the weights' layout changes (inputs stay NCHW).
        # Not the GlimpseVAE: its step was no faster channels-last (35.8 against 34.0 ms at batch 32).
        model = model.to(memory_format=torch.channels_last)
    kind = schedule_kind(c)
    beta_schedule, capacity_schedule = make_schedules(c, kind, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=c.lr)
    meter = Meter(device, world_size=d.world_size, main=d.main, extra_names=EXTRA_TERMS[c.objective])
    ema = WeightAverage(model, c.ema_decay) if c.ema_decay else None
    scaler = make_scaler(c, device)
    step = 0
    if resumed is not None:
        step = restore_checkpoint(resumed.checkpoint, resumed.path, model=model, optimizer=optimizer,
                                  beta_schedule=beta_schedule, capacity_schedule=capacity_schedule, meter=meter,
                                  device=device, ema=ema, scaler=scaler)
    return Parts(model, optimizer, kind, beta_schedule, capacity_schedule, meter, step, resumed is not None,
                 ema=ema, scaler=scaler)
