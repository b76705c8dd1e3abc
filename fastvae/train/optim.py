"""The optimizer's controls: the learning rate as a function of the step (:func:`lr_at`), the
exponential moving average of the weights (:class:`WeightAverage`) and the gradient scaler of fp16
autocast (:func:`make_scaler`).  Gradient clipping is one call in the trainer's step.

Everything here is a function of the step or has a state in the checkpoint, so a resumed run goes
on exactly as an uninterrupted one.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .config import TrainConfig, final_lr

__all__ = ["lr_at", "WeightAverage", "make_scaler"]


def lr_at(c: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate of step ``step`` (0-based) of a run of ``total_steps``: a linear warm-up from 0
    over ``lr_warmup`` steps, then ``lr`` (``constant``), a cosine from ``lr`` down to ``lr_min`` (default
    ``lr / 15``) at the last step of the run's budget (``cosine``; a resumed run given more steps stretches
    the rest of the cosine over them), or ``lr * lr_gamma ** k`` after ``k`` periods of ``lr_decay_every`` steps
    (``step``)."""
    warm = min(1.0, (step + 1) / c.lr_warmup) if c.lr_warmup else 1.0
    if c.lr_schedule == "cosine":
        span = max(1, total_steps - 1 - c.lr_warmup)  # the last step (total_steps - 1) takes lr_min
        progress = min(1.0, max(0, step - c.lr_warmup) / span)
        low = final_lr(c)
        rate = low + (c.lr - low) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif c.lr_schedule == "step":
        rate = c.lr * c.lr_gamma ** (max(0, step - c.lr_warmup) // c.lr_decay_every)
    else:
        rate = c.lr
    return rate * warm


class WeightAverage:
    """An exponential moving average of a model's parameters (and a copy of its buffers):
    ``avg = decay * avg + (1 - decay) * param`` after every optimizer step, on the device, with no
    host sync.  :attr:`model` is the averaged copy (what the held-out evaluation, the plots and
    :func:`fastvae.load_model` use when ``--ema-decay`` is given)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs = list(zip(self.model.parameters(), model.parameters()))
        self._buffers = list(zip(self.model.buffers(), model.buffers()))

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.decay
        for avg, param in self._pairs:
            avg.lerp_(param.detach(), weight)
        for avg, buf in self._buffers:
            avg.copy_(buf)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)


def make_scaler(c: TrainConfig, device: torch.device):
    """The GradScaler of ``--amp fp16`` (CUDA), or None."""
    if c.amp != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
