"""The output folder of a run: its default name, and the checks before anything is written."""
from __future__ import annotations

import datetime as _dt
import os
from typing import Optional

from .checkpoint import CHECKPOINT_NAME
from .distributed import Dist, broadcast_object
from .errors import TrainError
from .metrics import METRICS_NAME
from .report import PNG_STEMS

__all__ = ["default_out", "prepare_out"]

_OWN_OUTPUTS = (CHECKPOINT_NAME, METRICS_NAME)


def default_out() -> str:
    """``runs/<date-time>`` (with a suffix when that exists)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", stamp)
    out, k = base, 2
    while os.path.exists(out):
        out, k = f"{base}-{k}", k + 1
    return out


def _is_own_output(name: str) -> bool:
    return name in _OWN_OUTPUTS or (name.endswith(".png") and name.startswith(PNG_STEMS))


def _make_out(out: str, checkpoint_path: Optional[str], overwrite: bool) -> str:
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainError(f"--out {out}: exists and is not a folder")
    # A new run, or a resumed one continuing in a folder other than its checkpoint's, starts in a
    # new or empty folder.
    elsewhere = checkpoint_path is not None and not (
        os.path.isdir(out) and os.path.samefile(out, os.path.dirname(os.path.abspath(checkpoint_path))))
    fresh = checkpoint_path is None or elsewhere
    if fresh and os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise TrainError(f"--out {out}: the folder exists and is not empty; pass --resume to continue "
                         "the run in it, --overwrite to replace it, or choose another --out")
    os.makedirs(out, exist_ok=True)
    if fresh and overwrite:
        for name in os.listdir(out):
            if _is_own_output(name):
                os.unlink(os.path.join(out, name))
    return out


def prepare_out(d: Dist, out: Optional[str], checkpoint_path: Optional[str], overwrite: bool) -> str:
    """Check (rank 0) and create the output folder; every rank learns the outcome (the folder, or
    the :class:`TrainError` to raise)."""
    error = None
    if d.main:
        if out is None:
            out = default_out()
        try:
            out = _make_out(out, checkpoint_path, overwrite)
        except TrainError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"--out {out}: cannot create the output folder ({exc})"
    out, error = broadcast_object(d, (out, error))
    if error:
        raise TrainError(error)
    return out
