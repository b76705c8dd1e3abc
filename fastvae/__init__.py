"""fastvae: fused Triton kernels for the variational autoencoder objective.

The functional API mirrors ``torch.nn.functional``; see :mod:`fastvae.functional`.
"""
# The version, read by pyproject.toml (setuptools' dynamic version) and by the code.
__version__ = "0.1.0"

# Before torch is imported: the CPU `fastvae` commands wait passively in OpenMP (see _openmp.py).
from . import _openmp

_openmp.set_for_the_command()

from . import eval, metrics, models, nn  # noqa: E402  (modules built on the functional API)
from .functional import (  # noqa: E402
    ImportanceSamples,
    IWAELoss,
    TCTerms,
    TCVAELoss,
    VAELoss,
    bernoulli_nll,
    beta_tcvae_loss,
    beta_vae_loss,
    continuous_bernoulli_nll,
    gaussian_kl,
    gaussian_nll,
    iwae_bound,
    iwae_loss,
    laplace_nll,
    mse,
    reparameterize,
    reparameterize_kl,
    reparameterize_log_weights,
    tc_decomposition,
)
from .ops import get_backend, set_backend  # noqa: E402

__all__ = [
    "VAELoss", "TCTerms", "TCVAELoss", "bernoulli_nll", "continuous_bernoulli_nll", "beta_vae_loss",
    "beta_tcvae_loss", "tc_decomposition", "gaussian_kl", "gaussian_nll",
    "laplace_nll", "mse", "reparameterize", "reparameterize_kl", "ImportanceSamples", "IWAELoss",
    "reparameterize_log_weights", "iwae_bound", "iwae_loss", "get_backend", "set_backend", "eval",
    "metrics", "models", "nn", "__version__",
]


def load_model(path, **kwargs):
    """The trained VAE of a ``fastvae train`` run folder or checkpoint file, in eval mode (see
    :func:`fastvae.train.load_model`: ``device=``, ``weights=``, ``best=``, ``with_config=``).  The
    trainer is imported on the first call."""
    from .train.load import load_model as _load_model

    return _load_model(path, **kwargs)


__all__ += ["load_model"]
