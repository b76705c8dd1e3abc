"""The float64 reference of the fastvae objective, written straight from the math.

This module is deliberately independent of fastvae (it imports only torch): every test compares
the library against these functions.  Each function upcasts its tensor arguments to float64
(keeping the autograd graph, so reference gradients come from ``torch.autograd``), computes the
per-sample values (batch is dim 0, a per-sample value sums over every other dim) and reduces them
with ``reduction`` in {'mean', 'sum', 'none'}.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

F64 = torch.float64
LOG_2PI = math.log(2.0 * math.pi)
LOG_2 = math.log(2.0)
REDUCTIONS = ("mean", "sum", "none")
LIKELIHOODS = ("bernoulli", "gaussian", "mse", "laplace", "continuous_bernoulli")


class VAELoss(NamedTuple):
    loss: torch.Tensor
    distortion: torch.Tensor
    rate: torch.Tensor


def f64(x, like: torch.Tensor | None = None) -> torch.Tensor:
    """x as a float64 tensor (differentiable upcast for tensors; python numbers become 0-dim)."""
    if isinstance(x, torch.Tensor):
        return x.to(F64)
    device = like.device if like is not None else None
    return torch.tensor(float(x), dtype=F64, device=device)


def rows(elementwise: torch.Tensor) -> torch.Tensor:
    """Per-sample sums: (B, ...) -> (B,)."""
    if elementwise.dim() == 0:
        raise ValueError("rows() needs a batch dimension")
    if elementwise.dim() == 1:
        return elementwise
    return elementwise.flatten(1).sum(1)


def reduce(per_sample: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Reduce per-sample values of shape (B,) over the batch."""
    if per_sample.dim() != 1:
        raise ValueError(f"per-sample values must have shape (B,), got {tuple(per_sample.shape)}")
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"unknown reduction {reduction!r}")


# ---------------------------------------------------------------------------------------------
# latent: reparameterization and KL(N(mu, exp(logvar)) || N(0, 1))
# ---------------------------------------------------------------------------------------------
def reparameterize(mu, logvar, eps):
    """z = mu + exp(logvar / 2) * eps (elementwise, float64)."""
    mu, logvar, eps = f64(mu), f64(logvar), f64(eps)
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_kl_elements(mu, logvar):
    mu, logvar = f64(mu), f64(logvar)
    return 0.5 * (mu * mu + torch.exp(logvar) - logvar - 1.0)


def gaussian_kl(mu, logvar, *, reduction: str = "mean"):
    """0.5 * sum(mu^2 + exp(logvar) - logvar - 1) per sample."""
    return reduce(rows(gaussian_kl_elements(mu, logvar)), reduction)


def reparameterize_kl(mu, logvar, eps, *, reduction: str = "mean"):
    return reparameterize(mu, logvar, eps), gaussian_kl(mu, logvar, reduction=reduction)


# ---------------------------------------------------------------------------------------------
# likelihoods (negative log-likelihoods, summed per sample)
# ---------------------------------------------------------------------------------------------
def bernoulli_nll_elements(logits, target):
    """Stable BCE with logits: max(x, 0) - x * t + log1p(exp(-|x|)).

    max(x, 0) is written so that autograd gives the exact derivative sigmoid(x) - t everywhere:
    for x < 0 only the log1p term carries gradient (no 1/2 - 1/2 cancellation swamping a tiny
    sigmoid(x)), and at x == 0 (where d|x|/dx is 0 in torch) the max term contributes 1/2.
    """
    x, t = f64(logits), f64(target)
    zero = torch.zeros_like(x)
    relu = torch.where(x > 0, x, zero) + torch.where(x == 0, 0.5 * x, zero)
    return relu - x * t + torch.log1p(torch.exp(-x.abs()))


def bernoulli_nll(logits, target, *, reduction: str = "mean"):
    return reduce(rows(bernoulli_nll_elements(logits, target)), reduction)


def continuous_bernoulli_log_norm(logits):
    """log C(x), C(x) = x / tanh(x / 2) (its limit 2 at x = 0): the continuous Bernoulli's normalizer in logit
    space (lambda = sigmoid(x): 2 atanh(1 - 2 lambda) / (1 - 2 lambda) = x / tanh(x / 2)).  Even in x; the
    series log 2 + x^2/12 - 7x^4/1440 + 31x^6/90720 - 127x^8/4838400 for |x| < 1e-2 (truncation below 1e-22),
    log|x| - log tanh(|x|/2) elsewhere, each branch given inputs where it is finite."""
    x = f64(logits)
    small = x.abs() < 1e-2
    xs = torch.where(small, x, torch.zeros_like(x))
    xb = torch.where(small, torch.ones_like(x), x.abs())
    x2 = xs * xs
    series = LOG_2 + x2 * (1 / 12 + x2 * (-7 / 1440 + x2 * (31 / 90720 - 127 * x2 / 4838400)))
    direct = torch.log(xb) - torch.log(torch.tanh(0.5 * xb))
    return torch.where(small, series, direct)


def continuous_bernoulli_nll_elements(logits, target):
    """-log p(t | lambda) of the continuous Bernoulli, lambda = sigmoid(x): the Bernoulli NLL minus log C(x)."""
    return bernoulli_nll_elements(logits, target) - continuous_bernoulli_log_norm(logits)


def continuous_bernoulli_nll(logits, target, *, reduction: str = "mean"):
    return reduce(rows(continuous_bernoulli_nll_elements(logits, target)), reduction)


def gaussian_nll_elements(mean, target, log_scale=0.0):
    """0.5 * ((x - mu) / s)^2 + log s + 0.5 * log(2 pi), s = exp(log_scale)."""
    mean, target = f64(mean), f64(target)
    log_scale = f64(log_scale, like=target)
    q = (target - mean) * torch.exp(-log_scale)
    return 0.5 * q * q + log_scale + 0.5 * LOG_2PI


def gaussian_nll(mean, target, *, log_scale=0.0, reduction: str = "mean"):
    return reduce(rows(gaussian_nll_elements(mean, target, log_scale)), reduction)


def mse_elements(recon, target):
    d = f64(recon) - f64(target)
    return d * d


def mse(recon, target, *, reduction: str = "mean"):
    return reduce(rows(mse_elements(recon, target)), reduction)


def laplace_nll_elements(loc, target, log_scale=0.0):
    """|x - mu| / b + log(2 b), b = exp(log_scale)."""
    loc, target = f64(loc), f64(target)
    log_scale = f64(log_scale, like=target)
    return (target - loc).abs() * torch.exp(-log_scale) + log_scale + LOG_2


def laplace_nll(loc, target, *, log_scale=0.0, reduction: str = "mean"):
    return reduce(rows(laplace_nll_elements(loc, target, log_scale)), reduction)


def nll_rows(likelihood: str, recon, target, log_scale=0.0) -> torch.Tensor:
    """Per-sample distortion of the named likelihood (log_scale is ignored by bernoulli and mse)."""
    if likelihood == "bernoulli":
        return rows(bernoulli_nll_elements(recon, target))
    if likelihood == "gaussian":
        return rows(gaussian_nll_elements(recon, target, log_scale))
    if likelihood == "mse":
        return rows(mse_elements(recon, target))
    if likelihood == "laplace":
        return rows(laplace_nll_elements(recon, target, log_scale))
    if likelihood == "continuous_bernoulli":
        return rows(continuous_bernoulli_nll_elements(recon, target))
    raise ValueError(f"unknown likelihood {likelihood!r}")


# ---------------------------------------------------------------------------------------------
# the beta-VAE objective
# ---------------------------------------------------------------------------------------------
def beta_vae_loss(recon, target, mu, logvar, *, beta=1.0, likelihood: str = "bernoulli",
                  log_scale=0.0, capacity=None, reduction: str = "mean") -> VAELoss:
    """loss = distortion + beta * rate, or with a capacity C: distortion + beta * |rate - C|.

    With a capacity the absolute value is taken on the batch-mean rate for 'mean' (and 'sum' is
    B times the 'mean' penalty), per sample for 'none'.  distortion and rate are the reduced
    per-sample likelihood and KL values.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}")
    d = nll_rows(likelihood, recon, target, log_scale)
    r = rows(gaussian_kl_elements(mu, logvar))
    beta = f64(beta, like=d)
    batch = d.shape[0]
    if capacity is None:
        if reduction == "none":
            loss = d + beta * r
        else:
            loss = reduce(d, reduction) + beta * reduce(r, reduction)
    else:
        capacity = f64(capacity, like=d)
        if reduction == "none":
            loss = d + beta * (r - capacity).abs()
        else:
            mean_rate = r.sum() / max(batch, 1)
            penalty = beta * (mean_rate - capacity).abs()
            if reduction == "mean":
                loss = d.mean() + penalty
            else:
                loss = d.sum() + batch * penalty
    return VAELoss(loss, reduce(d, reduction), reduce(r, reduction))


# ---------------------------------------------------------------------------------------------
# beta-TCVAE: the minibatch estimators, dense (B, B, J), straight from Chen et al. (2018)
# ---------------------------------------------------------------------------------------------
def tc_log_weights(batch: int, dataset_size: int, estimator: str) -> torch.Tensor:
    """(B, B) log w_ij. 'mws': 1/(N B). 'mss' (M = B - 1): 1/N on the diagonal, (N - M)/(N M) at
    j = (i + 1) mod B, 1/M elsewhere; every row sums to 1."""
    n = float(dataset_size)
    if estimator == "mws":
        return torch.full((batch, batch), -math.log(n * batch), dtype=F64)
    m = batch - 1
    w = torch.full((batch, batch), 1.0 / m, dtype=F64)
    idx = torch.arange(batch)
    w[idx, (idx + 1) % batch] = (n - m) / (n * m)
    w[idx, idx] = 1.0 / n
    return torch.log(w)


def tc_terms(z, mu, logvar, *, dataset_size: int, estimator: str = "mss", reduction: str = "mean"):
    """(mi, tc, dwkl) with the (B, B, J) tensor of log q(z_i | x_j) built in full."""
    z, mu, logvar = f64(z), f64(mu), f64(logvar)
    batch = z.shape[0]
    d = z[:, None, :] - mu[None, :, :]
    log_qzx_pairs = -0.5 * (d * d * torch.exp(-logvar)[None] + logvar[None] + LOG_2PI)   # (B, B, J)
    lw = tc_log_weights(batch, dataset_size, estimator)
    log_qz = torch.logsumexp(log_qzx_pairs.sum(2) + lw, dim=1)
    log_prod = torch.logsumexp(log_qzx_pairs + lw[:, :, None], dim=1).sum(1)
    idx = torch.arange(batch)
    log_qzx = log_qzx_pairs[idx, idx].sum(1)
    log_pz = (-0.5 * (z * z + LOG_2PI)).sum(1)
    terms = (log_qzx - log_qz, log_qz - log_prod, log_prod - log_pz)
    return tuple(reduce(t, reduction) for t in terms)


def free_bits_kl(mu, logvar, free_bits, mode="dim", *, reduction: str = "mean"):
    """The free-bits objective: 'dim' sum_j max(lambda, m_j), m_j the batch mean of KL_bj (per sample: KL_bj
    where m_j >= lambda, else lambda); 'sample' max(lambda, KL_b)."""
    kl = gaussian_kl_elements(mu, logvar).reshape(f64(mu).shape[0], -1)
    lam = float(free_bits)
    if mode == "dim":
        m = kl.mean(0)
        per_sample = torch.where(m >= lam, kl, torch.full_like(kl, lam)).sum(1)
    else:
        per_sample = torch.clamp_min(kl.sum(1), lam)
    return reduce(per_sample, reduction)


# ---------------------------------------------------------------------------------------------
# importance sampling


def log_ratio(z, mu, logvar):
    """log N(z; 0, I) - log N(z; mu, exp(logvar)) per sample: z (k, B, ...), mu and logvar (B, ...) -> (k, B)."""
    z, mu, logvar = f64(z), f64(mu), f64(logvar)
    log_p = -0.5 * (z * z + LOG_2PI)
    log_q = -0.5 * ((z - mu) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)
    return (log_p - log_q).flatten(2).sum(2)


def iwae_bound(log_weights, *, reduction: str = "mean"):
    """log (1/k) sum_s exp(log_weights[s]) per data point, written as the shifted sum."""
    lw = f64(log_weights)
    top = lw.max(0).values
    return reduce(top + torch.log(torch.exp(lw - top).sum(0)) - math.log(lw.shape[0]), reduction)


def linear_gaussian_log_px(x, weight, bias, sigma):
    """log N(x; b, W W^T + sigma^2 I): the marginal of z ~ N(0, I), x | z ~ N(W z + b, sigma^2 I)."""
    x, weight, bias = f64(x), f64(weight), f64(bias)
    d = weight.shape[0]
    cov = weight @ weight.T + float(sigma) ** 2 * torch.eye(d, dtype=F64, device=weight.device)
    diff = x - bias
    _, logdet = torch.linalg.slogdet(cov)
    maha = (diff * torch.linalg.solve(cov, diff.T).T).sum(1)
    return -0.5 * (maha + logdet + d * LOG_2PI)
