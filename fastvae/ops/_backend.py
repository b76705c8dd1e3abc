"""Backend choice, lazy kernel import and the tiling shared by every launcher."""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os

import torch
from torch.autograd import forward_ad as _forward_ad

BACKENDS = ("auto", "triton", "torch")


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


class _State:
    """The process-wide backend setting: read from FASTVAE_BACKEND on first use, then only changed by
    :func:`set_backend` (the environment is not read again on every call)."""

    __slots__ = ("setting", "interpret", "small_tiles")

    def __init__(self):
        self.setting = None          # None until first use
        self.interpret = _interpreting()
        self.small_tiles = False


_STATE = _State()


def _checked(value: str, source: str) -> str:
    value = (value or "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{source} must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value


def get_backend() -> str:
    """The backend setting now in force: 'auto', 'triton' or 'torch'."""
    setting = _STATE.setting
    if setting is None:
        setting = _STATE.setting = _checked(os.environ.get("FASTVAE_BACKEND", "auto"), "FASTVAE_BACKEND")
    return setting


class set_backend:
    """Choose the backend of fastvae's ops: ``'auto'`` (Triton kernels on CUDA tensors, the PyTorch
    path on CPU tensors; the default, or what FASTVAE_BACKEND says), ``'triton'`` or ``'torch'``.

    Takes effect at once; used as a context manager it restores the previous setting on exit::

        fastvae.set_backend("torch")            # from now on
        with fastvae.set_backend("torch"):      # only inside the block
            ...
    """

    def __init__(self, backend: str) -> None:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str ({', '.join(BACKENDS)}), got {type(backend).__name__}")
        value = _checked(backend, "backend")
        self.previous = get_backend() if _STATE.setting is not None else None
        _STATE.setting = value

    def __enter__(self) -> "set_backend":
        return self

    def __exit__(self, *exc) -> None:
        _STATE.setting = self.previous


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton_on(t: torch.Tensor) -> bool:
    """:func:`use_triton` for ``t``'s device, without building a device object for a CPU tensor."""
    if t.is_cpu and (_STATE.setting or get_backend()) != "triton":
        return False
    return use_triton(t.device)


def use_triton(device: torch.device) -> bool:
    """True when the op on tensors of ``device`` runs the Triton kernels, False for the torch path."""
    setting = _STATE.setting or get_backend()
    if setting == "torch":
        return False
    if device.type == "cuda":
        if not triton_available():
            if setting == "triton":
                raise RuntimeError("the backend is 'triton' but the triton package is not installed")
            return False
        return True
    if setting == "triton":
        if device.type == "cpu" and _STATE.interpret:
            if not triton_available():
                raise RuntimeError("the backend is 'triton' but the triton package is not installed")
            return True
        raise RuntimeError(
            f"the backend is 'triton' (FASTVAE_BACKEND or fastvae.set_backend), which needs CUDA tensors "
            f"(got tensors on {device}); set TRITON_INTERPRET=1 before importing fastvae to run the Triton "
            "kernels on CPU tensors in the interpreter, or use the 'torch' (or 'auto') backend for the "
            "PyTorch path"
        )
    return False


@functools.lru_cache(maxsize=None)
def kernels(name: str):
    """Import ``fastvae._kernels.<name>`` on first use (after TRITON_INTERPRET is settled).

    The kernels are the repository's top-level ``kernels/`` folder: pyproject.toml installs it as
    ``fastvae._kernels`` (``package-dir``), and in a source tree ``fastvae/_kernels/__init__.py``
    points that package at the folder.
    """
    return importlib.import_module(f"fastvae._kernels.{name}")


def compute_dtype(*tensors) -> torch.dtype:
    """float64 when any given tensor is float64, else float32: the arithmetic of every op."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


def empty(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The placeholder a custom op returns for an output it was not asked for."""
    return torch.empty((0,), dtype=dtype, device=like.device)


autocast_on = getattr(torch._C, "_is_any_autocast_enabled", None) or (
    lambda: torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda"))


def forward_ad_active() -> bool:
    """Inside ``torch.autograd.forward_ad.dual_level()``: inputs may carry tangents, so an op must go
    through its autograd Function (whose ``jvp`` says what it supports) even when nothing needs a
    gradient."""
    return _forward_ad._current_level >= 0


def apply_function(cls):
    """``cls.apply`` without ``torch.autograd.Function.apply``'s Python preamble (functorch
    bookkeeping, a few microseconds a call): the callers check for functorch transforms themselves
    and raise, so what remains is the C++ apply that ``Function.apply`` ends in."""
    return super(torch.autograd.Function, cls).apply


#: what a vmap'd backward is called in the error of the Functions that refuse it
BATCHED_GRADS = "batched gradients (is_grads_batched=True, jacobian(vectorize=True))"

_is_legacy_batched = getattr(torch._C._functorch, "is_legacy_batchedtensor", lambda t: False)


def batched_grads(*grads) -> bool:
    """Whether a backward is being run vmapped over its incoming gradients (``is_grads_batched=True``,
    ``torch.autograd.functional.jacobian(vectorize=True)``), which autograd does with batched tensors."""
    return any(g is not None and _is_legacy_batched(g) for g in grads)


def replay_grads(inputs, needs, build) -> list:
    """The input gradients of an autograd Function's backward under ``create_graph=True``, by replaying its
    forward with autograd: ``build(*aliases)`` returns ``(output, grad_output)`` pairs computed from
    ``aliases``, in which each input that needs a gradient is a fresh view of itself.

    The inner ``torch.autograd.grad`` stops at those views, so the inputs' own hooks and ``retain_grad``
    run once (in the outer backward, not also inside this one), and an input given in two places (say
    ``reparameterize_kl(x, x)``) gets each place's partial, not the sum twice.  Pairs whose output has no
    graph (it does not depend on the inputs that need gradients) or whose grad_output is None are left
    out.  Returns one gradient per input, None where none is needed or the output does not use it; the
    gradients carry a graph back to the inputs, so any order works."""
    wrt = [i for i, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
    result = [None] * len(inputs)
    with torch.enable_grad():
        aliases = list(inputs)
        for i in wrt:
            aliases[i] = inputs[i].view_as(inputs[i])
        pairs = [(o, g) for o, g in build(*aliases) if g is not None and o.requires_grad]
    if pairs and wrt:
        grads = torch.autograd.grad([o for o, _ in pairs], [aliases[i] for i in wrt], [g for _, g in pairs],
                                    create_graph=True, allow_unused=True)
        for i, g in zip(wrt, grads):
            result[i] = g
    return result


@contextlib.contextmanager
def autocast_off():
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


def without_autocast(fn):
    """Run an implementation with autocast off: the losses compute in float32 (or float64) as
    torch's own losses do, whatever autocast would pick for the ops inside."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if autocast_on():
            with autocast_off():
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


class Tiling:
    """How a (B, D) problem is cut into programs: BLOCK_R x BLOCK_D tiles, D split n_split ways.

    ``programs`` is the size of a persistent grid over the ``grid[0] * grid[1]`` tiles (the
    backward kernel's).
    """

    __slots__ = ("block_r", "block_d", "split_cols", "n_split", "grid", "num_warps", "n_tiles", "programs", "even")

    def __init__(self, block_r, block_d, split_cols, n_split, grid, num_warps, programs):
        self.block_r, self.block_d = block_r, block_d
        self.split_cols, self.n_split = split_cols, n_split
        self.grid, self.num_warps = grid, num_warps
        self.n_tiles = grid[0] * grid[1]
        self.programs = programs
        self.even = False  # set by _tiling: every tile whole (B, D and split_cols multiples of the tile)


def _split(cols: int, block_d: int, want: int) -> tuple[int, int]:
    """(split_cols, n_split): D cut into at most ``want`` contiguous splits of whole BLOCK_D blocks."""
    col_blocks = -(-cols // block_d)
    n_split = max(1, min(col_blocks, want, 65535))
    split_cols = -(-col_blocks // n_split) * block_d
    return split_cols, max(1, -(-cols // split_cols))


@functools.lru_cache(maxsize=4096)
def _tiling(rows: int, cols: int, device_type: str, device_index: int, small: bool, tile: int = 4096,
            warps: int = 0) -> Tiling:
    if small:
        # The test switch: tiny tiles, several column splits of two blocks each and a persistent grid
        # shorter than the tile count, so every loop and offset path of the kernels runs on small inputs.
        block_d = 8 if cols > 4 else 4
        block_r = 2
        split_cols, n_split = _split(cols, block_d, -(-cols // (2 * block_d)))
        grid = (-(-rows // block_r), n_split)
        return Tiling(block_r, block_d, split_cols, n_split, grid, 4, max(1, grid[0] * grid[1] // 3))
    on_gpu = device_type == "cuda"
    # The interpreter runs programs one after another in numpy: few large tiles are fastest.
    tile = tile if on_gpu else 1 << 16
    block_d = max(4, min(_next_pow2(cols), tile))
    block_r = max(1, min(_next_pow2(rows), tile // block_d))
    # Enough programs to fill the GPU several times over; the interpreter wants one per row block.
    target = 8 * _sm_count(device_index) if on_gpu else 1
    if on_gpu:
        # Short rows (a latent of width 10): fewer rows per program rather than a grid of a few
        # programs, so a (4096, 10) problem still spreads over the SMs.
        block_r = max(1, min(block_r, _next_pow2(-(-rows // (target // 4)))))
    row_blocks = -(-rows // block_r)
    split_cols, n_split = _split(cols, block_d, -(-target // row_blocks))
    num_warps = warps or (8 if block_r * block_d >= 4096 else 4)
    n_tiles = row_blocks * n_split
    programs = min(n_tiles, target) if on_gpu else n_tiles
    out = Tiling(block_r, block_d, split_cols, n_split, (row_blocks, n_split), num_warps, programs)
    out.even = rows % block_r == 0 and cols % block_d == 0 and split_cols % block_d == 0
    return out


def finish_block(rows: int) -> int:
    """Rows per step of the one-program batch reduction (``kernels/objective.py``)."""
    if _STATE.small_tiles:
        return 4
    return 1024 if rows > 128 else 128


def tiling(rows: int, cols: int, device: torch.device, tile: int = 4096, warps: int = 0) -> Tiling:
    """The tiling of a (rows, cols) problem on ``device``.  On a GPU, ``tile`` is the elements a program
    handles per loop iteration and ``warps`` its warps (0: 8 for tiles of 4096 elements or more, else 4)."""
    index = device.index if device.index is not None else (torch.cuda.current_device() if device.type == "cuda" else 0)
    return _tiling(int(rows), int(cols), device.type, index, _STATE.small_tiles, tile, warps)


@contextlib.contextmanager
def small_tiles():
    """Test switch: the launchers cut every problem into tiny tiles (see ``_tiling``)."""
    previous = _STATE.small_tiles
    _STATE.small_tiles = True
    try:
        yield
    finally:
        _STATE.small_tiles = previous


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """A (B, D) view of x whose rows are contiguous (copying only when no such view exists)."""
    if x.dim() == 2:
        view = x
    else:
        cols = 1
        for size in x.shape[1:]:
            cols *= size
        view = x.reshape(x.shape[0], cols)
    if view.shape[1] > 1 and view.stride(1) != 1:
        view = view.contiguous()
    return view


def row_stride(view: torch.Tensor) -> int:
    return view.stride(0) if view.shape[0] > 1 else view.shape[1]


def tracing(t: torch.Tensor) -> bool:
    """True under torch.compile / AOT tracing (fake or functional tensors), where the registered
    custom ops must be used; in eager mode the ops run through plain autograd Functions."""
    return torch.compiler.is_compiling() or type(t) is not torch.Tensor
