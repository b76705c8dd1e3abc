"""VAE models built from :mod:`fastvae.nn`: a generic :class:`VAE` around any encoder/decoder pair, an MLP
VAE and the 64x64 convolutional VAE of Burgess et al. (2018)."""

from .conv import ConvVAE
from .mlp import MLPVAE
from .vae import VAE, VAEOutput

__all__ = ["VAE", "VAEOutput", "MLPVAE", "ConvVAE"]
