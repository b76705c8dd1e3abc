"""Continuing a run: find and read its checkpoint (on rank 0, sent to the others, so other nodes
need no shared file system), check the options given against it, and take its config with the
options that may change (:data:`~fastvae.train.config.RESUMABLE_KEYS`)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import RESUMABLE_KEYS, TrainConfig, compare_configs
from .distributed import Dist, broadcast_object
from .errors import TrainError

__all__ = ["Resumed", "read_resume"]


@dataclass
class Resumed:
    """A checkpoint to continue from: its contents, its path, the run's config and output folder."""

    checkpoint: dict
    path: str
    config: TrainConfig
    out: str


def _find(resume: str, out: Optional[str]) -> tuple:
    """(checkpoint, path) of ``--resume`` (a file or a run folder; empty: ``--out``)."""
    path = resume if resume else out
    if not path:
        raise TrainError("--resume needs a checkpoint: give --resume PATH or --out FOLDER")
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, CHECKPOINT_NAME)):
        raise TrainError(f"--resume: no {CHECKPOINT_NAME} in {path} (a run stopped before its first "
                         "checkpoint starts again without --resume)")
    ckpt = load_checkpoint(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    return ckpt, path


def _merged_config(stored: dict, given: TrainConfig, explicit: set, path: str) -> TrainConfig:
    """The checkpoint's config with the resumable options the user gave; a given option that
    fixes the run differently is a :class:`TrainError`."""
    given = given.to_dict()
    diffs = compare_configs(stored, given, explicit)
    if diffs:
        lines = "; ".join(f"{k}: checkpoint has {a!r}, got {b!r}" for k, a, b in diffs)
        raise TrainError(f"{path} was written by a different run ({lines}). Resume with the "
                         "checkpoint's settings, or start a new run in another --out folder")
    for key in RESUMABLE_KEYS & explicit:
        stored[key] = given[key]
    if "steps" in explicit and "epochs" not in explicit:
        stored["epochs"] = None
    if "epochs" in explicit and "steps" not in explicit:
        stored["steps"] = None
    # The time limit is per session: without --time-limit a resumed run keeps the one it was started
    # with (--time-limit 0: none).
    try:
        return TrainConfig.from_dict(stored, stored=True)
    except TypeError as exc:
        raise TrainError(f"{path}: malformed config ({exc})") from None


def read_resume(d: Dist, resume: str, out: Optional[str], config: TrainConfig, explicit: set) -> Resumed:
    """The run to continue, read by rank 0 and sent to every rank."""
    error = ckpt = path = None
    if d.main:
        try:
            ckpt, path = _find(resume, out)
        except TrainError as exc:
            error = str(exc)
    ckpt, path, error = broadcast_object(d, (ckpt, path, error))
    if error:
        raise TrainError(error)
    if out is None:
        out = os.path.dirname(os.path.abspath(path))
    merged = _merged_config(dict(ckpt.get("config") or {}), config, explicit, path)
    return Resumed(ckpt, path, merged, out)
