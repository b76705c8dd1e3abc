"""k importance samples of the posterior and their log weights, in one pass (for IWAE and log-likelihood
estimates).

For posteriors N(mu_b, exp(lv_b)) (b < B, J dims) and samples s < k, row r = s B + b of a (k B, J) problem:

    z_r     = mu_b + sigma_b eps_r,  sigma = exp(lv / 2), eps from Philox at (seed, row r, column)
    lr_r    = log p(z_r) - log q(z_r | x_b) = sum_j (eps_rj^2 - z_rj^2 + lv_bj) / 2     (the log 2 pi cancel)

``log_weights_forward_kernel`` writes z and lr, reading mu and lv once per row block and sample; nothing of
size k B J is read.  ``log_weights_backward_kernel`` regenerates eps and sums over the samples in registers:

    d/dmu_b = sum_s g_z,sb - g_r,sb z_sb
    d/dlv_b = sum_s g_z,sb sigma eps_sb / 2 + g_r,sb (1 - z_sb sigma eps_sb) / 2

one program per block of posterior rows walking the k samples (deterministic, no (k, B, J) temporary).
Bytes: forward reads 2s per posterior element per sample block and writes z (s per element of z); backward
reads g_z (s per element of z) and writes two gradients of (B, J).
"""
import triton
import triton.language as tl

from .latent import _sigma, load_posterior
from .tiles import column_block, load_tile, noise_tile, tile_rows, to_compute


@triton.jit
def log_weights_forward_kernel(
    mu_ptr, lv_ptr, seed_ptr, z_ptr, lr_ptr, B, J, K, mu_stride, lv_stride,
    FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, row_mask = tile_rows(B * K, BLOCK_R)       # rows of the (k B, J) problem
    rows2 = rows[:, None]
    src2 = (rows % B)[:, None]                        # the posterior of each row
    seed = tl.load(seed_ptr)
    acc = to_compute(tl.zeros((BLOCK_R,), dtype=tl.float32), FP64)
    for c0 in range(0, J, BLOCK_D):
        cols2, mask = column_block(c0, J, row_mask, BLOCK_D)
        mu, lv = load_posterior(mu_ptr, lv_ptr, src2, mu_stride, lv_stride, cols2, mask, FP64)
        eps = noise_tile(seed, mu_ptr, 0, rows2, cols2, mask, c0, 0, False, FP64, BLOCK_D)
        z = mu + _sigma(lv, FP64) * eps
        tl.store(z_ptr + rows2 * J + cols2, z.to(z_ptr.dtype.element_ty), mask=mask)
        acc += tl.sum(tl.where(mask, 0.5 * (eps * eps - z * z + lv), 0.0), axis=1)
    tl.store(lr_ptr + rows, acc, mask=row_mask)


@triton.jit
def log_weights_backward_kernel(
    mu_ptr, lv_ptr, seed_ptr, gz_ptr, glr_ptr, gmu_ptr, glv_ptr, B, J, K, mu_stride, lv_stride,
    HAS_GZ: tl.constexpr, HAS_GLR: tl.constexpr, FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, row_mask = tile_rows(B, BLOCK_R)           # posterior rows
    rows2 = rows[:, None]
    seed = tl.load(seed_ptr)
    for c0 in range(0, J, BLOCK_D):
        cols2, mask = column_block(c0, J, row_mask, BLOCK_D)
        mu, lv = load_posterior(mu_ptr, lv_ptr, rows2, mu_stride, lv_stride, cols2, mask, FP64)
        s = _sigma(lv, FP64)
        g_mu = tl.zeros_like(mu)
        g_lv = tl.zeros_like(lv)
        for k in range(0, K):
            r2 = rows2 + k * B
            eps = noise_tile(seed, mu_ptr, 0, r2, cols2, mask, c0, 0, False, FP64, BLOCK_D)
            se = s * eps
            if HAS_GZ:
                gz = load_tile(gz_ptr, r2, J, cols2, mask, FP64)
                g_mu += gz
                g_lv += 0.5 * gz * se
            if HAS_GLR:
                gr = to_compute(tl.load(glr_ptr + rows + k * B, mask=row_mask, other=0.0), FP64)[:, None]
                z = mu + se
                g_mu -= gr * z
                g_lv += 0.5 * gr * (1.0 - z * se)
        tl.store(gmu_ptr + rows2 * J + cols2, g_mu.to(gmu_ptr.dtype.element_ty), mask=mask)
        tl.store(glv_ptr + rows2 * J + cols2, g_lv.to(glv_ptr.dtype.element_ty), mask=mask)
