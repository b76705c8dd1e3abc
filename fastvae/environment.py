"""What a run or a benchmark records about where it ran, and the one rule for ``--device``.

* :func:`versions`: the versions of python, torch, CUDA, triton, numpy and fastvae, and the platform;
* :func:`auto_device` and :func:`resolve_device`: the device named by a ``--device`` option
  (``auto``: CUDA when available, else the CPU).
"""
from __future__ import annotations

import platform
from typing import Optional

import torch

__all__ = ["versions", "auto_device", "resolve_device", "device_name"]


def _version_of(module_name: str) -> Optional[str]:
    try:
        module = __import__(module_name)
    except Exception:  # noqa: BLE001 - an optional package (triton off Linux, numpy in the extras)
        return None
    version = getattr(module, "__version__", None)
    return None if version is None else str(version)


def versions() -> dict:
    """Versions of the libraries a result depends on (None for what is not installed)."""
    from fastvae import __version__

    return {
        "fastvae": str(__version__), "torch": str(torch.__version__), "cuda": torch.version.cuda,
        "triton": _version_of("triton"), "numpy": _version_of("numpy"),
        "python": platform.python_version(), "platform": platform.platform(),
    }


def auto_device(text: str) -> str:
    """``'auto'`` -> ``'cuda'`` when CUDA is available, else ``'cpu'``; any other text unchanged."""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return text


def resolve_device(text: str, cuda_index: Optional[int] = None) -> torch.device:
    """The device ``--device text`` names, checked: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    A CUDA device gets an index: ``cuda_index`` when given (the local rank of a torchrun process),
    else N (0 for plain ``cuda``).  Raises ValueError with a message naming the option.
    """
    text = auto_device(text)
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {text}: CUDA is not available here; use --device cpu")
    index = cuda_index if cuda_index is not None else (device.index or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: device cuda:{index} does not exist "
                         f"({torch.cuda.device_count()} CUDA device(s))")
    return torch.device("cuda", index)


def device_name(device: torch.device) -> str:
    """The name of a CUDA device, or the processor's (what ``metrics.json`` records)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"
