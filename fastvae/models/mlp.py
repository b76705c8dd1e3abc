"""Fully connected VAE for flat or flattened inputs."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

from torch import Tensor, nn

from .vae import VAE

__all__ = ["MLPVAE"]


class MLPVAE(VAE):
    r"""VAE with ReLU MLPs: ``in_features -> hidden... -> latent_dim -> reversed(hidden)... -> in_features``.

    Inputs of any shape ``(B, ...)`` with ``in_features`` elements per sample are flattened; ``recon`` has the
    input's shape. :meth:`decode` and :meth:`sample` return ``(B, *input_shape)``.

    Args:
        in_features: elements per sample.
        hidden: width of each hidden layer of the encoder (the decoder mirrors it); an int for one layer.
        latent_dim: size of ``z``.
        likelihood: see :class:`VAE`.
        input_shape: per-sample shape of the data (e.g. ``(1, 28, 28)``) for :meth:`decode` and
            :meth:`sample`; default ``(in_features,)``.
        learn_scale: see :class:`VAE`.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Union[int, Sequence[int]],
        latent_dim: int,
        *,
        likelihood: str = "bernoulli",
        input_shape: Optional[Sequence[int]] = None,
        learn_scale: bool = False,
    ) -> None:
        hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        if any(width < 1 for width in hidden):
            raise ValueError(f"hidden: expected positive widths, got {hidden}")
        input_shape = (in_features,) if input_shape is None else tuple(input_shape)
        if math.prod(input_shape) != in_features:
            raise ValueError(
                f"input_shape: expected {in_features} elements (in_features), got {input_shape} "
                f"with {math.prod(input_shape)}"
            )
        widths = (in_features, *hidden)
        encoder = [nn.Flatten()]
        for width_in, width_out in zip(widths, widths[1:]):
            encoder += [nn.Linear(width_in, width_out), nn.ReLU()]
        decoder_widths = (latent_dim, *reversed(hidden), in_features)
        decoder = []
        for width_in, width_out in zip(decoder_widths, decoder_widths[1:]):
            decoder += [nn.Linear(width_in, width_out), nn.ReLU()]
        decoder[-1] = nn.Unflatten(1, input_shape)  # no activation on the output layer
        super().__init__(
            nn.Sequential(*encoder),
            nn.Sequential(*decoder),
            latent_dim,
            encoder_features=widths[-1],
            likelihood=likelihood,
            learn_scale=learn_scale,
        )
        self.in_features = in_features
        self.hidden = hidden
        self.input_shape = input_shape

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x[0].numel() != self.in_features:
            raise ValueError(
                f"x: expected shape (B, {', '.join(map(str, self.input_shape))}) or any (B, ...) with "
                f"{self.in_features} elements per sample, got {tuple(x.shape)}"
            )

    def _decode_as(self, z: Tensor, x: Tensor) -> Tensor:
        # _check_input guaranteed the element count, so this is a view of the last linear layer's output.
        return self.decoder(z).reshape(x.shape)
