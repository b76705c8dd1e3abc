""":func:`train`: one run from start to end, and what it returns (:class:`TrainResult`)."""
from __future__ import annotations

import dataclasses
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from .checkpoint import checkpoint_bytes
from .config import TrainConfig, check_config
from .distributed import Dist, destroy_dist, dist_from_env, init_dist
from .output import PLOT_BYTES, prepare_out
from .parts import build_parts
from .plan import device_for, plan_run
from .process import ProcessState
from .resume import read_resume
from .signals import StopFlag
from .trainer import Trainer

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns: the output folder, the step reached, why it stopped
    (``'finished'``, ``'time limit'``, ``'signal SIGTERM'``...), the trained model (unwrapped, on its
    device), the metrics written to ``metrics.json`` and the config the run used (resolved: the
    model kind, the steps, the data's path; on resume, the checkpoint's)."""

    out: str
    step: int
    total_steps: int
    status: str
    model: nn.Module
    metrics: dict = field(repr=False)
    config: Optional[TrainConfig] = field(default=None, repr=False)

    @property
    def exit_code(self) -> int:
        if self.status.startswith("signal "):
            signum = getattr(signal, self.status.split()[1], None)
            return 128 + int(signum) if signum is not None else 1
        return 0


def _silent(*_: Any) -> None:
    pass


def train(
    config: TrainConfig,
    *,
    out: Optional[str] = None,
    resume: Optional[str] = None,
    overwrite: bool = False,
    explicit: Optional[set] = None,
    progress: Optional[bool] = None,
    log: Callable[[str], None] = print,
    dataset: Any = None,
) -> TrainResult:
    """Train a VAE as ``config`` says and write ``out`` (see :mod:`fastvae.train`).

    ``config`` is not changed (the run works on a copy; :attr:`TrainResult.config` is the one it
    used), and the process is left as it was found: the run sets torch's thread count
    (``threads``), seeds and loads torch's generators, and makes its CUDA device the current one,
    and puts each back when it ends (:class:`~fastvae.train.process.ProcessState`).

    Args:
        config: the run; on ``resume`` the checkpoint's config is used, with the
            :data:`~fastvae.train.config.RESUMABLE_KEYS` entries named in ``explicit`` taken from
            ``config``.
        out: output folder (default ``runs/<timestamp>``; with ``resume``, the checkpoint's folder).
            An existing non-empty folder is refused unless ``resume`` or ``overwrite``.
        resume: a checkpoint file or a run folder (``True``-ish ``''`` means ``out``).
        overwrite: train into an existing non-empty ``out``, replacing fastvae's files there.
        explicit: names of the config entries the user gave (on resume, these are compared with the
            checkpoint; a difference in an entry that fixes the run is a :class:`TrainError`).
        progress: tqdm bar (True), plain log lines (False), or None: a bar when stdout is a terminal.
        log: where plain lines go (rank 0 only).
        dataset: train on this instead of ``config.data``: any map-style torch Dataset (items a
            tensor or a ``(tensor, ...)`` tuple), a tensor or an array of samples. It is recorded
            in the config as ``<ClassName>``; a resumed run must be given the same data again.
    Raises:
        TrainError, fastvae.data.DataError: bad options, data, checkpoint or output folder; nothing
            has been written then.
    """
    d = dist_from_env()
    finished = False
    try:
        # SIGINT/SIGTERM from here on stop the run after its next step, with a checkpoint.
        with ProcessState() as process, StopFlag() as stop:
            result = _train(dataclasses.replace(config), d, process, stop, out=out, resume=resume,
                            overwrite=overwrite, explicit=set(explicit or ()), progress=progress,
                            log=log if d.main else _silent, dataset=dataset)
        finished = True
        return result
    finally:
        destroy_dist(d, wait_for_all=finished)


def _room(plan, parts) -> tuple:
    """(bytes, what they are for): the disk space the run's files take at most."""
    c = plan.config
    one = checkpoint_bytes(sum(p.numel() for p in parts.model.parameters()), ema=parts.ema is not None)
    # checkpoint.pt and its temporary during the atomic replace, the kept copies, best.pt
    copies = 2 + (c.keep_checkpoints if c.keep_checkpoints > 1 else 0) + int(c.keep_best and plan.n_val > 0)
    return copies * one + PLOT_BYTES, f"{copies} checkpoint files of about {one / 1e6:.1f} MB, and the plots"


def _train(config: TrainConfig, d: Dist, process: ProcessState, stop: StopFlag, *, out, resume, overwrite,
           explicit: set, progress, log, dataset) -> TrainResult:
    # Validate everything that can be validated before anything is written.
    if resume is None:
        check_config(config)
    if d.enabled:
        device = device_for(config.device, d)
        process.use_device(device)
        init_dist(d, device)
    resumed = None
    if resume is not None:
        resumed = read_resume(d, resume, out, config, explicit)
        config, out = resumed.config, resumed.out
        check_config(config)
    process.set_threads(config.threads)
    device = device_for(config.device, d)
    process.use_device(device)
    plan = plan_run(config, d, user_dataset=dataset, resumed=resumed, device=device)
    parts = build_parts(plan, d, process, resumed)
    need, what = _room(plan, parts)
    out = prepare_out(d, out, None if resumed is None else resumed.path, overwrite, need=need, what=what)
    trainer = Trainer(plan, parts, d, out=out, log=log, progress=progress, stop=stop)
    log(trainer.banner())
    total = plan.total_steps
    if trainer.step >= total:
        log(f"the checkpoint is at step {trainer.step} of {total}: nothing to train "
            "(pass --steps or --epochs to train longer)")
        status = "finished"
    else:
        status = trainer.loop()
    metrics = trainer.finish(status)
    return TrainResult(out, trainer.step, total, status, parts.model, metrics, plan.config)
