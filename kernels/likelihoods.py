"""Reconstruction negative log-likelihoods fused with their gradient, and backward's scaling.

``nll_forward_kernel`` reads the decoder output x and the target t once and, in the same pass,
writes the per-row partial sums of the loss and, when a gradient is needed, d loss / d x
(already divided by ``grad_div``: B for a batch mean, 1 otherwise), so that backward only has
to multiply by grad_output.  Per element (s = log_scale, sigma = exp(s)):

    KIND 0  bernoulli: l = max(x, 0) - x t + log1p(exp(-|x|))      dl/dx = sigmoid(x) - t
    KIND 1  gaussian:  l = ((x - t)/sigma)^2 / 2 + s + log(2 pi)/2   dl/dx = (x - t)/sigma^2
                                                                    dl/ds = 1 - ((x - t)/sigma)^2
    KIND 2  mse:       l = (x - t)^2                                dl/dx = 2 (x - t)
    KIND 3  laplace:   l = |x - t|/sigma + s + log 2                dl/dx = sign(x - t)/sigma
                                                                    dl/ds = 1 - |x - t|/sigma

log1p is evaluated as log(u) * e / (u - 1) with u = 1 + e (exact to rounding, no libdevice),
and the sigmoid reuses e = exp(-|x|), so logits of any size stay finite.

LS_MODE says where s comes from: 0 a float argument, 1 one value in memory (a learned
scalar), 2 a tensor of the target's shape.  With GRAD_LS, mode 2 writes dl/ds per element and
mode 1 writes per-(row, split) partial sums of dl/ds.

Bytes per element, s_x, s_t, s_s the element sizes of x, t and a per-element log_scale:
    forward without gradient: read s_x + s_t [+ s_s]
    forward with gradient:    read s_x + s_t [+ s_s], write s_x [+ s_s]
plus 4 bytes a (row, split) for the partial sums.

With RESCALE the same kernel is backward for float16/bfloat16 buffers: rows whose grad_output
g_r is not exactly 1 are recomputed from x and t with g_r folded in before the single rounding to
the buffer's dtype (scaling the stored, already rounded gradient would round twice); rows with
g_r = 1 move no bytes.  It reads s_x + s_t [+ s_s] and writes s_x [+ s_s] per element of those rows.

``scale_rows_kernel`` is backward for float32/float64 buffers: it multiplies a gradient buffer in place by grad_output,
one value per row (stride 0 when it is one value for all), and predicates off every row whose
grad_output is exactly 1, so backward after ``loss.backward()`` on a mean or a sum moves no
bytes at all, and never reads grad_output on the host.  Otherwise it reads and writes s bytes
per element of the buffer.
"""
import triton
import triton.language as tl

from .tiles import load_tile, tile_columns, tile_rows, to_compute

@triton.jit
def _log1p_small(e):
    """log(1 + e) for e in [0, 1], accurate for tiny e without libdevice's log1p."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def nll_forward_kernel(
    x_ptr, t_ptr, ls_ptr, loss_ptr, gx_ptr, gls_ptr, g_ptr,
    B, D, x_stride, t_stride, ls_stride, g_stride, split_cols, n_split, ls_value, grad_div,
    KIND: tl.constexpr, LS_MODE: tl.constexpr, GRAD_X: tl.constexpr, GRAD_LS: tl.constexpr,
    RESCALE: tl.constexpr, FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, row_mask = tile_rows(B, BLOCK_R)
    rows2 = rows[:, None]
    col_start, col_end = tile_columns(D, split_cols)
    # Scalar arguments are cast explicitly: an integer-valued float must not change the math.
    acc = to_compute(tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32), FP64)
    acc_ls = tl.zeros_like(acc)
    if FP64:
        inv_div = 1.0 / tl.full([], grad_div, tl.float64)
        s_value = tl.full([], ls_value, tl.float64)
    else:
        inv_div = 1.0 / tl.full([], grad_div, tl.float32)
        s_value = tl.full([], ls_value, tl.float32)
    if RESCALE:
        # Backward for half-precision buffers: rewrite the rows whose grad_output is not 1 with
        # grad_output folded in before the one rounding to the buffer's dtype.
        g = to_compute(tl.load(g_ptr + rows * g_stride, mask=row_mask, other=1.0), FP64)
        row_mask = row_mask & (g != 1.0)
        grad_scale = (g * inv_div)[:, None]
    else:
        grad_scale = inv_div
    if LS_MODE == 1:
        s_scalar = to_compute(tl.load(ls_ptr), FP64)
    for c0 in range(col_start, col_end, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = row_mask[:, None] & (cols < col_end)[None, :]
        cols2 = cols[None, :]
        x = load_tile(x_ptr, rows2, x_stride, cols2, mask, FP64)
        t = load_tile(t_ptr, rows2, t_stride, cols2, mask, FP64)
        if KIND == 1 or KIND == 3:
            if LS_MODE == 0:
                s = s_value
            elif LS_MODE == 1:
                s = s_scalar
            else:
                s = load_tile(ls_ptr, rows2, ls_stride, cols2, mask, FP64)
            inv_sigma = tl.exp(-s)
        if KIND == 0:
            e = tl.exp(-tl.abs(x))
            loss = tl.maximum(x, 0.0) - x * t + _log1p_small(e)
            grad = tl.where(x >= 0.0, 1.0, e) / (1.0 + e) - t
        elif KIND == 1:
            d = (x - t) * inv_sigma
            loss = 0.5 * d * d + s + 0.9189385332046727  # log(2 pi) / 2
            grad = d * inv_sigma
            grad_s = 1.0 - d * d
        elif KIND == 2:
            d = x - t
            loss = d * d
            grad = 2.0 * d
        else:
            d = x - t
            a = tl.abs(d) * inv_sigma
            loss = a + s + 0.6931471805599453  # log 2
            grad = tl.where(d > 0.0, inv_sigma, tl.where(d < 0.0, -inv_sigma, 0.0))
            grad_s = 1.0 - a
        acc += tl.where(mask, loss, 0.0)
        if GRAD_X:
            tl.store(gx_ptr + rows2 * D + cols2, (grad * grad_scale).to(gx_ptr.dtype.element_ty), mask=mask)
        if GRAD_LS:
            if LS_MODE == 2:
                tl.store(gls_ptr + rows2 * D + cols2, (grad_s * grad_scale).to(gls_ptr.dtype.element_ty), mask=mask)
            else:
                acc_ls += tl.where(mask, grad_s, 0.0)
    if not RESCALE:
        tl.store(loss_ptr + rows * n_split + tl.program_id(1), tl.sum(acc, axis=1), mask=row_mask)
    if GRAD_LS and not RESCALE:
        if LS_MODE == 1:
            tl.store(gls_ptr + rows * n_split + tl.program_id(1), tl.sum(acc_ls, axis=1), mask=row_mask)


@triton.jit
def scale_rows_kernel(
    buf_ptr, g_ptr, B, D, g_stride, split_cols,
    FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, row_mask = tile_rows(B, BLOCK_R)
    g = to_compute(tl.load(g_ptr + rows * g_stride, mask=row_mask, other=1.0), FP64)
    active = row_mask & (g != 1.0)
    rows2 = rows[:, None]
    col_start, col_end = tile_columns(D, split_cols)
    for c0 in range(col_start, col_end, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = active[:, None] & (cols < col_end)[None, :]
        ptrs = buf_ptr + rows2 * D + cols[None, :]
        v = tl.load(ptrs, mask=mask, other=0.0)
        tl.store(ptrs, (v.to(g.dtype) * g[:, None]).to(buf_ptr.dtype.element_ty), mask=mask)
