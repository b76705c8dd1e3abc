"""The output folder of a run: its default name, and the checks before anything is written: the
folder is new or empty (or the run's own), it takes a file, and its disk has room for the run's
checkpoints and plots.  A folder that fails a check is an error before the first step, naming the
folder, rather than at the first checkpoint."""
from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from typing import Optional

from .checkpoint import BEST_NAME, CHECKPOINT_NAME
from .distributed import Dist, broadcast_object
from .errors import TrainError
from .logs import CSV_NAMES, TENSORBOARD_DIR
from .metrics import METRICS_NAME
from .report import PNG_STEMS

__all__ = ["default_out", "prepare_out", "check_writable", "check_space", "PLOT_BYTES"]

_OWN_OUTPUTS = (CHECKPOINT_NAME, METRICS_NAME, BEST_NAME) + tuple(name for name, _ in CSV_NAMES)
#: Room kept for the PNGs, metrics.json and the CSV files.
PLOT_BYTES = 8 << 20


def default_out() -> str:
    """``runs/<date-time>`` (with a suffix when that exists)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", stamp)
    out, k = base, 2
    while os.path.exists(out):
        out, k = f"{base}-{k}", k + 1
    return out


def _is_own_output(name: str) -> bool:
    return (name in _OWN_OUTPUTS or (name.endswith(".png") and name.startswith(PNG_STEMS))
            or (name.startswith("checkpoint-") and name.endswith(".pt")))


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def check_writable(out: str) -> None:
    """A file can be created, written and removed in ``out`` (a TrainError naming it otherwise)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".fastvae-write-test-", dir=out)
    except OSError as exc:
        raise TrainError(f"--out {out}: cannot write into the output folder ({exc.strerror or exc}); choose "
                         "another --out") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"fastvae")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise TrainError(f"--out {out}: cannot write into the output folder ({exc.strerror or exc}); choose "
                         "another --out") from None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass


def check_space(out: str, need: int, what: str) -> None:
    """The disk of ``out`` has ``need`` bytes free (a TrainError saying how much is missing otherwise)."""
    try:
        free = shutil.disk_usage(out).free
    except OSError:
        return  # nothing to measure with; the writes themselves will tell
    if free < need:
        raise TrainError(f"--out {out}: {_mb(free)} free on its disk, and the run needs about {_mb(need)} "
                         f"({what}); free some space or choose another --out")


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
            elif name == TENSORBOARD_DIR and os.path.isdir(os.path.join(out, name)):
                shutil.rmtree(os.path.join(out, name))
    return out


def prepare_out(d: Dist, out: Optional[str], checkpoint_path: Optional[str], overwrite: bool, *,
                need: int = 0, what: str = "") -> str:
    """Check (rank 0) and create the output folder, check that it takes files and has ``need`` bytes
    free (``what`` says for what); every rank learns the outcome (the folder, or the
    :class:`TrainError` to raise).  A folder this call created is removed again when a check fails."""
    error = None
    if d.main:
        if out is None:
            out = default_out()
        existed = os.path.isdir(out)
        try:
            out = _make_out(out, checkpoint_path, overwrite)
            check_writable(out)
            check_space(out, need, what)
        except TrainError as exc:
            error = str(exc)
        except OSError as exc:
            error = f"--out {out}: cannot create the output folder ({exc.strerror or exc})"
        if error and not existed and os.path.isdir(out):
            try:
                os.rmdir(out)
            except OSError:
                pass
    out, error = broadcast_object(d, (out, error))
    if error:
        raise TrainError(error)
    return out
