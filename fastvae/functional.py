"""The functional API, in the style of ``torch.nn.functional``.

Batch is dim 0.  A per-sample value sums over every other dim.  ``reduction`` is ``'mean'``
(the mean over the batch of the per-sample values, the default), ``'sum'`` or ``'none'``
(shape ``(B,)``).  Loss values are float32 (float64 for float64 inputs); ``z`` and gradients
have their input's dtype.  CUDA tensors run fused Triton kernels, CPU tensors the PyTorch
implementation of the same math (see ``FASTVAE_BACKEND``).
"""
from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from .ops import KINDS, REDUCTIONS, draw_seed, latent_forward, nll_forward

__all__ = [
    "VAELoss", "reparameterize", "gaussian_kl", "reparameterize_kl", "bernoulli_nll",
    "gaussian_nll", "mse", "laplace_nll", "beta_vae_loss",
]

LIKELIHOODS = tuple(KINDS)
Scalar = Union[float, Tensor]


class VAELoss(NamedTuple):
    """``loss = distortion + beta * rate`` (or ``beta * |rate - capacity|``), each reduced alike."""

    loss: Tensor
    distortion: Tensor
    rate: Tensor


# ----------------------------------------------------------------------------- argument checks


def _check_tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dim (the batch), got a 0-dim tensor")
    return value


def _check_like(name: str, value, ref_name: str, ref: Tensor) -> Tensor:
    _check_tensor(name, value)
    if value.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name}: expected {tuple(ref.shape)}, got {tuple(value.shape)}"
        )
    if value.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name}: expected {ref.device}, got {value.device}")
    return value


def _check_reduction(reduction) -> int:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return REDUCTIONS[reduction]


def _check_scalar(name: str, value, device: torch.device) -> Scalar:
    if isinstance(value, Tensor):
        if value.dim() != 0:
            raise ValueError(f"{name} must be a float or a 0-dim tensor, got a tensor of shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if value.device != device and value.device.type != "cpu":
            raise ValueError(f"{name} must be on {device} (or the CPU), got {value.device}")
        # A CPU 0-dim tensor enters device arithmetic as a scalar: no copy, no sync.
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(value).__name__}")
    return float(value)


def _check_log_scale(log_scale, target: Tensor) -> tuple[Optional[Tensor], float]:
    """(tensor or None, float value) for the op; a float log_scale travels as the value."""
    if isinstance(log_scale, Tensor):
        if not log_scale.is_floating_point():
            raise TypeError(f"log_scale must be a floating-point tensor, got dtype {log_scale.dtype}")
        if log_scale.dim() != 0 and log_scale.shape != target.shape:
            raise ValueError(
                "log_scale must be a float, a 0-dim tensor, or a tensor of the target's shape "
                f"{tuple(target.shape)}, got a tensor of shape {tuple(log_scale.shape)}"
            )
        if log_scale.device != target.device:
            raise ValueError(f"log_scale must be on the same device as target: expected {target.device}, got {log_scale.device}")
        return log_scale, 0.0
    if isinstance(log_scale, bool) or not isinstance(log_scale, numbers.Real):
        raise TypeError(f"log_scale must be a float or a tensor, got {type(log_scale).__name__}")
    return None, float(log_scale)


def _check_generator(generator: Optional[torch.Generator], device: torch.device) -> None:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator must be a generator for {device.type} tensors, got one for {generator.device}")


def _check_row_offset(row_offset) -> int:
    if isinstance(row_offset, bool) or not isinstance(row_offset, numbers.Integral):
        raise TypeError(f"row_offset must be an int, got {type(row_offset).__name__}")
    if row_offset < 0:
        raise ValueError(f"row_offset must be >= 0, got {row_offset}")
    return int(row_offset)


def _needs_grad(*tensors: Optional[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _reduce(rows: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return rows
    return rows.mean() if reduction == "mean" else rows.sum()


# ----------------------------------------------------------------------------- latent ops


def reparameterize(mu: Tensor, logvar: Tensor, eps: Optional[Tensor] = None, *,
                   generator: Optional[torch.Generator] = None, row_offset: int = 0) -> Tensor:
    r"""Sample :math:`z = \mu + e^{\text{logvar}/2} \odot \epsilon`, differentiably.

    Without ``eps`` the standard normal noise is generated inside the kernel from a Philox
    seed drawn from ``generator`` (default: torch's generator for ``mu``'s device), never
    written to memory and regenerated in backward; ``torch.manual_seed`` reproduces ``z``.

    Args:
        mu, logvar: ``(B, *)`` mean and log-variance of the diagonal Gaussian posterior.
        eps: optional ``(B, *)`` noise to use instead.
        generator: the ``torch.Generator`` the seed is drawn from.
        row_offset: index of row 0 in a larger batch. The noise of row ``r`` is that of row
            ``row_offset + r`` of the larger batch for the same seed, so the shards of a
            data-parallel job (same generator state on every rank, ``row_offset = rank * B``)
            draw exactly the noise of one process on the whole batch.
    Returns:
        ``z`` with ``mu``'s shape and dtype.
    """
    _check_tensor("mu", mu)
    _check_like("logvar", logvar, "mu", mu)
    if eps is not None:
        _check_like("eps", eps, "mu", mu)
    _check_generator(generator, mu.device)
    row_offset = _check_row_offset(row_offset)
    seed = draw_seed(mu.device, generator) if eps is None else None
    z, _ = latent_forward(mu, logvar, eps, seed, True, False, row_offset)
    return z


def gaussian_kl(mu: Tensor, logvar: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""KL divergence of :math:`\mathcal N(\mu, e^{\text{logvar}})` from :math:`\mathcal N(0, I)`.

    Per sample, :math:`\tfrac12 \sum_j \mu_j^2 + e^{\text{logvar}_j} - \text{logvar}_j - 1`,
    computed in logvar space (``exp(logvar) - 1 - logvar`` without cancellation near 0).
    """
    _check_tensor("mu", mu)
    _check_like("logvar", logvar, "mu", mu)
    _check_reduction(reduction)
    _, rows = latent_forward(mu, logvar, None, None, False, True)
    return _reduce(rows, reduction)


def reparameterize_kl(mu: Tensor, logvar: Tensor, eps: Optional[Tensor] = None, *,
                      generator: Optional[torch.Generator] = None, reduction: str = "mean",
                      row_offset: int = 0) -> tuple[Tensor, Tensor]:
    """``(reparameterize(mu, logvar, eps), gaussian_kl(mu, logvar))`` in one pass over mu and logvar:
    one kernel forward, one kernel backward.  ``generator`` and ``row_offset`` as in
    :func:`reparameterize`."""
    _check_tensor("mu", mu)
    _check_like("logvar", logvar, "mu", mu)
    if eps is not None:
        _check_like("eps", eps, "mu", mu)
    _check_reduction(reduction)
    _check_generator(generator, mu.device)
    row_offset = _check_row_offset(row_offset)
    seed = draw_seed(mu.device, generator) if eps is None else None
    z, rows = latent_forward(mu, logvar, eps, seed, True, True, row_offset)
    return z, _reduce(rows, reduction)


# ----------------------------------------------------------------------------- likelihoods


def _nll(kind: str, input_name: str, input: Tensor, target: Tensor, log_scale, reduction: str) -> Tensor:
    _check_tensor(input_name, input)
    _check_like("target", target, input_name, input)
    red = _check_reduction(reduction)
    ls_tensor, ls_value = _check_log_scale(log_scale, target)
    grad_x = _needs_grad(input, target)
    grad_ls = _needs_grad(ls_tensor)
    loss, _, _ = nll_forward(input, target, ls_tensor, ls_value, KINDS[kind], red, grad_x, grad_ls)
    return loss


def bernoulli_nll(logits: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Binary cross-entropy from logits, summed per sample: the Bernoulli decoder's NLL.

    Per element :math:`\max(x, 0) - x t + \log(1 + e^{-|x|})`, stable for any logit;
    targets anywhere in [0, 1].  Equals
    ``F.binary_cross_entropy_with_logits(logits, target, reduction='none').flatten(1).sum(1)``
    reduced over the batch.
    """
    return _nll("bernoulli", "logits", logits, target, 0.0, reduction)


def gaussian_nll(mean: Tensor, target: Tensor, *, log_scale: Scalar = 0.0, reduction: str = "mean") -> Tensor:
    r"""Gaussian decoder's NLL, summed per sample.

    Per element :math:`\tfrac12 ((x - \mu)/\sigma)^2 + \log\sigma + \tfrac12\log 2\pi`,
    :math:`\sigma = e^{\text{log\_scale}}`.  ``log_scale`` is a float, a 0-dim tensor (one
    learned sigma) or a tensor of the target's shape (sigma per element); tensors get gradients.
    """
    return _nll("gaussian", "mean", mean, target, log_scale, reduction)


def mse(recon: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    """Per-sample sum of squared errors: ``F.mse_loss(recon, target, reduction='none').flatten(1).sum(1)``,
    reduced over the batch."""
    return _nll("mse", "recon", recon, target, 0.0, reduction)


def laplace_nll(loc: Tensor, target: Tensor, *, log_scale: Scalar = 0.0, reduction: str = "mean") -> Tensor:
    r"""Laplace decoder's NLL, summed per sample: :math:`|x - \mu|/b + \log 2b`, :math:`b = e^{\text{log\_scale}}`.

    ``log_scale`` takes the same forms as in :func:`gaussian_nll`.
    """
    return _nll("laplace", "loc", loc, target, log_scale, reduction)


_NLL_INPUT_NAMES = {"bernoulli": "logits", "gaussian": "mean", "mse": "recon", "laplace": "loc"}


def beta_vae_loss(recon: Tensor, target: Tensor, mu: Tensor, logvar: Tensor, *, beta: Scalar = 1.0,
                  likelihood: str = "bernoulli", log_scale: Scalar = 0.0, capacity: Optional[Scalar] = None,
                  reduction: str = "mean") -> VAELoss:
    r"""The beta-VAE objective: ``VAELoss(loss, distortion, rate)``.

    distortion is the reconstruction NLL of ``likelihood`` ('bernoulli', 'gaussian', 'mse' or
    'laplace'), rate the KL of the posterior from N(0, I), and
    ``loss = distortion + beta * rate``.  With a ``capacity`` C (Burgess et al. 2018) the
    penalty is ``beta * |rate - C|``: for 'mean' on the batch-mean rate, for 'sum' B times that,
    for 'none' per sample.  ``beta`` and ``capacity`` are floats or 0-dim tensors.
    """
    if likelihood not in KINDS:
        raise ValueError(f"likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}, got {likelihood!r}")
    _check_tensor("recon", recon)
    _check_tensor("mu", mu)
    if mu.shape[0] != recon.shape[0]:
        raise ValueError(f"mu must have recon's batch size: expected {recon.shape[0]}, got {mu.shape[0]}")
    if mu.device != recon.device:
        raise ValueError(f"mu must be on the same device as recon: expected {recon.device}, got {mu.device}")
    _check_reduction(reduction)
    beta = _check_scalar("beta", beta, recon.device)
    if capacity is not None:
        capacity = _check_scalar("capacity", capacity, recon.device)
    if likelihood in ("bernoulli", "mse") and (isinstance(log_scale, Tensor) or log_scale != 0.0):
        raise ValueError(f"log_scale applies to the 'gaussian' and 'laplace' likelihoods, not {likelihood!r}")
    distortion = _nll(likelihood, _NLL_INPUT_NAMES[likelihood], recon, target, log_scale, reduction)
    rate = gaussian_kl(mu, logvar, reduction=reduction)
    if capacity is None:
        penalty = beta * rate
    elif reduction == "sum":
        penalty = beta * (rate - capacity * recon.shape[0]).abs()
    else:
        penalty = beta * (rate - capacity).abs()
    return VAELoss(distortion + penalty, distortion, rate)
