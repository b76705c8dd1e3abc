"""Free bits per latent dimension (Kingma et al. 2016): the KL with a floor of lambda nats on each
dimension's batch mean.

With KL_bj = (mu_bj^2 + exp(lv_bj) - 1 - lv_bj) / 2 and m_j = (1/B) sum_b KL_bj:

    ``kl_column_means_kernel``  m_j, one program per block of columns walking the rows (deterministic)
    ``free_bits_rows_kernel``   f_b = sum_j (KL_bj if m_j >= lambda else lambda): the per-sample values
                                whose batch mean is sum_j max(lambda, m_j), the objective
    ``free_bits_backward_kernel`` d/dmu_bj = g_b [m_j >= lambda] mu_bj,
                                d/dlv_bj = g_b [m_j >= lambda] (exp(lv_bj) - 1) / 2 (g_b the per-sample gradient)

Dimensions under the floor get no gradient: the mask is piecewise constant in (mu, logvar).  Bytes: each
kernel reads mu and logvar once (2s a element); backward writes two gradients (2s).
"""
import triton
import triton.language as tl

from .latent import _exp_m1_m, _sigma, load_posterior
from .tiles import tile_rows, to_compute, to_scalar


@triton.jit
def _kl(mu, lv, FP64: tl.constexpr):
    """KL_bj of each element."""
    return 0.5 * (mu * mu + _exp_m1_m(lv, _sigma(lv, FP64), FP64))


@triton.jit
def _row_tile(mu_ptr, lv_ptr, means_ptr, rows, row_mask, c0, J, mu_stride, lv_stride,
              FP64: tl.constexpr, BLOCK_C: tl.constexpr):
    """Columns c0 ... c0 + BLOCK_C - 1 of a block of rows: (columns, mask, mu, logvar, the columns' batch-mean
    KLs m_j)."""
    cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
    col_mask = cols < J
    mask = row_mask[:, None] & col_mask[None, :]
    mu, lv = load_posterior(mu_ptr, lv_ptr, rows[:, None], mu_stride, lv_stride, cols[None, :], mask, FP64)
    m = to_compute(tl.load(means_ptr + cols, mask=col_mask, other=0.0), FP64)
    return cols, mask, mu, lv, m


@triton.jit
def kl_column_means_kernel(mu_ptr, lv_ptr, out_ptr, B, J, mu_stride, lv_stride,
                           FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    col_mask = cols < J
    acc = to_compute(tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32), FP64)
    for r0 in range(0, B, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        mask = (rows < B)[:, None] & col_mask[None, :]
        mu, lv = load_posterior(mu_ptr, lv_ptr, rows[:, None], mu_stride, lv_stride, cols[None, :], mask, FP64)
        acc += tl.where(mask, _kl(mu, lv, FP64), 0.0)
    total = tl.sum(acc, axis=0)
    tl.store(out_ptr + cols, total / tl.maximum(to_scalar(B, FP64), 1.0), mask=col_mask)


@triton.jit
def free_bits_rows_kernel(mu_ptr, lv_ptr, means_ptr, out_ptr, B, J, mu_stride, lv_stride, floor,
                          FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, row_mask = tile_rows(B, BLOCK_R)
    lam = to_scalar(floor, FP64)
    acc = to_compute(tl.zeros((BLOCK_R,), dtype=tl.float32), FP64)
    for c0 in range(0, J, BLOCK_C):
        cols, mask, mu, lv, m = _row_tile(mu_ptr, lv_ptr, means_ptr, rows, row_mask, c0, J, mu_stride, lv_stride,
                                          FP64, BLOCK_C)
        kl = _kl(mu, lv, FP64)
        value = tl.where((m >= lam)[None, :], kl, lam)
        acc += tl.sum(tl.where(mask, value, 0.0), axis=1)
    tl.store(out_ptr + rows, acc, mask=row_mask)


@triton.jit
def free_bits_backward_kernel(mu_ptr, lv_ptr, means_ptr, g_ptr, gmu_ptr, glv_ptr, B, J, mu_stride, lv_stride,
                              g_stride, floor, FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, row_mask = tile_rows(B, BLOCK_R)
    lam = to_scalar(floor, FP64)
    g = to_compute(tl.load(g_ptr + rows * g_stride, mask=row_mask, other=0.0), FP64)[:, None]
    for c0 in range(0, J, BLOCK_C):
        cols, mask, mu, lv, m = _row_tile(mu_ptr, lv_ptr, means_ptr, rows, row_mask, c0, J, mu_stride, lv_stride,
                                          FP64, BLOCK_C)
        active = (m >= lam)[None, :]
        s = _sigma(lv, FP64)
        out = rows[:, None] * J + cols[None, :]
        tl.store(gmu_ptr + out, tl.where(active, g * mu, 0.0).to(gmu_ptr.dtype.element_ty), mask=mask)
        tl.store(glv_ptr + out, tl.where(active, g * 0.5 * (s * s - 1.0), 0.0).to(glv_ptr.dtype.element_ty),
                 mask=mask)
