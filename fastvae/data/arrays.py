"""Datasets held as one tensor on the training device: user ``.npy``/``.npz`` arrays, in-memory
arrays and tensors, and any map-style torch Dataset (materialised once).

Every array is validated before use; problems raise :class:`fastvae.data.DataError` naming the
source and what was expected versus found.

Conventions:

* The first dimension indexes samples: an array of shape ``(N, ...)`` gives ``N`` samples of
  shape ``...``. At least 2 dimensions are required. A 3-D array ``(N, H, W)`` is read as
  grayscale images and gets a channel dimension, ``(N, 1, H, W)``. Images are channels-first,
  ``(N, C, H, W)``; with ``layout='auto'`` (the default) a 4-D array that looks channels-last,
  ``(N, H, W, C)`` with C in 1, 3 or 4 and H, W larger (as PIL, matplotlib and TensorFlow store
  images), is transposed to ``(N, C, H, W)`` and :attr:`ArrayDataset.layout_note` says so;
  ``layout='channels_first'`` keeps every shape as it is and ``'channels_last'`` transposes any
  4-D array. Other shapes are kept as they are.
* Float data is converted to float32 and kept as it is; :attr:`ArrayDataset.value_range` reports
  its range, since a Bernoulli likelihood expects values in [0, 1] and other likelihoods do not.
* ``uint8`` data is taken as 8-bit images and scaled by 1/255, except when every value is 0 or 1
  (binary images such as dSprites), which are kept as 0/1. ``bool`` data becomes 0/1. Other
  integer types are converted to float32 unscaled. ``uint8`` and ``bool`` data stay 1 byte per
  value on the device and are converted per batch.
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from typing import Any, Sequence

import numpy as np
import torch

from .checks import DataError, check_index

__all__ = ["ArrayDataset", "load_array", "wrap_dataset", "LAYOUTS", "looks_channels_last"]

#: How a 4-D array is read (see the module docstring).
LAYOUTS = ("auto", "channels_first", "channels_last")
_CHANNELS = (1, 3, 4)

# Rows are validated and converted in chunks of about this many bytes, so checking a large
# memory-mapped .npy file never needs a second full-size temporary.
_CHUNK_BYTES = 1 << 26


class ArrayDataset(torch.utils.data.Dataset):
    """Samples held as one tensor on ``device``; ``ds[i]`` is the float32 sample ``i`` (with its
    label, ``(sample, label)``, when the data has labels).

    Args:
        data: numpy array or tensor ``(N, ...)`` with N >= 1 (see the module conventions for
            dtypes, value scaling and the channel dimension added to 3-D arrays).
        device: where the data is kept and batches are returned.
        labels: optional per-sample labels (N,), e.g. digit classes; kept on ``device``.
        name: how errors and ``repr`` refer to the data (a file name, ``'digits'``, ...).
        layout: ``'auto'``, ``'channels_first'`` or ``'channels_last'``: how a 4-D array is read.

    Attributes:
        sample_shape: shape of one sample, e.g. ``(1, 28, 28)``.
        value_range: ``(min, max)`` of the sample values after scaling, as Python floats.
        layout_note: None, or a sentence saying that the data was read as channels-last images.
        labels: LongTensor (N,) or None.
        factors: None (ground-truth factors exist only for :class:`fastvae.data.Shapes`).
    """

    factors = None

    def __init__(
        self,
        data: np.ndarray | torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        labels: np.ndarray | torch.Tensor | Sequence[int] | None = None,
        name: str = "array",
        layout: str = "auto",
    ) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.name = name
        self.device = torch.device(device)
        storage, self._scale, self.value_range = _convert(data, name)
        self.layout_note = None
        if storage.dim() == 3:
            storage = storage.unsqueeze(1)
        elif storage.dim() == 4 and (layout == "channels_last" or (layout == "auto" and looks_channels_last(
                tuple(storage.shape)))):
            shape = tuple(storage.shape)
            storage = storage.permute(0, 3, 1, 2).contiguous()
            self.layout_note = (f"{name}: the array {shape} was read as channels-last images (N, H, W, C) and "
                                f"transposed to {tuple(storage.shape)}"
                                + (" (--data-layout channels-first keeps it as it is)" if layout == "auto" else ""))
        self._data = storage.to(self.device)
        self.sample_shape: tuple[int, ...] = tuple(self._data.shape[1:])
        self.labels = None
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
            if labels.shape != (len(self._data),):
                raise DataError(f"{name}: expected labels of shape ({len(self._data)},), found {tuple(labels.shape)}")
            self.labels = labels.long().to(self.device)

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index`` as a float32 tensor, or ``(sample, label)`` when the data has labels."""
        index = torch.tensor([check_index(index, len(self))], device=self.device)
        sample = self.batch(index)[0]
        return sample if self.labels is None else (sample, self.labels[index[0]])

    def to(self, device: torch.device | str) -> "ArrayDataset":
        """The same data held on ``device`` (a shallow copy); ``self`` if already there."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = copy.copy(self)
        moved.device, moved._data = device, self._data.to(device)
        moved.labels = None if self.labels is None else self.labels.to(device)
        return moved

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, sample_shape={self.sample_shape}, "
            f"value_range={self.value_range}, device='{self.device}')"
        )

    def batch(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """float32 samples (B, *sample_shape) for indices (B,), on the dataset device.

        Indices already on the device (e.g. a slice of ``torch.randperm(len(ds), device=...)``)
        are used without a host sync; indices are not bounds-checked off the CPU.
        """
        indices = torch.as_tensor(indices, device=self.device)
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"indices: expected an integer tensor, got dtype {indices.dtype}")
        indices = indices.reshape(-1)
        if indices.device.type == "cpu" and indices.numel() and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(
                f"indices: expected values in [0, {len(self)}), got [{int(indices.min())}, {int(indices.max())}]"
            )
        rows = self._data.index_select(0, indices)
        if rows.dtype == torch.float32:
            return rows
        rows = rows.float()
        return rows.mul_(self._scale) if self._scale != 1.0 else rows


def looks_channels_last(shape: tuple) -> bool:
    """Whether a 4-D shape ``(N, A, B, C)`` looks like channels-last images: C is 1, 3 or 4 and A and B
    are larger than C (and than 4), while A is not itself a channel count."""
    if len(shape) != 4:
        return False
    _, a, b, c = shape
    return c in _CHANNELS and a not in _CHANNELS and min(a, b) > max(c, 4)


def _convert(data: Any, name: str) -> tuple[torch.Tensor, float, tuple[float, float]]:
    """Validate ``data`` and return (storage tensor on CPU, scale applied per batch, value range)."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        data = (data.float() if data.dtype in (torch.bfloat16, torch.float16) else data).numpy()
    if not isinstance(data, np.ndarray):
        raise DataError(f"{name}: expected a numpy array or tensor, found {type(data).__name__}")
    kind = data.dtype.kind
    if kind not in "fiub":
        what = {"c": "complex", "O": "object", "U": "string", "S": "bytes", "V": "structured/void", "M": "datetime",
                "m": "timedelta"}.get(kind, "non-numeric")
        raise DataError(f"{name}: expected a real numeric array (float, int, uint8 or bool), found dtype "
                        f"{data.dtype} ({what})")
    if data.ndim < 2:
        raise DataError(f"{name}: expected at least 2 dimensions (N samples x features...), found shape "
                        f"{data.shape} ({data.ndim}-D)")
    if data.size == 0:
        raise DataError(f"{name}: expected a non-empty array (N >= 1 samples of >= 1 value), found shape {data.shape}")

    if data.dtype == np.uint8 or kind == "b":
        target = torch.uint8
    else:
        target = torch.float32
    storage = torch.empty(data.shape, dtype=target)
    storage_np = storage.numpy()
    lo, hi = np.inf, -np.inf
    rows_per_chunk = max(1, _CHUNK_BYTES // max(1, data[0].nbytes))
    for start in range(0, data.shape[0], rows_per_chunk):
        chunk = storage_np[start : start + rows_per_chunk]
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported below
            chunk[...] = data[start : start + rows_per_chunk]
        if kind == "f":  # checked after the cast, so float64 values beyond float32 range are caught
            finite = np.isfinite(chunk)
            if not finite.all():
                row, *where = (int(i) for i in np.argwhere(~finite)[0])
                found = data[(start + row, *where)]
                raise DataError(
                    f"{name}: expected finite float32 values, found {found} at index {(start + row, *where)}"
                )
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))

    scale = 1.0
    if data.dtype == np.uint8 and hi > 1:
        scale = 1.0 / 255.0
    return storage, scale, (lo * scale, hi * scale)


def split_key(path: str | os.PathLike) -> tuple[str, str | None]:
    """``'data.npz:images'`` -> ``('data.npz', 'images')``; other paths carry no key."""
    path = os.fspath(path)
    head, sep, key = path.rpartition(":")
    if sep and head.lower().endswith((".npz", ".npy")) and key and not os.path.exists(path):
        return head, key
    return path, None


def _read_array(path: str, key: str | None) -> np.ndarray:
    """Load the array at ``path`` (``.npy``, or ``.npz`` with an optional key) without pickle."""
    if not os.path.exists(path):
        raise DataError(f"{path}: file not found; expected a .npy or .npz file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory; expected a .npy or .npz file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".npy", ".npz"):
        raise DataError(f"{path}: unsupported file type {suffix or '(none)'!r}; expected a .npy or .npz file")
    if key is not None and suffix != ".npz":
        raise DataError(f"{path}: a ':key' selects an array inside a .npz file, not a {suffix} file")
    # np.load takes any file without the right signature for a pickle; check it first, so a
    # malformed file is reported as such.
    with open(path, "rb") as handle:
        head = handle.read(6)
    if suffix == ".npy" and head != b"\x93NUMPY":
        raise DataError(f"{path}: malformed .npy file (no NumPy .npy header); expected an array saved by numpy.save")
    if suffix == ".npz" and not zipfile.is_zipfile(path):
        raise DataError(f"{path}: malformed .npz file (not a zip archive); expected an archive saved by numpy.savez")
    try:
        if suffix == ".npy":
            # Memory-map: the array is validated and converted chunk by chunk, never loaded twice.
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if not keys:
                raise DataError(f"{path}: expected an .npz archive with at least one array, found none")
            if key is None:
                if len(keys) != 1:
                    raise DataError(f"{path}: the archive holds {len(keys)} arrays {keys}; expected one, or name "
                                    f"one as '{path}:KEY'")
                key = keys[0]
            elif key not in keys:
                raise DataError(f"{path}: no array named {key!r}; the archive holds {keys}")
            return archive[key]
    except DataError:
        raise
    except MemoryError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            where = f"{path}:{key}" if key else path
            raise DataError(f"{where}: expected a real numeric array, found an object array (pickled "
                            "Python objects)") from exc
        raise DataError(f"{path}: malformed {suffix} file ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed {suffix} file ({type(exc).__name__}: {exc})") from exc


def load_array(path: str | os.PathLike, *, device: torch.device | str = "cpu", layout: str = "auto") -> ArrayDataset:
    """Load a ``.npy`` file, or one array of a ``.npz`` file, as an :class:`ArrayDataset`.

    ``path`` may name an array inside an archive as ``'file.npz:key'``; an archive holding a single
    array needs no key. Files are read with ``allow_pickle=False``.

    ``layout``: how a 4-D array is read (see the module docstring).

    Raises:
        DataError: the file is missing, unreadable or malformed, or its array is not a non-empty,
            finite, real numeric array with at least 2 dimensions. The message names the file.
    """
    file, key = split_key(path)
    array = _read_array(file, key)
    name = f"{file}:{key}" if key else file
    return ArrayDataset(array, device=device, name=name, layout=layout)


def wrap_dataset(dataset: torch.utils.data.Dataset, *, device: torch.device | str = "cpu",
                 name: str | None = None, layout: str = "auto") -> ArrayDataset:
    """Materialise a map-style dataset into an :class:`ArrayDataset` on ``device``.

    Each item may be a tensor (or anything ``numpy.asarray`` accepts, e.g. a PIL image) or a tuple
    / list whose first element is the sample; if every item's second element is an int (or a
    one-element integer tensor), those become ``labels``. Items are read once, in order, so the
    dataset must fit in memory; batches then come from one tensor by index.
    """
    name = name or type(dataset).__name__
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        raise DataError(f"{name}: expected a map-style dataset with __len__ and __getitem__, found "
                        f"{type(dataset).__name__}")
    n = len(dataset)
    if n == 0:
        raise DataError(f"{name}: expected a non-empty dataset, found 0 items")
    samples, labels = [], []
    for i in range(n):
        item = dataset[i]
        label = None
        if isinstance(item, (tuple, list)):
            if not item:
                raise DataError(f"{name}: item {i} is an empty {type(item).__name__}; expected a sample")
            if len(item) > 1:
                label = item[1]
            item = item[0]
        if isinstance(item, torch.Tensor):
            item = item.detach().cpu()
            item = item.float() if item.dtype in (torch.bfloat16, torch.float16) else item
        sample = np.asarray(item)  # dtype problems are reported by ArrayDataset
        if samples and sample.shape != samples[0].shape:
            raise DataError(f"{name}: expected every sample to have shape {samples[0].shape}, found "
                            f"{sample.shape} at item {i}")
        samples.append(sample)
        labels.append(_as_label(label))
    if samples[0].ndim == 0:
        raise DataError(f"{name}: expected samples with at least 1 dimension, found scalars")
    data = np.stack(samples)
    keep_labels = all(label is not None for label in labels)
    return ArrayDataset(data, device=device, labels=labels if keep_labels else None, name=name, layout=layout)


def _as_label(label: Any) -> int | None:
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.dtype.is_floating_point:
        return int(label)
    if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
        return int(label)
    return None
