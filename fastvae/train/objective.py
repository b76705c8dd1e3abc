"""The differentiated objective of a training step (:class:`Objective`), and the capacity rule
under DDP: with several processes ``beta * |rate - C|`` is taken on the global batch-mean rate
(:func:`_global_capacity_loss`)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .distributed import mean_over_ranks

__all__ = ["Objective", "eager_terms"]


def eager_terms(recon: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, likelihood: str, log_scale) -> tuple:
    """Distortion and rate written the way they are usually written in PyTorch (the
    ``--loss-backend torch`` baseline): per-element losses, summed per sample, batch mean."""
    from ..ops import eager

    distortion = eager.nll_rows(likelihood, recon, x, log_scale).mean()
    return distortion, eager.kl_rows(mu, logvar).mean()


def _global_capacity_loss(distortion: Tensor, rate: Tensor, beta, capacity, world_size: int) -> tuple:
    """``(loss, value)`` of ``distortion + beta * |rate - C|`` across ``world_size`` processes.

    The per-rank ``|rate - C|`` would not average to the penalty of the global batch-mean rate,
    so the global rate is all-reduced (detached) and the penalty's gradient,
    ``beta * sign(rate_global - C)`` times the gradient of the rank's own rate, is what is
    differentiated; ``value`` is the global objective that is reported.
    """
    rate_global = mean_over_ranks(rate.detach(), world_size)
    sign = torch.sign(rate_global - capacity)
    loss = distortion + beta * sign * (rate - capacity)
    value = distortion.detach() + beta * (rate_global - capacity).abs()
    return loss, value


class Objective(nn.Module):
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
    several processes (:func:`_global_capacity_loss`).
    """

    def __init__(self, model: nn.Module, *, likelihood: str, log_scale: float, backend: str, world_size: int):
        super().__init__()
        self.model = model
        self.likelihood = likelihood
        self.fixed_log_scale = float(log_scale)
        self.backend = backend
        self.world_size = world_size

    def _sample(self, mu: Tensor, logvar: Tensor, generator: torch.Generator, row_offset: int) -> tuple:
        """z, and the per-sample rate on the fused path (None on the eager one)."""
        import fastvae as fv
        from fastvae.ops import draw_seed, standard_normal

        if self.backend == "fastvae":
            return fv.reparameterize_kl(mu, logvar, generator=generator, reduction="none", row_offset=row_offset)
        seed = draw_seed(mu.device, generator)
        eps = standard_normal(seed, mu, row_offset).to(mu.dtype)
        return mu + eps * torch.exp(0.5 * logvar), None

    def forward(self, x: Tensor, generator: torch.Generator, row_offset: int, beta, capacity) -> tuple:
        import fastvae as fv

        model = self.model
        log_scale = model.log_scale if model.log_scale is not None else self.fixed_log_scale
        mu, logvar = model.encode(x)
        z, rate_rows = self._sample(mu, logvar, generator, row_offset)
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
            distortion, rate = eager_terms(recon, x, mu, logvar, self.likelihood, log_scale)
        if global_capacity:
            loss, value = _global_capacity_loss(distortion, rate, beta, capacity, self.world_size)
            return loss, value, distortion.detach(), rate.detach()
        if capacity is None:
            loss = distortion + beta * rate
        else:
            loss = distortion + beta * (rate - capacity).abs()
        return loss, loss.detach(), distortion.detach(), rate.detach()
