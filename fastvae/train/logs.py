"""The run's logs beside ``metrics.json``: ``metrics.csv`` (one row per reading) and ``epochs.csv``
(one row per epoch, with the held-out numbers), always; TensorBoard event files under
``tensorboard/`` when the ``tensorboard`` package is installed (``pip install fastvae[tensorboard]``)
or asked for.

The CSV files are rewritten whole, atomically, from the history the checkpoint holds, at every
checkpoint and at the end: after a crash and ``--resume`` they never hold rows the checkpoint has
not.  TensorBoard appends as the run goes; a resumed run purges the events after its step.
"""
from __future__ import annotations

import csv
import io
import os
from typing import Optional

from ..files import atomic_write

__all__ = ["CSV_NAMES", "TENSORBOARD_DIR", "write_csv", "RunLogs", "tensorboard_available"]

#: (file, the metrics.json list it holds)
CSV_NAMES = (("metrics.csv", "history"), ("epochs.csv", "epochs"))
TENSORBOARD_DIR = "tensorboard"
_FIRST = ("step", "epoch", "loss", "distortion", "rate", "beta")


def _columns(rows: list) -> list:
    seen = list(_FIRST)
    for row in rows:
        for key, value in row.items():
            if key not in seen and not isinstance(value, (dict, list)):
                seen.append(key)
    return [k for k in seen if any(k in row for row in rows)]


def write_csv(path: str, rows: list) -> None:
    """``rows`` (dicts) as a CSV file with a header, written atomically."""
    buffer = io.StringIO()
    columns = _columns(rows)
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    atomic_write(path, lambda f: f.write(buffer.getvalue()), mode="w")


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class RunLogs:
    """The CSV files and the TensorBoard writer of one run (rank 0)."""

    def __init__(self, out: str, *, tensorboard: Optional[bool], start_step: int,
                 log=print):
        self.out = out
        self.writer = None
        use = tensorboard_available() if tensorboard is None else tensorboard
        if use:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                log(f"note: no TensorBoard logs ({exc}); pip install fastvae[tensorboard]")
            else:
                self.writer = SummaryWriter(os.path.join(out, TENSORBOARD_DIR), purge_step=start_step or None)

    def reading(self, entry: dict) -> None:
        if self.writer is None:
            return
        for key, value in entry.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, entry["step"])

    def epoch(self, entry: dict) -> None:
        if self.writer is None:
            return
        for key, value in entry.items():
            if key.startswith("val_") and isinstance(value, (int, float)):
                self.writer.add_scalar(f"val/{key[4:]}", value, entry["step"])

    def write(self, metrics: dict) -> None:
        """The CSV files from ``metrics`` (``history`` and ``epochs``); flushes TensorBoard."""
        for name, key in CSV_NAMES:
            write_csv(os.path.join(self.out, name), metrics.get(key) or [])
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
