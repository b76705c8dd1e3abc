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

__version__ = "0.1.0"

__all__ = [
    "VAELoss", "bernoulli_nll", "beta_vae_loss", "gaussian_kl", "gaussian_nll", "laplace_nll", "mse",
    "reparameterize", "reparameterize_kl", "__version__",
]
