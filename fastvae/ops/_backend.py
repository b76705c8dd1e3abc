"""Backend choice, lazy kernel import and the tiling shared by every launcher."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

_BACKENDS = ("auto", "triton", "torch")


def backend_setting() -> str:
    """The value of FASTVAE_BACKEND (auto, triton or torch), checked."""
    value = os.environ.get("FASTVAE_BACKEND", "auto").strip().lower() or "auto"
    if value not in _BACKENDS:
        raise ValueError(
            f"FASTVAE_BACKEND must be one of {', '.join(_BACKENDS)}, got {value!r}"
        )
    return value


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(device: torch.device) -> bool:
    """True when the op on tensors of ``device`` runs the Triton kernels, False for the torch path."""
    setting = backend_setting()
    if setting == "torch":
        return False
    if device.type == "cuda":
        if not triton_available():
            if setting == "triton":
                raise RuntimeError("FASTVAE_BACKEND=triton but the triton package is not installed")
            return False
        return True
    if setting == "triton":
        if device.type == "cpu" and interpreting():
            if not triton_available():
                raise RuntimeError("FASTVAE_BACKEND=triton but the triton package is not installed")
            return True
        raise RuntimeError(
            f"FASTVAE_BACKEND=triton needs CUDA tensors (got tensors on {device}); set TRITON_INTERPRET=1 "
            "before importing fastvae to run the Triton kernels on CPU tensors in the interpreter, or use "
            "FASTVAE_BACKEND=torch (or auto) for the PyTorch path"
        )
    return False


@functools.lru_cache(maxsize=None)
def kernels(name: str):
    """Import ``fastvae._kernels.<name>`` on first use (after TRITON_INTERPRET is settled).

    In an installed package the kernels are ``fastvae._kernels``; in a source tree that was not
    installed they are loaded from the top-level ``kernels/`` directory under the same name.
    """
    try:
        return importlib.import_module(f"fastvae._kernels.{name}")
    except ModuleNotFoundError as err:
        if err.name not in ("fastvae._kernels", f"fastvae._kernels.{name}"):
            raise
    source = Path(__file__).resolve().parents[2] / "kernels"
    if "fastvae._kernels" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "fastvae._kernels", source / "__init__.py", submodule_search_locations=[str(source)]
        )
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"fastvae's Triton kernels are missing (looked in {source.name}/)")
        module = importlib.util.module_from_spec(spec)
        sys.modules["fastvae._kernels"] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"fastvae._kernels.{name}")


def compute_dtype(*tensors) -> torch.dtype:
    """float64 when any given tensor is float64, else float32: the arithmetic of every op."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def empty(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The placeholder a custom op returns for an output it was not asked for."""
    return torch.empty((0,), dtype=dtype, device=like.device)


def without_autocast(fn):
    """Run a PyTorch-path implementation with autocast off: the losses compute in float32 (or
    float64) as torch's own losses do, whatever autocast would pick for the ops inside."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        if device.type in ("cpu", "cuda") and torch.is_autocast_enabled(device.type):
            with torch.autocast(device.type, enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class Tiling:
    """How a (B, D) problem is cut into programs: BLOCK_R x BLOCK_D tiles, D split n_split ways."""

    __slots__ = ("block_r", "block_d", "split_cols", "n_split", "grid", "num_warps")

    def __init__(self, block_r, block_d, split_cols, n_split, grid, num_warps):
        self.block_r, self.block_d = block_r, block_d
        self.split_cols, self.n_split = split_cols, n_split
        self.grid, self.num_warps = grid, num_warps


@functools.lru_cache(maxsize=4096)
def _tiling(rows: int, cols: int, device_type: str, device_index: int) -> Tiling:
    on_gpu = device_type == "cuda"
    # The interpreter runs programs one after another in numpy: few large tiles are fastest.
    tile = 4096 if on_gpu else 1 << 16
    block_d = max(4, min(_next_pow2(cols), tile))
    block_r = max(1, min(_next_pow2(rows), tile // block_d))
    # Enough programs to fill the GPU several times over; the interpreter wants one per row block.
    target = 8 * _sm_count(device_index) if on_gpu else 1
    if on_gpu:
        # Short rows (a latent of width 10): fewer rows per program rather than a grid of a few
        # programs, so a (4096, 10) problem still spreads over the SMs.
        block_r = max(1, min(block_r, _next_pow2(-(-rows // (target // 4)))))
    row_blocks = -(-rows // block_r)
    col_blocks = -(-cols // block_d)
    n_split = max(1, min(col_blocks, -(-target // row_blocks), 65535))
    split_cols = -(-col_blocks // n_split) * block_d
    n_split = max(1, -(-cols // split_cols))
    num_warps = 8 if block_r * block_d >= 4096 else 4
    return Tiling(block_r, block_d, split_cols, n_split, (row_blocks, n_split), num_warps)


def tiling(rows: int, cols: int, device: torch.device) -> Tiling:
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    return _tiling(int(rows), int(cols), device.type, index)


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """A (B, D) view of x whose rows are contiguous (copying only when no such view exists)."""
    rows = x.shape[0]
    cols = 1
    for size in x.shape[1:]:
        cols *= size
    view = x.reshape(rows, cols) if x.dim() != 2 else x
    if view.shape[1] > 1 and view.stride(1) != 1:
        view = view.contiguous()
    return view


def row_stride(view: torch.Tensor) -> int:
    return view.stride(0) if view.shape[0] > 1 else view.shape[1]


def tracing(t: torch.Tensor) -> bool:
    """True under torch.compile / AOT tracing (fake or functional tensors), where a backward must go
    through the registered ops; in eager mode it may call their implementations directly and skip
    the dispatcher's round trip (tens of microseconds per op)."""
    return torch.compiler.is_compiling() or type(t) is not torch.Tensor
