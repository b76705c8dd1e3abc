"""Resolving a run before it starts: its device, its data, the per-rank batch, the model kind and
the step budget (:func:`plan_run`).  The config that comes out has no 'auto' or unset entry left
that the run depends on; it is what the checkpoint and ``metrics.json`` record."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..environment import resolve_device
from .config import (
    DEFAULT_STEPS,
    DEFAULT_TIME_LIMIT,
    DEFAULT_VAL_FRACTION,
    SHAPES_STEPS_PER_EPOCH,
    SHAPES_VAL_SAMPLES,
    UNIT_INTERVAL_LIKELIHOODS,
    TrainConfig,
    is_named_dataset,
)
from .distributed import Dist
from .errors import TrainError
from .model import model_kind
from .resume import Resumed
from .seeding import split_indices

__all__ = ["RunPlan", "plan_run", "device_for", "FP16_DEVICES"]

#: The device types ``--amp fp16`` runs on (autocast to float16 with a GradScaler).
FP16_DEVICES = ("cuda",)


@dataclass
class RunPlan:
    """What :func:`plan_run` settles: the resolved config, the device, the data (and its split into
    training and held-out samples) and the budget."""

    config: TrainConfig
    device: torch.device
    dataset: Any
    data_info: dict
    local_batch: int
    total_steps: int
    train_indices: Optional[torch.Tensor] = None  # None: every sample trains
    val_indices: Optional[torch.Tensor] = None    # None or empty: nothing is held out
    notes: tuple = ()                             # what the banner should say about the data

    @property
    def n_train(self) -> int:
        return len(self.dataset) if self.train_indices is None else len(self.train_indices)

    @property
    def n_val(self) -> int:
        return 0 if self.val_indices is None else len(self.val_indices)


def device_for(text: str, d: Dist) -> torch.device:
    """The device of this process (under torchrun, CUDA device ``LOCAL_RANK``)."""
    try:
        return resolve_device(text, d.local_rank if d.enabled else None)
    except ValueError as exc:
        raise TrainError(str(exc)) from None


def _open_data(c: TrainConfig, device: torch.device, user_dataset: Any) -> tuple:
    """(dataset, the config's ``data`` entry): a user dataset is recorded as ``<ClassName>``, a file
    by its absolute path (so that --resume from another folder reads the same file)."""
    from ..data import get_dataset  # numpy: a dependency of the train extra

    layout = c.data_layout.replace("-", "_")
    if user_dataset is not None:
        dataset = get_dataset(user_dataset, device=device, seed=c.seed, layout=layout)
        return dataset, f"<{type(user_dataset).__name__}>"
    dataset = get_dataset(c.data, device=device, seed=c.seed, layout=layout)
    return dataset, c.data if is_named_dataset(c.data) else os.path.abspath(c.data)


def _describe(dataset, likelihood: str, given: str, data: str) -> dict:
    """The data's description (``data_info``); ``given`` is how the user named it, ``data`` the
    config's entry."""
    lo, hi = dataset.value_range
    if likelihood in UNIT_INTERVAL_LIKELIHOODS and (lo < 0.0 or hi > 1.0):
        raise TrainError(f"{given}: --likelihood {likelihood} needs values in [0, 1], the data has values in "
                         f"[{lo:g}, {hi:g}]; rescale it or use --likelihood gaussian")
    info = {"name": getattr(dataset, "name", str(data)), "len": len(dataset),
            "sample_shape": list(dataset.sample_shape), "value_range": [float(lo), float(hi)]}
    if getattr(dataset, "layout_note", None):
        info["layout"] = dataset.layout_note
    return info


def _check_same_data(resumed: Optional[Resumed], data_info: dict, data: str) -> None:
    if resumed is None:
        return
    stored = resumed.checkpoint.get("data_info", {})
    for key in ("len", "sample_shape"):
        if key in stored and stored[key] != data_info[key]:
            raise TrainError(f"{resumed.path}: the checkpoint was trained on data with {key} "
                             f"{stored[key]}, {data} has {data_info[key]}")


def _budget(c: TrainConfig, *, is_stream: bool, n: int, resumed: bool) -> TrainConfig:
    """``c`` with steps per epoch, the steps and the time limit settled (``n``: training samples).
    A time limit of 0 is none; without one, a new run that names no budget takes the default
    budget's limit, and a resumed run keeps its own (the checkpoint's config)."""
    steps_per_epoch = c.steps_per_epoch
    if steps_per_epoch is None:
        steps_per_epoch = SHAPES_STEPS_PER_EPOCH if is_stream else max(1, n // c.batch_size)
    time_limit = c.time_limit
    if c.steps is not None:
        total = c.steps
    elif c.epochs is not None:
        total = c.epochs * steps_per_epoch
    else:
        total = DEFAULT_STEPS
        if not resumed and time_limit is None:
            time_limit = DEFAULT_TIME_LIMIT
    return dataclasses.replace(c, steps_per_epoch=steps_per_epoch, time_limit=time_limit,
                               steps=total if c.epochs is None else None)


def _val_count(c: TrainConfig, n: int, is_stream: bool) -> int:
    """How many samples are held out: ``val_fraction`` of them (none when that is 0, or when the
    data is too small to leave a whole sample out); by default 5% of a finite dataset and
    :data:`SHAPES_VAL_SAMPLES` images of ``shapes``."""
    if c.val_fraction is None:
        return SHAPES_VAL_SAMPLES if is_stream else int(n * DEFAULT_VAL_FRACTION)
    return int(n * c.val_fraction)


def _check_batch(c: TrainConfig, n_train: int, n_val: int, given: str) -> None:
    if c.batch_size <= n_train:
        return
    held = f" ({n_val} more are held out for validation; --val-fraction 0 trains on all)" if n_val else ""
    raise TrainError(f"--batch-size {c.batch_size} is larger than the {n_train} training samples of {given}"
                     f"{held}: every step would repeat samples; use --batch-size {n_train} or less")


def plan_run(config: TrainConfig, d: Dist, *, user_dataset: Any, resumed: Optional[Resumed],
             device: torch.device) -> RunPlan:
    """Open the data on ``device`` and settle the run's config (a new object; ``config`` is kept)."""
    if config.amp == "fp16" and device.type not in FP16_DEVICES:
        raise TrainError(f"--amp fp16 needs a CUDA device (float16 autocast with a GradScaler), not {device}; on the "
                         "CPU use --amp none (bf16 runs there, but slower than float32)")
    if d.enabled and config.batch_size % d.world_size:
        raise TrainError(f"--batch-size {config.batch_size} is the global batch and must be divisible by the "
                         f"{d.world_size} processes")
    dataset, data = _open_data(config, device, user_dataset)
    given = data if user_dataset is not None else config.data
    data_info = _describe(dataset, config.likelihood, given, data)
    _check_same_data(resumed, data_info, data)
    is_stream = getattr(dataset, "name", None) == "shapes"
    n_val = _val_count(config, len(dataset), is_stream)
    train_indices, val_indices = split_indices(len(dataset), n_val, config.seed)
    n_train = len(dataset) - n_val
    _check_batch(config, n_train, n_val, given)
    c = _budget(dataclasses.replace(config, data=data), is_stream=is_stream, n=n_train,
                resumed=resumed is not None)
    c = dataclasses.replace(c, model=model_kind(c.model, tuple(dataset.sample_shape), "shapes" if is_stream else None,
                                                 c.latent_dim))
    total = c.steps if c.steps is not None else c.epochs * c.steps_per_epoch
    data_info["train"], data_info["val"] = n_train, n_val
    notes = (data_info["layout"],) if "layout" in data_info else ()
    return RunPlan(c, device, dataset, data_info, config.batch_size // d.world_size, total,
                   train_indices=train_indices, val_indices=val_indices.to(device) if n_val else None, notes=notes)
