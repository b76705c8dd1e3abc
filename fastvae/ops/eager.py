"""Each loss written the way it is usually written in eager PyTorch: per-element torch ops,
differentiable to any order.

These are the baselines that ``fastvae bench`` and ``fastvae train --loss-backend torch`` compare
against, and what the fused ops fall back to for higher-order gradients
(``torch.autograd.grad(..., create_graph=True)``): there the gradient of the fused op is taken by
autograd through these formulas, so double backward gives torch's own values.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)


def nll_elements(kind: str, x: Tensor, target: Tensor, log_scale=0.0) -> Tensor:
    """Per-element negative log-likelihood of ``target`` under the decoder output ``x``."""
    if kind == "bernoulli":
        return F.binary_cross_entropy_with_logits(x, target, reduction="none")
    if kind == "mse":
        return F.mse_loss(x, target, reduction="none")
    if kind == "continuous_bernoulli":
        return F.binary_cross_entropy_with_logits(x, target, reduction="none") - continuous_bernoulli_log_norm(x)
    if not isinstance(log_scale, Tensor):
        log_scale = torch.tensor(float(log_scale), dtype=x.dtype if x.is_floating_point() else torch.float32,
                                 device=x.device)
    if kind == "gaussian":
        return 0.5 * ((target - x) * torch.exp(-log_scale)) ** 2 + log_scale + HALF_LOG_2PI
    if kind == "laplace":
        return torch.abs(target - x) * torch.exp(-log_scale) + log_scale + LOG_2
    raise ValueError(f"unknown likelihood {kind!r}")


def continuous_bernoulli_log_norm(x: Tensor) -> Tensor:
    """log C(x) = log(x / tanh(x / 2)) (log 2 at x = 0), differentiable to any order: the series near 0,
    the closed form elsewhere, each branch fed only inputs where it is finite."""
    small = x.abs() < (1e-3 if x.dtype == torch.float64 else 0.5)
    xs = torch.where(small, x, torch.zeros_like(x))
    xb = torch.where(small, torch.ones_like(x), x.abs())
    x2 = xs * xs
    series = LOG_2 + x2 * (1.0 / 12.0 + x2 * (-7.0 / 1440.0 + x2 * (31.0 / 90720.0 + x2 * (-127.0 / 4838400.0))))
    e = torch.exp(-xb)
    direct = torch.log1p(e) - torch.log1p(-e) + torch.log(xb)
    return torch.where(small, series, direct)


def nll_rows(kind: str, x: Tensor, target: Tensor, log_scale=0.0) -> Tensor:
    """Per-sample sums ``(B,)`` of :func:`nll_elements`."""
    return nll_elements(kind, x, target, log_scale).reshape(x.shape[0], -1).sum(1)


def kl_elements(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL of N(mu, exp(logvar)) from N(0, 1) per element: ``-0.5 * (1 + logvar - mu^2 - exp(logvar))``."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def kl_rows(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-sample KL of N(mu, exp(logvar)) from N(0, I): the sum of :func:`kl_elements` over a sample."""
    return kl_elements(mu, logvar).reshape(mu.shape[0], -1).sum(1)


def reduce(rows: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return rows
    return rows.mean() if reduction == "mean" else rows.sum()


def combine(distortion_rows: Tensor, rate_rows: Tensor, beta, capacity: Optional[object], reduction: str):
    """``(loss, distortion, rate)`` of the beta-VAE objective from per-sample terms (see
    :mod:`fastvae.ops.reduction` for the capacity rule of each reduction)."""
    distortion = reduce(distortion_rows, reduction)
    rate = reduce(rate_rows, reduction)
    if capacity is None:
        return distortion + beta * rate, distortion, rate
    batch = rate_rows.shape[0]
    target = capacity * batch if reduction == "sum" else capacity
    return distortion + beta * (rate - target).abs(), distortion, rate
