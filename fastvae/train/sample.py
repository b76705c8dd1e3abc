"""``fastvae sample``: decode ``z ~ N(0, I)`` with a trained run's model and write one grid of the
images (PNG) or the samples as an array (``.npy``)."""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

from .errors import TrainError
from .load import load_run

__all__ = ["write_samples"]


def write_samples(run: Union[str, os.PathLike], *, n: int = 64, seed: int = 0, out: Optional[str] = None,
                  weights: str = "auto", best: bool = False, device: Union[str, torch.device] = "cpu") -> str:
    """Write ``n`` prior samples of the model of ``run`` to ``out`` (default
    ``RUN/samples-<n>-seed<seed>.png``); returns the path.  The samples are the decoder's data means
    (probabilities for a Bernoulli decoder).  A PNG needs image samples ``(C, H, W)``; any samples go to
    ``.npy``."""
    loaded = load_run(run, device=device, weights=weights, best=best)
    shape = tuple(loaded.data_info["sample_shape"])
    folder = os.fspath(run) if os.path.isdir(run) else os.path.dirname(os.path.abspath(run))
    path = out or os.path.join(folder, f"samples-{n}-seed{seed}.png")
    kind = os.path.splitext(path)[1].lower()
    if kind not in (".png", ".npy"):
        raise TrainError(f"--out {path}: expected a .png or .npy file")
    generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
    samples = loaded.model.sample(n, generator=generator).reshape(n, *shape)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise TrainError(f"--out {path}: the folder {parent} does not exist")
    if kind == ".npy":
        import numpy as np

        try:
            np.save(path, samples.float().cpu().numpy())
        except OSError as exc:
            raise TrainError(f"--out {path}: cannot write it ({exc.strerror or exc})") from None
        return path
    from .report import _figures, _is_image, plot_samples

    if not _is_image(shape):
        raise TrainError(f"the run's samples have shape {shape}, not images (C, H, W) with 1 or 3 channels; "
                         "write them as an array with --out FILE.npy")
    if _figures() is None:
        raise TrainError("a PNG needs matplotlib (pip install fastvae[plots]); or write --out FILE.npy")
    value_range = tuple(loaded.data_info.get("value_range", (0.0, 1.0)))
    if loaded.config.likelihood in ("bernoulli", "continuous_bernoulli"):
        value_range = (0.0, 1.0)
    title = (f"{n} samples from the prior z ~ N(0, I), seed {seed}\n{loaded.config.model} VAE of "
             f"{os.path.basename(os.path.normpath(folder))}, step {loaded.step}"
             + (", weight average" if loaded.weights == "ema" else ""))
    try:
        plot_samples(loaded.model, shape, path, value_range, title=title, n=n, seed=seed,
                     images=samples)
    except OSError as exc:
        raise TrainError(f"--out {path}: cannot write it ({exc.strerror or exc})") from None
    return path
