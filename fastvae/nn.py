"""Drop-in modules over the fused functional API.

``BetaVAELoss`` mirrors the shape of torch's loss modules (``nn.BCEWithLogitsLoss`` and friends): the
configuration lives on the module, ``forward`` takes the tensors. ``GaussianLatent`` is the encoder's last
layer: it maps features to the parameters of the diagonal Gaussian posterior and draws ``z`` with the fused
reparameterize + KL op, so the per-sample rate comes out of the same pass that produces ``z``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from . import functional as F_
from .functional import Scalar

__all__ = ["BetaVAELoss", "BetaTCVAELoss", "GaussianLatent", "LatentOutput"]


# Scale applied to the default nn.Linear init of the logvar rows: the posterior starts with logvar ~ 0
# (unit variance, KL ~ 0.5*mu^2) instead of a random spread of variances, while the weights stay non-zero
# so the head is not stuck in a symmetric start.
_LOGVAR_INIT_SCALE = 1e-2


def _check_likelihood(likelihood: str) -> None:
    # Checked at construction, with the functional API's message, rather than at the first forward.
    if likelihood not in F_.LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {', '.join(map(repr, F_.LIKELIHOODS))}, got {likelihood!r}")


def _format_scalar(value: Optional[Scalar]) -> str:
    # A 0-dim tensor set by a schedule prints as its value, like a float would.
    if isinstance(value, Tensor) and value.dim() == 0:
        value = value.item()
    return f"{value:g}" if isinstance(value, float) else repr(value)


class BetaVAELoss(nn.Module):
    r"""The beta-VAE objective as a module: ``distortion + beta * rate``.

    ``distortion`` is the per-sample negative log-likelihood of ``target`` under the decoder output ``recon``
    (``likelihood``: ``'bernoulli'`` takes logits, ``'gaussian'``/``'laplace'`` a mean/location with scale
    ``exp(log_scale)``, ``'mse'`` the squared error) and ``rate`` the per-sample
    ``KL(N(mu, exp(logvar)) || N(0, I)) = 0.5 * sum(mu^2 + exp(logvar) - logvar - 1)``. With ``capacity=C`` the
    loss is ``distortion + beta * |rate - C|`` (Burgess et al. 2018). See :func:`fastvae.beta_vae_loss`.

    ``beta`` and ``capacity`` are plain attributes: a schedule may overwrite them between steps with python
    floats or 0-dim tensors (a tensor keeps a compiled graph from recompiling when the value changes).

    Args:
        beta: weight of the rate term.
        likelihood: ``'bernoulli'`` | ``'gaussian'`` | ``'mse'`` | ``'laplace'``.
        capacity: target rate ``C`` in nats, or ``None`` for the plain beta-VAE loss.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'`` over the batch (dim 0).
        free_bits, free_bits_mode: a floor of ``free_bits`` nats on the rate in the loss, per latent dimension
            (``'dim'``) or per sample (``'sample'``); see :func:`fastvae.gaussian_kl`.

    Shape:
        - recon, target: ``(B, *)``, the same shape.
        - mu, logvar: ``(B, *)``, the same shape; or rate: ``(B,)``.
        - Output: :class:`fastvae.VAELoss` ``(loss, distortion, rate)``, each a scalar, or ``(B,)`` with
          ``reduction='none'``.
    """

    def __init__(
        self,
        beta: Scalar = 1.0,
        likelihood: str = "bernoulli",
        capacity: Optional[Scalar] = None,
        reduction: str = "mean",
        free_bits: Optional[float] = None,
        free_bits_mode: str = "dim",
    ) -> None:
        super().__init__()
        _check_likelihood(likelihood)
        F_._check_reduction(reduction)
        F_._check_free_bits(free_bits, free_bits_mode)
        self.beta = beta
        self.likelihood = likelihood
        self.capacity = capacity
        self.reduction = reduction
        self.free_bits = free_bits
        self.free_bits_mode = free_bits_mode

    def forward(
        self, recon: Tensor, target: Tensor, mu: Optional[Tensor] = None, logvar: Optional[Tensor] = None,
        log_scale: Scalar = 0.0, *, rate: Optional[Tensor] = None,
    ) -> "F_.VAELoss":
        """Give ``mu`` and ``logvar``, or ``rate``: the per-sample KL ``(B,)`` of
        :func:`fastvae.reparameterize_kl` (or :class:`GaussianLatent`), which is then not computed again."""
        return F_.beta_vae_loss(
            recon,
            target,
            mu,
            logvar,
            rate=rate,
            beta=self.beta,
            likelihood=self.likelihood,
            log_scale=log_scale,
            capacity=self.capacity,
            reduction=self.reduction,
            free_bits=self.free_bits,
            free_bits_mode=self.free_bits_mode,
        )

    def extra_repr(self) -> str:
        return (
            f"beta={_format_scalar(self.beta)}, likelihood={self.likelihood!r}, "
            f"capacity={_format_scalar(self.capacity)}, reduction={self.reduction!r}"
        )


class BetaTCVAELoss(nn.Module):
    r"""The beta-TCVAE objective of Chen et al. (2018) as a module:
    ``distortion + alpha * mi + beta * tc + gamma * dwkl`` (see :func:`fastvae.beta_tcvae_loss`), with the
    minibatch estimates of the index-code mutual information, the total correlation and the dimension-wise
    KL streamed over the batch (memory O(B J)).

    Args:
        dataset_size: N, the number of training examples (the estimators' weights depend on it).
        alpha, beta, gamma: the weights of mi, tc and dwkl (beta-TCVAE: 1, beta, 1).
        likelihood: as in :class:`BetaVAELoss`.
        estimator: ``'mss'`` (minibatch stratified sampling) or ``'mws'`` (minibatch weighted sampling).
        reduction: ``'mean'`` | ``'sum'`` | ``'none'`` over the batch.
        process_group: with torchrun, the group whose ranks together hold the batch: the sums over the batch
            then run over all of it.

    Shape:
        - recon, target: ``(B, *)``; z, mu, logvar: ``(B, J)``.
        - Output: :class:`fastvae.TCVAELoss` ``(loss, distortion, rate, mi, tc, dwkl)``.
    """

    def __init__(self, dataset_size: int, alpha: Scalar = 1.0, beta: Scalar = 6.0, gamma: Scalar = 1.0,
                 likelihood: str = "bernoulli", estimator: str = "mss", reduction: str = "mean",
                 process_group=None) -> None:
        super().__init__()
        _check_likelihood(likelihood)
        F_._check_reduction(reduction)
        from .ops.tc import ESTIMATORS

        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
        self.dataset_size = dataset_size
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.likelihood = likelihood
        self.estimator = estimator
        self.reduction = reduction
        self.process_group = process_group

    def forward(self, recon: Tensor, target: Tensor, z: Tensor, mu: Tensor, logvar: Tensor,
                log_scale: Scalar = 0.0) -> "F_.TCVAELoss":
        return F_.beta_tcvae_loss(recon, target, z, mu, logvar, dataset_size=self.dataset_size, alpha=self.alpha,
                                  beta=self.beta, gamma=self.gamma, likelihood=self.likelihood, log_scale=log_scale,
                                  estimator=self.estimator, reduction=self.reduction,
                                  process_group=self.process_group)

    def extra_repr(self) -> str:
        return (f"dataset_size={self.dataset_size}, alpha={_format_scalar(self.alpha)}, "
                f"beta={_format_scalar(self.beta)}, gamma={_format_scalar(self.gamma)}, "
                f"likelihood={self.likelihood!r}, estimator={self.estimator!r}, reduction={self.reduction!r}")


class LatentOutput(NamedTuple):
    """What :class:`GaussianLatent` returns: ``z`` ``(B, L)``, per-sample ``rate`` ``(B,)``, ``mu`` and
    ``logvar`` ``(B, L)``."""

    z: Tensor
    rate: Tensor
    mu: Tensor
    logvar: Tensor


class GaussianLatent(nn.Module):
    r"""Diagonal Gaussian posterior head: features ``h`` -> ``(z, rate, mu, logvar)``.

    One linear layer produces ``2 * latent_dim`` outputs, split into ``mu`` and ``logvar`` (one GEMM instead
    of two; the two halves are strided views, which the fused ops read without a copy). Then

    - training mode (or ``sample=True``): ``z = mu + exp(logvar / 2) * eps`` and the per-sample
      ``rate = KL(q(z|x) || N(0, I))`` from the fused :func:`fastvae.reparameterize_kl`;
    - eval mode (or ``sample=False``): ``z = mu`` and the rate from :func:`fastvae.gaussian_kl`.

    The rate is per sample (``reduction='none'``): shape ``(B,)``.

    The ``logvar`` rows start with small weights and zero bias, so the initial posterior variance is ~1.

    Args:
        in_features: size of each feature vector ``h``.
        latent_dim: size of ``z``.

    Shape:
        - h: ``(B, in_features)``.
        - Output: :class:`LatentOutput` with ``z``, ``mu``, ``logvar`` ``(B, latent_dim)`` and ``rate``
          ``(B,)``.
    """

    def __init__(self, in_features: int, latent_dim: int) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be positive, got {in_features}")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.in_features = in_features
        self.latent_dim = latent_dim
        self.linear = nn.Linear(in_features, 2 * latent_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()
        with torch.no_grad():
            self.linear.weight[self.latent_dim :].mul_(_LOGVAR_INIT_SCALE)
            self.linear.bias[self.latent_dim :].zero_()

    def _moments(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` of q(z|h), without drawing z."""
        if h.dim() != 2 or h.shape[1] != self.in_features:
            raise ValueError(f"h: expected shape (B, {self.in_features}), got {tuple(h.shape)}")
        mu, logvar = self.linear(h).chunk(2, dim=1)
        return mu, logvar

    def forward(
        self,
        h: Tensor,
        *,
        sample: Optional[bool] = None,
        generator: Optional[torch.Generator] = None,
    ) -> LatentOutput:
        """``sample=None`` follows the module's mode: sample in training, ``z = mu`` in eval."""
        mu, logvar = self._moments(h)
        if sample is None:
            sample = self.training
        if sample:
            z, rate = F_.reparameterize_kl(mu, logvar, generator=generator, reduction="none")
        else:
            z, rate = mu, F_.gaussian_kl(mu, logvar, reduction="none")
        return LatentOutput(z, rate, mu, logvar)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, latent_dim={self.latent_dim}"
