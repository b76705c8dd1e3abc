"""The checkpoint: what ``checkpoint.pt`` holds, how it is written and read back.

It holds everything needed to continue exactly: the config, the data's description, the step,
the model, the optimizer, the schedules, the metric sums (:meth:`Meter.state
<fastvae.train.metrics.Meter.state>`) and the RNG states.  The data order and the noise are
functions of ``(seed, step)`` and need no state of their own.  Rank 0 writes it, atomically
(:func:`save_checkpoint`).
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from ..environment import versions
from ..files import atomic_write
from .errors import TrainError

__all__ = ["CHECKPOINT_NAME", "CHECKPOINT_FORMAT", "load_checkpoint", "checkpoint_state", "save_checkpoint",
           "restore_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "fastvae-train-checkpoint/1"


def load_checkpoint(path: str) -> dict:
    """Read a ``fastvae train`` checkpoint (a file, or a run folder holding ``checkpoint.pt``) on the CPU."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise TrainError(f"{path}: no checkpoint found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise TrainError(f"{path}: not a readable fastvae checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise TrainError(f"{path}: not a fastvae train checkpoint (expected format {CHECKPOINT_FORMAT!r}, "
                         f"found {found!r})")
    return ckpt


def _rng_state() -> dict:
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _restore_rng(rng: dict, device: torch.device) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda" and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state(rng["cuda"][device.index], device)


def checkpoint_state(*, config: dict, data_info: dict, step: int, total_steps: int, model: nn.Module,
                     optimizer: torch.optim.Optimizer, beta_schedule, capacity_schedule, metrics: dict,
                     world_size: int) -> dict:
    """The checkpoint's contents (``metrics``: the :class:`~fastvae.train.metrics.Meter` state)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "data_info": data_info,
        "step": step,
        "total_steps": total_steps,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "beta_schedule": beta_schedule.state_dict(),
        "capacity_schedule": None if capacity_schedule is None else capacity_schedule.state_dict(),
        "rng": _rng_state(),
        "metrics": metrics,
        "world_size": world_size,
        "versions": versions(),
    }


def save_checkpoint(out: str, state: dict) -> str:
    """Write ``state`` to ``out/checkpoint.pt`` atomically; returns the path."""
    path = os.path.join(out, CHECKPOINT_NAME)
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def restore_checkpoint(ckpt: dict, path: str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                       beta_schedule, capacity_schedule: Optional[object], meter, device: torch.device) -> int:
    """Load ``ckpt`` (read from ``path``) into the run's parts; returns its step.  A checkpoint whose
    parts do not fit is a :class:`TrainError` naming ``path``."""
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        raise TrainError(f"{path}: the checkpoint's model does not fit this model ({exc})") from None
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        beta_schedule.load_state_dict(ckpt["beta_schedule"])
        if capacity_schedule is not None:
            capacity_schedule.load_state_dict(ckpt["capacity_schedule"])
        meter.restore(ckpt["metrics"])
        step = int(ckpt["step"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainError(f"{path}: malformed checkpoint ({type(exc).__name__}: {exc})") from None
    _restore_rng(ckpt.get("rng", {}), device)
    return step
