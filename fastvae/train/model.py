"""The model factory: the VAE a config describes, for samples of a given shape."""
from __future__ import annotations

import math
from typing import Optional

from torch import nn

from ..models.glimpse import WHERE_DIMS as GLIMPSE_WHERE_DIMS
from .config import TrainConfig, data_key
from .errors import TrainError

__all__ = ["build_model", "model_kind"]


def _conv_compatible(sample_shape: tuple) -> bool:
    return len(sample_shape) == 3 and sample_shape[1] == sample_shape[2] and sample_shape[1] in (32, 64)


def model_kind(kind: str, sample_shape: tuple, data: Optional[str] = None, latent_dim: int = 10) -> str:
    """``kind`` with 'auto' resolved: glimpse for the embedded ``shapes`` (one object per image) with a latent of
    4 or more (its 3 where-dimensions and at least one what-dimension), conv for other 32x32 and 64x64 images,
    else mlp."""
    if kind == "auto":
        if not _conv_compatible(sample_shape):
            return "mlp"
        return "glimpse" if data == "shapes" and latent_dim > GLIMPSE_WHERE_DIMS else "conv"
    return kind


def build_model(config: TrainConfig, sample_shape: tuple) -> nn.Module:
    """The VAE of ``config`` for samples of ``sample_shape`` (``config.model`` must be resolved or 'auto')."""
    from ..models import MLPVAE, ConvVAE, GlimpseVAE

    data = data_key(config.data) if isinstance(config.data, str) else None
    kind = model_kind(config.model, sample_shape, data, config.latent_dim)
    if kind in ("conv", "glimpse"):
        if not _conv_compatible(sample_shape):
            raise TrainError(
                f"--model {kind} takes images of shape (C, 64, 64) or (C, 32, 32); the data has samples of shape "
                f"{tuple(sample_shape)}; use --model mlp"
            )
        if kind == "glimpse":
            if config.latent_dim <= GLIMPSE_WHERE_DIMS:
                raise TrainError(f"--model glimpse needs --latent-dim {GLIMPSE_WHERE_DIMS + 1} or more "
                                 f"({GLIMPSE_WHERE_DIMS} where-dimensions and at least one what-dimension), "
                                 f"got {config.latent_dim}")
            return GlimpseVAE(channels=sample_shape[0], image_size=sample_shape[1], latent_dim=config.latent_dim,
                              likelihood=config.likelihood, learn_scale=config.learn_scale)
        return ConvVAE(channels=sample_shape[0], image_size=sample_shape[1], latent_dim=config.latent_dim,
                       likelihood=config.likelihood, learn_scale=config.learn_scale)
    in_features = math.prod(sample_shape)
    return MLPVAE(in_features, tuple(int(w) for w in config.hidden), config.latent_dim,
                  likelihood=config.likelihood, input_shape=sample_shape, learn_scale=config.learn_scale)
