"""A trained model back from a run folder, in one call: :func:`load_model` (also
``fastvae.load_model``), and :func:`load_run` for the model with the run's config and facts.

The checkpoint holds the config the run used, resolved (the model kind, the latent size, the
likelihood...) and the data's sample shape, which is all :func:`~fastvae.train.model.build_model`
needs: no data, no options, no training code is run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import nn

from .checkpoint import BEST_NAME, CHECKPOINT_NAME, load_checkpoint
from .config import TrainConfig
from .errors import TrainError
from .model import build_model

__all__ = ["LoadedRun", "load_run", "load_model", "WEIGHTS"]

#: ``weights=``: the moving average when the run kept one (``auto``), or the one named.
WEIGHTS = ("auto", "ema", "trained")


@dataclass
class LoadedRun:
    """What :func:`load_run` gives back: the model (in eval mode, on the device asked for), the
    run's config (a :class:`~fastvae.train.TrainConfig`), the step of the checkpoint, the data's
    description (``sample_shape``, ``value_range``...), the checkpoint's path and which weights
    were loaded (``'ema'`` or ``'trained'``)."""

    model: nn.Module
    config: TrainConfig
    step: int
    data_info: dict
    path: str
    weights: str
    checkpoint: dict = field(repr=False, default_factory=dict)


def _checkpoint_path(path: Union[str, os.PathLike], best: bool) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        name = BEST_NAME if best else CHECKPOINT_NAME
        if best and not os.path.exists(os.path.join(path, BEST_NAME)):
            raise TrainError(f"{path}: no {BEST_NAME} (a run writes it when it holds data out for validation)")
        return os.path.join(path, name)
    if best:
        raise TrainError(f"{path}: best=True takes a run folder, not a checkpoint file")
    return path


def load_run(path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu", weights: str = "auto",
             best: bool = False) -> LoadedRun:
    """Load the model of a ``fastvae train`` run.

    Args:
        path: a run folder (its ``checkpoint.pt``, or ``best.pt`` with ``best=True``) or a checkpoint
            file (``checkpoint.pt``, ``checkpoint-<step>.pt``, ``best.pt``).
        device: where the model is put.
        weights: ``'auto'`` (the moving average of the weights when the run kept one, else the trained
            weights), ``'ema'`` or ``'trained'``.
        best: load the run folder's ``best.pt`` (the epoch of the lowest held-out loss).
    Raises:
        TrainError: no checkpoint there, an unreadable one, or weights that are not in it.
    """
    if weights not in WEIGHTS:
        raise TrainError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    file = _checkpoint_path(path, best)
    ckpt = load_checkpoint(file)
    try:
        config = TrainConfig.from_dict(dict(ckpt["config"]), stored=True)
        shape = tuple(ckpt["data_info"]["sample_shape"])
    except (KeyError, TypeError) as exc:
        raise TrainError(f"{file}: malformed checkpoint ({type(exc).__name__}: {exc})") from None
    if weights == "ema" and "ema" not in ckpt:
        raise TrainError(f"{file}: the run kept no moving average of its weights (train with --ema-decay); "
                         "use weights='trained'")
    chosen = "ema" if weights in ("auto", "ema") and "ema" in ckpt else "trained"
    model = build_model(config, shape)
    try:
        model.load_state_dict(ckpt["ema" if chosen == "ema" else "model"])
    except (RuntimeError, KeyError) as exc:
        raise TrainError(f"{file}: the checkpoint's weights do not fit the model its config describes ({exc})") \
            from None
    model = model.to(device).eval()
    return LoadedRun(model, config, int(ckpt.get("step", 0)), dict(ckpt["data_info"]), file, chosen, ckpt)


def load_model(path: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu", weights: str = "auto",
               best: bool = False, with_config: bool = False):
    """The trained VAE of a ``fastvae train`` run folder (or checkpoint file), in eval mode on
    ``device``: ``model.reconstruct(x)``, ``model.sample(n)``, ``model.encode(x)`` and ``model.decode(z)``
    work at once.  ``with_config=True`` returns ``(model, config)``, the run's
    :class:`~fastvae.train.TrainConfig`.  See :func:`load_run` for the arguments."""
    run = load_run(path, device=device, weights=weights, best=best)
    return (run.model, run.config) if with_config else run.model
