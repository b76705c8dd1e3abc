"""The training loop behind ``fastvae train``.

One :class:`TrainConfig` describes a run; :func:`train` runs it (alone, or as one rank of a
``torchrun`` job) and writes the output folder:

* ``checkpoint.pt``: everything needed to continue exactly (model, optimizer, schedules, step,
  metrics, RNG states, the config), written atomically;
* ``metrics.json``: the config, library versions, per-epoch and per-interval loss, distortion,
  rate, beta and samples/s;
* PNGs (when matplotlib is installed): curves, reconstructions, latent traversals, prior samples.

Determinism.  Everything random in a step is a function of ``(seed, step)``: the global batch is
a slice of a stream of per-pass permutations of the dataset, and the reparameterization noise for
the global batch is drawn from a generator re-seeded from ``(seed, step)``.  So a resumed run
replays exactly what an uninterrupted one does, and ``N`` processes with ``--batch-size G`` see,
rank by rank, the slices of the batch and of the noise that one process with ``G`` sees: with
``reduction='mean'`` per rank and DDP's gradient averaging, the gradient is the single-process
mean over ``G`` up to float rounding.

Epochs.  For a finite dataset an epoch is ``len(data) // batch_size`` steps (about one pass; the
index stream itself never drops or repeats a sample within a pass).  The ``shapes`` stream is
endless, so an epoch there is a fixed number of steps (``steps_per_epoch``, default 100).

Defaults.  The quick start is a beta-VAE (ConvVAE, latent 10, Bernoulli, beta 4) on ``shapes``,
batch 64, Adam at 3e-3, for 3000 steps or 90 s, whichever comes first.  Both the learning rate
(over 100 steps) and beta (from 0 over 1000 steps) are warmed up.  Measured on shapes: at the full
rate from step 0, Adam's first updates left most ReLUs of the encoder dead in most seeds, and the
model then decodes the mean image whatever beta is; and with beta near 4 before the decoder has
learned to use z (around step 150) the posterior collapses to the prior.  With both warm-ups every
seed tried left that plateau by step ~175 and reconstructs position, scale and elongation of the
sprites within the 90 s on a 2-core CPU.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TrainConfig", "TrainError", "TrainResult", "train", "load_checkpoint", "build_model",
    "CHECKPOINT_NAME", "METRICS_NAME", "MODELS", "LOSS_BACKENDS", "AMP_MODES", "BETA_SCHEDULES",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
CHECKPOINT_FORMAT = "fastvae-train-checkpoint/1"
METRICS_FORMAT = "fastvae-train-metrics/1"

MODELS = ("auto", "conv", "mlp")
LOSS_BACKENDS = ("fastvae", "torch")
AMP_MODES = ("none", "bf16")
BETA_SCHEDULES = ("constant", "warmup", "cyclical", "constrained")
LIKELIHOODS = ("bernoulli", "gaussian", "mse", "laplace")

#: Steps per epoch of the endless ``shapes`` stream (when ``steps_per_epoch`` is not given).
SHAPES_STEPS_PER_EPOCH = 100
#: The quick start: without ``steps``/``epochs`` a run trains this many steps or for
#: ``DEFAULT_TIME_LIMIT`` seconds, whichever comes first.
DEFAULT_STEPS = 3000
DEFAULT_TIME_LIMIT = 90.0

# Config entries that may change when a run is resumed; every other entry must match the checkpoint.
RESUMABLE_KEYS = frozenset({
    "steps", "epochs", "time_limit", "device", "compile", "checkpoint_every", "log_every", "threads", "plots",
})


class TrainError(ValueError):
    """A run cannot start or continue: bad option, data, checkpoint or output folder.  The message
    says what was expected and what was found; ``fastvae train`` prints it and exits with status 2."""


# ----------------------------------------------------------------------------- configuration


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


def _check_config(c: TrainConfig) -> None:
    """Range checks the parser cannot express; messages use the option names."""
    def positive(name, value):
        if value is not None and not value > 0:
            raise TrainError(f"--{name.replace('_', '-')} must be > 0, got {value}")

    def nonneg(name, value):
        if value is not None and not value >= 0:
            raise TrainError(f"--{name.replace('_', '-')} must be >= 0, got {value}")

    for name in ("latent_dim", "batch_size", "lr", "steps", "epochs", "steps_per_epoch", "checkpoint_every",
                 "log_every", "threads", "time_limit", "cycle_steps", "n_cycles", "beta_lr"):
        positive(name, getattr(c, name))
    for name in ("beta", "beta_start", "warmup_steps", "lr_warmup", "capacity", "capacity_steps", "target_rate"):
        nonneg(name, getattr(c, name))
    for name in ("lr", "beta", "log_scale", "beta_start", "capacity", "target_rate", "beta_lr"):
        value = getattr(c, name)
        if value is not None and not math.isfinite(value):
            raise TrainError(f"--{name.replace('_', '-')} must be finite, got {value}")
    if c.steps is not None and c.epochs is not None:
        raise TrainError("give --steps or --epochs, not both")
    if c.model not in MODELS:
        raise TrainError(f"--model must be one of {', '.join(MODELS)}, got {c.model!r}")
    if c.likelihood not in LIKELIHOODS:
        raise TrainError(f"--likelihood must be one of {', '.join(LIKELIHOODS)}, got {c.likelihood!r}")
    if c.loss_backend not in LOSS_BACKENDS:
        raise TrainError(f"--loss-backend must be one of {', '.join(LOSS_BACKENDS)}, got {c.loss_backend!r}")
    if c.amp not in AMP_MODES:
        raise TrainError(f"--amp must be one of {', '.join(AMP_MODES)}, got {c.amp!r}")
    if c.beta_schedule is not None and c.beta_schedule not in BETA_SCHEDULES:
        raise TrainError(f"--beta-schedule must be one of {', '.join(BETA_SCHEDULES)}, got {c.beta_schedule!r}")
    if not c.hidden or any(int(w) < 1 for w in c.hidden):
        raise TrainError(f"--hidden must be positive layer widths, got {list(c.hidden)}")
    if not 0 < c.cycle_ratio <= 1:
        raise TrainError(f"--cycle-ratio must be in (0, 1], got {c.cycle_ratio}")
    if not 0 <= c.beta_alpha < 1:
        raise TrainError(f"--beta-alpha must be in [0, 1), got {c.beta_alpha}")
    schedule = _schedule_kind(c)
    if schedule == "constrained" and c.target_rate is None:
        raise TrainError("--beta-schedule constrained needs --target-rate (the KL to hold, in nats)")
    if schedule != "constrained" and c.target_rate is not None:
        raise TrainError(f"--target-rate drives the 'constrained' beta schedule, not {schedule!r}")
    if schedule == "constrained" and c.capacity is not None:
        raise TrainError("--capacity and --target-rate are two ways to control the rate; give one")
    if schedule == "constrained" and c.beta <= 0:
        raise TrainError("--beta is the initial beta of the constrained schedule and must be > 0")
    if c.likelihood in ("bernoulli", "mse") and (c.learn_scale or c.log_scale != 0.0):
        raise TrainError(f"--log-scale/--learn-scale apply to the gaussian and laplace likelihoods, "
                         f"not {c.likelihood!r}")


def _schedule_kind(c: TrainConfig) -> str:
    if c.beta_schedule is not None:
        return c.beta_schedule
    return "constrained" if c.target_rate is not None else "warmup"


# ----------------------------------------------------------------------------- models and objective


def _conv_compatible(sample_shape: tuple) -> bool:
    return len(sample_shape) == 3 and sample_shape[1] == sample_shape[2] and sample_shape[1] in (32, 64)


def build_model(config: TrainConfig, sample_shape: tuple) -> nn.Module:
    """The VAE of ``config`` for samples of ``sample_shape`` (``config.model`` must be resolved or 'auto')."""
    from .models import ConvVAE, MLPVAE

    kind = config.model
    if kind == "auto":
        kind = "conv" if _conv_compatible(sample_shape) else "mlp"
    if kind == "conv":
        if not _conv_compatible(sample_shape):
            raise TrainError(
                f"--model conv takes images of shape (C, 64, 64) or (C, 32, 32); the data has samples of shape "
                f"{tuple(sample_shape)}; use --model mlp"
            )
        return ConvVAE(channels=sample_shape[0], image_size=sample_shape[1], latent_dim=config.latent_dim,
                       likelihood=config.likelihood, learn_scale=config.learn_scale)
    in_features = math.prod(sample_shape)
    return MLPVAE(in_features, tuple(int(w) for w in config.hidden), config.latent_dim,
                  likelihood=config.likelihood, input_shape=sample_shape, learn_scale=config.learn_scale)


def _eager_terms(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, likelihood: str, log_scale) -> tuple:
    """Distortion and rate written the way they are usually written in PyTorch (the
    ``--loss-backend torch`` baseline): per-element losses, summed per sample, batch mean."""
    from fastvae.ops import eager

    distortion = eager.nll_rows(likelihood, recon, x, log_scale).mean()
    return distortion, eager.kl_rows(mu, logvar).mean()


class _Objective(nn.Module):
    """One training forward: encode, reparameterize, decode, the beta-VAE loss.

    This module is what DDP wraps and ``--compile`` compiles.  The noise is generated inside the
    fused op from a seed drawn from ``generator`` (re-seeded from ``(seed, step)`` every step, the
    same on every rank) with ``row_offset`` = the rank's first row in the global batch, so each
    rank draws exactly its rows of the noise one process would draw for the whole batch.  The
    eager ``--loss-backend torch`` draws the same noise (``fastvae.ops.standard_normal``), so the
    two backends run the same training and differ only in how the loss is computed.

    The fused path is the training pattern of the README: ``reparameterize_kl`` gives z and the
    per-sample rate in one pass, and ``beta_vae_loss(..., rate=rate)`` takes that rate.

    Returns ``(loss, loss_value, distortion, rate)``: ``loss`` is what is differentiated and
    ``loss_value`` the detached objective that is reported.  They differ only with a capacity across
    several processes, where ``beta * |rate - C|`` must use the global batch-mean rate (the per-rank
    ``|.|`` would not average to it): there the penalty's gradient, ``beta * sign(rate_global - C)``
    times the gradient of the rank's rate, is what is differentiated.
    """

    def __init__(self, model: nn.Module, *, likelihood: str, log_scale: float, backend: str, world_size: int):
        super().__init__()
        self.model = model
        self.likelihood = likelihood
        self.fixed_log_scale = float(log_scale)
        self.backend = backend
        self.world_size = world_size

    def forward(self, x: Tensor, generator: torch.Generator, row_offset: int, beta, capacity) -> tuple:
        import fastvae as fv
        from fastvae.ops import draw_seed, standard_normal

        model = self.model
        log_scale = model.log_scale if model.log_scale is not None else self.fixed_log_scale
        mu, logvar = model.encode(x)
        if self.backend == "fastvae":
            z, rate_rows = fv.reparameterize_kl(mu, logvar, generator=generator, reduction="none",
                                                row_offset=row_offset)
        else:
            seed = draw_seed(mu.device, generator)
            eps = standard_normal(seed, mu, row_offset).to(mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        recon = model.decode(z).reshape(x.shape)
        global_capacity = capacity is not None and self.world_size > 1
        if self.backend == "fastvae" and not global_capacity:
            loss, distortion, rate = fv.beta_vae_loss(recon, x, rate=rate_rows, beta=beta, likelihood=self.likelihood,
                                                      log_scale=log_scale, capacity=capacity)
            return loss, loss.detach(), distortion.detach(), rate.detach()
        if self.backend == "fastvae":
            _, distortion, rate = fv.beta_vae_loss(recon, x, rate=rate_rows, beta=0.0, likelihood=self.likelihood,
                                                   log_scale=log_scale)
        else:
            distortion, rate = _eager_terms(recon, x, mu, logvar, self.likelihood, log_scale)
        if capacity is None:
            loss = distortion + beta * rate
            return loss, loss.detach(), distortion.detach(), rate.detach()
        if not global_capacity:
            loss = distortion + beta * (rate - capacity).abs()
            return loss, loss.detach(), distortion.detach(), rate.detach()
        import torch.distributed as dist

        rate_global = rate.detach().clone()
        dist.all_reduce(rate_global)
        rate_global = rate_global / self.world_size
        sign = torch.sign(rate_global - capacity)
        loss = distortion + beta * sign * (rate - capacity)
        value = distortion.detach() + beta * (rate_global - capacity).abs()
        return loss, value, distortion.detach(), rate.detach()


# ----------------------------------------------------------------------------- data order and noise

_MASK64 = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): decorrelated streams per (seed, purpose, index)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


_DATA_STREAM, _NOISE_STREAM, _EVAL_STREAM = 0xDA7A, 0x5EED, 0xE7A1


class _IndexStream:
    """Sample indices: the concatenation of per-pass permutations of ``range(n)``; pass ``p`` is
    ``randperm(n)`` seeded from ``(seed, p)``.  Position ``step * batch + offset`` is a pure function
    of the seed, so resuming needs only the step, and each rank reads its own slice of the global
    batch."""

    def __init__(self, n: int, seed: int, device: torch.device):
        self.n, self.seed, self.device = n, seed, device
        self._perms: dict = {}

    def _perm(self, p: int) -> Tensor:
        perm = self._perms.get(p)
        if perm is None:
            generator = torch.Generator().manual_seed(_mix(self.seed, _DATA_STREAM, p))
            perm = torch.randperm(self.n, generator=generator).to(self.device)
            self._perms = {k: v for k, v in self._perms.items() if k >= p - 1}
            self._perms[p] = perm
        return perm

    def take(self, start: int, size: int) -> Tensor:
        parts, pos, end = [], start, start + size
        while pos < end:
            p, offset = divmod(pos, self.n)
            count = min(end - pos, self.n - offset)
            parts.append(self._perm(p)[offset:offset + count])
            pos += count
        return parts[0] if len(parts) == 1 else torch.cat(parts)


# ----------------------------------------------------------------------------- distributed


@dataclass
class _Dist:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise TrainError(f"environment variable {name} must be an integer, got {value!r}") from None


def _dist_from_env() -> _Dist:
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return _Dist()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    return _Dist(world_size=world_size, rank=rank, local_rank=local_rank)


def _init_dist(d: _Dist, device: torch.device) -> None:
    import torch.distributed as dist

    if not d.enabled or (dist.is_available() and dist.is_initialized()):
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, **kwargs)
    d.initialized_here = True


def _broadcast_object(d: _Dist, obj: Any) -> Any:
    if not d.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- files


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` via a temporary file in the same folder, fsync, then ``os.replace``: a reader
    (or a run killed at any moment) sees the old file or the new one, never a partial one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)


def _write_json(path: str, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, allow_nan=True) + "\n"), mode="w")


def load_checkpoint(path: str) -> dict:
    """Read a ``fastvae train`` checkpoint (a file, or a run folder holding ``checkpoint.pt``) on the CPU."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise TrainError(f"{path}: no checkpoint found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise TrainError(f"{path}: not a readable fastvae checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise TrainError(f"{path}: not a fastvae train checkpoint (expected format {CHECKPOINT_FORMAT!r}, "
                         f"found {found!r})")
    return ckpt


def versions() -> dict:
    import numpy

    import fastvae

    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional off Linux
        triton_version = None
    return {
        "fastvae": str(fastvae.__version__), "torch": str(torch.__version__),
        "triton": None if triton_version is None else str(triton_version), "numpy": str(numpy.__version__),
        "python": platform.python_version(), "platform": platform.platform(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


# ----------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    """What :func:`train` returns: the output folder, the step reached, why it stopped
    (``'finished'``, ``'time limit'``, ``'signal SIGTERM'``...), the trained model (unwrapped, on its
    device) and the metrics written to ``metrics.json``."""

    out: str
    step: int
    total_steps: int
    status: str
    model: nn.Module
    metrics: dict = field(repr=False)

    @property
    def exit_code(self) -> int:
        if self.status.startswith("signal "):
            signum = getattr(signal, self.status.split()[1], None)
            return 128 + int(signum) if signum is not None else 1
        return 0


def _resolve_device(text: str, d: _Dist) -> torch.device:
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise TrainError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"--device {text}: CUDA is not available here; use --device cpu")
        index = d.local_rank if d.enabled else (device.index or 0)
        if index >= torch.cuda.device_count():
            raise TrainError(f"--device {text}: device cuda:{index} does not exist "
                             f"({torch.cuda.device_count()} CUDA device(s))")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise TrainError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")
    return device


def _default_out() -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join("runs", stamp)
    out, k = base, 2
    while os.path.exists(out):
        out, k = f"{base}-{k}", k + 1
    return out


_OWN_OUTPUTS = (CHECKPOINT_NAME, METRICS_NAME)


def _compare_configs(stored: dict, given: dict, explicit: set) -> list:
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
        if key == "data" and isinstance(a, str) and isinstance(b, str):
            if _data_key(a) == _data_key(b):
                continue
        if a != b:
            diffs.append((key, a, b))
    return diffs


def _data_key(data: str) -> str:
    low = data.strip().lower()
    if low in ("shapes", "digits"):
        return low
    return os.path.abspath(data)


class _Timer:
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


class _StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step (and write a checkpoint); a second
    SIGINT interrupts at once."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False


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
    """Train a VAE as ``config`` says and write ``out`` (see the module docstring).

    Args:
        config: the run; on ``resume`` it is replaced by the checkpoint's config, with the
            :data:`RESUMABLE_KEYS` entries named in ``explicit`` taken from ``config``.
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
    d = _dist_from_env()
    try:
        return _Run(config, d, out=out, resume=resume, overwrite=overwrite, explicit=explicit or set(),
                    progress=progress, log=log, dataset=dataset).run()
    finally:
        if d.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


class _Run:
    def __init__(self, config, d: _Dist, *, out, resume, overwrite, explicit, progress, log, dataset=None):
        self.d = d
        self.user_dataset = dataset
        self.log = log if d.main else (lambda *_: None)
        self.overwrite = overwrite
        self.explicit = set(explicit)
        self.progress = progress
        self.config = config
        self.out = out
        self.resume = resume
        self.ckpt = None

    def _load_resume(self) -> None:
        """With ``resume``: read the checkpoint (rank 0, then sent to the others, so other nodes need
        no shared file system) and take its config, with the options that may change from ``config``."""
        config, out, d = self.config, self.out, self.d
        error = ckpt = path = None
        if d.main:
            try:
                path = self.resume if self.resume else out
                if not path:
                    raise TrainError("--resume needs a checkpoint: give --resume PATH or --out FOLDER")
                path = os.fspath(path)
                if os.path.isdir(path) and not os.path.exists(os.path.join(path, CHECKPOINT_NAME)):
                    raise TrainError(f"--resume: no {CHECKPOINT_NAME} in {path} (a run stopped before its first "
                                     "checkpoint starts again without --resume)")
                ckpt = load_checkpoint(path)
                if os.path.isdir(path):
                    path = os.path.join(path, CHECKPOINT_NAME)
            except TrainError as exc:
                error = str(exc)
        ckpt, path, error = _broadcast_object(d, (ckpt, path, error))
        if error:
            raise TrainError(error)
        self.ckpt, self.ckpt_path = ckpt, path
        if out is None:
            self.out = os.path.dirname(os.path.abspath(path))
        stored = dict(ckpt.get("config") or {})
        given = config.to_dict()
        diffs = _compare_configs(stored, given, self.explicit)
        if diffs:
            lines = "; ".join(f"{k}: checkpoint has {a!r}, got {b!r}" for k, a, b in diffs)
            raise TrainError(f"{path} was written by a different run ({lines}). Resume with the "
                             "checkpoint's settings, or start a new run in another --out folder")
        for key in RESUMABLE_KEYS & self.explicit:
            stored[key] = given[key]
        if "steps" in self.explicit and "epochs" not in self.explicit:
            stored["epochs"] = None
        if "epochs" in self.explicit and "steps" not in self.explicit:
            stored["steps"] = None
        if "time_limit" not in self.explicit:
            stored["time_limit"] = None
        try:
            self.config = TrainConfig.from_dict(stored)
        except TypeError as exc:
            raise TrainError(f"{path}: malformed config ({exc})") from None

    # -- set-up -----------------------------------------------------------------------------------------

    def _setup(self):
        c, d = self.config, self.d
        from . import schedules
        from .data import get_dataset

        if c.threads is not None:
            torch.set_num_threads(c.threads)
        self.device = _resolve_device(c.device, d)
        if d.enabled and c.batch_size % d.world_size:
            raise TrainError(f"--batch-size {c.batch_size} is the global batch and must be divisible by the "
                             f"{d.world_size} processes")
        self.local_batch = c.batch_size // d.world_size

        if self.user_dataset is not None:
            c.data = f"<{type(self.user_dataset).__name__}>"
            self.dataset = get_dataset(self.user_dataset, device=self.device, seed=c.seed)
        else:
            self.dataset = get_dataset(c.data, device=self.device, seed=c.seed)
        shape = tuple(self.dataset.sample_shape)
        lo, hi = self.dataset.value_range
        if c.likelihood == "bernoulli" and (lo < 0.0 or hi > 1.0):
            raise TrainError(f"{c.data}: --likelihood bernoulli needs values in [0, 1], the data has values in "
                             f"[{lo:g}, {hi:g}]; rescale it or use --likelihood gaussian")
        if self.user_dataset is None and _data_key(c.data) not in ("shapes", "digits"):
            c.data = os.path.abspath(c.data)  # so that --resume from another folder reads the same file
        n = len(self.dataset)
        self.is_stream = getattr(self.dataset, "name", None) == "shapes"
        self.data_info = {"name": getattr(self.dataset, "name", str(c.data)), "len": n, "sample_shape": list(shape),
                          "value_range": [float(lo), float(hi)]}
        if self.ckpt is not None:
            stored = self.ckpt.get("data_info", {})
            for key in ("len", "sample_shape"):
                if key in stored and stored[key] != self.data_info[key]:
                    raise TrainError(f"{self.ckpt_path}: the checkpoint was trained on data with {key} "
                                     f"{stored[key]}, {c.data} has {self.data_info[key]}")

        if c.steps_per_epoch is None:
            c.steps_per_epoch = SHAPES_STEPS_PER_EPOCH if self.is_stream else max(1, n // c.batch_size)
        if c.model == "auto":
            c.model = "conv" if _conv_compatible(shape) else "mlp"
        if c.steps is not None:
            self.total_steps = c.steps
        elif c.epochs is not None:
            self.total_steps = c.epochs * c.steps_per_epoch
        else:
            self.total_steps = DEFAULT_STEPS
            if self.ckpt is None and c.time_limit is None:
                c.time_limit = DEFAULT_TIME_LIMIT
        c.steps = self.total_steps if c.epochs is None else None

        torch.manual_seed(c.seed)
        self.model = build_model(c, shape).to(self.device)
        self.kind = _schedule_kind(c)
        try:
            if self.kind == "constrained":
                self.beta_schedule = schedules.make_beta_schedule(
                    "constrained", target_rate=c.target_rate, init_beta=c.beta, lr=c.beta_lr, alpha=c.beta_alpha,
                    device=self.device)
            elif self.kind == "warmup":
                self.beta_schedule = schedules.make_beta_schedule(
                    "warmup", beta=c.beta, warmup_steps=c.warmup_steps, start=c.beta_start)
            elif self.kind == "cyclical":
                self.beta_schedule = schedules.make_beta_schedule(
                    "cyclical", beta=c.beta, cycle_steps=c.cycle_steps, ratio=c.cycle_ratio, n_cycles=c.n_cycles)
            else:
                self.beta_schedule = schedules.make_beta_schedule("constant", beta=c.beta)
            self.capacity_schedule = schedules.make_capacity_schedule(
                c.capacity, c.capacity_steps if c.capacity is not None else None)
        except ValueError as exc:
            raise TrainError(f"beta schedule: {exc}") from None
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr)

        self.step = 0
        self.history: list = []
        self.epochs: list = []
        self.train_time = 0.0
        self.interval_sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.epoch_sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        self.interval_steps = 0
        self.interval_time = 0.0
        self.epoch_steps = 0
        self.epoch_time = 0.0
        if self.ckpt is not None:
            self._restore(self.ckpt)

        # The module that is differentiated: DDP-wrapped and/or compiled.
        objective = _Objective(self.model, likelihood=c.likelihood, log_scale=c.log_scale, backend=c.loss_backend,
                               world_size=d.world_size)
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            objective = DDP(objective, device_ids=ids)
        self.step_module = torch.compile(objective) if c.compile else objective
        self.stream = _IndexStream(n, c.seed, self.device)
        self.noise_generator = torch.Generator(device=self.device)
        self.beta_buffer = torch.zeros((), dtype=torch.float32, device=self.device)
        self.capacity_buffer = torch.zeros((), dtype=torch.float32, device=self.device)

    def _prepare_out(self):
        """Check (rank 0) and create the output folder; every rank learns the outcome."""
        d = self.d
        error = None
        out = self.out
        if d.main:
            try:
                if out is None:
                    out = _default_out()
                if os.path.exists(out) and not os.path.isdir(out):
                    raise TrainError(f"--out {out}: exists and is not a folder")
                # A new run, or a resumed one continuing in a folder other than its checkpoint's, starts
                # in a new or empty folder.
                elsewhere = self.ckpt is not None and not (
                    os.path.isdir(out) and os.path.samefile(out, os.path.dirname(os.path.abspath(self.ckpt_path))))
                fresh = self.ckpt is None or elsewhere
                if fresh and os.path.isdir(out) and os.listdir(out) and not self.overwrite:
                    raise TrainError(f"--out {out}: the folder exists and is not empty; pass --resume to continue "
                                     "the run in it, --overwrite to replace it, or choose another --out")
                os.makedirs(out, exist_ok=True)
                if fresh and self.overwrite:
                    for name in os.listdir(out):
                        if name in _OWN_OUTPUTS or (name.endswith(".png") and name.startswith(_PNG_PREFIXES)):
                            os.unlink(os.path.join(out, name))
            except TrainError as exc:
                error = str(exc)
            except OSError as exc:
                error = f"--out {out}: cannot create the output folder ({exc})"
        out, error = _broadcast_object(d, (out, error))
        if error:
            raise TrainError(error)
        self.out = out

    # -- checkpoints --------------------------------------------------------------------------------

    def _state(self) -> dict:
        c = self.config
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": c.to_dict(),
            "data_info": self.data_info,
            "step": self.step,
            "total_steps": self.total_steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "beta_schedule": self.beta_schedule.state_dict(),
            "capacity_schedule": None if self.capacity_schedule is None else self.capacity_schedule.state_dict(),
            "rng": rng,
            # The data order and the noise are functions of (seed, step) and need no state of their own.
            "metrics": {
                "history": self.history,
                "epochs": self.epochs,
                "train_time": self.train_time,
                "interval_sums": self._sums_to_save[0],
                "interval_steps": self.interval_steps,
                "interval_time": self.interval_time,
                "epoch_sums": self._sums_to_save[1],
                "epoch_steps": self.epoch_steps,
                "epoch_time": self.epoch_time,
            },
            "world_size": self.d.world_size,
            "versions": versions(),
        }

    def _restore(self, ckpt: dict) -> None:
        path = self.ckpt_path
        try:
            self.model.load_state_dict(ckpt["model"])
        except (RuntimeError, KeyError) as exc:
            raise TrainError(f"{path}: the checkpoint's model does not fit this model ({exc})") from None
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.beta_schedule.load_state_dict(ckpt["beta_schedule"])
            if self.capacity_schedule is not None:
                self.capacity_schedule.load_state_dict(ckpt["capacity_schedule"])
            metrics = ckpt["metrics"]
            self.step = int(ckpt["step"])
            self.history = list(metrics["history"])
            self.epochs = list(metrics["epochs"])
            self.train_time = float(metrics["train_time"])
            self.interval_sums = torch.tensor(metrics["interval_sums"], dtype=torch.float64, device=self.device)
            self.epoch_sums = torch.tensor(metrics["epoch_sums"], dtype=torch.float64, device=self.device)
            # Sums of global means: rank 0 carries them for all ranks (flushes divide by the world size).
            for sums in (self.interval_sums, self.epoch_sums):
                sums.mul_(self.d.world_size) if self.d.main else sums.zero_()
            self.interval_steps = int(metrics["interval_steps"])
            self.interval_time = float(metrics["interval_time"])
            self.epoch_steps = int(metrics["epoch_steps"])
            self.epoch_time = float(metrics["epoch_time"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise TrainError(f"{path}: malformed checkpoint ({type(exc).__name__}: {exc})") from None
        rng = ckpt.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda" and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def _save(self) -> None:
        if not self.d.main:
            return
        state = self._state()
        atomic_write(os.path.join(self.out, CHECKPOINT_NAME), lambda f: torch.save(state, f))
        self._write_metrics(status="running")

    def _metrics(self, status: str) -> dict:
        c = self.config
        return {
            "format": METRICS_FORMAT,
            "status": status,
            "step": self.step,
            "total_steps": self.total_steps,
            "steps_per_epoch": c.steps_per_epoch,
            "samples_seen": self.step * c.batch_size,
            "train_time_s": self.train_time,
            "config": c.to_dict(),
            "model": {"kind": c.model, "parameters": sum(p.numel() for p in self.model.parameters())},
            "data": self.data_info,
            "beta_schedule": self.kind,
            "device": str(self.device),
            "device_name": _device_name(self.device),
            "world_size": self.d.world_size,
            "versions": versions(),
            "epochs": self.epochs,
            "history": self.history,
        }

    def _write_metrics(self, status: str, extra: Optional[dict] = None) -> dict:
        metrics = self._metrics(status)
        if extra:
            metrics.update(extra)
        if self.d.main:
            _write_json(os.path.join(self.out, METRICS_NAME), metrics)
        return metrics

    # -- the loop -----------------------------------------------------------------------------------

    def _beta_value(self):
        value = self.beta_schedule.value
        if isinstance(value, Tensor):
            return value
        self.beta_buffer.fill_(value)
        return self.beta_buffer

    def _capacity_value(self):
        if self.capacity_schedule is None:
            return None
        self.capacity_buffer.fill_(self.capacity_schedule.value)
        return self.capacity_buffer

    def _train_step(self) -> None:
        c, d, step = self.config, self.d, self.step
        start = step * c.batch_size + d.rank * self.local_batch
        x = self.dataset.batch(self.stream.take(start, self.local_batch))
        self.noise_generator.manual_seed(_mix(c.seed, _NOISE_STREAM, step))
        beta, capacity = self._beta_value(), self._capacity_value()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.amp == "bf16"):
            loss, value, distortion, rate = self.step_module(x, self.noise_generator, d.rank * self.local_batch,
                                                             beta, capacity)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.lr_warmup:
            # A function of the step, so resuming needs no scheduler state.
            for group in self.optimizer.param_groups:
                group["lr"] = c.lr * min(1.0, (step + 1) / c.lr_warmup)
        self.optimizer.step()
        terms = torch.stack([value, distortion, rate]).to(torch.float64)
        self.interval_sums += terms
        self.epoch_sums += terms
        if self.kind == "constrained":
            rate = rate.float()
            if d.enabled:
                import torch.distributed as dist

                rate = rate.clone()
                dist.all_reduce(rate)
                rate = rate / d.world_size
            self.beta_schedule.step(rate=rate)
        else:
            self.beta_schedule.step()
        if self.capacity_schedule is not None:
            self.capacity_schedule.step()
        self.step += 1
        self.interval_steps += 1
        self.epoch_steps += 1

    def _reduce(self, values: Tensor) -> list:
        """Sum over ranks (one collective), then read on the host (one sync)."""
        if self.d.enabled:
            import torch.distributed as dist

            values = values.clone()
            dist.all_reduce(values)
        return values.tolist()

    def _beta_now(self) -> float:
        value = self.beta_schedule.value
        return float(value.item()) if isinstance(value, Tensor) else float(value)

    def _flush_interval(self, stop_vote: float) -> tuple:
        """Record one history entry; returns (entry, stop) where stop is the ranks' agreed vote."""
        c, d = self.config, self.d
        packed = torch.cat([self.interval_sums, torch.tensor([stop_vote], dtype=torch.float64, device=self.device)])
        sums = self._reduce(packed)
        steps = self.interval_steps
        now = self.timer.now()
        elapsed = max(self.interval_time + now - self.interval_clock, 1e-9)
        loss, distortion, rate = (s / (steps * d.world_size) for s in sums[:3])
        if not all(math.isfinite(v) for v in (loss, distortion, rate)):
            raise TrainError(f"training diverged: the loss is {loss} at step {self.step} (the last checkpoint is "
                             f"kept); try a lower --lr (now {c.lr:g}) or --amp none")
        entry = {"step": self.step, "epoch": self.step / c.steps_per_epoch, "loss": loss, "distortion": distortion,
                 "rate": rate, "beta": self._beta_now(), "samples_per_s": steps * c.batch_size / elapsed,
                 "time_s": self.train_time + now}
        if self.capacity_schedule is not None:
            entry["capacity"] = float(self.capacity_schedule.value)
        self.history.append(entry)
        self.interval_sums.zero_()
        self.interval_steps = 0
        self.interval_time = 0.0
        self.interval_clock = now
        return entry, sums[3] > 0

    def _flush_epoch(self) -> dict:
        c, d = self.config, self.d
        sums = self._reduce(self.epoch_sums)
        now = self.timer.now()
        elapsed = self.epoch_time + (now - self.epoch_clock)
        steps = self.epoch_steps
        loss, distortion, rate = (s / (steps * d.world_size) for s in sums)
        entry = {"epoch": len(self.epochs) + 1, "step": self.step, "steps": steps, "loss": loss,
                 "distortion": distortion, "rate": rate, "beta": self._beta_now(),
                 "samples_per_s": steps * c.batch_size / max(elapsed, 1e-9), "time_s": self.train_time + now}
        self.epochs.append(entry)
        self.epoch_sums.zero_()
        self.epoch_steps = 0
        self.epoch_time = 0.0
        self.epoch_clock = now
        return entry

    def _checkpoint(self) -> None:
        """Save at the current step.  Every rank gets here at the same step (a checkpoint step, the last
        one, or a stop agreed at a reading), so the partial metric sums can be summed over the ranks;
        rank 0 writes its replica of everything else."""
        self.timer.stop()
        # Saved as sums of global batch means (over ranks / world size), so any number of processes can resume.
        world = self.d.world_size
        self._sums_to_save = tuple([v / world for v in self._reduce(sums)] for sums in (self.interval_sums,
                                                                                        self.epoch_sums))
        now = self.timer.total
        self.epoch_time += now - self.epoch_clock
        self.epoch_clock = now
        self.interval_time += now - self.interval_clock
        self.interval_clock = now
        saved_time = self.train_time
        self.train_time = saved_time + now
        try:
            self._save()
        finally:
            self.train_time = saved_time
        self.timer.start()

    def run(self) -> TrainResult:
        # SIGINT/SIGTERM from here on stop the run after its next step, with a checkpoint.
        with _StopFlag() as self.stop:
            return self._run()

    def _run(self) -> TrainResult:
        d = self.d
        c = self.config
        # Validate everything that can be validated before anything is written.
        if self.resume is None:
            _check_config(c)
        if d.enabled:
            _init_dist(d, _resolve_device(c.device, d))
        if self.resume is not None:
            self._load_resume()
            _check_config(self.config)
        self._setup()
        self._prepare_out()
        c = self.config
        total = self.total_steps
        self.log(self._banner())
        if self.step >= total:
            self.log(f"the checkpoint is at step {self.step} of {total}: nothing to train "
                     "(pass --steps or --epochs to train longer)")
            status = "finished"
        else:
            status = self._loop()
        metrics = self._finish(status)
        return TrainResult(self.out, self.step, total, status, self.model, metrics)

    def _banner(self) -> str:
        c, d = self.config, self.d
        params = sum(p.numel() for p in self.model.parameters())
        budget = f"{self.total_steps} steps"
        if c.time_limit:
            budget += f" or {c.time_limit:g} s"
        if self.kind == "constrained":
            beta = f"constrained (target rate {c.target_rate:g} nats, initial beta {c.beta:g})"
        elif self.kind == "warmup":
            beta = f"{c.beta:g} (warm-up from {c.beta_start:g} over {c.warmup_steps} steps)"
        elif self.kind == "cyclical":
            beta = f"{c.beta:g} (cyclical, {c.cycle_steps}-step cycles)"
        else:
            beta = f"{c.beta:g}"
        lines = [
            f"fastvae train: {c.model} VAE ({params / 1e6:.2f}M parameters, latent {c.latent_dim}, "
            f"{c.likelihood}) on {self.data_info['name']} {tuple(self.data_info['sample_shape'])}",
            f"  beta {beta}" + (f", capacity {c.capacity:g} nats over {c.capacity_steps} steps"
                                if c.capacity is not None else ""),
            f"  batch {c.batch_size}" + (f" ({d.world_size} processes x {self.local_batch})" if d.enabled else "")
            + f", Adam lr {c.lr:g}" + (f" (warm-up {c.lr_warmup} steps)" if c.lr_warmup else "") + f", {budget}, {c.steps_per_epoch} steps/epoch, device {self.device}"
            + (", bf16 autocast" if c.amp == "bf16" else "") + (", compiled" if c.compile else "")
            + (", eager torch loss" if c.loss_backend == "torch" else ""),
            f"  output {self.out}" + (f" (resuming at step {self.step})" if self.ckpt is not None else ""),
        ]
        return "\n".join(lines)

    def _loop(self) -> str:
        c, d = self.config, self.d
        total = self.total_steps
        use_bar = self.progress if self.progress is not None else sys.stdout.isatty()
        bar = None
        if d.main and use_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=self.step, unit="step", dynamic_ncols=True, desc="train")
        self.timer = _Timer()
        self.timer.start()
        self.interval_clock = 0.0
        self.epoch_clock = 0.0
        last_print = -math.inf
        status = "finished"
        time_limit = c.time_limit
        check_signal_each_step = not d.enabled  # with DDP the ranks agree at log intervals
        stop = self.stop
        try:
            while self.step < total:
                self._train_step()
                if bar is not None:
                    bar.update(1)
                end = self.step >= total
                boundary = end or self.interval_steps >= c.log_every or self.step % c.log_every == 0
                local_stop = stop.signum is not None
                if check_signal_each_step and local_stop:
                    boundary = True
                stop_now = over_time = False
                if boundary:
                    over_time = time_limit is not None and self.timer.now() >= time_limit
                    vote = 1.0 if (d.main and over_time) or local_stop else 0.0
                    entry, stop_now = self._flush_interval(vote)
                    text = self._format(entry)
                    if bar is not None:
                        bar.set_postfix_str(self._format_short(entry), refresh=False)
                    elif d.main and (end or time.perf_counter() - last_print >= 5.0 or stop_now):
                        self.log(f"step {self.step}/{total} | {text}")
                        last_print = time.perf_counter()
                if self.step % c.steps_per_epoch == 0:
                    entry = self._flush_epoch()
                    if bar is None:
                        self.log(f"epoch {entry['epoch']} (step {self.step}) | {self._format(entry)}")
                if stop_now and not end:
                    if stop.signum is not None:
                        status = f"signal {signal.Signals(stop.signum).name}"
                    elif over_time:
                        status = "time limit"
                    else:  # another rank was signalled
                        status = "stopped"
                    self._checkpoint()
                    break
                if end or self.step % c.checkpoint_every == 0:
                    self._checkpoint()
        finally:
            self.timer.stop()
            if bar is not None:
                bar.close()
        self.train_time += self.timer.total
        if bar is not None and self.history:
            self.log(f"step {self.step}/{total} | {self._format(self.history[-1])}")
        if status == "time limit":
            self.log(f"stopped at step {self.step} of {self.total_steps}: time limit of {time_limit:g} s reached; "
                     f"continue with: fastvae train --resume {self.out}")
        elif status.startswith("signal"):
            self.log(f"stopped at step {self.step} by {status.split()[-1]}; checkpoint written; continue with: "
                     f"fastvae train --resume {self.out}")
        return status

    @staticmethod
    def _format_short(entry: dict) -> str:
        return (f"loss={entry['loss']:.4g} dist={entry['distortion']:.4g} rate={entry['rate']:.3g} "
                f"beta={entry['beta']:.3g} {entry['samples_per_s']:,.0f} samples/s")

    @staticmethod
    def _format(entry: dict) -> str:
        return (f"loss {entry['loss']:.2f} | distortion {entry['distortion']:.2f} | rate {entry['rate']:.2f} | "
                f"beta {entry['beta']:.3g} | {entry['samples_per_s']:,.0f} samples/s")

    def _finish(self, status: str) -> dict:
        extra = {}
        if self.d.main:
            extra["evaluation"] = self._evaluate()
        metrics = self._metrics(status)
        metrics.update(extra)
        if self.d.main and self.config.plots:
            from . import report

            paths = report.write_report(self.out, self.model, self.dataset, metrics, seed=self.config.seed,
                                        log=self.log)
            metrics["plots"] = [os.path.basename(p) for p in paths]
        if self.d.main:
            _write_json(os.path.join(self.out, METRICS_NAME), metrics)
            self.log(f"wrote {os.path.join(self.out, METRICS_NAME)}"
                     + (f" and {len(metrics.get('plots', []))} plots" if metrics.get("plots") else ""))
        return metrics

    @torch.no_grad()
    def _evaluate(self) -> dict:
        """Per-dimension KL of the posterior over a fixed evaluation batch (eval mode, z = mu)."""
        indices = eval_indices(len(self.dataset), 512, self.config.seed, self.device)
        x = self.dataset.batch(indices)
        was_training = self.model.training
        self.model.eval()
        try:
            mu, logvar = self.model.encode(x)
            kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1)
            per_dim = kl.mean(0).tolist()
        finally:
            self.model.train(was_training)
        return {"kl_per_dim": per_dim, "active_dims": sum(v > 0.1 for v in per_dim), "eval_samples": len(indices)}


_PNG_PREFIXES = ("curves", "reconstructions", "traversals", "samples")


def eval_indices(n: int, count: int, seed: int, device) -> Tensor:
    """A fixed set of ``count`` sample indices (all of them if the data has fewer) for plots and evaluation."""
    generator = torch.Generator().manual_seed(_mix(seed, _EVAL_STREAM))
    return torch.randperm(n, generator=generator)[:count].to(device)
