"""The checkpoint: what ``checkpoint.pt`` holds, how it is written and read back.

It holds everything needed to continue exactly: the config, the data's description, the step,
the model, the optimizer, the schedules, the metric sums (:meth:`Meter.state
<fastvae.train.metrics.Meter.state>`), the RNG states, and when the run has them the moving
average of the weights (``ema``) and the fp16 gradient scaler (``scaler``).  The data order and the
noise are functions of ``(seed, step)`` and need no state of their own.  Rank 0 writes it,
atomically (:func:`save_checkpoint`); ``--keep-checkpoints N`` keeps the last ``N`` as
``checkpoint-<step>.pt`` besides, and ``best.pt`` is the one of the best held-out loss.  Entries added
after the first format are optional: a checkpoint without them is read as the version that wrote
it ran.
"""
from __future__ import annotations

import glob
import os
import pickle
import zipfile
from typing import Optional

import torch
from torch import nn

from ..environment import versions
from ..files import atomic_write
from .errors import TrainError

__all__ = ["CHECKPOINT_NAME", "BEST_NAME", "CHECKPOINT_FORMAT", "load_checkpoint", "checkpoint_state",
           "save_checkpoint", "restore_checkpoint", "keep_copy", "step_copies", "checkpoint_bytes"]

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
CHECKPOINT_FORMAT = "fastvae-train-checkpoint/1"
#: ``checkpoint-<step>.pt``: the earlier checkpoints ``--keep-checkpoints`` keeps.
_STEP_COPY = "checkpoint-{step:07d}.pt"


def _why_unreadable(path: str, exc: BaseException) -> str:
    """A short reason a file could not be read as a checkpoint (no advice of torch.load's that
    does not apply, no empty message)."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    if size == 0:
        return "the file is empty (0 bytes)"
    if isinstance(exc, EOFError) or (isinstance(exc, RuntimeError) and "central directory" in str(exc)):
        return f"the file is truncated ({size} bytes): a copy or a write was cut short"
    if isinstance(exc, (zipfile.BadZipFile, pickle.UnpicklingError)) and "weights_only" not in str(exc):
        return f"not a file written by torch.save ({type(exc).__name__})"
    if "weights_only" in str(exc) or "Unsupported global" in str(exc):
        return "it holds Python objects that no fastvae checkpoint has (it was not written by fastvae train)"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_checkpoint(path: str) -> dict:
    """Read a ``fastvae train`` checkpoint (a file, or a run folder holding ``checkpoint.pt``) on the CPU."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise TrainError(f"{path}: no checkpoint found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise TrainError(f"{path}: not a readable fastvae checkpoint ({_why_unreadable(path, exc)})") from None
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
                     world_size: int, ema=None, scaler=None) -> dict:
    """The checkpoint's contents (``metrics``: the :class:`~fastvae.train.metrics.Meter` state)."""
    state = {
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
    if ema is not None:
        state["ema"] = ema.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def save_checkpoint(out: str, state: dict, name: str = CHECKPOINT_NAME) -> str:
    """Write ``state`` to ``out/name`` atomically (an error leaves the file that was there); returns
    the path."""
    path = os.path.join(out, name)
    atomic_write(path, lambda f: torch.save(state, f))
    return path


def step_copies(out: str) -> list:
    """The ``checkpoint-<step>.pt`` files of a run folder, oldest first."""
    return sorted(glob.glob(os.path.join(glob.escape(out), "checkpoint-[0-9]*.pt")))


def keep_copy(out: str, step: int, keep: int) -> None:
    """With ``keep`` > 1 the last ``keep`` checkpoints are kept: ``checkpoint.pt`` (just written) is also
    linked as ``checkpoint-<step>.pt`` (copied where links are not possible), and the oldest such files
    beyond ``keep`` go.  (With 1, ``checkpoint.pt`` alone.)"""
    if keep <= 1:
        return
    source, target = os.path.join(out, CHECKPOINT_NAME), os.path.join(out, _STEP_COPY.format(step=step))
    if os.path.exists(target):
        os.unlink(target)
    try:
        os.link(source, target)  # checkpoint.pt is replaced, never written in place: the link stays valid
    except OSError:
        import shutil

        shutil.copyfile(source, target)
    for old in step_copies(out)[:-keep]:
        os.unlink(old)


def checkpoint_bytes(parameters: int, *, ema: bool) -> int:
    """About how large a checkpoint of a model with ``parameters`` float32 parameters is: the weights,
    Adam's two moments, the moving average, and room for the rest."""
    return 4 * parameters * (3 + int(ema)) + (1 << 20)


def restore_checkpoint(ckpt: dict, path: str, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                       beta_schedule, capacity_schedule: Optional[object], meter, device: torch.device,
                       ema=None, scaler=None) -> int:
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
        if ema is not None:
            ema.load_state_dict(ckpt["ema"] if "ema" in ckpt else ckpt["model"])
        if scaler is not None and "scaler" in ckpt:
            scaler.load_state_dict(ckpt["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainError(f"{path}: malformed checkpoint ({type(exc).__name__}: {exc})") from None
    _restore_rng(ckpt.get("rng", {}), device)
    return step
