"""What defines a run: :class:`TrainConfig`, its defaults and choices, and its checks.

Defaults.  The quick start is a beta-VAE (GlimpseVAE, latent 10, Bernoulli, beta 4) on ``shapes``,
batch 32, Adam at 1.5e-3 with a cosine decay to a fifteenth of it, for :data:`DEFAULT_STEPS` steps or
:data:`DEFAULT_TIME_LIMIT` seconds of training, whichever comes first.  Both the learning rate (over
100 steps) and beta (from 0 over 300 steps) are warmed up: at the full rate from step 0, Adam's first
updates left most ReLUs of the encoder dead in most seeds, and the model then decodes the mean image
whatever beta is; with beta near 4 before the decoder has learned to use z the posterior collapses to
the prior.  (What the default run reaches is measured in bench/NOTES.md and stated in the README.)
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
    "schedule_kind", "compare_configs", "data_key", "NAMED_DATASETS", "is_named_dataset", "LR_SCHEDULES",
    "DATA_LAYOUTS", "BETA_ERRORS", "LEGACY_VALUES", "SHAPES_VAL_SAMPLES", "DEFAULT_VAL_FRACTION", "OBJECTIVES",
    "FREE_BITS_MODES", "TC_ESTIMATORS", "UNIT_INTERVAL_LIKELIHOODS", "final_lr",
]

MODELS = ("auto", "glimpse", "conv", "mlp")
LOSS_BACKENDS = ("fastvae", "torch")
#: ``--amp``: bf16 autocast (CUDA or CPU), fp16 autocast with a GradScaler (CUDA only).
AMP_MODES = ("none", "bf16", "fp16")
#: ``--lr-schedule``: the learning rate after the warm-up.
LR_SCHEDULES = ("constant", "cosine", "step")
#: ``--data-layout``: how 4-D arrays are read (auto: (N, H, W, C) with C in 1, 3, 4 is channels-last).
DATA_LAYOUTS = ("auto", "channels-first", "channels-last")
#: ``--objective``: the beta-VAE (distortion + beta * rate, optionally with free bits or a capacity), the
#: beta-TCVAE (distortion + alpha * MI + beta * TC + gamma * dimension-wise KL) or the IWAE bound with k samples.
OBJECTIVES = ("beta-vae", "tcvae", "iwae")
#: ``--free-bits-mode``: the threshold per latent dimension (batch mean, Kingma et al. 2016) or per sample.
FREE_BITS_MODES = ("dim", "sample")
#: ``--tc-estimator``: minibatch stratified or weighted sampling (Chen et al. 2018).
TC_ESTIMATORS = ("mss", "mws")
#: Likelihoods whose targets must lie in [0, 1].
UNIT_INTERVAL_LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
#: ``--beta-error``: how the constrained schedule measures the rate's distance from the target.
BETA_ERRORS = ("log_ratio", "nats")
#: The ``--beta-schedule`` choices: the kinds of :mod:`fastvae.schedules.kinds`.
BETA_SCHEDULES = BETA_SCHEDULE_KINDS
#: The likelihoods with a scale (``--log-scale``, ``--learn-scale``).
SCALED_LIKELIHOODS = tuple(name for name, kind in KINDS.items() if kind in SCALED_KINDS)

#: Steps per epoch of the endless ``shapes`` stream (when ``steps_per_epoch`` is not given).
SHAPES_STEPS_PER_EPOCH = 100
#: The held-out part of a finite dataset when ``val_fraction`` is not given.
DEFAULT_VAL_FRACTION = 0.05
#: The held-out images of ``shapes`` (left out of its training stream) when ``val_fraction`` is not given.
SHAPES_VAL_SAMPLES = 1024
#: The quick start: without ``steps``/``epochs`` a run trains this many steps or for
#: ``DEFAULT_TIME_LIMIT`` seconds, whichever comes first.
DEFAULT_STEPS = 1200
DEFAULT_TIME_LIMIT = 120.0

#: The datasets ``--data`` names (anything else is a file): fastvae.data.DATASET_NAMES, written here
#: because fastvae.data needs numpy and ``fastvae train --help`` does not (tests/test_train.py checks
#: that the two agree).
NAMED_DATASETS = ("shapes", "digits")

# Config entries that may change when a run is resumed; every other entry must match the checkpoint.
RESUMABLE_KEYS = frozenset({
    "steps", "epochs", "time_limit", "device", "compile", "checkpoint_every", "log_every", "threads", "plots",
    "keep_checkpoints", "keep_best", "tensorboard",
})

#: The value an entry takes when a stored config (a checkpoint's) does not have it: what the version
#: that wrote the checkpoint did before the entry existed, so an old run resumes and trains on as it
#: did.  (A new run takes the dataclass defaults.)
LEGACY_VALUES = {
    "beta_error": "nats", "beta_max_step": None, "constrained_warmup": False, "lr_schedule": "constant",
    "lr_min": 0.0, "lr_decay_every": None, "lr_gamma": 0.5, "grad_clip": None, "ema_decay": None,
    "val_fraction": 0.0, "data_layout": "channels-first", "keep_checkpoints": 1, "keep_best": False,
    "tensorboard": None, "objective": "beta-vae", "iwae_k": 5, "tc_alpha": 1.0, "tc_gamma": 1.0,
    "tc_estimator": "mss", "free_bits": None, "free_bits_mode": "dim",
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (the command-line options of ``fastvae train``).

    ``batch_size`` is the global batch: with ``N`` processes each takes ``batch_size / N`` samples.
    ``steps`` and ``epochs`` are exclusive; with neither, the run takes :data:`DEFAULT_STEPS` steps or
    :data:`DEFAULT_TIME_LIMIT` seconds, whichever comes first.
    """

    data: str = "shapes"
    data_layout: str = "auto"              # 4-D arrays: auto-detect channels-last (N, H, W, C)
    val_fraction: Optional[float] = None   # held out; None: 5% of a finite dataset, SHAPES_VAL_SAMPLES of shapes
    model: str = "auto"                    # auto: glimpse on shapes, conv for 32x32/64x64 images, else mlp
    latent_dim: int = 10
    hidden: tuple = (512, 256)             # mlp widths
    likelihood: str = "bernoulli"
    log_scale: float = 0.0                 # gaussian/laplace decoder scale (log), unless learn_scale
    learn_scale: bool = False
    beta: float = 4.0                      # beta (or gamma with a capacity; initial beta if constrained)
    beta_schedule: Optional[str] = None    # None: 'constrained' with target_rate, else 'warmup'
    warmup_steps: int = 300                # warmup (and constrained): steps from beta_start to beta
    beta_start: float = 0.0
    cycle_steps: int = 1000                # cyclical
    cycle_ratio: float = 0.5
    n_cycles: Optional[int] = None
    target_rate: Optional[float] = None    # constrained: target KL in nats
    beta_lr: float = 0.03                  # constrained: dual-ascent step on log(beta) per unit of error
    beta_alpha: float = 0.9                # constrained: moving average of the constraint
    beta_error: str = "log_ratio"          # constrained: the error, log(rate / target) or rate - target (nats)
    beta_max_step: Optional[float] = 0.03  # constrained: bound of the change of log(beta) per step
    constrained_warmup: bool = True        # constrained: beta warms up over warmup_steps before the ascent
    capacity: Optional[float] = None       # C in beta*|rate - C| (nats), ramped from 0
    capacity_steps: int = 0
    objective: str = "beta-vae"            # beta-vae, tcvae or iwae
    iwae_k: int = 5                        # iwae: importance samples per input (--k; 1 is the ELBO)
    tc_alpha: float = 1.0                  # tcvae: weight of the index-code mutual information (--alpha)
    tc_gamma: float = 1.0                  # tcvae: weight of the dimension-wise KL (--gamma); beta weighs the TC
    tc_estimator: str = "mss"              # tcvae: minibatch stratified (mss) or weighted (mws) sampling
    free_bits: Optional[float] = None      # beta-vae: nats per dimension ('dim') or per sample ('sample')
    free_bits_mode: str = "dim"
    batch_size: int = 32
    lr: float = 1.5e-3
    lr_warmup: int = 100                   # steps of linear learning-rate warm-up from 0
    lr_schedule: str = "cosine"            # after the warm-up: constant, cosine (to lr_min) or step
    lr_min: Optional[float] = None         # cosine: the learning rate at the last step (None: lr / 15)
    lr_decay_every: Optional[int] = None   # step: multiply the rate by lr_gamma every this many steps
    lr_gamma: float = 0.5
    grad_clip: Optional[float] = None      # clip the gradient's global norm to this
    ema_decay: Optional[float] = None      # keep an exponential moving average of the weights
    steps: Optional[int] = None
    epochs: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    time_limit: Optional[float] = None     # seconds of training per session; 0: none; stops after a checkpoint
    seed: int = 0
    device: str = "auto"
    amp: str = "none"
    compile: bool = False
    loss_backend: str = "fastvae"
    checkpoint_every: int = 200
    keep_checkpoints: int = 1              # > 1: the last ones also kept as checkpoint-<step>.pt
    keep_best: bool = True                 # best.pt: the checkpoint of the best held-out loss
    log_every: int = 10
    threads: Optional[int] = None
    plots: bool = True
    tensorboard: Optional[bool] = None     # None: when tensorboard is installed

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, stored: bool = False) -> "TrainConfig":
        """The config of a dict (:meth:`to_dict`'s).  ``stored``: the dict comes from a checkpoint,
        so an entry it lacks takes its :data:`LEGACY_VALUES` value (what the version that wrote it
        did) rather than today's default."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise TrainError(f"unknown config entries {unknown}")
        d = dict(d)
        if stored:
            for key, value in LEGACY_VALUES.items():
                d.setdefault(key, value)
        if "hidden" in d and d["hidden"] is not None:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


def schedule_kind(c: TrainConfig) -> str:
    """The beta schedule the run uses (``--beta-schedule``, or the default for its options)."""
    return default_kind(c.beta_schedule, c.target_rate)


#: Config entries whose option is not ``--`` + the name with dashes.
_OPTION_NAMES = {"iwae_k": "--k", "tc_alpha": "--alpha", "tc_gamma": "--gamma"}


def final_lr(c: TrainConfig) -> float:
    """The learning rate the cosine schedule ends at: ``lr_min``, or ``lr / 15`` when it is not given."""
    return c.lr / 15.0 if c.lr_min is None else c.lr_min


def _option(name: str) -> str:
    return _OPTION_NAMES.get(name) or "--" + name.replace("_", "-")


def _check_ranges(c: TrainConfig) -> None:
    for name in ("latent_dim", "batch_size", "lr", "steps", "epochs", "steps_per_epoch", "checkpoint_every",
                 "log_every", "threads", "cycle_steps", "n_cycles", "beta_lr", "beta_max_step", "lr_decay_every",
                 "lr_gamma", "grad_clip", "keep_checkpoints", "iwae_k"):
        value = getattr(c, name)
        if value is not None and not value > 0:
            raise TrainError(f"{_option(name)} must be > 0, got {value}")
    for name in ("beta", "beta_start", "warmup_steps", "lr_warmup", "capacity", "capacity_steps", "target_rate",
                 "time_limit", "lr_min", "tc_alpha", "tc_gamma", "free_bits"):
        value = getattr(c, name)
        if value is not None and not value >= 0:
            raise TrainError(f"{_option(name)} must be >= 0, got {value}")
    for name in ("lr", "beta", "log_scale", "beta_start", "capacity", "target_rate", "beta_lr", "beta_max_step",
                 "lr_min", "lr_gamma", "grad_clip", "time_limit", "ema_decay", "val_fraction", "tc_alpha", "tc_gamma",
                 "free_bits"):
        value = getattr(c, name)
        if value is not None and not math.isfinite(value):
            raise TrainError(f"{_option(name)} must be finite, got {value}")
    if c.ema_decay is not None and not 0 < c.ema_decay < 1:
        raise TrainError(f"--ema-decay must be in (0, 1), got {c.ema_decay}")
    if c.val_fraction is not None and not 0 <= c.val_fraction < 1:
        raise TrainError(f"--val-fraction must be in [0, 1), got {c.val_fraction}")
    if c.lr_gamma is not None and c.lr_gamma > 1:
        raise TrainError(f"--lr-gamma must be in (0, 1], got {c.lr_gamma}")


def _check_intervals(c: TrainConfig) -> None:
    if not c.hidden or any(int(w) < 1 for w in c.hidden):
        raise TrainError(f"--hidden must be positive layer widths, got {list(c.hidden)}")
    if not 0 < c.cycle_ratio <= 1:
        raise TrainError(f"--cycle-ratio must be in (0, 1], got {c.cycle_ratio}")
    if not 0 <= c.beta_alpha < 1:
        raise TrainError(f"--beta-alpha must be in [0, 1), got {c.beta_alpha}")


def _check_choices(c: TrainConfig) -> None:
    for name, choices in (("model", MODELS), ("likelihood", LIKELIHOODS), ("loss_backend", LOSS_BACKENDS),
                          ("amp", AMP_MODES), ("lr_schedule", LR_SCHEDULES), ("data_layout", DATA_LAYOUTS),
                          ("beta_error", BETA_ERRORS), ("objective", OBJECTIVES), ("free_bits_mode", FREE_BITS_MODES),
                          ("tc_estimator", TC_ESTIMATORS)):
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
    if c.lr_schedule == "step" and c.lr_decay_every is None:
        raise TrainError("--lr-schedule step needs --lr-decay-every N (the steps between decays)")
    if c.lr_schedule == "cosine" and c.lr_min is not None and c.lr_min > c.lr:
        raise TrainError(f"--lr-min ({c.lr_min:g}) must not exceed --lr ({c.lr:g})")
    if c.likelihood not in SCALED_LIKELIHOODS and (c.learn_scale or c.log_scale != 0.0):
        raise TrainError(f"--log-scale/--learn-scale apply to the {' and '.join(SCALED_LIKELIHOODS)} likelihoods, "
                         f"not {c.likelihood!r}")
    _check_objective_kind(c, schedule)


def _check_objective_kind(c: TrainConfig, schedule: str) -> None:
    """The options each ``--objective`` takes (the option names in the messages)."""
    if c.objective != "beta-vae" and c.loss_backend != "fastvae":
        raise TrainError(f"--objective {c.objective} runs on fastvae's ops: leave out --loss-backend torch (the "
                         "eager baseline of the beta-VAE loss)")
    if c.free_bits is not None and c.objective != "beta-vae":
        raise TrainError(f"--free-bits applies to the beta-vae objective, not --objective {c.objective}")
    if c.free_bits is not None and c.loss_backend != "fastvae":
        raise TrainError("--free-bits runs on fastvae's ops: leave out --loss-backend torch")
    if c.free_bits is not None and c.capacity is not None:
        raise TrainError("--free-bits and --capacity are two ways to keep the rate up; give one")
    if c.objective != "beta-vae" and c.capacity is not None:
        raise TrainError(f"--capacity belongs to the beta-vae objective, not --objective {c.objective}")
    if c.objective != "beta-vae" and schedule == "constrained":
        raise TrainError(f"--target-rate (constrained beta) belongs to the beta-vae objective, not --objective "
                         f"{c.objective}")


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
        if key in RESUMABLE_KEYS or (key not in stored and key not in LEGACY_VALUES):
            continue
        a, b = stored.get(key, LEGACY_VALUES.get(key)), given[key]
        if key == "hidden":
            a, b = list(a), list(b)
        if key == "model" and b == "auto":
            continue
        if key == "data" and isinstance(a, str) and isinstance(b, str) and data_key(a) == data_key(b):
            continue
        if a != b:
            diffs.append((key, a, b))
    return diffs
