"""Procedural dSprites-style shapes, rendered by vectorized torch code on the training device.

Every image is a 64x64 binary sprite fixed by five ground-truth factors, enumerated in this
mixed-radix order (the last factor varies fastest, as in dSprites):

    ==============  ====  =============================================================
    factor          size  values
    ==============  ====  =============================================================
    ``shape``          3  0 = square, 1 = ellipse, 2 = heart (the value is the index)
    ``scale``          6  ``torch.linspace(0.5, 1, 6)``
    ``orientation``   40  ``torch.linspace(0, 2*pi, 40)`` radians, counter-clockwise
    ``posX``          32  ``torch.linspace(0, 1, 32)``, left to right
    ``posY``          32  ``torch.linspace(0, 1, 32)``, top to bottom (image row order)
    ==============  ====  =============================================================

3 * 6 * 40 * 32 * 32 = 737280 images. As in dSprites the first and last orientations are both a
full turn apart, so they render the same image, and the square (ellipse) repeats every pi/2 (pi).

Rendering works backwards: each pixel centre is mapped by the inverse translation, rotation and
scale into the frame of a canonical shape, then tested for membership:

* square:  ``max(|x|, |y|) <= 1``
* ellipse: ``x^2 + y^2 <= 1`` after stretching x by ``a`` and y by ``a/2`` (aspect 2:1, so its
  orientation is visible)
* heart:   ``(x^2 + y^2 - 1)^3 - x^2 y^3 <= 0`` (lobes up at orientation 0), shifted so its
  centroid sits at the origin

The three canonical shapes are normalised to the same area, so at a given scale they cover about
the same number of pixels, and each is centred on its centroid, so the centre of mass of every
image lies at its position. Rendering is exact and deterministic: an image depends only on its
factors, and the dataset seed only drives random sampling (:meth:`Shapes.sample`,
:meth:`Shapes.stream`).
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple, Sequence

import torch

from .checks import check_index

__all__ = [
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "SHAPE_NAMES",
    "IMAGE_SIZE",
    "FactorInfo",
    "Shapes",
    "render_shapes",
]

FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
IMAGE_SIZE: int = 64

# Canvas geometry, in units where the canvas spans [-1, 1] on both axes (1 unit = 32 pixels).
# The square at scale 1 has half-side _SIZE (19.2 px wide, 9.6 px at scale 0.5); a position of 0
# or 1 puts the centre _POS_EXTENT from the middle (pixel 12.8 or 51.2), so, as in dSprites,
# shapes stay inside the canvas except for a sliver of the largest ones in the corners.
_SIZE = 0.3
_POS_EXTENT = 0.6

# Equal areas: the canonical square (half-side 1) has area 4.
#  ellipse with semi-axes (a, a/2): pi a^2 / 2 = 4.
_ELLIPSE_A = math.sqrt(8.0 / math.pi)
_ELLIPSE_B = _ELLIPSE_A / 2.0
#  heart (x^2+y^2-1)^3 <= x^2 y^3: area 3.6619727258, centroid (0, 0.2934812273), both from
#  quadrature of the polar radius r(theta) (the region is star-shaped about the origin); scaled by
#  k, its area is k^2 * 3.66197... = 4.
_HEART_AREA = 3.661972725818273
_HEART_CENTROID_Y = 0.29348122728178994
_HEART_K = math.sqrt(4.0 / _HEART_AREA)

# Per-shape stretch of the canonical x / y axes and offset of the canonical origin (the centroid).
_STRETCH_X = (1.0, _ELLIPSE_A, _HEART_K)
_STRETCH_Y = (1.0, _ELLIPSE_B, _HEART_K)
_OFFSET_Y = (0.0, 0.0, _HEART_CENTROID_Y)


class FactorInfo(NamedTuple):
    """Ground-truth factors of a dataset: their ``names``, grid ``sizes`` and per-factor ``values``
    (a tuple of 1-D float tensors, ``values[k][i]`` is the value of index ``i`` of factor ``k``)."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    values: tuple[torch.Tensor, ...]


def _factor_grids(device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """The five value grids (float32), index i of factor k -> grids[k][i]."""
    return (
        torch.arange(FACTOR_SIZES[0], dtype=torch.float32, device=device),
        torch.linspace(0.5, 1.0, FACTOR_SIZES[1], device=device),
        torch.linspace(0.0, 2.0 * math.pi, FACTOR_SIZES[2], device=device),
        torch.linspace(0.0, 1.0, FACTOR_SIZES[3], device=device),
        torch.linspace(0.0, 1.0, FACTOR_SIZES[4], device=device),
    )


def _pixel_centres(image_size: int, device: torch.device | str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Canvas x of each column (left to right) and canvas y of each row (y points up)."""
    centres = (torch.arange(image_size, dtype=torch.float64, device=device) + 0.5) * (2.0 / image_size) - 1.0
    return centres, -centres


def _inside(shape_id: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Membership (float32 0/1) of canonical-frame points (x, y) in canonical shape ``shape_id``.

    Overwrites ``x`` and ``y`` (they are temporaries of the renderer) and compares in place, which
    leaves a float 0/1 result: each test is then a handful of elementwise passes over the batch,
    which is what bounds the CPU rendering time.
    """
    if shape_id == 0:  # square
        return torch.maximum(x.abs_(), y.abs_()).le_(1.0)
    if shape_id == 1:  # ellipse, already stretched to the unit circle
        return x.mul_(x).addcmul_(y, y).le_(1.0)
    # heart: (x^2 + y^2 - 1)^3 <= x^2 y^3
    x2 = x.mul_(x)
    y3 = y * y
    t = (x2 + y3).sub_(1.0)
    y3.mul_(y)
    t3 = t * t
    return t3.mul_(t).le_(x2.mul_(y3))


def _affine(
    shape: torch.Tensor, scale: torch.Tensor, orientation: torch.Tensor, pos_x: torch.Tensor, pos_y: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """Per-sample coefficients (float64) of the map from canvas (u, v) to the canonical frame:
    X = ax*u + bx*v + cx, Y = ay*u + by*v + cy.

    Computed in float64 so that orientations 0 and 2*pi (and any angle and its turn) give the same
    float32 coefficients, hence exactly the same pixels.
    """
    shape = shape.long()
    f64 = dict(dtype=torch.float64)
    scale, theta = scale.to(**f64), orientation.to(**f64)
    centre_u = (pos_x.to(**f64) * 2.0 - 1.0) * _POS_EXTENT
    centre_v = -(pos_y.to(**f64) * 2.0 - 1.0) * _POS_EXTENT  # posY grows downwards, v upwards
    device = scale.device
    stretch_x = torch.tensor(_STRETCH_X, device=device, **f64)[shape]
    stretch_y = torch.tensor(_STRETCH_Y, device=device, **f64)[shape]
    offset_y = torch.tensor(_OFFSET_Y, device=device, **f64)[shape]
    cos, sin = torch.cos(theta), torch.sin(theta)
    # rotate the offset from the centre by -theta, then undo the scale and the canonical stretch
    inv_x = 1.0 / (scale * _SIZE * stretch_x)
    inv_y = 1.0 / (scale * _SIZE * stretch_y)
    ax, bx = cos * inv_x, sin * inv_x
    ay, by = -sin * inv_y, cos * inv_y
    cx = -(ax * centre_u + bx * centre_v)
    cy = -(ay * centre_u + by * centre_v) + offset_y
    return ax, bx, cx, ay, by, cy


def render_shapes(
    shape: torch.Tensor,
    scale: torch.Tensor,
    orientation: torch.Tensor,
    pos_x: torch.Tensor,
    pos_y: torch.Tensor,
    *,
    image_size: int = IMAGE_SIZE,
) -> torch.Tensor:
    """Render a batch of sprites from factor *values* (not indices).

    Args:
        shape: integer tensor (B,), 0 = square, 1 = ellipse, 2 = heart.
        scale: float tensor (B,), 1 is the largest dSprites scale (any positive value works).
        orientation: float tensor (B,), radians, counter-clockwise as displayed (any angle works).
        pos_x: float tensor (B,), 0 = left and 1 = right position (values outside [0, 1] move the
            shape further out).
        pos_y: float tensor (B,), 0 = top and 1 = bottom position.
        image_size: side of the square canvas in pixels.

    Returns:
        float32 tensor (B, 1, image_size, image_size) of 0/1 values, on the device of ``scale``.
    """
    device = scale.device
    batch = scale.shape[0]
    shape, orientation, pos_x, pos_y = (t.to(device) for t in (shape, orientation, pos_x, pos_y))
    for name, value in (("shape", shape), ("orientation", orientation), ("pos_x", pos_x), ("pos_y", pos_y)):
        if value.shape != (batch,):
            raise ValueError(f"{name}: expected shape ({batch},) like scale, got {tuple(value.shape)}")
    ax, bx, cx, ay, by, cy = _affine(shape, scale, orientation, pos_x, pos_y)
    u, v = _pixel_centres(image_size, device)
    # Split each coordinate into a per-column (B, 1, W) and a per-row (B, H, 1) part, both small;
    # the full (B, H, W) grid then costs a single broadcast add per coordinate.
    col_x = (ax[:, None] * u + cx[:, None]).float().unsqueeze(1)
    row_x = (bx[:, None] * v).float().unsqueeze(2)
    col_y = (ay[:, None] * u + cy[:, None]).float().unsqueeze(1)
    row_y = (by[:, None] * v).float().unsqueeze(2)

    render = _render_grouped if device.type == "cpu" else _render_selected
    return render(shape.long(), (col_x, row_x), (col_y, row_y), image_size)


def _render_grouped(shape, x_parts, y_parts, image_size: int) -> torch.Tensor:
    """CPU strategy: elementwise passes dominate, so test each sample against its own shape only.
    (Grouping needs the group sizes on the host: free on CPU, a sync on an accelerator.)"""
    batch = shape.shape[0]
    images = torch.empty(batch, 1, image_size, image_size, dtype=torch.float32, device=shape.device)
    for shape_id in range(len(SHAPE_NAMES)):
        members = (shape == shape_id).nonzero().squeeze(1)
        if members.numel() == 0:
            continue
        if members.numel() == batch:  # one shape only: no gather, no scatter
            return _inside(shape_id, x_parts[0] + x_parts[1], y_parts[0] + y_parts[1]).unsqueeze(1)
        x = x_parts[0][members] + x_parts[1][members]
        y = y_parts[0][members] + y_parts[1][members]
        images[members, 0] = _inside(shape_id, x, y)
    return images


def _render_selected(shape, x_parts, y_parts, image_size: int) -> torch.Tensor:
    """Accelerator strategy: the three tests are cheap there and a host sync is not, so evaluate
    every shape on the whole batch and select; rendering stays asynchronous."""
    shape = shape.view(-1, 1, 1)
    images = torch.zeros(shape.shape[0], image_size, image_size, dtype=torch.float32, device=shape.device)
    for shape_id in range(len(SHAPE_NAMES)):
        inside = _inside(shape_id, x_parts[0] + x_parts[1], y_parts[0] + y_parts[1])
        images = torch.where(shape == shape_id, inside, images)
    return images.unsqueeze(1)


class Shapes(torch.utils.data.Dataset):
    """Procedural dSprites-style dataset: 737280 binary 64x64 sprites, rendered on ``device``.

    ``ds[i]`` returns ``(image, factor_indices)``: a float32 (1, 64, 64) tensor of 0/1 values and a
    LongTensor (5,) of indices into :attr:`FACTOR_SIZES`, with ``i`` decoded in the mixed-radix order
    shape, scale, orientation, posX, posY (see :meth:`index_to_factors`). Nothing is stored: every
    image is rendered on demand, so batches come straight from the device.

    Args:
        device: where images are rendered and returned (``'cpu'``, ``'cuda'``, ...).
        seed: seeds :meth:`sample` (a stateful generator created here) and :meth:`stream` (a fresh
            generator per stream). Random access does not depend on it.
    """

    FACTOR_NAMES = FACTOR_NAMES
    FACTOR_SIZES = FACTOR_SIZES
    SHAPE_NAMES = SHAPE_NAMES
    name = "shapes"

    def __init__(self, device: torch.device | str = "cpu", seed: int = 0) -> None:
        self.device = torch.device(device)
        self.seed = int(seed)
        self.sample_shape: tuple[int, ...] = (1, IMAGE_SIZE, IMAGE_SIZE)
        self.value_range: tuple[float, float] = (0.0, 1.0)
        self.factors = FactorInfo(FACTOR_NAMES, FACTOR_SIZES, _factor_grids(self.device))
        self.labels = None
        # strides of the mixed-radix index: (40*32*32*6, 40*32*32, 32*32, 32, 1)
        strides = [1]
        for size in reversed(FACTOR_SIZES[1:]):
            strides.insert(0, strides[0] * size)
        self._strides = torch.tensor(strides, dtype=torch.long, device=self.device)
        self._sizes = torch.tensor(FACTOR_SIZES, dtype=torch.long, device=self.device)
        self._length = math.prod(FACTOR_SIZES)
        self._generator = torch.Generator().manual_seed(self.seed)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image (1, 64, 64), factor_indices (5,))`` of flat index ``index`` (negative counts
        from the end)."""
        index = check_index(index, self._length)
        factors = self.index_to_factors(torch.tensor([index], device=self.device))
        return self.render(factors)[0], factors[0]

    def __repr__(self) -> str:
        return f"Shapes(device='{self.device}', seed={self.seed})"

    def to(self, device: torch.device | str) -> "Shapes":
        """The same dataset (same seed) rendering on ``device``; ``self`` if already there."""
        return self if torch.device(device) == self.device else Shapes(device=device, seed=self.seed)

    # ----------------------------------------------------------------- indices and factors
    def index_to_factors(self, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Decode flat indices (B,) into factor indices (B, 5), LongTensor on the dataset device."""
        index = self._as_index(index)
        return torch.div(index[:, None], self._strides, rounding_mode="floor") % self._sizes

    def factors_to_index(self, factor_indices: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Encode factor indices (B, 5) (or one (5,) row) into flat indices (B,), the inverse of
        :meth:`index_to_factors`."""
        factors = self._as_factors(factor_indices)
        return (factors * self._strides).sum(dim=1)

    def factor_values(self, factor_indices: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Float32 factor values (B, 5) of factor indices (B, 5): shape id, scale, orientation in
        radians, posX and posY in [0, 1]."""
        factors = self._as_factors(factor_indices)
        return torch.stack([grid[factors[:, k]] for k, grid in enumerate(self.factors.values)], dim=1)

    # ----------------------------------------------------------------------- rendering
    def render(self, factor_indices: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        """Render factor indices (B, 5) into float32 0/1 images (B, 1, 64, 64) on the device."""
        factors = self._as_factors(factor_indices)
        grids = self.factors.values
        return render_shapes(
            factors[:, 0],
            grids[1][factors[:, 1]],
            grids[2][factors[:, 2]],
            grids[3][factors[:, 3]],
            grids[4][factors[:, 4]],
        )

    def batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Images (B, 1, 64, 64) for flat indices (B,), e.g. a slice of ``torch.randperm(len(ds))``.

        Rendered on the fly on the dataset device; with indices already there, no host sync.
        Use :meth:`index_to_factors` on the same indices for their ground-truth factors.
        """
        return self.render(self.index_to_factors(indices))

    # ------------------------------------------------------------------ random sampling
    def sample_factors(self, n: int, generator: torch.Generator | int | None = None) -> torch.Tensor:
        """``n`` uniformly drawn factor index rows (n, 5) on the dataset device.

        ``generator``: a torch.Generator (any device), an int seed, or None for the dataset's own
        generator (seeded by ``seed``, advanced by each call).
        """
        generator = self._generator if generator is None else _as_generator(generator)
        # Draw on the generator's device, then move: the same seed gives the same factors whether
        # images are rendered on the CPU or on an accelerator.
        draws = torch.rand(n, len(FACTOR_SIZES), generator=generator, dtype=torch.float64, device=generator.device)
        sizes = torch.tensor(FACTOR_SIZES, dtype=torch.float64, device=generator.device)
        return (draws * sizes).long().clamp_max_(sizes.long() - 1).to(self.device)

    def sample(self, n: int, generator: torch.Generator | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images with uniformly drawn factors: ``(images (n, 1, 64, 64), factor_indices (n, 5))``.

        ``generator`` as in :meth:`sample_factors`.
        """
        factors = self.sample_factors(n, generator)
        return self.render(factors), factors

    def stream(
        self, batch_size: int, generator: torch.Generator | int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless iterator of ``(images, factor_indices)`` batches with uniformly drawn factors.

        ``generator``: a torch.Generator, an int seed, or None for a fresh generator seeded by the
        dataset ``seed``; two streams with the same seed yield identical batches.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
        generator = torch.Generator().manual_seed(self.seed) if generator is None else _as_generator(generator)
        while True:
            yield self.sample(batch_size, generator)

    # -------------------------------------------------------------------------- helpers
    def _as_index(self, index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        index = torch.as_tensor(index, device=self.device)
        if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise TypeError(f"indices: expected an integer tensor, got dtype {index.dtype}")
        index = index.long().reshape(-1)
        # A bounds check needs the values on the host: cheap on CPU, a sync elsewhere.
        if index.device.type == "cpu" and index.numel() and (index.min() < 0 or index.max() >= self._length):
            raise IndexError(
                f"indices: expected values in [0, {self._length}), got [{int(index.min())}, {int(index.max())}]"
            )
        return index

    def _as_factors(self, factor_indices: torch.Tensor | Sequence[Sequence[int]]) -> torch.Tensor:
        factors = torch.as_tensor(factor_indices, device=self.device)
        if factors.dtype.is_floating_point or factors.dtype.is_complex or factors.dtype == torch.bool:
            raise TypeError(f"factor_indices: expected an integer tensor, got dtype {factors.dtype}")
        if factors.dim() == 1:
            factors = factors.unsqueeze(0)
        if factors.dim() != 2 or factors.shape[1] != len(FACTOR_SIZES):
            raise ValueError(
                f"factor_indices: expected shape (B, {len(FACTOR_SIZES)}), got {tuple(factors.shape)}"
            )
        factors = factors.long()
        if factors.device.type == "cpu" and factors.numel() and (
            (factors < 0).any() or (factors >= self._sizes).any()
        ):
            raise IndexError(f"factor_indices: expected each column k in [0, FACTOR_SIZES[k]) = {FACTOR_SIZES}")
        return factors


def _as_generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator: expected a torch.Generator, an int seed or None, got {type(generator).__name__}")
