"""Reconstruction negative log-likelihoods fused with their gradient, and their backward.

``nll_forward_kernel`` reads the decoder output x and the target t once and, in the same pass,
writes the per-(row, split) partial sums of the loss and, when a gradient is needed, d loss / d x
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
mode 1 writes per-(row, split) partial sums of dl/ds.  The batch reduction of the partial sums
and the combine with the rate are ``objective.finish_kernel``'s.

Bytes per element, s_x, s_t, s_s the element sizes of x, t and a per-element log_scale:
    forward without gradient: read s_x + s_t [+ s_s]
    forward with gradient:    read s_x + s_t [+ s_s], write s_x [+ s_s]
plus 4 bytes a (row, split) for the partial sums.

``nll_backward_kernel`` is backward: with g_r the grad_output of row r (one value for all rows
under 'mean' and 'sum'), it makes the stored gradient g_r times itself and, for the beta-VAE
loss, writes the gradient of the per-sample rate, g_r * coef_r (``finish_kernel``'s coef), so that
one launch serves the whole loss.  Two modes:

    SCALE      float32/float64 buffers: gx[r] *= g_r in place; reads and writes s_x bytes an element
    RECOMPUTE  float16/bfloat16 buffers: the gradient is recomputed from x and t with g_r folded in
               before its single rounding (scaling the stored, already rounded gradient would round
               twice); reads s_x + s_t [+ s_s] and writes s_x [+ s_s] an element

Rows with g_r exactly 1 are skipped by a branch on the tile's values, not by predication, so after
``loss.backward()`` on a mean or a sum (g = 1) the kernel reads one scalar per program and exits.
The grid is persistent: ``num_programs`` programs walk the (row block, split) tiles with a stride.
"""
import triton
import triton.language as tl

from .tiles import inv_div, load_tile, tile_columns, tile_rows, to_compute


@triton.jit
def _log1p_small(e):
    """log(1 + e) for e in [0, 1], accurate for tiny e without libdevice's log1p."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _terms(x, t, s, KIND: tl.constexpr):
    """(loss, dloss/dx, dloss/ds) per element; dloss/ds is 0 for the likelihoods without a scale."""
    if KIND == 0:
        e = tl.exp(-tl.abs(x))
        loss = tl.maximum(x, 0.0) - x * t + _log1p_small(e)
        grad = tl.where(x >= 0.0, 1.0, e) / (1.0 + e) - t
        grad_s = 0.0
    elif KIND == 1:
        inv_sigma = tl.exp(-s)
        d = (x - t) * inv_sigma
        loss = 0.5 * d * d + s + 0.9189385332046727  # log(2 pi) / 2
        grad = d * inv_sigma
        grad_s = 1.0 - d * d
    elif KIND == 2:
        d = x - t
        loss = d * d
        grad = 2.0 * d
        grad_s = 0.0
    else:
        inv_sigma = tl.exp(-s)
        d = x - t
        a = tl.abs(d) * inv_sigma
        loss = a + s + 0.6931471805599453  # log 2
        grad = tl.where(d > 0.0, inv_sigma, tl.where(d < 0.0, -inv_sigma, 0.0))
        grad_s = 1.0 - a
    return loss, grad, grad_s


@triton.jit
def _log_scale(ls_ptr, rows2, ls_stride, cols2, mask, s_scalar, LS_MODE: tl.constexpr, FP64: tl.constexpr):
    if LS_MODE == 2:
        s = load_tile(ls_ptr, rows2, ls_stride, cols2, mask, FP64)
    else:
        s = s_scalar
    return s


@triton.jit
def _scalar_log_scale(ls_ptr, ls_value, LS_MODE: tl.constexpr, FP64: tl.constexpr):
    # Scalar arguments are cast explicitly: an integer-valued float must not change the math.
    if LS_MODE == 1:
        s = to_compute(tl.load(ls_ptr), FP64)
    elif FP64:
        s = tl.full([], ls_value, tl.float64)
    else:
        s = tl.full([], ls_value, tl.float32)
    return s


@triton.jit
def nll_forward_kernel(
    x_ptr, t_ptr, ls_ptr, loss_ptr, gx_ptr, gls_ptr,
    B, D, x_stride, t_stride, ls_stride, split_cols, n_split, ls_value, grad_div,
    KIND: tl.constexpr, LS_MODE: tl.constexpr, GRAD_X: tl.constexpr, GRAD_LS: tl.constexpr,
    FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Per-(row, split) partial loss sums and, in the same pass, the gradient buffers."""
    rows, row_mask = tile_rows(B, BLOCK_R)
    rows2 = rows[:, None]
    col_start, col_end = tile_columns(D, split_cols)
    acc = to_compute(tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32), FP64)
    acc_ls = tl.zeros_like(acc)
    per_div = inv_div(grad_div, FP64)
    s_scalar = _scalar_log_scale(ls_ptr, ls_value, LS_MODE, FP64)
    for c0 in range(col_start, col_end, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = row_mask[:, None] & (cols < col_end)[None, :]
        cols2 = cols[None, :]
        x = load_tile(x_ptr, rows2, x_stride, cols2, mask, FP64)
        t = load_tile(t_ptr, rows2, t_stride, cols2, mask, FP64)
        s = _log_scale(ls_ptr, rows2, ls_stride, cols2, mask, s_scalar, LS_MODE, FP64)
        loss, grad, grad_s = _terms(x, t, s, KIND)
        acc += tl.where(mask, loss, 0.0)
        if GRAD_X:
            tl.store(gx_ptr + rows2 * D + cols2, (grad * per_div).to(gx_ptr.dtype.element_ty), mask=mask)
        if GRAD_LS:
            if LS_MODE == 2:
                tl.store(gls_ptr + rows2 * D + cols2, (grad_s * per_div).to(gls_ptr.dtype.element_ty), mask=mask)
            else:
                acc_ls += tl.where(mask, grad_s, 0.0)
    tl.store(loss_ptr + rows * n_split + tl.program_id(1), tl.sum(acc, axis=1), mask=row_mask)
    if GRAD_LS and LS_MODE == 1:
        tl.store(gls_ptr + rows * n_split + tl.program_id(1), tl.sum(acc_ls, axis=1), mask=row_mask)


@triton.jit
def _backward_tile(
    x_ptr, t_ptr, ls_ptr, gx_ptr, gls_ptr, rows, active, g, s_scalar, per_div,
    D, x_stride, t_stride, ls_stride, col_start, col_end,
    KIND: tl.constexpr, LS_MODE: tl.constexpr, GRAD_X: tl.constexpr, GRAD_LS: tl.constexpr,
    RECOMPUTE: tl.constexpr, FP64: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One (row block, split) tile of backward: the gradient buffers times g (per row or one value)."""
    rows2 = rows[:, None]
    for c0 in range(col_start, col_end, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = active[:, None] & (cols < col_end)[None, :]
        cols2 = cols[None, :]
        out = rows2 * D + cols2
        if RECOMPUTE:
            x = load_tile(x_ptr, rows2, x_stride, cols2, mask, FP64)
            t = load_tile(t_ptr, rows2, t_stride, cols2, mask, FP64)
            s = _log_scale(ls_ptr, rows2, ls_stride, cols2, mask, s_scalar, LS_MODE, FP64)
            _, grad, grad_s = _terms(x, t, s, KIND)
            if GRAD_X:
                tl.store(gx_ptr + out, (grad * (g * per_div)).to(gx_ptr.dtype.element_ty), mask=mask)
            if GRAD_LS:
                tl.store(gls_ptr + out, (grad_s * (g * per_div)).to(gls_ptr.dtype.element_ty), mask=mask)
        else:
            if GRAD_X:
                v = to_compute(tl.load(gx_ptr + out, mask=mask, other=0.0), FP64)
                tl.store(gx_ptr + out, (v * g).to(gx_ptr.dtype.element_ty), mask=mask)
            if GRAD_LS:
                v = to_compute(tl.load(gls_ptr + out, mask=mask, other=0.0), FP64)
                tl.store(gls_ptr + out, (v * g).to(gls_ptr.dtype.element_ty), mask=mask)


@triton.jit
def nll_backward_kernel(
    x_ptr, t_ptr, ls_ptr, gx_ptr, gls_ptr, g_ptr, coef_ptr, grate_ptr, s_sum_ptr, gs_ptr,
    B, D, x_stride, t_stride, ls_stride, g_stride, coef_stride, split_cols, n_split, n_tiles,
    ls_value, grad_div,
    KIND: tl.constexpr, LS_MODE: tl.constexpr, GRAD_X: tl.constexpr, GRAD_LS: tl.constexpr,
    RECOMPUTE: tl.constexpr, HAS_RATE: tl.constexpr, SCALAR_GS: tl.constexpr, G_SCALAR: tl.constexpr,
    FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Backward of the likelihood (and of the rate term): see the module docstring.

    G_SCALAR: g is one value (reductions 'mean' and 'sum'); else one per row (stride g_stride).
    HAS_RATE: also write grate = g * coef (coef one value, or per row with coef_stride 1).
    SCALAR_GS: also write gs = g * s_sum, the gradient of a learned scalar log-scale (G_SCALAR only).
    """
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    per_div = inv_div(grad_div, FP64)
    s_scalar = _scalar_log_scale(ls_ptr, ls_value, LS_MODE, FP64)
    lanes = tl.arange(0, BLOCK_R).to(tl.int64)
    if G_SCALAR:
        g = to_compute(tl.load(g_ptr), FP64)
        if pid == 0:
            if HAS_RATE:
                tl.store(grate_ptr, g * to_compute(tl.load(coef_ptr), FP64))
            if SCALAR_GS:
                tl.store(gs_ptr, g * to_compute(tl.load(s_sum_ptr), FP64))
        if GRAD_X or GRAD_LS:
            if g != 1.0:  # uniform: after loss.backward() every program stops here
                for tile in range(pid, n_tiles, step):
                    block = tile // n_split
                    rows = block.to(tl.int64) * BLOCK_R + lanes
                    col_start = (tile - block * n_split).to(tl.int64) * split_cols
                    _backward_tile(x_ptr, t_ptr, ls_ptr, gx_ptr, gls_ptr, rows, rows < B, g, s_scalar, per_div,
                                   D, x_stride, t_stride, ls_stride, col_start,
                                   tl.minimum(col_start + split_cols, D),
                                   KIND, LS_MODE, GRAD_X, GRAD_LS, RECOMPUTE, FP64, BLOCK_D)
    else:
        for tile in range(pid, n_tiles, step):
            block = tile // n_split
            split = tile - block * n_split
            rows = block.to(tl.int64) * BLOCK_R + lanes
            row_mask = rows < B
            g = to_compute(tl.load(g_ptr + rows * g_stride, mask=row_mask, other=1.0), FP64)
            if HAS_RATE and split == 0:
                coef = to_compute(tl.load(coef_ptr + rows * coef_stride, mask=row_mask, other=0.0), FP64)
                tl.store(grate_ptr + rows, g * coef, mask=row_mask)
            if GRAD_X or GRAD_LS:
                active = row_mask & (g != 1.0)
                if tl.max(active.to(tl.int32), axis=0) > 0:  # uniform over the tile
                    col_start = split.to(tl.int64) * split_cols
                    _backward_tile(x_ptr, t_ptr, ls_ptr, gx_ptr, gls_ptr, rows, active, g[:, None], s_scalar,
                                   per_div, D, x_stride, t_stride, ls_stride, col_start,
                                   tl.minimum(col_start + split_cols, D),
                                   KIND, LS_MODE, GRAD_X, GRAD_LS, RECOMPUTE, FP64, BLOCK_D)
