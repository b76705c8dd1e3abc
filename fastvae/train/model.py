"""The model factory: the VAE a config describes, for samples of a given shape."""
from __future__ import annotations

import math

from torch import nn

from .config import TrainConfig
from .errors import TrainError

__all__ = ["build_model", "model_kind"]


def _conv_compatible(sample_shape: tuple) -> bool:
    return len(sample_shape) == 3 and sample_shape[1] == sample_shape[2] and sample_shape[1] in (32, 64)


def model_kind(kind: str, sample_shape: tuple) -> str:
    """``kind`` with 'auto' resolved: conv for 32x32 and 64x64 images, else mlp."""
    if kind == "auto":
        return "conv" if _conv_compatible(sample_shape) else "mlp"
    return kind


def build_model(config: TrainConfig, sample_shape: tuple) -> nn.Module:
    """The VAE of ``config`` for samples of ``sample_shape`` (``config.model`` must be resolved or 'auto')."""
    from ..models import MLPVAE, ConvVAE

    kind = model_kind(config.model, sample_shape)
    if kind == "conv":
        if not _conv_compatible(sample_shape):
            raise TrainError(
                f"--model conv takes images of shape (C, 64, 64) or (C, 32, 32); the data has samples of shape "
                f"{tuple(sample_shape)}; use --model mlp"
            )
        return ConvVAE(channels=sample_shape[0], image_size=sample_shape[1], latent_dim=config.latent_dim,
                       likelihood=config.likelihood, learn_scale=config.learn_scale)
    in_features = math.prod(sample_shape)
    return MLPVAE(in_features, tuple(int(w) for w in config.hidden), config.latent_dim,
                  likelihood=config.likelihood, input_shape=sample_shape, learn_scale=config.learn_scale)
