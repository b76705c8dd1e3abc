"""Generic VAE: ``encoder -> GaussianLatent -> decoder``, trained with the fused beta-VAE loss."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from .. import functional as F_
from ..functional import Scalar
from ..nn import GaussianLatent, _check_likelihood

__all__ = ["VAE", "VAEOutput"]

# Likelihoods with a scale that ``learn_scale=True`` can learn.
_SCALED_LIKELIHOODS = F_.SCALED_LIKELIHOODS


class VAEOutput(NamedTuple):
    """What ``VAE.forward`` returns: the decoder output ``recon`` (x's shape; logits for ``'bernoulli'``,
    the mean/location otherwise), the posterior ``mu`` and ``logvar`` ``(B, L)`` and the latent ``z``
    ``(B, L)``."""

    recon: Tensor
    mu: Tensor
    logvar: Tensor
    z: Tensor


def _infer_encoder_features(encoder: nn.Module) -> int:
    # The last module with an integer ``out_features`` (nn.Linear, materialised nn.LazyLinear, ...) in
    # registration order, which is execution order for nn.Sequential. A wrong guess cannot pass silently:
    # forward checks the encoder output against it.
    for module in reversed(list(encoder.modules())):
        out_features = getattr(module, "out_features", None)
        if isinstance(out_features, int):
            return out_features
    raise ValueError(
        "encoder_features: cannot infer the encoder's output size (it has no nn.Linear); "
        "pass encoder_features=<features per sample after flattening>"
    )


class VAE(nn.Module):
    r"""A VAE around any encoder/decoder pair.

    ``encoder`` maps ``x`` ``(B, ...)`` to features, flattened to ``(B, encoder_features)``; a
    :class:`fastvae.nn.GaussianLatent` maps them to the posterior ``N(mu, exp(logvar))``; ``decoder`` maps
    ``z`` ``(B, latent_dim)`` to an output of x's shape: logits for ``likelihood='bernoulli'``, the mean (or
    location) for ``'gaussian'``, ``'mse'`` and ``'laplace'``.

    In training mode ``z`` is drawn by the reparameterization trick; in eval mode ``z = mu``.

    Args:
        encoder: module ``x -> features``.
        decoder: module ``z -> recon``.
        latent_dim: size of ``z``.
        encoder_features: features per sample of the encoder output. ``None`` takes the ``out_features`` of
            the encoder's last linear layer.
        likelihood: decoder likelihood used by :meth:`loss`, :meth:`sample` and :meth:`reconstruct`.
        learn_scale: for ``'gaussian'``/``'laplace'``, learn a scalar ``log_scale`` parameter (initialised to
            0, i.e. unit scale) used by :meth:`loss`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        latent_dim: int,
        *,
        encoder_features: Optional[int] = None,
        likelihood: str = "bernoulli",
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        _check_likelihood(likelihood)
        if learn_scale and likelihood not in _SCALED_LIKELIHOODS:
            raise ValueError(
                f"learn_scale: only the {' and '.join(map(repr, _SCALED_LIKELIHOODS))} likelihoods have a "
                f"scale, got likelihood={likelihood!r}"
            )
        if encoder_features is None:
            encoder_features = _infer_encoder_features(encoder)
        self.encoder = encoder
        self.latent = GaussianLatent(encoder_features, latent_dim)
        self.decoder = decoder
        self.latent_dim = latent_dim
        self.likelihood = likelihood
        if learn_scale:
            self.log_scale = nn.Parameter(torch.zeros(()))
        else:
            self.register_parameter("log_scale", None)

    # -- shape checks and hooks for subclasses -------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"x: expected shape (B, ...) with a batch dim, got {tuple(x.shape)}")

    def _run_decoder(self, z: Tensor) -> Tensor:
        """The decoder output for ``z``: ``self.decoder(z)``; a model whose decoding is more than its decoder
        module overrides this."""
        return self.decoder(z)

    def _decode_as(self, z: Tensor, x: Tensor) -> Tensor:
        """Decoder output for ``z``, shaped like ``x``."""
        recon = self._run_decoder(z)
        if recon.shape != x.shape:
            raise ValueError(
                f"decoder output: expected the input's shape {tuple(x.shape)}, got {tuple(recon.shape)}"
            )
        return recon

    def _data_mean(self, recon: Tensor) -> Tensor:
        # Bernoulli decoders output logits; the mean of the data distribution is their sigmoid. The continuous
        # Bernoulli's mean is not its parameter: sigmoid(x) / tanh(x / 2) - 1 / x (1/2 at x = 0).
        if self.likelihood == "bernoulli":
            return torch.sigmoid(recon)
        if self.likelihood == "continuous_bernoulli":
            mean = torch.distributions.ContinuousBernoulli(logits=recon.float(), validate_args=False).mean
            return mean.to(recon.dtype)
        return recon

    # -- public API -----------------------------------------------------------------------------------------

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(B, latent_dim)``."""
        self._check_input(x)
        h = self.encoder(x)
        features = self.latent.in_features
        if h.dim() < 2 or h[0].numel() != features:
            raise ValueError(
                f"encoder output: expected {features} features per sample, shape (B, {features}) after "
                f"flattening, got {tuple(h.shape)}"
            )
        return self.latent._moments(h.flatten(1))

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output for ``z`` ``(B, latent_dim)``: logits for ``'bernoulli'``, the mean otherwise."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z: expected shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        return self._run_decoder(z)

    def _latent(self, mu: Tensor, logvar: Tensor, generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
        """``(z, rate)``: in training z drawn by the fused reparameterize + KL op (one pass, the
        per-sample rate from the same kernel), in eval ``z = mu`` and the rate alone."""
        if self.training:
            return F_.reparameterize_kl(mu, logvar, generator=generator, reduction="none")
        return mu, F_.gaussian_kl(mu, logvar, reduction="none")

    def forward(self, x: Tensor, *, generator: Optional[torch.Generator] = None) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = F_.reparameterize(mu, logvar, generator=generator) if self.training else mu
        return VAEOutput(self._decode_as(z, x), mu, logvar, z)

    def loss(
        self,
        x: Tensor,
        *,
        beta: Scalar = 1.0,
        capacity: Optional[Scalar] = None,
        likelihood: Optional[str] = None,
        log_scale: Optional[Scalar] = None,
        reduction: str = "mean",
        generator: Optional[torch.Generator] = None,
    ) -> "F_.VAELoss":
        """The beta-VAE loss of ``x`` (see :func:`fastvae.beta_vae_loss`): ``VAELoss(loss, distortion, rate)``.

        ``likelihood=None`` uses the model's likelihood; ``log_scale=None`` uses the learned ``log_scale``
        when ``learn_scale=True`` and the likelihood has a scale, else 0.  The rate comes out of the
        pass that draws z (:func:`fastvae.reparameterize_kl`) and is not computed again.
        """
        mu, logvar = self.encode(x)
        z, rate = self._latent(mu, logvar, generator)
        recon = self._decode_as(z, x)
        if likelihood is None:
            likelihood = self.likelihood
        if log_scale is None:
            learned = self.log_scale is not None and likelihood in _SCALED_LIKELIHOODS
            log_scale = self.log_scale if learned else 0.0
        return F_.beta_vae_loss(recon, x, rate=rate, beta=beta, likelihood=likelihood, log_scale=log_scale,
                                capacity=capacity, reduction=reduction)

    def iwae_loss(self, x: Tensor, *, k: int = 5, reduction: str = "mean",
                  generator: Optional[torch.Generator] = None, log_scale=None) -> "F_.IWAELoss":
        """The IWAE objective of ``x`` with ``k`` importance samples (see :func:`fastvae.iwae_loss`): ``x`` encoded
        once, the ``(k, B)`` samples and log ratios drawn in one pass (:func:`fastvae.reparameterize_log_weights`),
        decoded as one ``(k B, latent_dim)`` batch, and the target read in place for every sample.  k = 1 is the
        sampled ELBO.  ``log_scale`` (the Gaussian/Laplace scale) defaults to the model's learned one, else 0."""
        mu, logvar = self.encode(x)
        z, log_ratio = F_.reparameterize_log_weights(mu, logvar, k, generator=generator)
        recon = self.decode(z.reshape(-1, self.latent_dim))
        expected = (z.shape[0] * x.shape[0],) + tuple(x.shape[1:])
        if recon.shape != expected:
            raise ValueError(f"decoder output: expected {expected} for {z.shape[0]} samples of the input's shape "
                             f"{tuple(x.shape)}, got {tuple(recon.shape)}")
        if log_scale is None:
            learned = self.log_scale is not None and self.likelihood in _SCALED_LIKELIHOODS
            log_scale = self.log_scale if learned else 0.0
        return F_.iwae_loss(recon.reshape((z.shape[0],) + tuple(x.shape)), x, log_ratio, likelihood=self.likelihood,
                            log_scale=log_scale, reduction=reduction)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """``n`` samples decoded from the prior ``z ~ N(0, I)``, as data means (probabilities for
        ``'bernoulli'``)."""
        weight = self.latent.linear.weight
        z = torch.randn(n, self.latent_dim, generator=generator, device=weight.device, dtype=weight.dtype)
        return self._data_mean(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstruction of ``x`` from the posterior mean ``z = mu``, as data means (probabilities for
        ``'bernoulli'``), shaped like ``x``."""
        mu, _ = self.encode(x)
        return self._data_mean(self._decode_as(mu, x))
