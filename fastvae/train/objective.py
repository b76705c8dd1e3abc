"""The differentiated objective of a training step (:class:`Objective`): the beta-VAE loss (with a
capacity or free bits), the beta-TCVAE loss or the IWAE bound; and the rules that make several processes
equal one process on the global batch: ``beta * |rate - C|`` taken on the global batch-mean rate
(:func:`_global_capacity_loss`), the per-dimension free-bits floor on the global per-dimension means
(:func:`_global_free_bits_loss`), and the beta-TCVAE sums over the global batch (its ``process_group``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .distributed import mean_over_ranks

__all__ = ["Objective", "eager_terms", "EXTRA_TERMS"]

#: What each objective measures besides loss, distortion and rate (recorded in metrics.json and the curves).
EXTRA_TERMS = {"beta-vae": (), "tcvae": ("mi", "tc", "dwkl"), "iwae": ()}


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


def _global_free_bits_loss(distortion: Tensor, mu: Tensor, logvar: Tensor, beta, floor: float,
                           world_size: int) -> tuple:
    """``(loss, value)`` of ``distortion + beta * sum_j max(floor, m_j)`` with ``m_j`` the per-dimension KL
    averaged over the global batch (free bits per dimension across ``world_size`` processes).

    Which dimensions sit under the floor is decided on the global means (all-reduced, detached); a rank
    differentiates ``beta`` times the batch mean of its own KL over the dimensions above the floor, so the
    ranks' averaged gradient is the one-process gradient of the global batch.  ``value`` is the global
    objective (the same on every rank, up to the rank's own distortion).
    """
    from ..ops import eager

    kl = eager.kl_elements(mu.float(), logvar.float())
    means = mean_over_ranks(kl.detach().mean(0), world_size)
    above = means >= floor
    penalized = torch.where(above, kl, torch.zeros_like(kl)).sum(1).mean() + floor * (~above).sum()
    loss = distortion + beta * penalized
    value = distortion.detach() + beta * torch.clamp(means, min=floor).sum()
    return loss, value


class Objective(nn.Module):
    """One training forward: encode, reparameterize, decode, the objective.

    This module is what DDP wraps and ``--compile`` compiles.  The noise is generated inside the
    fused op from a seed drawn from ``generator`` (re-seeded from ``(seed, step)`` every step, the
    same on every rank) with ``row_offset`` = the rank's first row in the global batch, so each
    rank draws exactly its rows of the noise one process would draw for the whole batch.  The
    eager ``--loss-backend torch`` draws the same noise (``fastvae.ops.standard_normal``), so the
    two backends run the same training and differ only in how the loss is computed.

    ``objective``:

    * ``'beta-vae'``: the training pattern of the README: ``reparameterize_kl`` gives z and the per-sample
      rate in one pass, and ``beta_vae_loss(..., rate=rate)`` takes that rate; with ``free_bits`` the loss
      floors the KL (per dimension or per sample) while the reported rate stays the true KL;
    * ``'tcvae'``: ``beta_tcvae_loss`` (``alpha * mi + beta * tc + gamma * dwkl``, ``dataset_size`` the
      training samples), over the global batch under DDP;
    * ``'iwae'``: k samples per input drawn with their log weights in one pass
      (``reparameterize_log_weights``), decoded as one batch, ``iwae_loss`` with the target read in place;
      the rate reported is the sampled log q(z|x) - log p(z) averaged over the k samples.  Under DDP each
      rank draws its own noise (a seed derived from the step's and the rank's first row).

    Returns ``(loss, loss_value, distortion, rate, extras)``: ``loss`` is what is differentiated and
    ``loss_value`` the detached objective that is reported (they differ with a capacity or per-dimension
    free bits across several processes); ``extras`` the detached :data:`EXTRA_TERMS` of the objective
    stacked in one tensor, or None.
    """

    def __init__(self, model: nn.Module, *, likelihood: str, log_scale: float, backend: str, world_size: int,
                 objective: str = "beta-vae", dataset_size: int = 0, k: int = 5, alpha: float = 1.0,
                 gamma: float = 1.0, estimator: str = "mss", free_bits: Optional[float] = None,
                 free_bits_mode: str = "dim"):
        super().__init__()
        self.model = model
        self.likelihood = likelihood
        self.fixed_log_scale = float(log_scale)
        self.backend = backend
        self.world_size = world_size
        self.objective = objective
        self.dataset_size = int(dataset_size)
        self.k = int(k)
        self.alpha, self.gamma, self.estimator = float(alpha), float(gamma), estimator
        self.free_bits = None if free_bits is None else float(free_bits)
        self.free_bits_mode = free_bits_mode

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
        model = self.model
        log_scale = model.log_scale if model.log_scale is not None else self.fixed_log_scale
        if self.objective == "iwae":
            return self._iwae(x, generator, row_offset, log_scale)
        mu, logvar = model.encode(x)
        z, rate_rows = self._sample(mu, logvar, generator, row_offset)
        recon = model.decode(z).reshape(x.shape)
        if self.objective == "tcvae":
            return self._tcvae(recon, x, z, mu, logvar, beta, log_scale)
        if self.free_bits is not None:
            return self._free_bits(recon, x, mu, logvar, rate_rows, beta, log_scale)
        return self._beta_vae(recon, x, mu, logvar, rate_rows, beta, capacity, log_scale)

    def _beta_vae(self, recon, x, mu, logvar, rate_rows, beta, capacity, log_scale) -> tuple:
        import fastvae as fv

        global_capacity = capacity is not None and self.world_size > 1
        if self.backend == "fastvae" and not global_capacity:
            loss, distortion, rate = fv.beta_vae_loss(recon, x, rate=rate_rows, beta=beta, likelihood=self.likelihood,
                                                      log_scale=log_scale, capacity=capacity)
            return loss, loss.detach(), distortion.detach(), rate.detach(), None
        if self.backend == "fastvae":
            _, distortion, rate = fv.beta_vae_loss(recon, x, rate=rate_rows, beta=0.0, likelihood=self.likelihood,
                                                   log_scale=log_scale)
        else:
            distortion, rate = eager_terms(recon, x, mu, logvar, self.likelihood, log_scale)
        if global_capacity:
            loss, value = _global_capacity_loss(distortion, rate, beta, capacity, self.world_size)
            return loss, value, distortion.detach(), rate.detach(), None
        if capacity is None:
            loss = distortion + beta * rate
        else:
            loss = distortion + beta * (rate - capacity).abs()
        return loss, loss.detach(), distortion.detach(), rate.detach(), None

    def _free_bits(self, recon, x, mu, logvar, rate_rows, beta, log_scale) -> tuple:
        import fastvae as fv

        if self.free_bits_mode == "dim" and self.world_size > 1:
            _, distortion, rate = fv.beta_vae_loss(recon, x, rate=rate_rows, beta=0.0, likelihood=self.likelihood,
                                                   log_scale=log_scale)
            loss, value = _global_free_bits_loss(distortion, mu, logvar, beta, self.free_bits, self.world_size)
            return loss, value, distortion.detach(), rate.detach(), None
        if self.free_bits_mode == "dim":  # the per-dimension floor reads mu and logvar (a second latent pass)
            loss, distortion, rate = fv.beta_vae_loss(recon, x, mu, logvar, beta=beta, likelihood=self.likelihood,
                                                      log_scale=log_scale, free_bits=self.free_bits)
        else:  # per sample: a function of each sample's KL, the rate z came with
            loss, distortion, rate = fv.beta_vae_loss(recon, x, rate=rate_rows, beta=beta, likelihood=self.likelihood,
                                                      log_scale=log_scale, free_bits=self.free_bits,
                                                      free_bits_mode="sample")
        return loss, loss.detach(), distortion.detach(), rate.detach(), None

    def _tcvae(self, recon, x, z, mu, logvar, beta, log_scale) -> tuple:
        import fastvae as fv

        group = None
        if self.world_size > 1:
            import torch.distributed as dist

            group = dist.group.WORLD
        t = fv.beta_tcvae_loss(recon, x, z, mu, logvar, dataset_size=self.dataset_size, alpha=self.alpha, beta=beta,
                               gamma=self.gamma, likelihood=self.likelihood, log_scale=log_scale,
                               estimator=self.estimator, process_group=group)
        extras = torch.stack([t.mi.detach(), t.tc.detach(), t.dwkl.detach()])
        return t.loss, t.loss.detach(), t.distortion.detach(), t.rate.detach(), extras

    def _iwae(self, x, generator, row_offset: int, log_scale) -> tuple:
        if row_offset:  # another rank: its own noise, derived from the step's seed and its first row
            generator = torch.Generator(device=generator.device).manual_seed(
                (generator.initial_seed() * 1_000_003 + row_offset) % (2**63 - 1))
        loss, distortion, rate = self.model.iwae_loss(x, k=self.k, generator=generator, log_scale=log_scale)
        return loss, loss.detach(), distortion.detach(), rate.detach(), None
