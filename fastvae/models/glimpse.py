"""An object-centred VAE for images of one object on a dark background: where the object is comes from the
image's moments, what it is from a conv encoder of a window centred on it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import _HIDDEN, check_image, conv_networks
from .vae import VAE

__all__ = ["GlimpseVAE", "WHERE_DIMS", "WHERE_GAIN", "object_moments"]

#: Latent dimensions 0, 1, 2 are the object's x position, y position and log size.
WHERE_DIMS = 3
# Encoder conv widths per glimpse size (each conv halves the side down to 4); the decoder mirrors them.
_ENCODER_CHANNELS = {32: (32, 64, 64), 16: (32, 64)}
# The window's half-width is twice the half-side of a square of the object's area, so an ellipse of aspect
# up to pi:1 (shapes' are 2:1) or any rotation of a square or heart of that area fits in it. Log sizes are
# taken relative to a window half as wide as the canvas.
_WINDOW = 2.0
_LOG_HALF = math.log(0.5)
# The where posterior's log-variance starts small (sigma 0.03 in latent units, well under a pixel): started
# at 0, the positional noise blurs every reconstruction and the what-dimensions collapse before it shrinks.
_WHERE_LOGVAR_INIT = -7.0
#: The where-parameters are stored divided by this gain (``where_scale = exp(gain * where[0])``, ``where_shift =
#: gain * where[1]``, ``where_logvar = gain * where[2]``), so that Adam, whose steps are about the learning rate
#: whatever the gradient, moves these nine numbers ten times as fast as a network's weights: at 1.5e-3 the
#: log-variances would take thousands of steps to rise from -7 to where a small target rate wants them, and
#: the rate would be stuck above the target meanwhile.
WHERE_GAIN = 10.0


def _pixel_centres(size: int, device, dtype) -> Tensor:
    """Pixel centres on [-1, 1], the convention of ``grid_sample(..., align_corners=False)``."""
    return (torch.arange(size, device=device, dtype=dtype) * 2 + 1) / size - 1


def object_moments(x: Tensor) -> Tensor:
    r"""``(B, 3)``: the centroid ``(c_x, c_y)`` and the log window size ``s`` of each image of ``x``
    ``(B, C, H, W)``, in float32, in canvas units (the image spans [-1, 1] on both axes, y down).

    With ``m = clamp(mean over channels of x, 0)`` and ``p_ij`` the pixel centres,
    ``c = sum m p / sum m`` and ``s = log(2 sqrt(sum m / (H W))) - log(1/2)``: the window
    ``c +- exp(s) / 2`` is twice as wide as a square of the object's area. An empty image has its centroid at
    0 and the window of a one-pixel object.
    """
    m = x.float().mean(1).clamp_min(0)
    height, width = m.shape[-2:]
    mass = m.sum((1, 2))
    safe = mass.clamp_min(1.0)
    ys = _pixel_centres(height, m.device, m.dtype)
    xs = _pixel_centres(width, m.device, m.dtype)
    cx = (m.sum(1) * xs).sum(1) / safe
    cy = (m.sum(2) * ys).sum(1) / safe
    log_size = torch.log(_WINDOW * torch.sqrt(safe / (height * width))) - _LOG_HALF
    return torch.stack([cx, cy, log_size], 1)


def _window_grid(pose: Tensor, size: int, inverse: bool, out: int) -> Tensor:
    """Sampling grid ``(B, out, out, 2)``: with ``inverse=False`` the window's ``size x size`` pixel centres in
    the image (a glimpse); with ``inverse=True`` the image's ``out x out`` pixel centres in the window
    (placing a window's content back)."""
    cx, cy, log_size = pose.unbind(1)
    half = (0.5 * torch.exp(log_size))[:, None, None]
    centre = torch.stack([cx, cy], 1)[:, None, None, :]
    p = _pixel_centres(out if inverse else size, pose.device, pose.dtype)
    grid = torch.stack(torch.broadcast_tensors(p[None, :], p[:, None]), -1)[None]  # (1, n, n, 2): (x, y)
    if inverse:
        return (grid - centre) / half[..., None]
    return grid * half[..., None] + centre


class GlimpseVAE(VAE):
    r"""An object-centred VAE for ``(B, channels, image_size, image_size)`` images of one object on a dark
    (zero) background, such as ``shapes``.

    The first :data:`WHERE_DIMS` latent dimensions say where the object is, the others what it is.

    * Where: :func:`object_moments` gives the centroid ``(c_x, c_y)`` and a log window size ``s`` of each
      image; the posterior of dimension ``k < 3`` is ``N(a_k m_k + b_k, exp(v_k))`` with learned ``a``,
      ``b``, ``v`` (:attr:`where_scale`, :attr:`where_shift`, :attr:`where_logvar`, from the parameter
      ``where``, see :data:`WHERE_GAIN`).
    * What: the window of half-width ``exp(s) / 2`` around the centroid is resampled to a
      ``image_size / 2`` square glimpse (bilinear, zeros outside the image), and a conv encoder of it
      (4x4 stride-2 convs of 32, 64, 64 channels, a linear layer to 256 and the
      :class:`fastvae.nn.GaussianLatent` head) gives the posterior of the other ``latent_dim - 3`` dimensions.
    * Decoder: the what-dimensions are drawn in the window (linear ``-> 256 -> 4*4*64``, transposed convs
      mirroring the encoder), and the drawing is placed at the pose ``m = (z_k - b_k) / a_k`` by a bilinear
      resampling (its border continued outside the window).

    The model is an ordinary VAE with a Gaussian posterior and the ``N(0, I)`` prior: the loss, the rate,
    importance-sampled likelihoods and samples from the prior are those of :class:`VAE`. The where-posterior
    has no network, so position and size need no learning and sit on their own dimensions by construction;
    the what-encoder sees every object centred and at one size, which is what lets it learn shape and
    orientation within a first short run. On the 2-core CPU of bench/NOTES.md it trains about twice as fast
    per step as :class:`ConvVAE`. Images with a bright background, several objects or negative values
    (which the moments clamp to 0) are not what it is for; use :class:`ConvVAE`.

    Args:
        channels: image channels (the moments are taken of their mean).
        image_size: 64 (glimpse 32) or 32 (glimpse 16).
        latent_dim: size of ``z``, at least 4 (3 where-dimensions and at least one what-dimension).
        likelihood: see :class:`VAE`.
        learn_scale: see :class:`VAE`.
    """

    def __init__(
        self,
        channels: int = 1,
        image_size: int = 64,
        latent_dim: int = 10,
        *,
        likelihood: str = "bernoulli",
        learn_scale: bool = False,
    ) -> None:
        glimpse = image_size // 2
        if image_size not in (64, 32):
            raise ValueError(f"image_size: expected 64 or 32, got {image_size}")
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        if latent_dim <= WHERE_DIMS:
            raise ValueError(f"latent_dim: expected at least {WHERE_DIMS + 1} ({WHERE_DIMS} where-dimensions and "
                             f"one or more what-dimensions), got {latent_dim}")
        encoder, decoder = conv_networks(channels, _ENCODER_CHANNELS[glimpse], latent_dim - WHERE_DIMS)
        # The encoder, the GaussianLatent head and the decoder work on the what-dimensions only.
        super().__init__(encoder, decoder, latent_dim - WHERE_DIMS,
                         encoder_features=_HIDDEN, likelihood=likelihood, learn_scale=learn_scale)
        self.latent_dim = latent_dim
        # Canvas units to latent units: positions span about [-0.6, 0.6] and log sizes about 0.7 on shapes.
        init = torch.stack([torch.tensor([2.0, 2.0, 4.0]).log(), torch.zeros(WHERE_DIMS),
                            torch.full((WHERE_DIMS,), _WHERE_LOGVAR_INIT)])
        self.where = nn.Parameter(init / WHERE_GAIN)
        self.channels = channels
        self.image_size = image_size
        self.glimpse = glimpse

    def _check_input(self, x: Tensor) -> None:
        check_image(x, self.channels, self.image_size)

    @property
    def where_scale(self) -> Tensor:
        """``(3,)`` the ``a`` of the where-posterior means ``a m + b``."""
        return torch.exp(self.where[0] * WHERE_GAIN)

    @property
    def where_shift(self) -> Tensor:
        """``(3,)`` the ``b`` of the where-posterior means ``a m + b``."""
        return self.where[1] * WHERE_GAIN

    @property
    def where_logvar(self) -> Tensor:
        """``(3,)`` the log-variances of the where-posterior."""
        return self.where[2] * WHERE_GAIN

    def pose(self, z_where: Tensor) -> Tensor:
        """``(B, 3)`` where-dimensions to the pose ``(c_x, c_y, s)`` in canvas units (see :func:`object_moments`)."""
        return (z_where.float() - self.where_shift) / self.where_scale

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``(B, latent_dim)``: the 3 where-dimensions first."""
        self._check_input(x)
        moments = object_moments(x)
        # The resamplings run in float32 whatever the model's dtype: in bfloat16 a grid coordinate near 1 is off
        # by up to a third of a pixel.
        grid = _window_grid(moments, self.glimpse, False, self.image_size)
        window = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        window = window.to(x.dtype)
        mu_what, logvar_what = self.latent._moments(self.encoder(window))
        mu_where = (moments * self.where_scale + self.where_shift).to(mu_what.dtype)
        logvar_where = self.where_logvar.to(logvar_what.dtype).expand(x.shape[0], WHERE_DIMS)
        return torch.cat([mu_where, mu_what], 1), torch.cat([logvar_where, logvar_what], 1)

    def _run_decoder(self, z: Tensor) -> Tensor:
        window = self.decoder(z[:, WHERE_DIMS:])
        grid = _window_grid(self.pose(z[:, :WHERE_DIMS]).float(), self.glimpse, True, self.image_size)
        # Outside the window the border of the drawing (the background) continues.
        image = F.grid_sample(window.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return image.to(window.dtype)
