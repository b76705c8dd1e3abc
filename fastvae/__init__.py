"""fastvae: fused Triton kernels for the variational autoencoder objective.

The functional API mirrors ``torch.nn.functional``; see :mod:`fastvae.functional`.
"""
# The version, read by pyproject.toml (setuptools' dynamic version) and by the code.
__version__ = "0.1.0"

# Before torch is imported: the `fastvae train` command waits passively in OpenMP (see _openmp.py).
from . import _openmp

_openmp.set_for_the_command()

from . import models, nn  # noqa: E402  (modules built on the functional API)
from .functional import (  # noqa: E402
    TCTerms,
    TCVAELoss,
    VAELoss,
    bernoulli_nll,
    beta_tcvae_loss,
    beta_vae_loss,
    continuous_bernoulli_nll,
    gaussian_kl,
    gaussian_nll,
    laplace_nll,
    mse,
    reparameterize,
    reparameterize_kl,
    tc_decomposition,
)
from .ops import get_backend, set_backend  # noqa: E402

__all__ = [
    "VAELoss", "TCTerms", "TCVAELoss", "bernoulli_nll", "continuous_bernoulli_nll", "beta_vae_loss",
    "beta_tcvae_loss", "tc_decomposition", "gaussian_kl", "gaussian_nll",
    "laplace_nll", "mse", "reparameterize", "reparameterize_kl", "get_backend", "set_backend", "models", "nn",
    "__version__",
]
