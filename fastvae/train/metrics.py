"""What a run measures: the training clock, the running sums of loss, distortion and rate behind
each reading and each epoch (:class:`Meter`), the evaluation of the latent dimensions, and
``metrics.json``."""
from __future__ import annotations

import math
import time
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["METRICS_NAME", "METRICS_FORMAT", "ACTIVE_KL", "Timer", "Meter", "kl_per_dim", "evaluate", "validate",
           "VAL_KEYS"]

METRICS_NAME = "metrics.json"
METRICS_FORMAT = "fastvae-train-metrics/1"
#: nats: a latent dimension whose batch-mean KL is above this counts as active (the usual reading of
#: Burda et al. 2016's activity); below it the dimension has collapsed to the prior.  ``fastvae train``,
#: ``fastvae eval`` and ``fastvae sweep`` all count with it.
ACTIVE_KL = 0.01
#: Samples of the fixed evaluation batch.
EVAL_SAMPLES = 512
#: Samples per forward pass of the held-out evaluation.
VAL_BATCH = 256
#: What :func:`validate` adds to an epoch's entry.
VAL_KEYS = ("val_loss", "val_distortion", "val_rate", "val_elbo", "val_objective")


class Timer:
    """Wall time of training only (checkpoints and plots excluded)."""

    def __init__(self):
        self.total = 0.0
        self._start: Optional[float] = None

    def start(self):
        self._start = time.perf_counter()

    def stop(self):
        if self._start is not None:
            self.total += time.perf_counter() - self._start
            self._start = None

    def now(self) -> float:
        return self.total + (time.perf_counter() - self._start if self._start is not None else 0.0)


class _Window:
    """The sums of (loss, distortion, rate, and the objective's extra terms) over a run of steps, and its
    training time: ``time`` banked by earlier segments (and earlier sessions), plus the timer's advance
    since ``clock``."""

    def __init__(self, device: torch.device, size: int = 3):
        self.sums = torch.zeros(size, dtype=torch.float64, device=device)
        self.steps = 0
        self.time = 0.0
        self.clock = 0.0

    def elapsed(self, now: float) -> float:
        return self.time + now - self.clock

    def bank(self, now: float) -> None:
        self.time += now - self.clock
        self.clock = now

    def reset(self, now: float) -> None:
        self.sums.zero_()
        self.steps = 0
        self.time = 0.0
        self.clock = now


class Meter:
    """The metrics of a run: a window since the last reading, a window since the epoch began, the
    readings (``history``) and epochs written so far, and the training time.

    Sums stay on the device (no host sync per step); a reading or an epoch end sums them over the
    ranks and reads them once.  ``earlier_time`` is the training time of the sessions before this
    one (from the checkpoint), ``timer`` this session's.
    """

    def __init__(self, device: torch.device, *, world_size: int, main: bool, extra_names: tuple = ()):
        self.world_size = world_size
        self.main = main
        self.extra_names = tuple(extra_names)  # recorded after loss, distortion and rate (e.g. mi, tc, dwkl)
        self.interval = _Window(device, 3 + len(self.extra_names))
        self.epoch = _Window(device, 3 + len(self.extra_names))
        self.history: list = []
        self.epochs: list = []
        self.earlier_time = 0.0
        self.timer = Timer()

    @property
    def train_time(self) -> float:
        """Seconds of training so far, this session included."""
        return self.earlier_time + self.timer.now()

    def add(self, value: Tensor, distortion: Tensor, rate: Tensor, extras: Optional[Tensor] = None) -> None:
        terms = torch.stack([value, distortion, rate]).to(torch.float64)
        if extras is not None:
            terms = torch.cat([terms, extras.to(torch.float64)])
        for window in (self.interval, self.epoch):
            window.sums += terms
            window.steps += 1

    def means(self, sums: list, window: _Window) -> tuple:
        """(loss, distortion, rate, *extras): the global batch means of ``sums`` (summed over the ranks)."""
        return tuple(s / (window.steps * self.world_size) for s in sums)

    def _extras(self, means: tuple) -> dict:
        return dict(zip(self.extra_names, means[3:]))

    def close_interval(self, means: tuple, now: float, *, step: int, epoch: float, beta: float, batch_size: int,
                       capacity: Optional[float]) -> dict:
        """Record the reading at ``step`` from the ``means`` of the interval; start the next one."""
        steps = self.interval.steps
        elapsed = max(self.interval.elapsed(now), 1e-9)
        loss, distortion, rate = means[:3]
        entry = {"step": step, "epoch": epoch, "loss": loss, "distortion": distortion, "rate": rate,
                 **self._extras(means), "beta": beta, "samples_per_s": steps * batch_size / elapsed,
                 "time_s": self.earlier_time + now}
        if capacity is not None:
            entry["capacity"] = capacity
        self.history.append(entry)
        self.interval.reset(now)
        return entry

    def close_epoch(self, sums: list, now: float, *, step: int, beta: float, batch_size: int) -> dict:
        """Record the epoch that ends at ``step`` from its ``sums`` (summed over the ranks)."""
        steps = self.epoch.steps
        elapsed = self.epoch.elapsed(now)
        means = self.means(sums, self.epoch)
        loss, distortion, rate = means[:3]
        entry = {"epoch": len(self.epochs) + 1, "step": step, "steps": steps, "loss": loss,
                 "distortion": distortion, "rate": rate, **self._extras(means), "beta": beta,
                 "samples_per_s": steps * batch_size / max(elapsed, 1e-9), "time_s": self.earlier_time + now}
        self.epochs.append(entry)
        self.epoch.reset(now)
        return entry

    def state(self, interval_sums: list, epoch_sums: list) -> dict:
        """The checkpoint's ``metrics`` at a stop of the timer: the windows' time is banked and their
        sums (summed over the ranks) are saved as sums of global batch means, so that any number of
        processes can resume."""
        now = self.timer.total
        for window in (self.interval, self.epoch):
            window.bank(now)
        world = self.world_size
        return {
            "history": self.history,
            "epochs": self.epochs,
            "train_time": self.earlier_time + now,
            "interval_sums": [v / world for v in interval_sums],
            "interval_steps": self.interval.steps,
            "interval_time": self.interval.time,
            "epoch_sums": [v / world for v in epoch_sums],
            "epoch_steps": self.epoch.steps,
            "epoch_time": self.epoch.time,
        }

    def restore(self, metrics: dict) -> None:
        """Continue from a checkpoint's ``metrics`` (raises KeyError, TypeError or ValueError when
        it is malformed)."""
        self.history = list(metrics["history"])
        self.epochs = list(metrics["epochs"])
        self.earlier_time = float(metrics["train_time"])
        for window, name in ((self.interval, "interval"), (self.epoch, "epoch")):
            sums = torch.tensor(metrics[f"{name}_sums"], dtype=torch.float64, device=window.sums.device)
            # Sums of global means: rank 0 carries them for all ranks (flushes divide by the world size).
            window.sums = sums * self.world_size if self.main else sums.zero_()
            window.steps = int(metrics[f"{name}_steps"])
            window.time = float(metrics[f"{name}_time"])


def kl_per_dim(mu: Tensor, logvar: Tensor) -> list:
    """The KL of each latent dimension from the prior, averaged over the batch (nats)."""
    from ..ops import eager

    # kl_rows of the transposed batch: one row per latent dimension, summed over the samples.
    return (eager.kl_rows(mu.t(), logvar.t()) / mu.shape[0]).tolist()


@torch.no_grad()
def validate(model: nn.Module, dataset, indices: Tensor, *, likelihood: str, log_scale: float, beta: float,
             capacity: Optional[float], seed: int) -> dict:
    """The held-out numbers of ``model`` on the samples ``indices``: the distortion, the rate, the
    negative ELBO (``val_loss`` = distortion + rate, what ``best.pt`` minimises, whatever beta is),
    the ELBO and the training objective at the current ``beta`` (and ``capacity``).  Batch means in
    nats per sample; z is drawn with the fused op from the same noise at every evaluation (a
    generator seeded from the run's seed, rows addressed by position), so epochs compare."""
    import fastvae as fv

    from .seeding import val_noise_seed

    was_training = model.training
    model.eval()
    generator = torch.Generator(device=indices.device).manual_seed(val_noise_seed(seed))
    sums = torch.zeros(2, dtype=torch.float64, device=indices.device)
    scale = model.log_scale if getattr(model, "log_scale", None) is not None else log_scale
    try:
        for start in range(0, len(indices), VAL_BATCH):
            x = dataset.batch(indices[start:start + VAL_BATCH])
            mu, logvar = model.encode(x)
            generator.manual_seed(val_noise_seed(seed))
            z, rate = fv.reparameterize_kl(mu, logvar, generator=generator, reduction="none", row_offset=start)
            recon = model.decode(z).reshape(x.shape)
            _, distortion, rate = fv.beta_vae_loss(recon, x, rate=rate, beta=1.0, likelihood=likelihood,
                                                   log_scale=scale, reduction="sum")
            sums += torch.stack([distortion, rate]).double()
    finally:
        model.train(was_training)
    distortion, rate = (sums / max(1, len(indices))).tolist()
    objective = distortion + beta * (abs(rate - capacity) if capacity is not None else rate)
    return {"val_loss": distortion + rate, "val_distortion": distortion, "val_rate": rate,
            "val_elbo": -(distortion + rate), "val_objective": objective}


@torch.no_grad()
def evaluate(model: nn.Module, dataset, seed: int, device: torch.device, indices: Optional[Tensor] = None) -> dict:
    """Per-dimension KL of the posterior over a fixed evaluation batch (eval mode, z = mu): the first
    :data:`EVAL_SAMPLES` of ``indices`` (the held-out samples), or a fixed draw of the data."""
    from .seeding import eval_indices

    if indices is None or len(indices) == 0:
        indices = eval_indices(len(dataset), EVAL_SAMPLES, seed, device)
    else:
        indices = indices[:EVAL_SAMPLES]
    x = dataset.batch(indices)
    was_training = model.training
    model.eval()
    try:
        mu, logvar = model.encode(x)
        per_dim = kl_per_dim(mu, logvar)
    finally:
        model.train(was_training)
    return {"kl_per_dim": per_dim, "active_dims": sum(v > ACTIVE_KL for v in per_dim), "eval_samples": len(indices)}


def finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)
