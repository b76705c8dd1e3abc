"""What defines a run: :class:`TrainConfig`, its defaults and choices, and its checks.

Defaults.  The quick start is a beta-VAE (ConvVAE, latent 10, Bernoulli, beta 4) on ``shapes``,
batch 64, Adam at 3e-3, for :data:`DEFAULT_STEPS` steps or :data:`DEFAULT_TIME_LIMIT` seconds,
whichever comes first.  Both the learning rate (over 100 steps) and beta (from 0 over 1000 steps)
are warmed up.  Measured on shapes: at the full rate from step 0, Adam's first updates left most
ReLUs of the encoder dead in most seeds, and the model then decodes the mean image whatever beta
is; and with beta near 4 before the decoder has learned to use z the posterior collapses to the
prior.  With both warm-ups every seed tried left that plateau early and reconstructs position,
scale and elongation of the sprites within the default time limit on a small CPU.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Optional

from ..functional import LIKELIHOODS
from ..ops.likelihoods import KINDS, SCALED_KINDS
from ..schedules import BETA_SCHEDULE_KINDS, default_kind
from .errors import TrainError

__all__ = [
    "TrainConfig", "MODELS", "LOSS_BACKENDS", "AMP_MODES", "BETA_SCHEDULES", "LIKELIHOODS", "SCALED_LIKELIHOODS",
    "SHAPES_STEPS_PER_EPOCH", "DEFAULT_STEPS", "DEFAULT_TIME_LIMIT", "RESUMABLE_KEYS", "check_config",
    "schedule_kind", "compare_configs", "data_key", "NAMED_DATASETS", "is_named_dataset",
]

MODELS = ("auto", "conv", "mlp")
LOSS_BACKENDS = ("fastvae", "torch")
AMP_MODES = ("none", "bf16")
#: The ``--beta-schedule`` choices: the kinds of :mod:`fastvae.schedules.kinds`.
BETA_SCHEDULES = BETA_SCHEDULE_KINDS
#: The likelihoods with a scale (``--log-scale``, ``--learn-scale``).
SCALED_LIKELIHOODS = tuple(name for name, kind in KINDS.items() if kind in SCALED_KINDS)

#: Steps per epoch of the endless ``shapes`` stream (when ``steps_per_epoch`` is not given).
SHAPES_STEPS_PER_EPOCH = 100
#: The quick start: without ``steps``/``epochs`` a run trains this many steps or for
#: ``DEFAULT_TIME_LIMIT`` seconds, whichever comes first.
DEFAULT_STEPS = 3000
DEFAULT_TIME_LIMIT = 90.0

#: The datasets ``--data`` names (anything else is a file): fastvae.data.DATASET_NAMES, written here
#: because fastvae.data needs numpy and ``fastvae train --help`` does not (tests/test_train.py checks
#: that the two agree).
NAMED_DATASETS = ("shapes", "digits")

# Config entries that may change when a run is resumed; every other entry must match the checkpoint.
RESUMABLE_KEYS = frozenset({
    "steps", "epochs", "time_limit", "device", "compile", "checkpoint_every", "log_every", "threads", "plots",
})


@dataclass
class TrainConfig:
    """Everything that defines a training run (the command-line options of ``fastvae train``).

    ``batch_size`` is the global batch: with ``N`` processes each takes ``batch_size / N`` samples.
    ``steps`` and ``epochs`` are exclusive; with neither, the run takes :data:`DEFAULT_STEPS` steps or
    :data:`DEFAULT_TIME_LIMIT` seconds, whichever comes first.
    """

    data: str = "shapes"
    model: str = "auto"                    # auto: conv for 32x32/64x64 images, else mlp
    latent_dim: int = 10
    hidden: tuple = (512, 256)             # mlp widths
    likelihood: str = "bernoulli"
    log_scale: float = 0.0                 # gaussian/laplace decoder scale (log), unless learn_scale
    learn_scale: bool = False
    beta: float = 4.0                      # beta (or gamma with a capacity; initial beta if constrained)
    beta_schedule: Optional[str] = None    # None: 'constrained' with target_rate, else 'warmup'
    warmup_steps: int = 1000               # warmup: steps from beta_start to beta
    beta_start: float = 0.0
    cycle_steps: int = 1000                # cyclical
    cycle_ratio: float = 0.5
    n_cycles: Optional[int] = None
    target_rate: Optional[float] = None    # constrained: target KL in nats
    beta_lr: float = 1e-2                  # constrained: dual-ascent step on log(beta) per nat
    beta_alpha: float = 0.0                # constrained: moving average of the constraint
    capacity: Optional[float] = None       # C in beta*|rate - C| (nats), ramped from 0
    capacity_steps: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    lr_warmup: int = 100                   # steps of linear learning-rate warm-up from 0
    steps: Optional[int] = None
    epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    time_limit: Optional[float] = None     # seconds of training; stops after a checkpoint
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    compile: bool = False
    loss_backend: str = "fastvae"
    checkpoint_every: int = 200
    log_every: int = 10
    threads: Optional[int] = None
    plots: bool = True

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TrainError(f"unknown config entries {unknown}")
        d = dict(d)
        if "hidden" in d and d["hidden"] is not None:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


def schedule_kind(c: TrainConfig) -> str:
    """The beta schedule the run uses (``--beta-schedule``, or the default for its options)."""
    return default_kind(c.beta_schedule, c.target_rate)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_ranges(c: TrainConfig) -> None:
    for name in ("latent_dim", "batch_size", "lr", "steps", "epochs", "steps_per_epoch", "checkpoint_every",
                 "log_every", "threads", "time_limit", "cycle_steps", "n_cycles", "beta_lr"):
        value = getattr(c, name)
        if value is not None and not value > 0:
            raise TrainError(f"{_option(name)} must be > 0, got {value}")
    for name in ("beta", "beta_start", "warmup_steps", "lr_warmup", "capacity", "capacity_steps", "target_rate"):
        value = getattr(c, name)
        if value is not None and not value >= 0:
            raise TrainError(f"{_option(name)} must be >= 0, got {value}")
    for name in ("lr", "beta", "log_scale", "beta_start", "capacity", "target_rate", "beta_lr"):
        value = getattr(c, name)
        if value is not None and not math.isfinite(value):
            raise TrainError(f"{_option(name)} must be finite, got {value}")


def _check_intervals(c: TrainConfig) -> None:
    if not c.hidden or any(int(w) < 1 for w in c.hidden):
        raise TrainError(f"--hidden must be positive layer widths, got {list(c.hidden)}")
    if not 0 < c.cycle_ratio <= 1:
        raise TrainError(f"--cycle-ratio must be in (0, 1], got {c.cycle_ratio}")
    if not 0 <= c.beta_alpha < 1:
        raise TrainError(f"--beta-alpha must be in [0, 1), got {c.beta_alpha}")


def _check_choices(c: TrainConfig) -> None:
    for name, choices in (("model", MODELS), ("likelihood", LIKELIHOODS), ("loss_backend", LOSS_BACKENDS),
                          ("amp", AMP_MODES)):
        value = getattr(c, name)
        if value not in choices:
            raise TrainError(f"{_option(name)} must be one of {', '.join(choices)}, got {value!r}")
    if c.beta_schedule is not None and c.beta_schedule not in BETA_SCHEDULES:
        raise TrainError(f"--beta-schedule must be one of {', '.join(BETA_SCHEDULES)}, got {c.beta_schedule!r}")


def _check_objective(c: TrainConfig) -> None:
    schedule = schedule_kind(c)
    if schedule == "constrained" and c.target_rate is None:
        raise TrainError("--beta-schedule constrained needs --target-rate (the KL to hold, in nats)")
    if schedule != "constrained" and c.target_rate is not None:
        raise TrainError(f"--target-rate drives the 'constrained' beta schedule, not {schedule!r}")
    if schedule == "constrained" and c.capacity is not None:
        raise TrainError("--capacity and --target-rate are two ways to control the rate; give one")
    if schedule == "constrained" and c.beta <= 0:
        raise TrainError("--beta is the initial beta of the constrained schedule and must be > 0")
    if c.likelihood not in SCALED_LIKELIHOODS and (c.learn_scale or c.log_scale != 0.0):
        raise TrainError(f"--log-scale/--learn-scale apply to the {' and '.join(SCALED_LIKELIHOODS)} likelihoods, "
                         f"not {c.likelihood!r}")


def check_config(c: TrainConfig) -> None:
    """Range checks the parser cannot express; messages use the option names."""
    _check_ranges(c)
    if c.steps is not None and c.epochs is not None:
        raise TrainError("give --steps or --epochs, not both")
    _check_choices(c)
    _check_intervals(c)
    _check_objective(c)


def data_key(data: str) -> str:
    """What identifies ``--data``: a dataset name, or the file's absolute path."""
    low = data.strip().lower()
    if low in NAMED_DATASETS:
        return low
    return os.path.abspath(data)


def is_named_dataset(data: str) -> bool:
    return data_key(data) in NAMED_DATASETS


def compare_configs(stored: dict, given: dict, explicit: set) -> list:
    """(key, stored, given) for every explicitly given option that the checkpoint fixes differently."""
    diffs = []
    for key in sorted(explicit):
        if key in RESUMABLE_KEYS or key not in stored:
            continue
        a, b = stored[key], given[key]
        if key == "hidden":
            a, b = list(a), list(b)
        if key == "model" and b == "auto":
            continue
        if key == "data" and isinstance(a, str) and isinstance(b, str) and data_key(a) == data_key(b):
            continue
        if a != b:
            diffs.append((key, a, b))
    return diffs
