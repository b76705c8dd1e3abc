"""What is random in a run, as a function of the seed and the step.

The global batch is a slice of a stream of per-pass permutations of the dataset
(:class:`IndexStream`), the reparameterization noise of step ``s`` is drawn from a generator
re-seeded with :func:`noise_seed` ``(seed, s)``, and the plots and the evaluation use a fixed set of
samples (:func:`eval_indices`).  So a resumed run replays exactly what an uninterrupted one does,
and each rank of a DDP run reads its slice of the batch and of the noise.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["mix", "noise_seed", "IndexStream", "eval_indices", "split_indices", "val_noise_seed"]

_MASK64 = (1 << 64) - 1
_DATA_STREAM, _NOISE_STREAM, _EVAL_STREAM = 0xDA7A, 0x5EED, 0xE7A1
_SPLIT_STREAM, _VAL_STREAM = 0x5B17, 0x7A11


def mix(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): decorrelated streams per (seed, purpose, index)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def noise_seed(seed: int, step: int) -> int:
    """The seed of the noise generator at ``step`` (the same on every rank)."""
    return mix(seed, _NOISE_STREAM, step)


def val_noise_seed(seed: int) -> int:
    """The seed of the noise of every held-out evaluation (the same each epoch, so epochs compare)."""
    return mix(seed, _VAL_STREAM)


def split_indices(n: int, n_val: int, seed: int) -> tuple:
    """(training indices or None, held-out indices): ``n_val`` samples drawn once from the seed, left
    out of training; the training indices sorted, the held-out ones in the random order they were
    drawn (the plots show the first of them).  ``n_val = 0``: (None, an empty tensor), the whole data
    trains."""
    if n_val <= 0:
        return None, torch.zeros(0, dtype=torch.long)
    generator = torch.Generator().manual_seed(mix(seed, _SPLIT_STREAM))
    perm = torch.randperm(n, generator=generator)
    return perm[n_val:].sort().values, perm[:n_val]


class IndexStream:
    """Sample indices: the concatenation of per-pass permutations of ``range(n)``; pass ``p`` is
    ``randperm(n)`` seeded from ``(seed, p)``.  Position ``step * batch + offset`` is a pure function
    of the seed, so resuming needs only the step, and each rank reads its own slice of the global
    batch.  With ``subset`` (the training indices when some data is held out) the permutations are
    of ``range(len(subset))`` and each position is mapped through ``subset``."""

    def __init__(self, n: int, seed: int, device: torch.device, subset: Optional[Tensor] = None):
        self.n, self.seed, self.device = n, seed, device
        self.subset = None if subset is None else subset.to(device)
        if self.subset is not None:
            self.n = len(self.subset)
        self._perms: dict = {}

    def _perm(self, p: int) -> Tensor:
        perm = self._perms.get(p)
        if perm is None:
            generator = torch.Generator().manual_seed(mix(self.seed, _DATA_STREAM, p))
            perm = torch.randperm(self.n, generator=generator).to(self.device)
            self._perms = {k: v for k, v in self._perms.items() if k >= p - 1}
            self._perms[p] = perm
        return perm

    def take(self, start: int, size: int) -> Tensor:
        parts, pos, end = [], start, start + size
        while pos < end:
            p, offset = divmod(pos, self.n)
            count = min(end - pos, self.n - offset)
            parts.append(self._perm(p)[offset:offset + count])
            pos += count
        taken = parts[0] if len(parts) == 1 else torch.cat(parts)
        return taken if self.subset is None else self.subset[taken]


def eval_indices(n: int, count: int, seed: int, device) -> Tensor:
    """A fixed set of ``count`` sample indices (all of them if the data has fewer) for plots and evaluation."""
    generator = torch.Generator().manual_seed(mix(seed, _EVAL_STREAM))
    return torch.randperm(n, generator=generator)[:count].to(device)
