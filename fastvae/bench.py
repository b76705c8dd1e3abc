"""``fastvae bench``: time fastvae's ops against eager PyTorch and ``torch.compile``, and write a report.

The cases are defined here once; the pytest-benchmark suites under ``bench/`` import them.

A case is (op, mode, provider, dtype, batch):

* op: ``reparameterize_kl``, ``bernoulli_nll``, ``gaussian_nll``, ``mse``, ``laplace_nll``,
  ``beta_vae_loss`` (bernoulli likelihood).
* mode: ``fwd`` (a training forward: the inputs require grad), ``bwd`` (only the backward of a
  fresh graph; its forward runs before, untimed), ``fwd+bwd`` (both).
* provider: ``fastvae`` (``import fastvae``; FASTVAE_BACKEND picks Triton for CUDA tensors and the
  torch path for CPU tensors), ``eager`` (the loss written the way it is usually written in PyTorch,
  see ``eager_*`` below) and ``compile`` (``torch.compile`` of that same eager function, static
  shapes, compiled during warm-up so compile time is never timed).

Each case records its median time, its byte floor (:func:`min_bytes`), the achieved bandwidth
``min_bytes / time`` and that bandwidth as a fraction of the device-to-device copy bandwidth
measured in the same run (``2 * bytes / time`` of a large ``Tensor.copy_``), and its peak memory.

Timing: on CUDA, CUDA events around every call (median of many calls after a warm-up), cycling
through enough input sets to exceed twice the L2 cache so that inputs come from HBM. On CPU,
``time.perf_counter`` around every call (median), cycling through input sets that exceed twice the
last-level cache where its size can be read.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during one call minus
``torch.cuda.memory_allocated`` just before it (so the inputs, and for ``bwd`` the forward's saved
state, are left out; what the call keeps alive, such as saved tensors in ``fwd``, is in). On CPU the
same difference is computed from the allocation events of ``torch.profiler`` (``profile_memory=True``);
if that is unavailable the field is ``None``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "OPS", "MODES", "PROVIDERS", "DTYPES", "Case", "BenchConfig", "Prepared", "iter_cases", "batch_sweep",
    "min_bytes", "make_input_sets", "prepare", "time_calls", "peak_memory", "copy_bandwidth",
    "dynamo_limits", "run_benchmarks", "write_json", "load_json", "merge_reports", "plot",
    "summary_markdown", "update_readme", "add_arguments", "run", "main",
]

SCHEMA = "fastvae-bench/1"
OPS = ("reparameterize_kl", "bernoulli_nll", "gaussian_nll", "mse", "laplace_nll", "beta_vae_loss", "training_step")
#: The small-batch training pattern (op ``training_step``): (batch, pixels, latent) of each case.
TRAINING_SIZES = ((16, 64, 8), (16, 4096, 10), (64, 4096, 10), (256, 4096, 10), (1024, 4096, 10), (4096, 4096, 32))
MODES = ("fwd", "bwd", "fwd+bwd")
PROVIDERS = ("fastvae", "eager", "compile")
DTYPES = ("float32", "bfloat16")

DEFAULT_MAX_ELEMENTS = {"cuda": 2**27, "cpu": 2**27}  # the CPU sweep is long: --max-elements 2097152 for a quick one
DEFAULT_MIN_BATCH = 256
DEFAULT_SAMPLE_SIZE = 4096      # per-sample elements of a likelihood case (a 64x64 image)
DEFAULT_LATENT_DIM = 256        # latent width of the reparameterize_kl case
DEFAULT_OBJECTIVE_LATENT_DIM = 64  # latent width next to the image in the beta_vae_loss case
BETA = 4.0
README_BEGIN = "<!-- fastvae-bench:{slug}:begin -->"
README_END = "<!-- fastvae-bench:{slug}:end -->"


# --------------------------------------------------------------------------------------------------
# Eager baselines: the VAE objective as it is commonly written in PyTorch today.
# --------------------------------------------------------------------------------------------------

def eager_reparameterize_kl(mu, logvar):
    std = torch.exp(0.5 * logvar)
    eps = torch.randn_like(std)
    z = mu + eps * std
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
    return z, kl


def eager_bernoulli_nll(logits, target):
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1).mean()


def eager_gaussian_nll(mean, target, log_scale=0.0):
    var = math.exp(2.0 * log_scale)
    nll = 0.5 * (target - mean).pow(2) / var + log_scale + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(1).mean()


def eager_mse(recon, target):
    return F.mse_loss(recon, target, reduction="none").flatten(1).sum(1).mean()


def eager_laplace_nll(loc, target, log_scale=0.0):
    b = math.exp(log_scale)
    nll = torch.abs(target - loc) / b + math.log(2 * b)
    return nll.flatten(1).sum(1).mean()


def eager_beta_vae_loss(recon, target, mu, logvar, beta=BETA):
    distortion = eager_bernoulli_nll(recon, target)
    rate = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1).mean()
    return distortion + beta * rate, distortion, rate


# fastvae providers, resolved lazily so that `fastvae.cli` can import this module cheaply.

def _fv():
    import fastvae
    return fastvae


def fastvae_reparameterize_kl(mu, logvar):
    return _fv().reparameterize_kl(mu, logvar)


def fastvae_bernoulli_nll(logits, target):
    return _fv().bernoulli_nll(logits, target)


def fastvae_gaussian_nll(mean, target):
    return _fv().gaussian_nll(mean, target)


def fastvae_mse(recon, target):
    return _fv().mse(recon, target)


def fastvae_laplace_nll(loc, target):
    return _fv().laplace_nll(loc, target)


def fastvae_beta_vae_loss(recon, target, mu, logvar, beta=BETA):
    return tuple(_fv().beta_vae_loss(recon, target, mu, logvar, beta=beta, likelihood="bernoulli"))


# The training pattern: z and the per-sample rate from the latent, the decoder (here a given upstream
# gradient for z, so that no decoder op is timed), the loss of both, backward into recon, mu and logvar.

def eager_training_step(mu, logvar, recon, target, beta=BETA):
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn_like(std) * std
    distortion = F.binary_cross_entropy_with_logits(recon, target, reduction="none").flatten(1).sum(1).mean()
    rate = (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)).mean()
    return distortion + beta * rate, z


def fastvae_training_step(mu, logvar, recon, target, beta=BETA):
    fv = _fv()
    z, rate = fv.reparameterize_kl(mu, logvar, reduction="none")
    return fv.beta_vae_loss(recon, target, rate=rate, beta=beta).loss, z


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
    if op in ("bernoulli_nll", "gaussian_nll", "mse", "laplace_nll"):
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
class _OpSpec:
    name: str
    eager: Callable
    fastvae: Callable
    n_diff: int            # leading outputs that are differentiated (z and kl; else the loss)
    uses_latent_dim: bool  # beta_vae_loss: a (B, latent_dim) latent beside the (B, sample_size) image


_SPECS = {
    "reparameterize_kl": _OpSpec("reparameterize_kl", eager_reparameterize_kl, fastvae_reparameterize_kl, 2, False),
    "bernoulli_nll": _OpSpec("bernoulli_nll", eager_bernoulli_nll, fastvae_bernoulli_nll, 1, False),
    "gaussian_nll": _OpSpec("gaussian_nll", eager_gaussian_nll, fastvae_gaussian_nll, 1, False),
    "mse": _OpSpec("mse", eager_mse, fastvae_mse, 1, False),
    "laplace_nll": _OpSpec("laplace_nll", eager_laplace_nll, fastvae_laplace_nll, 1, False),
    "beta_vae_loss": _OpSpec("beta_vae_loss", eager_beta_vae_loss, fastvae_beta_vae_loss, 1, True),
    "training_step": _OpSpec("training_step", eager_training_step, fastvae_training_step, 2, True),
}


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
        if self.op == "reparameterize_kl":
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
        if op not in _SPECS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        if op == "training_step":
            continue  # its own sweep, interleaved: training_cases()
        if op == "reparameterize_kl":
            size, latent = config.latent_dim, 0
        else:
            size = config.sample_size
            latent = config.objective_latent_dim if _SPECS[op].uses_latent_dim else 0
        for dtype in config.dtypes:
            for batch in batch_sweep(size, config.resolved_max_elements, config.min_batch):
                for provider in config.providers:
                    for mode in config.modes:
                        yield Case(op, mode, provider, dtype, batch, size, latent)


# --------------------------------------------------------------------------------------------------
# Inputs and callables
# --------------------------------------------------------------------------------------------------

@dataclass
class _InputSet:
    args: tuple            # positional arguments of the op
    wrt: tuple             # the arguments that require grad
    upstream: tuple        # upstream gradients of the non-scalar differentiated outputs (z), else ()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.args, *self.upstream))


def make_inputs(case: Case, device, generator: Optional[torch.Generator] = None) -> _InputSet:
    dtype = getattr(torch, case.dtype)
    kw = dict(device=device, dtype=dtype, generator=generator)
    B, P = case.batch, case.sample_size

    def leaf(t):
        return t.requires_grad_(True)

    if case.op == "reparameterize_kl":
        mu = leaf(torch.randn(B, P, **kw))
        logvar = leaf(torch.randn(B, P, **kw).mul_(0.5))
        grad_z = torch.randn(B, P, **kw)
        return _InputSet((mu, logvar), (mu, logvar), (grad_z,))
    x = leaf(torch.randn(B, P, **kw))
    if case.op == "bernoulli_nll" or case.op == "beta_vae_loss":
        target = torch.rand(B, P, **kw)          # pixel intensities in [0, 1)
    else:
        target = torch.randn(B, P, **kw)
    if case.op == "beta_vae_loss":
        L = case.latent_dim
        mu = leaf(torch.randn(B, L, **kw))
        logvar = leaf(torch.randn(B, L, **kw).mul_(0.5))
        return _InputSet((x, target, mu, logvar), (x, mu, logvar), ())
    if case.op == "training_step":
        L = case.latent_dim
        mu = leaf(torch.randn(B, L, **kw))
        logvar = leaf(torch.randn(B, L, **kw).mul_(0.5))
        grad_z = torch.randn(B, L, **kw)   # what the decoder would send back
        return _InputSet((mu, logvar, x, target), (x, mu, logvar), (grad_z,))
    return _InputSet((x, target), (x,), ())


_COMPILED: dict = {}


def _compiled(op: str) -> Callable:
    # One compiled wrapper per op, so dynamo's cache serves every mode of a shape.
    fn = _COMPILED.get(op)
    if fn is None:
        fn = _COMPILED[op] = torch.compile(_SPECS[op].eager, dynamic=False)
    return fn


def provider_fn(op: str, provider: str) -> Callable:
    spec = _SPECS[op]
    if provider == "fastvae":
        return spec.fastvae
    if provider == "eager":
        return spec.eager
    if provider == "compile":
        return _compiled(op)
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class Prepared:
    """The callables of one case on each input set ``i``.

    ``fwd`` and ``fwd+bwd``: ``calls[i]()`` runs the case and ``setups`` is None. ``bwd``:
    ``setups[i]()`` runs the forward (never timed) and ``calls[i](graph)`` runs the backward of that
    fresh graph once, as a training step does (a retained graph backpropagated again can take a
    different path, e.g. fastvae recomputes gradient buffers it scaled in place).

    Building it runs one untimed forward, which compiles the compile provider and JIT-builds
    fastvae's kernels before any timing.
    """

    def __init__(self, case: Case, sets: list[_InputSet]):
        self.case = case
        self.sets = sets
        fn = provider_fn(case.op, case.provider)
        n_diff = _SPECS[case.op].n_diff
        self.calls: list[Callable] = []
        self.setups: Optional[list[Callable[[], tuple]]] = [] if case.mode == "bwd" else None
        if case.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {case.mode!r}")
        first = _as_tuple(fn(*sets[0].args))[:n_diff]
        # (dtype, device) of each scalar output; None for a tensor output (z), whose upstream gradient is given
        scalars = [(o.dtype, o.device) if o.dim() == 0 else None for o in first]
        del first
        for s in sets:
            upstream = iter(s.upstream)
            grads = tuple(torch.ones((), dtype=sc[0], device=sc[1]) if sc else next(upstream) for sc in scalars)
            if case.mode == "fwd":
                self.calls.append(lambda s=s: fn(*s.args))
            elif case.mode == "bwd":
                self.setups.append(lambda s=s: _as_tuple(fn(*s.args))[:n_diff])
                self.calls.append(lambda outs, s=s, grads=grads: torch.autograd.grad(outs, s.wrt, grads))
            else:
                self.calls.append(lambda s=s, grads=grads:
                                  torch.autograd.grad(_as_tuple(fn(*s.args))[:n_diff], s.wrt, grads))

    def run(self, i: int = 0):
        """Run the case once on input set ``i`` (its setup included)."""
        if self.setups is None:
            return self.calls[i]()
        return self.calls[i](self.setups[i]())

    def release(self) -> None:
        self.calls.clear()
        if self.setups:
            self.setups.clear()


def cache_bytes(device) -> Optional[int]:
    """The L2 size of a CUDA device, or the last-level cache of the CPU (None when unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)
    best = None
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in root.glob("index*"):
            text = (index / "size").read_text().strip()
            m = re.fullmatch(r"(\d+)([KMG]?)", text)
            if m:
                size = int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]
                best = max(best or 0, size)
    except OSError:
        return None
    return best


def n_input_sets(set_bytes: int, device, rotate: bool = True, max_sets: int = 64) -> int:
    """Enough input sets that together they exceed twice the cache (1 when one set already does)."""
    if not rotate or set_bytes <= 0:
        return 1
    cache = cache_bytes(device)
    if not cache:
        return 1
    return max(1, min(max_sets, math.ceil(2 * cache / set_bytes)))


def prepare(case: Case, device, rotate: bool = True, seed: int = 0,
            sets: Optional[list[_InputSet]] = None) -> Prepared:
    """Allocate the input sets of ``case`` (unless given) and build its callables."""
    if sets is None:
        sets = make_input_sets(case, device, rotate=rotate, seed=seed)
    return Prepared(case, sets)


def make_input_sets(case: Case, device, rotate: bool = True, seed: int = 0) -> list[_InputSet]:
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    first = make_inputs(case, device, gen)
    sets = [first]
    for _ in range(n_input_sets(first.nbytes, device, rotate) - 1):
        sets.append(make_inputs(case, device, gen))
    return sets


# --------------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------------

def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(calls: Sequence[Callable], device, rep_ms: Optional[float] = None,
               warmup_ms: Optional[float] = None, setups: Optional[Sequence[Callable]] = None) -> dict:
    """Median time of one call, cycling through ``calls`` (one per input set).

    With ``setups`` (``bwd``: the forward that builds a graph), call ``i`` is timed as
    ``calls[i](state)`` where ``state = setups[i]()`` was made, untimed, right after the previous
    call on set ``i``; so the other sets' traffic passes between a set's setup and its timed call,
    and the setup does not leave that set's inputs in cache.
    CUDA: a CUDA event pair around every call; ``warmup_ms`` of calls first (default 25 ms), then
    about ``rep_ms`` of timed calls (default 100 ms; at least 20 and at most 2000 calls).
    CPU: ``time.perf_counter`` around every call; ``warmup_ms`` of calls first (default 0: one
    call), then calls until at least 5 were timed and ``rep_ms`` (default 200 ms) passed, at most
    200 calls.
    Returns ``{"median_s", "min_s", "q25_s", "q75_s", "reps"}``.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = len(calls)
    states = [None] * n if setups is None else [setup() for setup in setups]

    def timed(i, before=None, after=None):
        j = i % n
        if before is not None:
            before()
        if setups is None:
            calls[j]()
        else:
            state, states[j] = states[j], None
            calls[j](state)
            del state
        if after is not None:
            after()
        if setups is not None:
            states[j] = setups[j]()

    times = []
    if cuda:
        rep_ms = 100.0 if rep_ms is None else rep_ms
        warmup_ms = 25.0 if warmup_ms is None else warmup_ms

        def event_timed(count):
            """Milliseconds of ``count`` calls, each between its own pair of CUDA events."""
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(count)]
            _sync(device)
            for i, (a, b) in enumerate(events):
                timed(i, a.record, b.record)
            _sync(device)
            return [a.elapsed_time(b) for a, b in events]

        for i in range(n):
            timed(i)
        est_ms = max(statistics.median(event_timed(max(3, n))), 1e-3)
        for i in range(max(n, math.ceil(warmup_ms / est_ms))):
            timed(i)
        reps = int(min(2000, max(20, math.ceil(rep_ms / est_ms))))
        times = [ms * 1e-3 for ms in event_timed(reps)]
    else:
        rep_s = (200.0 if rep_ms is None else rep_ms) * 1e-3
        warmup_s = (0.0 if warmup_ms is None else warmup_ms) * 1e-3
        t0 = time.perf_counter()
        i = 0
        while i < 1 or time.perf_counter() - t0 < warmup_s:
            timed(i)
            i += 1
        stamp = [0.0]

        def start():
            stamp[0] = time.perf_counter()

        def stop():
            times.append(time.perf_counter() - stamp[0])

        t0 = time.perf_counter()
        i = 0
        while len(times) < 200 and (len(times) < 5 or time.perf_counter() - t0 < rep_s):
            timed(i, start, stop)
            i += 1
    states.clear()
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "q25_s": q[0], "q75_s": q[2],
            "reps": len(times)}


def time_interleaved(prepared: Sequence["Prepared"], device, rep_ms: Optional[float] = None,
                     warmup_ms: Optional[float] = None) -> list[dict]:
    """Median time of one call of each prepared case, the cases timed in turn call by call (one call of
    each per round), so a drift of the machine (clock, load, cache) falls on all of them alike.

    Each call is timed whole: on CUDA a pair of CUDA events around it, so that host-bound gaps count
    (``median_s``), and ``perf_counter`` around it for the host time (``host_median_s``); on CPU the
    two are the same clock.  Rounds: ``warmup_ms`` (default 25 ms CUDA, 100 ms CPU) untimed, then
    until ``rep_ms`` (default 200 ms CUDA, 1000 ms CPU) passed and at least 20 rounds, at most 2000.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    rep_s = (200.0 if cuda else 1000.0) * 1e-3 if rep_ms is None else rep_ms * 1e-3
    warm_s = (25.0 if cuda else 100.0) * 1e-3 if warmup_ms is None else warmup_ms * 1e-3
    k = len(prepared)
    host = [[] for _ in range(k)]
    events = [[] for _ in range(k)]

    def one_round(i, timed):
        for j, p in enumerate(prepared):
            call = p.calls[i % len(p.calls)]
            if timed and cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            if timed:
                host[j].append(t1 - t0)
                if cuda:
                    b.record()
                    events[j].append((a, b))

    t0, i = time.perf_counter(), 0
    while i < 2 or time.perf_counter() - t0 < warm_s:
        one_round(i, False)
        i += 1
    _sync(device)
    t0, rounds = time.perf_counter(), 0
    while rounds < 2000 and (rounds < 20 or time.perf_counter() - t0 < rep_s):
        one_round(i, True)
        i += 1
        rounds += 1
    _sync(device)
    out = []
    for j in range(k):
        times = [a.elapsed_time(b) * 1e-3 for a, b in events[j]] if cuda else host[j]
        q = statistics.quantiles(times, n=4)
        out.append({"median_s": statistics.median(times), "min_s": min(times), "q25_s": q[0], "q75_s": q[2],
                    "reps": len(times), "host_median_s": statistics.median(host[j])})
    return out


PEAK_MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated during one call minus torch.cuda.memory_allocated before it",
    "cpu": "torch.profiler (profile_memory=True) allocation events of one call: peak of the running sum of "
           "allocations minus frees; null where the profiler gave none",
}


@contextlib.contextmanager
def _native_stderr_silenced():
    """Point file descriptor 2 at /dev/null for the block: some torch builds log a line from C++ on
    every profiler start and stop, which would bury the report."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(call: Callable, device) -> tuple[Optional[int], str]:
    """Peak bytes allocated during one ``call()`` above what was allocated just before it, and how
    it was measured (or why it could not be)."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = call()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return int(peak), PEAK_MEMORY_METHOD["cuda"]
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _native_stderr_silenced():  # the profiler's start/stop chatter, not the call's output
            prof.start()
        try:
            out = call()
            del out
        finally:
            with _native_stderr_silenced():
                prof.stop()
        events = []

        def walk(node):
            if node.tag == _EventType.Allocation:
                events.append((node.start_time_ns, node.extra_fields.alloc_size))
            for child in node.children:
                walk(child)

        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root)
        current = peak = 0
        for _, size in sorted(events):
            current += size
            peak = max(peak, current)
        return int(peak), PEAK_MEMORY_METHOD["cpu"]
    except Exception as err:  # private profiler API; report nothing rather than a guess
        return None, f"unavailable on CPU ({type(err).__name__}: {err})"


def copy_bandwidth(device, nbytes: Optional[int] = None, rep_ms: Optional[float] = None) -> dict:
    """Device-to-device copy bandwidth, ``2 * nbytes / median time`` of ``dst.copy_(src)``, timed
    like the cases. Default size: 1 GiB on CUDA, 8x the last-level cache (at least 64 MiB) on CPU."""
    device = torch.device(device)
    if nbytes is None:
        if device.type == "cuda":
            nbytes = 2**30
        else:
            nbytes = max(64 * 2**20, 8 * (cache_bytes(device) or 0))
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    timing = time_calls([lambda: dst.copy_(src)], device, rep_ms=rep_ms)
    del src, dst
    return {"bytes": int(nbytes), "median_s": timing["median_s"], "reps": timing["reps"],
            "gbps": 2 * nbytes / timing["median_s"] / 1e9}


# --------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_info(device) -> dict:
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        info = {"type": "cuda", "name": name, "slug": f"cuda-{_slug(name)}",
                "memory_bytes": int(props.total_memory), "sm_count": props.multi_processor_count,
                "capability": f"{props.major}.{props.minor}", "cache_bytes": cache_bytes(device)}
    else:
        name = cpu_name()
        info = {"type": device.type, "name": name, "slug": f"{device.type}-{_slug(name)}",
                "threads": torch.get_num_threads(), "cache_bytes": cache_bytes(device)}
    return info


def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__,
         "cuda": torch.version.cuda, "triton": None, "fastvae": None}
    try:
        import triton
        v["triton"] = triton.__version__
    except Exception:
        pass
    try:
        v["fastvae"] = getattr(_fv(), "__version__", None)
    except Exception:
        pass
    return v


def fastvae_backend(device) -> str:
    """What FASTVAE_BACKEND resolves to for tensors on ``device`` (as documented in the spec)."""
    setting = os.environ.get("FASTVAE_BACKEND", "auto").strip().lower() or "auto"
    if setting != "auto":
        return setting
    return "triton" if torch.device(device).type == "cuda" else "torch"


# --------------------------------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------------------------------

def dynamo_limits() -> dict:
    # Static shapes recompile per (dtype, batch); the default limit (8 per function) would make
    # dynamo fall back to eager silently, so raise it for the run and fail loudly if it is hit.
    cfg = torch._dynamo.config
    patch = {}
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            patch[name] = max(getattr(cfg, name), 4096)
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        patch["fail_on_recompile_limit_hit"] = True
    return patch


def _log(config: BenchConfig, msg: str) -> None:
    if not config.quiet:
        print(msg, flush=True)


def _fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _record(case: Case) -> dict:
    """A case's JSON record with its measurements still empty."""
    return {
        "op": case.op, "mode": case.mode, "provider": case.provider, "dtype": case.dtype,
        "batch": case.batch, "sample_size": case.sample_size, "latent_dim": case.latent_dim or None,
        "shape": case.shape, "numel": case.numel, "min_bytes": case.min_bytes, "input_sets": None,
        "median_ms": None, "min_ms": None, "q25_ms": None, "q75_ms": None, "reps": None,
        "gbps": None, "frac_copy_bw": None, "peak_mem_bytes": None, "error": None,
        "host_ms": None, "timer": "per-case",
    }


def measure(case: Case, prepared: Prepared, device, config: BenchConfig, copy_gbps: Optional[float]) -> dict:
    """Time one prepared case and return its JSON record."""
    record = _record(case)
    record["input_sets"] = len(prepared.sets)
    timing = time_calls(prepared.calls, device, rep_ms=config.rep_ms, warmup_ms=config.warmup_ms,
                        setups=prepared.setups)
    t = timing["median_s"]
    record.update(median_ms=t * 1e3, min_ms=timing["min_s"] * 1e3, q25_ms=timing["q25_s"] * 1e3,
                  q75_ms=timing["q75_s"] * 1e3, reps=timing["reps"], gbps=case.min_bytes / t / 1e9)
    if copy_gbps:
        record["frac_copy_bw"] = record["gbps"] / copy_gbps
    if prepared.setups is None:
        record["peak_mem_bytes"], _ = peak_memory(prepared.calls[0], device)
    else:
        graph = prepared.setups[0]()
        record["peak_mem_bytes"], _ = peak_memory(lambda: prepared.calls[0](graph), device)
        del graph
    return record


def training_cases(config: BenchConfig) -> Iterator[list[Case]]:
    """The training-pattern sweep (op ``training_step``, fwd+bwd): per size and dtype, the providers'
    cases, which are timed together, interleaved."""
    if "training_step" not in config.ops:
        return
    for dtype in config.dtypes:
        for batch, pixels, latent in config.training_sizes:
            if batch * pixels <= config.resolved_max_elements:
                yield [Case("training_step", "fwd+bwd", p, dtype, batch, pixels, latent) for p in config.providers]


def _measure_training(group: list[Case], device, config: BenchConfig, copy_gbps: Optional[float]) -> list[dict]:
    records = [_record(c) for c in group]
    prepared = []
    try:
        sets = make_input_sets(group[0], device, rotate=config.rotate, seed=config.seed)
        prepared = [prepare(c, device, sets=sets) for c in group]
        timings = time_interleaved(prepared, device, rep_ms=config.rep_ms, warmup_ms=config.warmup_ms)
        for case, p, record, timing in zip(group, prepared, records, timings):
            t = timing["median_s"]
            record.update(input_sets=len(sets), median_ms=t * 1e3, min_ms=timing["min_s"] * 1e3,
                          q25_ms=timing["q25_s"] * 1e3, q75_ms=timing["q75_s"] * 1e3, reps=timing["reps"],
                          host_ms=timing["host_median_s"] * 1e3, gbps=case.min_bytes / t / 1e9,
                          timer="interleaved")
            if copy_gbps:
                record["frac_copy_bw"] = record["gbps"] / copy_gbps
            record["peak_mem_bytes"], _ = peak_memory(p.calls[0], device)
    except Exception as err:   # record the failure (e.g. out of memory) and go on
        for record in records:
            record["error"] = f"{type(err).__name__}: {str(err)[:400]}"
    finally:
        for p in prepared:
            p.release()
    return records


def run_benchmarks(config: BenchConfig, on_progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Run every case of ``config`` and return the report (see :func:`write_json`).

    ``on_progress(report)``, when given, is called with the report so far after each group of cases
    (one op, dtype and size), so that a run cut short keeps what it measured."""
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run_benchmarks(config, device, started, on_progress)
    finally:
        torch.set_num_threads(threads_before)


def _run_benchmarks(config: BenchConfig, device: torch.device, started: float,
                    on_progress: Optional[Callable[[dict], None]]) -> dict:
    info = device_info(device)
    _log(config, f"fastvae bench on {info['name']} ({device}), max elements {config.resolved_max_elements}")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        _log(config, "warning: TRITON_INTERPRET is set; the fastvae provider may run the interpreter")
    copy = copy_bandwidth(device, nbytes=config.copy_bytes, rep_ms=config.rep_ms)
    _log(config, f"copy bandwidth: {copy['gbps']:.1f} GB/s ({_fmt_bytes(copy['bytes'])} copy_)")
    mem_method = PEAK_MEMORY_METHOD["cuda" if device.type == "cuda" else "cpu"]
    report = {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": info,
        "versions": versions(),
        "fastvae_backend": fastvae_backend(device),
        "config": config.as_dict(),
        "timer": "cuda-events" if device.type == "cuda" else "perf_counter",
        "copy_bandwidth": copy,
        "peak_memory_method": mem_method,
        "notes": [
            "median_ms: median over timed calls after warm-up; compile time is never timed.",
            "gbps = min_bytes / median time; frac_copy_bw = gbps / copy_bandwidth.gbps.",
            "fwd runs with inputs that require grad (a training forward); bwd times only the backward "
            "of a fresh graph (its forward untimed); fwd+bwd runs both.",
            "peak_mem_bytes: peak allocated during one call minus allocated before it (inputs and, for "
            "bwd, the forward's saved state excluded).",
        ],
        "cases": [],
    }
    limits = dynamo_limits()
    group_key = None
    sets = None
    with torch._dynamo.config.patch(**limits):
        for case in iter_cases(config):
            key = (case.op, case.dtype, case.batch)
            if key != group_key:
                if on_progress is not None and report["cases"]:
                    on_progress(report)
                sets = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                group_key = key
                try:
                    sets = make_input_sets(case, device, rotate=config.rotate, seed=config.seed)
                except Exception as err:  # e.g. out of memory for the largest size
                    sets = err
            prepared = None
            try:
                if isinstance(sets, Exception):
                    raise sets
                prepared = prepare(case, device, sets=sets)
                record = measure(case, prepared, device, config, copy["gbps"])
            except Exception as err:   # record the failure (e.g. out of memory) and go on
                record = _record(case)
                record["error"] = f"{type(err).__name__}: {str(err)[:400]}"
            finally:
                if prepared is not None:
                    prepared.release()
                del prepared
                if device.type == "cuda" and record["error"]:
                    torch.cuda.empty_cache()
            report["cases"].append(record)
            if record["error"]:
                _log(config, f"{case.id:<58} ERROR {record['error'][:120]}")
            else:
                frac = record["frac_copy_bw"]
                _log(config, f"{case.id:<58} {record['median_ms']:9.4f} ms {record['gbps']:8.1f} GB/s "
                             f"{'' if frac is None else f'{frac:6.1%}'} of copy  peak "
                             f"{_fmt_bytes(record['peak_mem_bytes'])}")
        for group in training_cases(config):
            if on_progress is not None and report["cases"]:
                on_progress(report)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            for case, record in zip(group, _measure_training(group, device, config, copy["gbps"])):
                report["cases"].append(record)
                if record["error"]:
                    _log(config, f"{case.id:<58} ERROR {record['error'][:120]}")
                else:
                    _log(config, f"{case.id:<58} {record['median_ms']:9.4f} ms (host {record['host_ms']:.4f} ms, "
                                 f"interleaved)")
    sets = None
    report["wall_s"] = time.perf_counter() - started
    _log(config, f"done: {len(report['cases'])} cases in {report['wall_s']:.0f} s")
    return report


def default_json_path(report_or_slug, results_dir: str | Path = "bench/results") -> Path:
    slug = report_or_slug["device"]["slug"] if isinstance(report_or_slug, dict) else str(report_or_slug)
    return Path(results_dir) / f"{slug}.json"


def write_json(report: dict, path: str | Path) -> Path:
    """Write ``report`` to ``path`` atomically (a reader, or a run killed mid-write, never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def _case_key(c: dict) -> tuple:
    return (c["op"], c["mode"], c["provider"], c["dtype"], c["batch"], c["sample_size"], c.get("latent_dim"))


def merge_reports(old: dict, new: dict) -> dict:
    """``new`` plus the cases of ``old`` that ``new`` did not run (same device required).

    The kept cases' ``frac_copy_bw`` is recomputed against ``new``'s copy bandwidth, and every run's
    date, config and copy bandwidth is listed under ``runs``.
    """
    if old["device"].get("slug") != new["device"].get("slug"):
        raise ValueError(f"cannot merge reports of different devices: {old['device'].get('name')!r} "
                         f"and {new['device'].get('name')!r}")
    done = {_case_key(c) for c in new["cases"]}
    copy_gbps = new["copy_bandwidth"]["gbps"]
    kept = []
    for c in old["cases"]:
        if _case_key(c) in done:
            continue
        c = dict(c)
        if c.get("gbps") is not None and copy_gbps:
            c["frac_copy_bw"] = c["gbps"] / copy_gbps
        kept.append(c)
    order = {key: i for i, key in enumerate(
        (op, dtype) for op in OPS for dtype in DTYPES + ("float16", "float64"))}
    merged = dict(new)
    merged["cases"] = sorted(kept + new["cases"], key=lambda c: (
        order.get((c["op"], c["dtype"]), len(order)), c["batch"], PROVIDERS.index(c["provider"]),
        MODES.index(c["mode"])))
    merged["runs"] = old.get("runs", [_run_entry(old)]) + [_run_entry(new)]
    return merged


def _run_entry(report: dict) -> dict:
    return {"date": report.get("date"), "config": report.get("config"),
            "copy_bandwidth": report.get("copy_bandwidth"), "wall_s": report.get("wall_s")}


def load_json(path: str | Path) -> dict:
    report = json.loads(Path(path).read_text())
    if report.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a fastvae bench report (schema {report.get('schema')!r}, "
                         f"expected {SCHEMA!r})")
    return report


# --------------------------------------------------------------------------------------------------
# Plots and the README table
# --------------------------------------------------------------------------------------------------

_COLORS = {"fastvae": "tab:red", "eager": "tab:blue", "compile": "tab:green"}
_STYLES = {"float32": "-", "bfloat16": "--", "float16": ":", "float64": "-."}


def plot(json_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """One PNG per op, ``<json stem>-<op>.png`` in ``out_dir`` (default: the JSON's folder).

    Each figure has a row of median time and a row of achieved bandwidth (min bytes / time), both on
    log scales, against the swept tensor's element count, one column per mode; colour = provider,
    line style = dtype. The copy bandwidth of the run is the dotted line in the bandwidth row.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path = Path(json_path)
    report = load_json(json_path)
    out_dir = Path(out_dir) if out_dir is not None else json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [c for c in report["cases"] if c.get("median_ms") is not None]
    copy_gbps = report.get("copy_bandwidth", {}).get("gbps")
    ops = [op for op in OPS if any(c["op"] == op for c in report["cases"])]
    modes = [m for m in MODES if any(c["mode"] == m for c in report["cases"])]
    paths = []
    for op in ops:
        fig, axes = plt.subplots(2, len(modes), figsize=(5.2 * len(modes), 7.5), squeeze=False)
        for j, mode in enumerate(modes):
            ax_t, ax_bw = axes[0, j], axes[1, j]
            for provider in PROVIDERS:
                for dtype in _STYLES:
                    pts = sorted((c["numel"], c["median_ms"], c["gbps"]) for c in cases
                                 if c["op"] == op and c["mode"] == mode and c["provider"] == provider
                                 and c["dtype"] == dtype)
                    if not pts:
                        continue
                    x = [p[0] for p in pts]
                    style = dict(color=_COLORS.get(provider), linestyle=_STYLES[dtype], marker="o",
                                 markersize=3, label=f"{provider} {dtype}")
                    ax_t.plot(x, [p[1] for p in pts], **style)
                    ax_bw.plot(x, [p[2] for p in pts], **style)
            if copy_gbps:
                ax_bw.axhline(copy_gbps, color="gray", linestyle=":", label=f"copy {copy_gbps:.0f} GB/s")
            for ax in (ax_t, ax_bw):
                ax.set_xscale("log", base=2)
                ax.grid(True, which="both", alpha=0.3)
            ax_t.set_yscale("log")
            ax_t.set_title(f"{op} {mode}")
            ax_t.set_ylabel("median time (ms)")
            ax_bw.set_ylabel("GB/s (min bytes / time)")
            ax_bw.set_xlabel("elements (batch x per-sample)")
            ax_bw.set_yscale("log")   # providers can differ by orders of magnitude (e.g. CPU RNG)
        handles, labels = axes[1, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8)
        dev = report["device"]
        fig.suptitle(f"fastvae bench: {op} on {dev['name']} ({dev['type']}), torch {report['versions']['torch']}, "
                     f"{report['date'][:10]}", fontsize=11)
        fig.tight_layout(rect=(0, 0.05, 1, 0.96))
        path = out_dir / f"{json_path.stem}-{op}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _largest(cases: list[dict], op: str, dtype: str) -> Optional[int]:
    sizes = [c["numel"] for c in cases if c["op"] == op and c["dtype"] == dtype]
    return max(sizes) if sizes else None


def _find(cases, **key) -> Optional[dict]:
    for c in cases:
        if all(c.get(k) == v for k, v in key.items()):
            return c
    return None


def _ms(c: Optional[dict]) -> str:
    return "n/a" if c is None or c.get("median_ms") is None else f"{c['median_ms']:.3f}"


def _speedup(fast: Optional[dict], other: Optional[dict]) -> str:
    if not fast or not other or fast.get("median_ms") is None or other.get("median_ms") is None:
        return "n/a"
    return f"{other['median_ms'] / fast['median_ms']:.2f}x"


def summary_markdown(report: dict, plot_links: Iterable[str] = ()) -> str:
    """The README summary of one report (markdown, without the markers); ``plot_links`` are the
    plots' paths as the README should link them."""
    dev, ver, cases = report["device"], report["versions"], report["cases"]
    copy = report.get("copy_bandwidth") or {}
    dtypes = [d for d in DTYPES if any(c["dtype"] == d for c in cases)] + sorted(
        {c["dtype"] for c in cases} - set(DTYPES))
    lines = [
        f"### {dev['name']} ({dev['type']})",
        "",
        f"{report['date'][:10]}; torch {ver.get('torch')}, triton {ver.get('triton') or 'none'}, "
        f"CUDA {ver.get('cuda') or 'none'}; fastvae backend `{report.get('fastvae_backend')}`; "
        + (f"{dev['threads']} CPU thread(s); " if dev.get("threads") else "") +
        f"timer {report.get('timer')}; copy bandwidth {copy.get('gbps', float('nan')):.1f} GB/s "
        f"({_fmt_bytes(copy.get('bytes'))} `copy_`).",
        "",
    ]
    op = "beta_vae_loss"
    if any(c["op"] == op for c in cases):
        lines += [f"**{op} fwd+bwd at the largest size** (bernoulli likelihood, beta={BETA:g})", "",
                  "| dtype | recon, latent | fastvae ms | eager ms | compile ms | speedup vs eager | speedup vs compile |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for dtype in dtypes:
            numel = _largest(cases, op, dtype)
            if numel is None:
                continue
            key = dict(op=op, mode="fwd+bwd", dtype=dtype, numel=numel)
            fast, eager, comp = (_find(cases, provider=p, **key) for p in PROVIDERS)
            ref = fast or eager or comp
            if ref is None:
                continue
            shape = (f"{ref['batch']}x{ref['sample_size']}, {ref['batch']}x{ref['latent_dim']}")
            lines.append(f"| {dtype} | {shape} | {_ms(fast)} | {_ms(eager)} | {_ms(comp)} | "
                         f"{_speedup(fast, eager)} | {_speedup(fast, comp)} |")
        lines.append("")
    op = "training_step"
    if any(c["op"] == op for c in cases):
        cuda = dev["type"] == "cuda"
        lines += ["**The training pattern, fwd+bwd** (`reparameterize_kl` + `beta_vae_loss(rate=...)`, bernoulli, "
                  f"beta={BETA:g}; the providers timed in turn, call by call; "
                  + ("CUDA events around each whole call, host time beside it" if cuda else "host time") + ")", "",
                  "| dtype | batch x pixels, latent | fastvae ms | eager ms | compile ms | vs eager | vs compile |"
                  + (" fastvae host ms |" if cuda else ""),
                  "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
        sizes = sorted({(c["batch"], c["sample_size"], c["latent_dim"]) for c in cases if c["op"] == op})
        for dtype in dtypes:
            for batch, pixels, latent in sizes:
                key = dict(op=op, dtype=dtype, batch=batch, sample_size=pixels, latent_dim=latent)
                fast, eager, comp = (_find(cases, provider=p, **key) for p in PROVIDERS)
                if fast is None and eager is None:
                    continue
                host = f" {fast['host_ms']:.3f} |" if cuda and fast and fast.get("host_ms") is not None else \
                    (" n/a |" if cuda else "")
                lines.append(f"| {dtype} | {batch}x{pixels}, {latent} | {_ms(fast)} | {_ms(eager)} | {_ms(comp)} | "
                             f"{_speedup(fast, eager)} | {_speedup(fast, comp)} |" + host)
        lines.append("")
    providers = [p for p in PROVIDERS if any(c["provider"] == p for c in cases)]
    header = "| op | mode | size | " + " | ".join(f"{p} {d}" for d in dtypes for p in providers) + " |"
    lines += ["**Achieved bandwidth at the largest size**: GB/s = min bytes / median time "
              "(fraction of copy bandwidth)", "", header,
              "|---|---|---|" + "---:|" * (len(dtypes) * len(providers))]
    for op in OPS:
        if op == "training_step":
            continue
        for mode in MODES:
            if not any(c["op"] == op and c["mode"] == mode for c in cases):
                continue
            cells, size = [], ""
            for dtype in dtypes:
                numel = _largest(cases, op, dtype)
                for p in providers:
                    c = _find(cases, op=op, mode=mode, dtype=dtype, provider=p, numel=numel)
                    if c is not None and not size:
                        size = f"{c['batch']}x{c['sample_size']}"
                    if c is None or c.get("gbps") is None:
                        cells.append("n/a" if c is None or not c.get("error") else "error")
                    else:
                        frac = c.get("frac_copy_bw")
                        cells.append(f"{c['gbps']:.1f}" + ("" if frac is None else f" ({frac:.0%})"))
            lines.append(f"| {op} | {mode} | {size} | " + " | ".join(cells) + " |")
    lines.append("")
    plot_links = list(plot_links)
    if plot_links:
        lines.append("Plots: " + ", ".join(f"[{_plot_label(link)}]({link})" for link in plot_links))
        lines.append("")
    return "\n".join(lines)


def _plot_label(link: str) -> str:
    stem = Path(link).stem
    return next((op for op in OPS if stem.endswith("-" + op)), stem)


def update_readme(readme_path: str | Path, report: dict, plots: Iterable[str | Path] = ()) -> Path:
    """Replace (or append) the block between this device's markers in ``readme_path``; ``plots``
    (PNG paths) are linked relative to the README."""
    readme_path = Path(readme_path)
    slug = report["device"]["slug"]
    begin, end = README_BEGIN.format(slug=slug), README_END.format(slug=slug)
    links = [Path(os.path.relpath(Path(p).resolve(), readme_path.resolve().parent)).as_posix() for p in plots]
    block = f"{begin}\n{summary_markdown(report, links)}\n{end}"
    text = readme_path.read_text() if readme_path.exists() else "# fastvae benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme_path.parent.mkdir(parents=True, exist_ok=True)
    readme_path.write_text(text)
    return readme_path


def report_outputs(json_path: str | Path, readme: str | Path | None, make_plots: bool = True,
                   quiet: bool = False) -> dict:
    """Plots and README table from a JSON report (what ``--plot-only`` does)."""
    report = load_json(json_path)
    if make_plots:
        pngs = plot(json_path)
    else:   # keep linking the plots already there
        json_path = Path(json_path)
        pngs = [p for p in (json_path.parent / f"{json_path.stem}-{op}.png" for op in OPS) if p.exists()]
    out = {"json": Path(json_path), "plots": pngs, "readme": None}
    if readme is not None:
        out["readme"] = update_readme(readme, report, pngs)
    if not quiet:
        for p in pngs if make_plots else ():
            print(f"wrote {p}")
        if out["readme"]:
            print(f"updated {out['readme']}")
    return out


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def _csv(choices: Sequence[str]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return items
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fastvae bench``."""
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (CUDA when available; default)")
    parser.add_argument("--ops", type=_csv(OPS), default=list(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    parser.add_argument("--modes", type=_csv(MODES), default=list(MODES), help="comma-separated subset of fwd,bwd,fwd+bwd")
    parser.add_argument("--providers", type=_csv(PROVIDERS), default=list(PROVIDERS),
                        help="comma-separated subset of fastvae,eager,compile")
    parser.add_argument("--dtypes", type=_csv(DTYPES + ("float16", "float64")), default=list(DTYPES),
                        help="comma-separated dtypes (default float32,bfloat16)")
    parser.add_argument("--max-elements", type=int, default=None,
                        help=f"largest swept tensor, in elements (default {DEFAULT_MAX_ELEMENTS['cuda']} on CUDA "
                             f"and CPU; on a small CPU the full sweep takes most of an hour, and 2097152 "
                             f"a few minutes)")
    parser.add_argument("--min-batch", type=int, default=DEFAULT_MIN_BATCH, help="smallest batch of the sweep (default 256)")
    parser.add_argument("--sample-size", type=int, default=DEFAULT_SAMPLE_SIZE,
                        help="per-sample elements of the likelihood and beta_vae_loss cases (default 4096)")
    parser.add_argument("--latent-dim", type=int, default=DEFAULT_LATENT_DIM,
                        help="latent width of the reparameterize_kl case (default 256)")
    parser.add_argument("--objective-latent-dim", type=int, default=DEFAULT_OBJECTIVE_LATENT_DIM,
                        help="latent width of the beta_vae_loss case (default 64)")
    parser.add_argument("--rep-ms", type=float, default=None,
                        help="timed calls per case, in milliseconds (default 100 on CUDA, 200 on CPU)")
    parser.add_argument("--warmup-ms", type=float, default=None, help="warm-up per case in milliseconds")
    parser.add_argument("--no-rotate", action="store_true", help="time one input set (inputs may stay in cache)")
    parser.add_argument("--copy-bytes", type=int, default=None,
                        help="size of the copy_ that measures the copy bandwidth (default 1 GiB on CUDA, "
                             "8x the last-level cache and at least 64 MiB on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (CPU intra-op threads; default: unchanged)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="JSON report path (default bench/results/<device slug>.json)")
    parser.add_argument("--readme", default=None,
                        help="markdown file whose summary block is (re)written (default bench/README.md "
                             "when it exists); 'none' to skip")
    parser.add_argument("--merge", action="store_true",
                        help="merge into an existing JSON report at the output path: its cases not re-run "
                             "here are kept (so a long sweep can be split over several runs)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--plot-only", metavar="JSON", default=None,
                        help="run nothing: write the plots and the README table from a JSON report")
    parser.add_argument("--quiet", action="store_true")
    return parser


def _resolve_device(text: str) -> str:
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


def run(args: argparse.Namespace) -> int:
    """Run ``fastvae bench`` with parsed ``args``; returns the exit status."""
    if args.readme is None:
        readme = "bench/README.md" if Path("bench/README.md").exists() else None
    else:
        readme = None if str(args.readme).lower() == "none" else args.readme
    if args.plot_only:
        report_outputs(args.plot_only, readme, make_plots=not args.no_plot, quiet=args.quiet)
        return 0
    config = BenchConfig(
        device=_resolve_device(args.device), ops=args.ops, modes=args.modes, providers=args.providers,
        dtypes=args.dtypes, max_elements=args.max_elements, min_batch=args.min_batch,
        sample_size=args.sample_size, latent_dim=args.latent_dim,
        objective_latent_dim=args.objective_latent_dim, rep_ms=args.rep_ms, warmup_ms=args.warmup_ms,
        rotate=not args.no_rotate, copy_bytes=args.copy_bytes, threads=args.threads, seed=args.seed, quiet=args.quiet)
    earlier: dict = {}  # with --merge: the report at the output path before this run, read once

    def save(report: dict, partial: bool) -> Path:
        path = Path(args.out or default_json_path(report))
        if args.merge and "report" not in earlier:
            earlier["report"] = load_json(path) if path.exists() else None
        if earlier.get("report") is not None:
            report = merge_reports(earlier["report"], report)
        report = dict(report, partial=True) if partial else {k: v for k, v in report.items() if k != "partial"}
        return write_json(report, path)

    # The JSON is rewritten after each group of cases: a long sweep that is interrupted keeps its
    # finished cases (marked "partial": true), and --merge on the next run carries on from them.
    report = run_benchmarks(config, on_progress=lambda partial: save(partial, True))
    path = save(report, False)
    if not args.quiet:
        print(f"wrote {path}")
    report_outputs(path, readme, make_plots=not args.no_plot, quiet=args.quiet)
    failed = sum(1 for c in report["cases"] if c["error"])
    if failed and not args.quiet:
        print(f"{failed} case(s) failed; see their 'error' field", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastvae bench",
        description="Time fastvae's ops against eager PyTorch and torch.compile (forward, backward, both; "
                    "float32 and bfloat16; a sweep of sizes) and write a JSON report, plots and a README table.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
