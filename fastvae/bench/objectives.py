"""The objectives eager PyTorch writes with a big intermediate, against fastvae's streaming ops: time and
peak memory of each, swept until the eager form no longer fits (``fastvae bench --suite objectives``).

* ``tc_decomposition`` forward + backward, against the eager (B, B, J) tensor of pairwise log densities
  written as the reference libraries write it (with the correct stratified-sampling weights), B from 256 up.
* ``iwae_log_likelihood``: the importance-sampled log p(x) of a batch with k samples (no gradient), against
  the eager way of the reference libraries: the data copied k times into (B, k, D), z (B, k, J), one decoder
  call on all of it and a log-sum-exp; fastvae streams k in chunks (:func:`fastvae.eval.log_likelihood`).
* ``iwae_loss`` forward + backward (the training objective), against the same eager form with gradients.

Both providers get the same inputs and the same decoder (one linear layer, so the likelihood and the
sampling, not a network, are what is timed).  Eager cases whose predicted peak exceeds ``memory_budget``
are recorded as skipped with the prediction, not run.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from .device import device_info
from .memory import peak_memory
from .timing import sync, time_calls

__all__ = ["ObjectiveConfig", "OBJECTIVE_OPS", "eager_tc_terms", "eager_iwae_log_likelihood", "run_objectives"]

OBJECTIVE_OPS = ("tc_decomposition", "iwae_log_likelihood", "iwae_loss")
SCHEMA = "fastvae-bench-objectives/1"


@dataclass
class ObjectiveConfig:
    device: str = "cpu"
    ops: Sequence[str] = OBJECTIVE_OPS
    tc_batches: Sequence[int] = (256, 512, 1024, 2048, 4096, 8192)
    tc_latent_dim: int = 32
    tc_dataset_size: int = 1_000_000
    iwae_ks: Sequence[int] = (1, 10, 100, 1000, 5000)
    iwae_batch: int = 16
    iwae_sample_size: int = 784          # a 28 x 28 image
    iwae_latent_dim: int = 32
    iwae_loss_ks: Sequence[int] = (1, 5, 50)
    memory_budget: int = 6 * 2**30       # bytes an eager case may be predicted to need
    rep_ms: Optional[float] = None
    seed: int = 0
    quiet: bool = False
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- eager baselines


def _log_normal(x, mu, logvar):
    return -0.5 * ((x - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi))


def eager_tc_terms(z, mu, logvar, dataset_size: int):
    """(mi, tc, dwkl) batch means the way the reference libraries compute them: the (B, B, J) tensor of
    log q(z_i | x_j) in full, then log-sum-exps over j, with the correct minibatch-stratified weights."""
    B = z.shape[0]
    mat = _log_normal(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))        # (B, B, J)
    m = B - 1
    w = torch.full((B, B), 1.0 / m, dtype=z.dtype, device=z.device)
    idx = torch.arange(B, device=z.device)
    w[idx, idx] = 1.0 / dataset_size
    w[idx, (idx + 1) % B] = (dataset_size - m) / (dataset_size * m)
    log_w = torch.log(w)
    log_qz = torch.logsumexp(mat.sum(2) + log_w, dim=1)
    log_prod = torch.logsumexp(mat + log_w.unsqueeze(2), dim=1).sum(1)
    log_qzx = _log_normal(z, mu, logvar).sum(1)
    log_pz = (-0.5 * (z * z + math.log(2 * math.pi))).sum(1)
    return (log_qzx - log_qz).mean(), (log_qz - log_prod).mean(), (log_prod - log_pz).mean()


def eager_iwae_log_weights(x, mu, logvar, k: int, decoder: Callable):
    """(B, k) log weights the (B, k, D) way: the data repeated k times, z (B, k, J), BCE on all of it."""
    B = x.shape[0]
    std = torch.exp(0.5 * logvar)
    eps = torch.randn((B, k) + tuple(mu.shape[1:]), dtype=mu.dtype, device=mu.device)
    z = mu.unsqueeze(1) + std.unsqueeze(1) * eps                                     # (B, k, J)
    x_k = x.unsqueeze(1).repeat(1, k, *([1] * (x.dim() - 1)))                         # (B, k, D): the copy
    logits = decoder(z.reshape(B * k, -1)).reshape(x_k.shape)
    log_px_z = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x_k, reduction="none").sum(-1)
    log_pz = (-0.5 * (z * z + math.log(2 * math.pi))).sum(-1)
    log_qz = _log_normal(z, mu.unsqueeze(1), logvar.unsqueeze(1)).sum(-1)
    return log_px_z + log_pz - log_qz


def eager_iwae_log_likelihood(x, mu, logvar, k: int, decoder: Callable):
    return torch.logsumexp(eager_iwae_log_weights(x, mu, logvar, k, decoder), dim=1) - math.log(k)


# ----------------------------------------------------------------------------- predicted eager peaks


def _tc_eager_bytes(B: int, J: int, itemsize: int = 4) -> int:
    # the (B, B, J) matrix, the weighted copy and the exp of the log-sum-exp, and autograd's saved copies
    return 5 * B * B * J * itemsize


def _iwae_eager_bytes(B: int, k: int, D: int, J: int, grad: bool, itemsize: int = 4) -> int:
    per_sample = (4 if grad else 3) * D + 6 * J        # x copy, logits, BCE terms (+ grad); z, eps, densities
    return B * k * per_sample * itemsize


# ----------------------------------------------------------------------------- runner


class _Log:
    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)


def _measure(call: Callable, device, rep_ms) -> dict:
    call()  # warm-up (and first-call compilation)
    sync(device)
    timing = time_calls([call], device, rep_ms=rep_ms)
    peak, method = peak_memory(call, device)
    return {"median_s": timing["median_s"], "q25_s": timing["q25_s"], "q75_s": timing["q75_s"],
            "reps": timing["reps"], "peak_bytes": peak, "peak_method": method}


def _pair(op: str, mode: str, size: dict, fused: Callable, eager: Callable, eager_bytes: int, cfg: ObjectiveConfig,
          device, log, budget: str = "the budget") -> list[dict]:
    """The records of one size, fastvae's then eager's: measured, or eager's skipped when its predicted peak
    ``eager_bytes`` exceeds the memory budget (``budget`` names it in the record)."""
    out = []
    for provider, call in (("fastvae", fused), ("eager", eager)):
        rec = {"op": op, "mode": mode, "provider": provider, **size}
        if provider == "eager" and eager_bytes > cfg.memory_budget:
            rec.update(skipped=f"predicted peak {eager_bytes / 2**30:.1f} GiB over {budget}")
        else:
            rec.update(_measure(call, device, cfg.rep_ms))
        out.append(rec)
        log(_line(rec))
    return out


def _tc_cases(cfg: ObjectiveConfig, device, log) -> list[dict]:
    import fastvae as fv

    out = []
    J, N = cfg.tc_latent_dim, cfg.tc_dataset_size
    for B in cfg.tc_batches:
        g = torch.Generator(device="cpu").manual_seed(cfg.seed + B)
        base = [torch.randn(B, J, generator=g).to(device) * s for s in (1.0, 0.5, 0.3)]

        def leaves(base=base):
            return [t.clone().requires_grad_() for t in base]

        def fused():
            z, mu, lv = leaves()
            t = fv.tc_decomposition(z, mu, lv, dataset_size=N)
            (t.mi + t.tc + t.dwkl).backward()

        def eager():
            z, mu, lv = leaves()
            mi, tc, dwkl = eager_tc_terms(z, mu, lv, N)
            (mi + tc + dwkl).backward()

        out += _pair("tc_decomposition", "fwd+bwd", dict(batch=B, latent_dim=J), fused, eager,
                     _tc_eager_bytes(B, J), cfg, device, log,
                     budget=f"the memory budget {cfg.memory_budget / 2**30:.1f} GiB")
    return out


def _iwae_problem(cfg: ObjectiveConfig, device):
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    B, D, J = cfg.iwae_batch, cfg.iwae_sample_size, cfg.iwae_latent_dim
    decoder = torch.nn.Linear(J, D).to(device)
    x = (torch.rand(B, D, generator=g) > 0.5).float().to(device)
    mu = (torch.randn(B, J, generator=g) * 0.5).to(device)
    lv = (torch.randn(B, J, generator=g) * 0.2 - 1.0).to(device)
    return decoder, x, mu, lv


class _FixedPosterior(torch.nn.Module):
    """A VAE-shaped wrapper with a fixed posterior per batch row, for fastvae.eval.log_likelihood."""

    def __init__(self, decoder, mu, lv):
        super().__init__()
        self.decoder, self.mu, self.lv = decoder, mu, lv
        self.likelihood = "bernoulli"
        self.log_scale = None

    def encode(self, x):
        return self.mu, self.lv

    def decode(self, z):
        return self.decoder(z)


def _iwae_cases(cfg: ObjectiveConfig, device, log) -> list[dict]:
    import fastvae as fv
    from fastvae import eval as E

    decoder, x, mu, lv = _iwae_problem(cfg, device)
    B, D, J = x.shape[0], x.shape[1], mu.shape[1]
    out = []
    if "iwae_log_likelihood" in cfg.ops:
        model = _FixedPosterior(decoder, mu, lv)
        for k in cfg.iwae_ks:
            def fused(k=k):
                return E.log_likelihood(model, x, k=k, batch_size=B, progress=False)

            def eager(k=k):
                with torch.no_grad():
                    return eager_iwae_log_likelihood(x, mu, lv, k, decoder)

            out += _pair("iwae_log_likelihood", "fwd", dict(batch=B, k=k, sample_size=D, latent_dim=J), fused, eager,
                         _iwae_eager_bytes(B, k, D, J, False), cfg, device, log)
    if "iwae_loss" in cfg.ops:
        for k in cfg.iwae_loss_ks:
            def fused(k=k):
                m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
                z, log_ratio = fv.reparameterize_log_weights(m, v, k)
                logits = decoder(z.reshape(k * B, J)).reshape(k, B, D)
                fv.iwae_loss(logits, x, log_ratio).loss.backward()

            def eager(k=k):
                m, v = mu.clone().requires_grad_(), lv.clone().requires_grad_()
                lw = eager_iwae_log_weights(x, m, v, k, decoder)
                (-(torch.logsumexp(lw, dim=1) - math.log(k)).mean()).backward()

            out += _pair("iwae_loss", "fwd+bwd", dict(batch=B, k=k, sample_size=D, latent_dim=J), fused, eager,
                         _iwae_eager_bytes(B, k, D, J, True), cfg, device, log)
        decoder.zero_grad(set_to_none=True)
    return out


def _line(rec: dict) -> str:
    size = f"B={rec['batch']}" + (f" k={rec['k']}" if "k" in rec else f" J={rec.get('latent_dim')}")
    if "skipped" in rec:
        return f"{rec['op']:<20} {rec['provider']:<8} {size:<14} skipped: {rec['skipped']}"
    peak = rec["peak_bytes"]
    peak_s = f"{peak / 2**20:9.1f} MiB" if peak is not None else "        -"
    return f"{rec['op']:<20} {rec['provider']:<8} {size:<14} {rec['median_s'] * 1e3:10.2f} ms  peak {peak_s}"


def run_objectives(cfg: ObjectiveConfig) -> dict:
    """Run the sweep; returns the report (``schema``, ``device``, ``config``, ``cases``, ``ratios``)."""
    for op in cfg.ops:
        if op not in OBJECTIVE_OPS:
            raise ValueError(f"ops: expected a subset of {OBJECTIVE_OPS}, got {op!r}")
    device = torch.device(cfg.device)
    log = _Log(cfg.quiet)
    started = time.time()
    torch.manual_seed(cfg.seed)
    cases = []
    if "tc_decomposition" in cfg.ops:
        cases += _tc_cases(cfg, device, log)
    if "iwae_log_likelihood" in cfg.ops or "iwae_loss" in cfg.ops:
        cases += _iwae_cases(cfg, device, log)
    config = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in cfg.__dict__.items() if k != "extra"}
    return {"schema": SCHEMA, "device": device_info(device), "config": config, "cases": cases,
            "ratios": ratios(cases), "seconds": round(time.time() - started, 1)}


def ratios(cases: list[dict]) -> list[dict]:
    """eager / fastvae time and peak memory for each size where both ran."""
    by = {}
    for c in cases:
        key = (c["op"], c["batch"], c.get("k"))
        by.setdefault(key, {})[c["provider"]] = c
    out = []
    for (op, batch, k), pair in by.items():
        f, e = pair.get("fastvae"), pair.get("eager")
        if not f or not e or "skipped" in f:
            continue
        row = {"op": op, "batch": batch, "k": k}
        if "skipped" in e:
            row["eager"] = "skipped"
        else:
            row["speedup"] = e["median_s"] / f["median_s"]
            if e.get("peak_bytes") and f.get("peak_bytes"):
                row["memory_ratio"] = e["peak_bytes"] / f["peak_bytes"]
        out.append(row)
    return out
