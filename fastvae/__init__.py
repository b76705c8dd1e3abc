"""fastvae: fused Triton kernels for the variational autoencoder objective.

The functional API mirrors ``torch.nn.functional``; see :mod:`fastvae.functional`.
"""
from .functional import (
    VAELoss,
    bernoulli_nll,
    beta_vae_loss,
    gaussian_kl,
    gaussian_nll,
    laplace_nll,
    mse,
    reparameterize,
    reparameterize_kl,
)
from .ops import get_backend, set_backend

from . import models, nn  # noqa: E402  (modules built on the functional API)

__version__ = "0.1.0"

__all__ = [
    "VAELoss", "bernoulli_nll", "beta_vae_loss", "gaussian_kl", "gaussian_nll", "laplace_nll", "mse",
    "reparameterize", "reparameterize_kl", "get_backend", "set_backend", "models", "nn", "__version__",
]
