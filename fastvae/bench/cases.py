"""The benchmark cases of ``fastvae bench`` and their byte floors.

A case is (op, mode, provider, dtype, batch):

* op: ``reparameterize_kl``, ``bernoulli_nll``, ``gaussian_nll``, ``mse``, ``laplace_nll``,
  ``beta_vae_loss`` (bernoulli likelihood), and ``training_step``, the training pattern
  (``reparameterize_kl`` + ``beta_vae_loss(rate=...)``) at small batches, swept on its own and
  timed interleaved (:func:`training_cases`).
* mode: ``fwd`` (a training forward: the inputs require grad), ``bwd`` (only the backward of a
  fresh graph; its forward runs before, untimed), ``fwd+bwd`` (both).
* provider: ``fastvae``, ``eager`` or ``compile`` (:mod:`fastvae.bench.providers`).

A case's byte floor (:func:`min_bytes`) is every input read once and every output written once,
per pass; bench/NOTES.md has the formulas.  To add an op: its providers in ``providers.py``, its
row in :data:`SPECS` and its floor in :func:`min_bytes` here, its inputs in ``inputs.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch

from . import providers as P
from .providers import PROVIDERS

__all__ = ["OpSpec", "SPECS", "OPS", "MODES", "PROVIDERS", "DTYPES", "TRAINING_SIZES", "DEFAULT_MAX_ELEMENTS",
           "DEFAULT_MIN_BATCH", "DEFAULT_SAMPLE_SIZE", "DEFAULT_LATENT_DIM", "DEFAULT_OBJECTIVE_LATENT_DIM", "Case",
           "BenchConfig", "min_bytes", "batch_sweep", "iter_cases", "training_cases"]


@dataclass(frozen=True)
class OpSpec:
    name: str
    eager: Callable
    fastvae: Callable
    n_diff: int            # leading outputs that are differentiated (z and kl; else the loss)
    uses_latent_dim: bool  # a (B, latent_dim) latent beside the (B, sample_size) image


#: The ops, in report order: each one's providers, differentiated outputs and shape.
SPECS = {spec.name: spec for spec in (
    OpSpec("reparameterize_kl", P.eager_reparameterize_kl, P.fastvae_reparameterize_kl, 2, False),
    OpSpec("bernoulli_nll", P.eager_bernoulli_nll, P.fastvae_bernoulli_nll, 1, False),
    OpSpec("gaussian_nll", P.eager_gaussian_nll, P.fastvae_gaussian_nll, 1, False),
    OpSpec("mse", P.eager_mse, P.fastvae_mse, 1, False),
    OpSpec("laplace_nll", P.eager_laplace_nll, P.fastvae_laplace_nll, 1, False),
    OpSpec("continuous_bernoulli_nll", P.eager_continuous_bernoulli_nll, P.fastvae_continuous_bernoulli_nll, 1,
           False),
    OpSpec("free_bits_kl", P.eager_free_bits_kl, P.fastvae_free_bits_kl, 2, False),
    OpSpec("beta_vae_loss", P.eager_beta_vae_loss, P.fastvae_beta_vae_loss, 1, True),
    OpSpec("training_step", P.eager_training_step, P.fastvae_training_step, 2, True),
)}
OPS = tuple(SPECS)
#: The ops swept over a (B, latent_dim) latent rather than a (B, sample_size) image.
LATENT_OPS = ("reparameterize_kl", "free_bits_kl")
#: The small-batch training pattern (op ``training_step``): (batch, pixels, latent) of each case.
TRAINING_SIZES = ((16, 64, 8), (16, 4096, 10), (64, 4096, 10), (256, 4096, 10), (1024, 4096, 10), (4096, 4096, 32))
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPES = ("float32", "bfloat16")

DEFAULT_MAX_ELEMENTS = {"cuda": 2**27, "cpu": 2**27}  # the CPU sweep is long: --max-elements 2097152 for a quick one
DEFAULT_MIN_BATCH = 256
DEFAULT_SAMPLE_SIZE = 4096      # per-sample elements of a likelihood case (a 64x64 image)
DEFAULT_LATENT_DIM = 256        # latent width of the reparameterize_kl case
DEFAULT_OBJECTIVE_LATENT_DIM = 64  # latent width next to the image in the beta_vae_loss case


# --------------------------------------------------------------------------------------------------
# Byte floors: every input read once and every output written once, per pass.
# --------------------------------------------------------------------------------------------------
# Loss values are float32 scalars (reduction='mean'); z and gradients have the input's itemsize.
_LOSS_BYTES = 4


def _bytes_reparameterize_kl(mode: str, batch: int, dim: int, itemsize: int) -> int:
    n = batch * dim
    fwd = 3 * n * itemsize + _LOSS_BYTES            # read mu, logvar; write z (+ the kl scalar)
    bwd = 5 * n * itemsize + _LOSS_BYTES            # read grad_z, mu, logvar (+ grad_kl); write grad_mu, grad_logvar
    # grad_z is made from z downstream, so forward and backward are two passes: the floor is their
    # sum (8 elements), not the 6 of a single pass that would read mu and logvar once.
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _bytes_free_bits_kl(mode: str, batch: int, dim: int, itemsize: int) -> int:
    n = batch * dim
    # fwd: read mu, logvar; write the loss.  bwd: read mu, logvar (and the J column means, a rounding
    # error next to B J); write grad_mu, grad_logvar.  One pass cannot do both: which dimensions sit
    # under the floor is known only once every row has been read.
    fwd = 2 * n * itemsize + _LOSS_BYTES
    bwd = 4 * n * itemsize + _LOSS_BYTES
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _bytes_likelihood(mode: str, batch: int, size: int, itemsize: int) -> int:
    n = batch * size
    # fwd: read x, target; write the loss. bwd: read x, target (the upstream gradient is a scalar);
    # write grad_x. fwd+bwd: the upstream gradient of a scalar loss is known up front, so one pass
    # reads x and target and writes the loss and grad_x.
    return {
        "fwd": 2 * n * itemsize + _LOSS_BYTES,
        "bwd": 3 * n * itemsize + _LOSS_BYTES,
        "fwd+bwd": 3 * n * itemsize + 2 * _LOSS_BYTES,
    }[mode]


def _bytes_beta_vae_loss(mode: str, batch: int, size: int, latent: int, itemsize: int) -> int:
    image = batch * size
    code = batch * latent
    return {
        # read recon, target, mu, logvar; write loss, distortion, rate
        "fwd": (2 * image + 2 * code) * itemsize + 3 * _LOSS_BYTES,
        # read recon, target, mu, logvar (+ grad_loss); write grad_recon, grad_mu, grad_logvar
        "bwd": (3 * image + 4 * code) * itemsize + _LOSS_BYTES,
        "fwd+bwd": (3 * image + 4 * code) * itemsize + 4 * _LOSS_BYTES,
    }[mode]


def min_bytes(op: str, mode: str, batch: int, sample_size: int, latent_dim: int, dtype: str) -> int:
    """The byte floor of one call of ``op`` in ``mode`` (see bench/NOTES.md for the formulas).

    ``sample_size`` is the per-sample width of the tensor swept (the latent width for
    ``reparameterize_kl``, the image size for the others); ``latent_dim`` is the latent width of
    ``beta_vae_loss`` and is ignored elsewhere.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    itemsize = _itemsize(dtype)
    if op == "reparameterize_kl":
        return _bytes_reparameterize_kl(mode, batch, sample_size, itemsize)
    if op == "free_bits_kl":
        return _bytes_free_bits_kl(mode, batch, sample_size, itemsize)
    if op in ("bernoulli_nll", "gaussian_nll", "mse", "laplace_nll", "continuous_bernoulli_nll"):
        return _bytes_likelihood(mode, batch, sample_size, itemsize)
    if op == "beta_vae_loss":
        return _bytes_beta_vae_loss(mode, batch, sample_size, latent_dim, itemsize)
    if op == "training_step":  # the latent pass and the likelihood pass, each at its floor
        return (_bytes_reparameterize_kl(mode, batch, latent_dim, itemsize)
                + _bytes_likelihood(mode, batch, sample_size, itemsize))
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=getattr(torch, dtype)).element_size()



# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    op: str
    mode: str
    provider: str
    dtype: str
    batch: int
    sample_size: int
    latent_dim: int = 0   # only beta_vae_loss

    @property
    def numel(self) -> int:
        """Elements of the swept tensor (B x sample_size)."""
        return self.batch * self.sample_size

    @property
    def shape(self) -> dict:
        if self.op in LATENT_OPS:
            return {"mu": [self.batch, self.sample_size], "logvar": [self.batch, self.sample_size]}
        if self.op == "beta_vae_loss":
            return {"recon": [self.batch, self.sample_size], "target": [self.batch, self.sample_size],
                    "mu": [self.batch, self.latent_dim], "logvar": [self.batch, self.latent_dim]}
        return {"input": [self.batch, self.sample_size], "target": [self.batch, self.sample_size]}

    @property
    def min_bytes(self) -> int:
        return min_bytes(self.op, self.mode, self.batch, self.sample_size, self.latent_dim, self.dtype)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.mode}-{self.provider}-{self.dtype}-B{self.batch}x{self.sample_size}"


@dataclass
class BenchConfig:
    device: str = "cpu"
    ops: Sequence[str] = OPS
    modes: Sequence[str] = MODES
    providers: Sequence[str] = PROVIDERS
    dtypes: Sequence[str] = DTYPES
    max_elements: Optional[int] = None    # default: DEFAULT_MAX_ELEMENTS[device type]
    min_batch: int = DEFAULT_MIN_BATCH
    sample_size: int = DEFAULT_SAMPLE_SIZE
    latent_dim: int = DEFAULT_LATENT_DIM
    objective_latent_dim: int = DEFAULT_OBJECTIVE_LATENT_DIM
    rep_ms: Optional[float] = None        # time budget of the timed calls per case
    warmup_ms: Optional[float] = None
    rotate: bool = True                   # cycle input sets past the cache
    copy_bytes: Optional[int] = None      # size of the copy_ that measures the bandwidth
    threads: Optional[int] = None         # torch.set_num_threads for the run (CPU); None: leave it
    training_sizes: Sequence[tuple] = TRAINING_SIZES  # (batch, pixels, latent) of the training_step sweep
    seed: int = 0
    quiet: bool = False

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type

    @property
    def resolved_max_elements(self) -> int:
        return self.max_elements or DEFAULT_MAX_ELEMENTS.get(self.device_type, DEFAULT_MAX_ELEMENTS["cpu"])

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["max_elements"] = self.resolved_max_elements
        for key in ("ops", "modes", "providers", "dtypes"):
            d[key] = list(d[key])
        d["training_sizes"] = [list(t) for t in d["training_sizes"]]
        return d


def batch_sweep(sample_size: int, max_elements: int, min_batch: int = DEFAULT_MIN_BATCH) -> list[int]:
    """Batches ``min_batch * 4**k`` with ``batch * sample_size <= max_elements``, plus the largest
    batch that fits when the last power of 4 falls short of it (so the sweep ends at the cap)."""
    top = max_elements // sample_size
    if top < min_batch:
        return [max(1, top)]
    batches = []
    b = min_batch
    while b <= top:
        batches.append(b)
        b *= 4
    if top > batches[-1]:
        batches.append(top)
    return batches


def iter_cases(config: BenchConfig) -> Iterator[Case]:
    """Every case of ``config``, grouped so that one input allocation serves all providers and modes:
    op, then dtype, then batch, then provider, then mode."""
    for op in config.ops:
        if op not in SPECS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        if op == "training_step":
            continue  # its own sweep, interleaved: training_cases()
        if op in LATENT_OPS:
            size, latent = config.latent_dim, 0
        else:
            size = config.sample_size
            latent = config.objective_latent_dim if SPECS[op].uses_latent_dim else 0
        for dtype in config.dtypes:
            for batch in batch_sweep(size, config.resolved_max_elements, config.min_batch):
                for provider in config.providers:
                    for mode in config.modes:
                        yield Case(op, mode, provider, dtype, batch, size, latent)


def training_cases(config: BenchConfig) -> Iterator[list[Case]]:
    """The training-pattern sweep (op ``training_step``, fwd+bwd): per size and dtype, the providers'
    cases, which are timed together, interleaved."""
    if "training_step" not in config.ops:
        return
    for dtype in config.dtypes:
        for batch, pixels, latent in config.training_sizes:
            if batch * pixels <= config.resolved_max_elements:
                yield [Case("training_step", "fwd+bwd", p, dtype, batch, pixels, latent) for p in config.providers]
