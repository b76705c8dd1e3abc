"""The process-wide torch state a run changes, and its restoration when the run ends.

A run sets the number of CPU threads (``--threads``), seeds the CPU generator before it builds the
model (and loads the generator states of a checkpoint), and makes its CUDA device the current
one.  :class:`ProcessState` records each before the run changes it and puts it back on exit, so
``fastvae.train.train()`` called from Python leaves the caller's process as it found it.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["ProcessState"]


class ProcessState:
    """A context manager: what it records on entry (threads, the CPU generator) or on
    :meth:`use_device` (the current CUDA device and that device's generator) is restored on exit."""

    def __init__(self):
        self._threads = torch.get_num_threads()
        self._cpu_rng: Optional[torch.Tensor] = None
        self._cuda_rng: dict = {}
        self._cuda_current: Optional[int] = None

    def __enter__(self) -> "ProcessState":
        self._threads = torch.get_num_threads()
        self._cpu_rng = torch.get_rng_state()
        return self

    def set_threads(self, threads: Optional[int]) -> None:
        if threads is not None:
            torch.set_num_threads(threads)

    def seed_cpu(self, seed: int) -> None:
        """Seed the CPU generator, which initializes the model's parameters."""
        torch.random.default_generator.manual_seed(seed)

    def use_device(self, device: torch.device) -> None:
        """Make a CUDA ``device`` the current device (nothing for the CPU)."""
        if device.type != "cuda":
            return
        if self._cuda_current is None:
            self._cuda_current = torch.cuda.current_device()
        if device not in self._cuda_rng:
            self._cuda_rng[device] = torch.cuda.get_rng_state(device)
        torch.cuda.set_device(device)

    def __exit__(self, *exc) -> bool:
        for device, state in self._cuda_rng.items():
            torch.cuda.set_rng_state(state, device)
        if self._cuda_current is not None:
            torch.cuda.set_device(self._cuda_current)
        if self._cpu_rng is not None:
            torch.set_rng_state(self._cpu_rng)
        torch.set_num_threads(self._threads)
        return False
