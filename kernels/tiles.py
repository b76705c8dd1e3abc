"""Tile bookkeeping shared by every kernel: which rows and columns a program owns, and loads
cast to the compute dtype (float32, or float64 for float64 inputs).

A program (pid_r, pid_s) owns rows ``pid_r * BLOCK_R ...`` and the columns
``[pid_s * split_cols, min((pid_s + 1) * split_cols, D))``.  Offsets are int64 throughout, so
tensors of more than 2^31 elements index correctly.
"""
import triton
import triton.language as tl

from .random import philox_normal


@triton.jit
def tile_rows(B, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    return rows, rows < B


@triton.jit
def tile_columns(D, split_cols):
    col_start = tl.program_id(1).to(tl.int64) * split_cols
    return col_start, tl.minimum(col_start + split_cols, D)


@triton.jit
def to_compute(x, FP64: tl.constexpr):
    if FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    return x


@triton.jit
def to_scalar(value, FP64: tl.constexpr):
    """A scalar argument (an int, or a float) as a 0-d value of the compute dtype.  Scalar arguments are cast
    explicitly: an integer-valued float must not change the math."""
    if FP64:
        out = tl.full([], value, tl.float64)
    else:
        out = tl.full([], value, tl.float32)
    return out


@triton.jit
def scalar_arg(ptr, value, FROM_PTR: tl.constexpr, FP64: tl.constexpr):
    """A scalar in the compute dtype: the one value at ptr (FROM_PTR), else the argument value."""
    if FROM_PTR:
        out = to_compute(tl.load(ptr), FP64)
    else:
        out = to_scalar(value, FP64)
    return out


@triton.jit
def inv_div(div, FP64: tl.constexpr):
    """1 / div in the compute dtype, for an integer divisor (B for a batch mean, else 1)."""
    return 1.0 / to_scalar(div, FP64)


@triton.jit
def column_block(c0, col_end, row_mask, BLOCK_D: tl.constexpr):
    """The columns c0 ... c0 + BLOCK_D - 1 of a tile as an int64 (1, BLOCK_D) tensor, and the tile's mask: the
    rows of row_mask, the columns before col_end."""
    cols = c0 + tl.arange(0, BLOCK_D).to(tl.int64)
    return cols[None, :], row_mask[:, None] & (cols < col_end)[None, :]


@triton.jit
def load_tile(ptr, rows2, row_stride, cols2, mask, FP64: tl.constexpr, EVEN: tl.constexpr = False):
    """A (BLOCK_R, BLOCK_D) tile of a row-strided tensor in the compute dtype; 0 where masked.  EVEN: the
    launcher knows every tile is whole, and the load goes without a mask."""
    if EVEN:
        v = tl.load(ptr + rows2 * row_stride + cols2)
    else:
        v = tl.load(ptr + rows2 * row_stride + cols2, mask=mask, other=0.0)
    return to_compute(v, FP64)


@triton.jit
def store_tile(ptr, offsets, value, mask, EVEN: tl.constexpr):
    if EVEN:
        tl.store(ptr + offsets, value.to(ptr.dtype.element_ty))
    else:
        tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def masked_row_sum(value, mask, EVEN: tl.constexpr):
    """Row sums of a tile, the masked-off elements left out (nothing to leave out when EVEN)."""
    if EVEN:
        out = tl.sum(value, axis=1)
    else:
        out = tl.sum(tl.where(mask, value, 0.0), axis=1)
    return out


@triton.jit
def noise_tile(seed, eps_ptr, eps_stride, rows2, cols2, mask, c0, row_offset,
               HAS_EPS: tl.constexpr, FP64: tl.constexpr, BLOCK_D: tl.constexpr):
    """The tile's noise: read from eps, or regenerated from (seed, row + row_offset, column)."""
    if HAS_EPS:
        eps = load_tile(eps_ptr, rows2, eps_stride, cols2, mask, FP64)
    else:
        groups = c0 // 4 + tl.arange(0, BLOCK_D // 4).to(tl.int64)
        eps = to_compute(philox_normal(seed, rows2 + row_offset, groups[None, :], BLOCK_D), FP64)
    return eps
