"""scikit-learn's bundled 8x8 handwritten digits (1797 images, shipped inside scikit-learn, so
nothing is downloaded). Needs the optional extra: ``pip install fastvae[digits]``."""

from __future__ import annotations

import torch

from .arrays import ArrayDataset

__all__ = ["load_digits"]


def load_digits(*, device: torch.device | str = "cpu") -> ArrayDataset:
    """The 1797 digits as an :class:`~fastvae.data.arrays.ArrayDataset` on ``device``.

    Samples are float32 (1, 8, 8) images with values in [0, 1] (the 17 grey levels 0..16 of the
    original, divided by 16); ``labels`` holds the digit classes 0..9, and ``ds[i]`` returns
    ``(image, label)``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install fastvae[digits]``).
    """
    try:
        from sklearn.datasets import load_digits as _sklearn_load_digits
    except ImportError as exc:
        raise ImportError(
            "the 'digits' dataset needs scikit-learn, which is not installed: pip install fastvae[digits]"
        ) from exc
    bunch = _sklearn_load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    return ArrayDataset(images, device=device, labels=bunch.target, name="digits")
