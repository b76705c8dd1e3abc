"""VAE models built from :mod:`fastvae.nn`: a generic :class:`VAE` around any encoder/decoder pair, an MLP
VAE, the 64x64 convolutional VAE of Burgess et al. (2018) and an object-centred VAE for one object per image."""

from .conv import ConvVAE
from .glimpse import GlimpseVAE
from .mlp import MLPVAE
from .vae import VAE, VAEOutput

__all__ = ["VAE", "VAEOutput", "MLPVAE", "ConvVAE", "GlimpseVAE"]
