"""Reparameterization sampling fused with the closed-form KL to N(0, I).

Forward, one pass over a (B, D) view of mu and logvar (``latent_forward_kernel``):

    sigma = exp(logvar / 2)
    z     = mu + sigma * eps,  eps ~ N(0, 1) from Philox (``random.philox_normal``) or read
    kl_r  = 1/2 * sum_c (mu^2 + exp(logvar) - logvar - 1)        per row r

``exp(logvar) - 1 - logvar`` is evaluated by its Taylor series for |logvar| < 1/2, where the
direct form cancels, so the KL keeps its relative precision for logvar near 0.

Backward, one pass (``latent_backward_kernel``), with g_z the gradient of z and g_r the
gradient of row r's KL (``grad_kl / kl_div``: one value for every row with gkl_stride 0 after a
batch mean or sum, kl_div = B for the mean):

    d/dmu     = g_z + g_r * mu
    d/dlogvar = g_z * sigma * eps / 2 + g_r * (exp(logvar) - 1) / 2

eps is regenerated from the same (seed, row, column) counters as in forward: never stored.
``row_offset`` shifts the row counter, so a shard of a larger batch (one rank of a data-parallel
job) draws exactly the noise of its rows in the whole batch.

Bytes per element, s the element size (4 for float32, 2 for bfloat16):
    forward:  read mu, logvar (2s) [+ eps (s) when given], write z (s); the KL adds 4 bytes a row
    backward: read mu, logvar, g_z (3s) [+ eps], write two gradients (2s)
The KL-only variant (``gaussian_kl``) reads 2s and writes nothing per element.

Grid: (row blocks, column splits).  A program owns BLOCK_R rows and one contiguous split of
the columns, loops over it BLOCK_D columns at a time, accumulates in float32 (float64 for
float64 inputs) and writes one partial KL per (row, split); ``objective.finish_kernel`` sums the
splits and reduces over the batch when that is asked for.
The split keeps the grid full when B is small and the rows are long; no atomics, so the
sums are deterministic.  Offsets are 64-bit.
"""
import triton
import triton.language as tl

from .polynomials import horner
from .tiles import column_block, inv_div, load_tile, noise_tile, tile_columns, tile_rows, to_compute


@triton.jit
def _sigma(lv, FP64: tl.constexpr):
    """exp(logvar / 2): the hardware exp2 in float32 (two instructions), exp in float64."""
    if FP64:
        s = tl.exp(0.5 * lv)
    else:
        s = tl.exp2(lv * 0.7213475204444817)  # log2(e) / 2
    return s


@triton.jit
def load_posterior(mu_ptr, lv_ptr, rows2, mu_stride, lv_stride, cols2, mask, FP64: tl.constexpr):
    """The (mu, logvar) tiles of a diagonal Gaussian posterior in the compute dtype, 0 where masked."""
    return (load_tile(mu_ptr, rows2, mu_stride, cols2, mask, FP64),
            load_tile(lv_ptr, rows2, lv_stride, cols2, mask, FP64))


@triton.jit
def _exp_m1_m(x, s, FP64: tl.constexpr):
    """exp(x) - 1 - x, accurate near 0, given s = exp(x / 2).

    |x| < 1/2: x^2 p(x), p a polynomial in Horner form (float32: a degree-5 fit, relative error 2.1e-7;
    float64: the Taylor series to x^14 / 16!); elsewhere s * s - 1 - x, whose cancellation costs at most
    four bits there."""
    if FP64:
        p = horner(x, (4.779477332387385e-14, 7.647163731819816e-13, 1.1470745597729725e-11,
                       1.6059043836821613e-10, 2.08767569878681e-09, 2.505210838544172e-08, 2.755731922398589e-07,
                       2.7557319223985893e-06, 2.48015873015873e-05, 0.0001984126984126984, 0.001388888888888889,
                       0.008333333333333333, 0.041666666666666664, 0.16666666666666666, 0.5))
        series = x * x * p
        direct = tl.exp(x) - 1.0 - x
    else:
        # the degree-5 fit to (exp(x) - 1 - x) / x^2 on [-1/2, 1/2]: max relative error 2.1e-7
        p = horner(x, (0.00019866085494868457, 0.0013981974916532636, 0.008333481848239899, 0.04166579619050026,
                       0.1666666567325592, 0.5))
        series = x * x * p
        direct = s * s - 1.0 - x
    return tl.where(tl.abs(x) < 0.5, series, direct)


@triton.jit
def latent_forward_kernel(
    mu_ptr, logvar_ptr, eps_ptr, seed_ptr, z_ptr, kl_ptr,
    B, D, mu_stride, logvar_stride, eps_stride, split_cols, n_split, row_offset,
    HAS_EPS: tl.constexpr, WRITE_Z: tl.constexpr, COMPUTE_KL: tl.constexpr, FP64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """z = mu + exp(logvar/2) * eps and per-(row, split) partial KL sums, in one pass."""
    rows, row_mask = tile_rows(B, BLOCK_R)
    rows2 = rows[:, None]
    col_start, col_end = tile_columns(D, split_cols)
    acc = to_compute(tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32), FP64)
    if WRITE_Z and not HAS_EPS:
        seed = tl.load(seed_ptr)
    else:
        seed = 0
    for c0 in range(col_start, col_end, BLOCK_D):
        cols2, mask = column_block(c0, col_end, row_mask, BLOCK_D)
        # the loads first, so their latency overlaps the Philox integer work below
        mu, lv = load_posterior(mu_ptr, logvar_ptr, rows2, mu_stride, logvar_stride, cols2, mask, FP64)
        s = _sigma(lv, FP64)
        if WRITE_Z:
            eps = noise_tile(seed, eps_ptr, eps_stride, rows2, cols2, mask, c0, row_offset, HAS_EPS, FP64, BLOCK_D)
            z = mu + s * eps
            tl.store(z_ptr + rows2 * D + cols2, z.to(z_ptr.dtype.element_ty), mask=mask)
        if COMPUTE_KL:
            kl = 0.5 * (mu * mu + _exp_m1_m(lv, s, FP64))
            acc += tl.where(mask, kl, 0.0)
    if COMPUTE_KL:
        tl.store(kl_ptr + rows * n_split + tl.program_id(1), tl.sum(acc, axis=1), mask=row_mask)


@triton.jit
def latent_backward_kernel(
    mu_ptr, logvar_ptr, eps_ptr, seed_ptr, gz_ptr, gkl_ptr, gmu_ptr, glv_ptr,
    B, D, mu_stride, logvar_stride, eps_stride, gz_stride, gkl_stride, kl_div, split_cols, row_offset,
    HAS_EPS: tl.constexpr, HAS_GZ: tl.constexpr, HAS_GKL: tl.constexpr, FP64: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Gradients of mu and logvar from g_z (per element) and g_kl (per row), noise regenerated."""
    rows, row_mask = tile_rows(B, BLOCK_R)
    rows2 = rows[:, None]
    col_start, col_end = tile_columns(D, split_cols)
    if HAS_GZ and not HAS_EPS:
        seed = tl.load(seed_ptr)
    else:
        seed = 0
    if HAS_GKL:
        # the gradient of each row's KL: g_kl (one per row, or one for all with gkl_stride 0) / kl_div
        gkl = to_compute(tl.load(gkl_ptr + rows * gkl_stride, mask=row_mask, other=0.0), FP64)[:, None]
        gkl = gkl * inv_div(kl_div, FP64)
    for c0 in range(col_start, col_end, BLOCK_D):
        cols2, mask = column_block(c0, col_end, row_mask, BLOCK_D)
        mu, lv = load_posterior(mu_ptr, logvar_ptr, rows2, mu_stride, logvar_stride, cols2, mask, FP64)
        if HAS_GZ:
            gz = load_tile(gz_ptr, rows2, gz_stride, cols2, mask, FP64)
        s = _sigma(lv, FP64)
        g_mu = tl.zeros_like(mu)
        g_lv = tl.zeros_like(lv)
        if HAS_GZ:
            eps = noise_tile(seed, eps_ptr, eps_stride, rows2, cols2, mask, c0, row_offset, HAS_EPS, FP64, BLOCK_D)
            g_mu += gz
            g_lv += 0.5 * gz * eps * s
        if HAS_GKL:
            g_mu += gkl * mu
            # d/dlogvar of the KL: (exp(logvar) - 1) / 2 = (s * s - 1) / 2, one fused multiply-add
            g_lv += 0.5 * gkl * (s * s - 1.0)
        tl.store(gmu_ptr + rows2 * D + cols2, g_mu.to(gmu_ptr.dtype.element_ty), mask=mask)
        tl.store(glv_ptr + rows2 * D + cols2, g_lv.to(glv_ptr.dtype.element_ty), mask=mask)
