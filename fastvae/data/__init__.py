"""Datasets for training VAEs, all embedded or local (nothing is downloaded).

* ``'shapes'`` (the default): procedural dSprites-style sprites with ground-truth factors,
  rendered on the training device (:class:`Shapes`).
* ``'digits'``: scikit-learn's bundled 8x8 handwritten digits (:func:`load_digits`, needs
  ``pip install fastvae[digits]``).
* a ``.npy`` / ``.npz`` file (``'file.npz:key'`` picks one array of an archive) (:func:`load_array`).
* an in-memory array or tensor, or any map-style torch Dataset (:class:`ArrayDataset`,
  :func:`wrap_dataset`).

:func:`get_dataset` returns any of these behind one interface:

* ``len(ds)`` and ``ds[i]`` (a torch Dataset, so DataLoader works);
* ``ds.batch(indices) -> Tensor (B, *ds.sample_shape)``, float32 on ``ds.device``: the fast path for
  a training loop, with ``indices`` e.g. a slice of ``torch.randperm(len(ds), device=ds.device)``
  (no host sync when the indices are on the device);
* ``ds.sample_shape``, ``ds.device``, ``ds.name``;
* ``ds.value_range``: ``(min, max)`` of the values (a Bernoulli likelihood expects [0, 1]);
* ``ds.factors``: :class:`FactorInfo` (names, sizes, values) for ``shapes``, else None;
  ``ds.labels``: class labels (N,) when known (``digits``), else None.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .arrays import ArrayDataset, load_array, split_key, wrap_dataset
from .checks import DataError
from .digits import load_digits
from .shapes import FACTOR_NAMES, FACTOR_SIZES, SHAPE_NAMES, FactorInfo, Shapes, render_shapes

__all__ = [
    "DataError",
    "DATASET_NAMES",
    "get_dataset",
    "Shapes",
    "FactorInfo",
    "FACTOR_NAMES",
    "FACTOR_SIZES",
    "SHAPE_NAMES",
    "render_shapes",
    "load_digits",
    "ArrayDataset",
    "load_array",
    "wrap_dataset",
]

#: Names :func:`get_dataset` understands besides file paths.
DATASET_NAMES: tuple[str, ...] = ("shapes", "digits")


def get_dataset(
    name_or_path: str | os.PathLike | torch.utils.data.Dataset | torch.Tensor | np.ndarray = "shapes",
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    layout: str = "auto",
) -> Shapes | ArrayDataset:
    """Open a dataset by name, file path, array or torch Dataset (see the module docstring for the
    interface every result shares).

    Args:
        name_or_path: ``'shapes'``, ``'digits'``, a ``.npy`` / ``.npz`` path (``'file.npz:key'``
            for one array of an archive), a tensor or numpy array ``(N, ...)``, or a map-style
            torch Dataset (materialised on ``device``; a :class:`Shapes` or :class:`ArrayDataset`
            is returned as it is, moved to ``device`` if needed).
        device: where samples are rendered or stored and where batches are returned.
        seed: seeds the random sampling of ``shapes`` (:meth:`Shapes.sample`, :meth:`Shapes.stream`);
            the other datasets are fixed arrays and ignore it.
        layout: how a 4-D array (a file, an array, a Dataset's samples) is read: ``'auto'``
            (channels-last images are recognised and transposed), ``'channels_first'`` or
            ``'channels_last'`` (see :mod:`fastvae.data.arrays`).

    Raises:
        DataError: unknown name, or a file or array that fails validation.
        ImportError: ``'digits'`` without scikit-learn installed.
    """
    if isinstance(name_or_path, (Shapes, ArrayDataset)):
        return name_or_path.to(device)
    if isinstance(name_or_path, (torch.Tensor, np.ndarray)):
        return ArrayDataset(name_or_path, device=device, name=f"{type(name_or_path).__name__} argument",
                            layout=layout)
    if isinstance(name_or_path, torch.utils.data.Dataset):
        return wrap_dataset(name_or_path, device=device, layout=layout)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(
            "name_or_path: expected a dataset name, a file path, an array or a torch Dataset, got "
            f"{type(name_or_path).__name__}"
        )
    if isinstance(name_or_path, str):
        key = name_or_path.strip().lower()
        if key == "shapes":
            return Shapes(device=device, seed=seed)
        if key == "digits":
            return load_digits(device=device)
    path = os.fspath(name_or_path)
    file, _ = split_key(path)
    if os.path.splitext(file)[1].lower() not in (".npy", ".npz") and not os.path.exists(file):
        raise DataError(
            f"{path}: unknown dataset; expected one of {', '.join(repr(n) for n in DATASET_NAMES)} "
            "or the path of a .npy/.npz file"
        )
    return load_array(path, device=device, layout=layout)
