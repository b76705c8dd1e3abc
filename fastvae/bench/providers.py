"""What is timed for each op and provider.

* ``fastvae``: fastvae's op (``import fastvae``; FASTVAE_BACKEND picks Triton for CUDA tensors and
  the torch path for CPU tensors);
* ``eager``: the loss written the way it is usually written in PyTorch (the formulas of
  :mod:`fastvae.ops.eager`);
* ``compile``: ``torch.compile`` of that same eager function, static shapes, compiled during
  warm-up so compile time is never timed (:func:`fastvae.bench.inputs.provider_fn`).
"""
from __future__ import annotations

import torch

from ..ops import eager

__all__ = ["BETA", "PROVIDERS"] + [
    f"{p}_{op}" for p in ("eager", "fastvae") for op in (
        "reparameterize_kl", "bernoulli_nll", "gaussian_nll", "mse", "laplace_nll", "continuous_bernoulli_nll",
        "free_bits_kl", "beta_vae_loss", "training_step")] + ["FREE_BITS"]

PROVIDERS = ("fastvae", "eager", "compile")
BETA = 4.0
#: nats per latent dimension of the ``free_bits_kl`` case.
FREE_BITS = 0.5


# Eager baselines: the VAE objective as it is commonly written in PyTorch today.

def eager_reparameterize_kl(mu, logvar):
    std = torch.exp(0.5 * logvar)
    z = mu + torch.randn_like(std) * std
    return z, eager.kl_rows(mu, logvar).mean()


def eager_bernoulli_nll(logits, target):
    return eager.nll_rows("bernoulli", logits, target).mean()


def eager_gaussian_nll(mean, target, log_scale=0.0):
    return eager.nll_rows("gaussian", mean, target, log_scale).mean()


def eager_mse(recon, target):
    return eager.nll_rows("mse", recon, target).mean()


def eager_laplace_nll(loc, target, log_scale=0.0):
    return eager.nll_rows("laplace", loc, target, log_scale).mean()


def eager_continuous_bernoulli_nll(logits, target):
    # what users write: torch.distributions, whose log-normalizer is a Taylor band around 1/2 on
    # clamped probabilities
    dist = torch.distributions.ContinuousBernoulli(logits=logits, validate_args=False)
    return -dist.log_prob(target).flatten(1).sum(1).mean()


def eager_free_bits_kl(mu, logvar, free_bits=FREE_BITS):
    # Kingma et al. 2016: the batch-mean KL of each latent dimension, floored, summed
    return torch.clamp(eager.kl_elements(mu, logvar).mean(0), min=free_bits).sum()


def eager_beta_vae_loss(recon, target, mu, logvar, beta=BETA):
    return eager.combine(eager.nll_rows("bernoulli", recon, target), eager.kl_rows(mu, logvar), beta, None, "mean")


# fastvae providers, resolved lazily so that `fastvae.cli` can import this module cheaply.

def _fv():
    import fastvae
    return fastvae


def _two_inputs(name: str):
    """The provider ``fastvae_<name>(a, b)``: ``fastvae.<name>(a, b)`` with its defaults."""
    def provider(a, b):
        return getattr(_fv(), name)(a, b)

    provider.__name__ = provider.__qualname__ = f"fastvae_{name}"
    return provider


fastvae_reparameterize_kl = _two_inputs("reparameterize_kl")
fastvae_bernoulli_nll = _two_inputs("bernoulli_nll")
fastvae_gaussian_nll = _two_inputs("gaussian_nll")
fastvae_mse = _two_inputs("mse")
fastvae_laplace_nll = _two_inputs("laplace_nll")
fastvae_continuous_bernoulli_nll = _two_inputs("continuous_bernoulli_nll")


def fastvae_free_bits_kl(mu, logvar, free_bits=FREE_BITS):
    return _fv().gaussian_kl(mu, logvar, free_bits=free_bits)


def fastvae_beta_vae_loss(recon, target, mu, logvar, beta=BETA):
    return tuple(_fv().beta_vae_loss(recon, target, mu, logvar, beta=beta, likelihood="bernoulli"))


# The training pattern: z and the per-sample rate from the latent, the decoder (here a given upstream
# gradient for z, so that no decoder op is timed), the loss of both, backward into recon, mu and logvar.

def eager_training_step(mu, logvar, recon, target, beta=BETA):
    z, rate = eager_reparameterize_kl(mu, logvar)
    return eager_bernoulli_nll(recon, target) + beta * rate, z


def fastvae_training_step(mu, logvar, recon, target, beta=BETA):
    fv = _fv()
    z, rate = fv.reparameterize_kl(mu, logvar, reduction="none")
    return fv.beta_vae_loss(recon, target, rate=rate, beta=beta).loss, z
