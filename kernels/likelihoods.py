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
    KIND 4  continuous bernoulli (Loaiza-Ganem & Cunningham 2019): the Bernoulli l minus log C(x),
                       C(x) = x / tanh(x/2)                          dl/dx = sigmoid(x) - t - 1/x + 1/sinh(x)

log1p(e), e = exp(-|x|) in [0, 1], is a polynomial e * Q(e) in float32: degree 8 (max relative error
2.0e-7) for float32 logits, degree 6 (1.4e-6) for float16/bfloat16 ones, whose own rounding is a
thousand times coarser; in float64 it is log(u) * e / (u - 1), u = 1 + e.  The sigmoid reuses e through
one fast reciprocal r = 1 / (1 + e), so logits of any size stay finite and no libdevice call is left in
the loop.

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

T_MOD: the target has ``t_rows`` rows and x a multiple of them (x's rows are k importance samples of each
target row, sample-major): row r of x reads target row r mod t_rows, from the same memory, so an IWAE
likelihood reads s_t bytes per target element once per sample without a (k, B, D) copy ever existing.
"""
import triton
import triton.language as tl

from .polynomials import horner
from .tiles import inv_div, load_tile, masked_row_sum, scalar_arg, store_tile, tile_columns, tile_rows, to_compute


@triton.jit
def _log1p_small(e):
    """log(1 + e) for e in [0, 1], float64: log(u) * e / (u - 1), u = 1 + e (exact to rounding, tiny e too)."""
    u = 1.0 + e
    return tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))


@triton.jit
def _log1p_poly(e):
    """log(1 + e) for e in [0, 1], float32: e * Q(e), Q the degree-8 fit to log1p(e) / e on [0, 1] (max relative
    error 2.0e-7, about 3.4 float32 ulps, evaluated in float32; tiny e keeps its relative precision).  Eight
    FMAs and a multiply, where libdevice's logf is about twenty instructions plus a division."""
    return horner(e, (0.005229014903306961, -0.029490482062101364, 0.07820189744234085, -0.13661202788352966,
                      0.1910504549741745, -0.2484273612499237, 0.3331906497478485, -0.4999949038028717,
                      0.9999999403953552)) * e


@triton.jit
def _exp_neg(s, FP64: tl.constexpr):
    if FP64:
        out = tl.exp(-s)
    else:
        out = tl.exp2(s * -1.4426950408889634)
    return out


@triton.jit
def _log1p_poly6(e):
    """log(1 + e) for e in [0, 1] to 1.4e-6 (relative), for 16-bit inputs, whose own rounding is a thousand
    times coarser: the degree-6 fit, six FMAs and a multiply."""
    return horner(e, (0.014130092225968838, -0.06636885553598404, 0.14918659627437592, -0.23501913249492645,
                      0.33108988404273987, -0.4998692572116852, 0.9999987483024597)) * e


@triton.jit
def _cb_log_norm(x, e, FP64: tl.constexpr):
    """(log C(x), d log C / dx) of the continuous Bernoulli, C(x) = x / tanh(x / 2) (2 at x = 0), e = exp(-|x|).

    log C is even and smooth: near 0 its series log 2 + x^2/12 - 7x^4/1440 + 31x^6/90720 - 127x^8/4838400, elsewhere
    log(1 + e) - log(1 - e) + log|x| (in float32 one hardware log2 of |x| (1 + e) / (1 - e));
    d log C / dx = 1/x - 1/sinh(x), near 0 its series
    x/6 - 7x^3/360 + 31x^5/15120 - 127x^7/604800 + 73x^9/3421440, elsewhere 1/x - 2 e sign(x) / (1 - e^2).
    The switch (|x| = 1/2 in float32, 1e-3 in float64) is where both forms agree to the dtype's precision,
    so value and gradient are continuous through 0, with no clamp; logits up to +-1e4 stay finite."""
    a = tl.abs(x)
    x2 = x * x
    if FP64:
        small = a < 1e-3
    else:
        small = a < 0.5
    series = 0.6931471805599453 + x2 * (1.0 / 12.0 + x2 * (-7.0 / 1440.0 + x2 * (31.0 / 90720.0
                                                                              + x2 * (-127.0 / 4838400.0))))
    dseries = x * (1.0 / 6.0 + x2 * (-7.0 / 360.0 + x2 * (31.0 / 15120.0 + x2 * (-127.0 / 604800.0
                                                                                  + x2 * (73.0 / 3421440.0)))))
    a_big = tl.where(small, 1.0, a)       # keeps the unused branch finite
    e_big = tl.where(small, 0.5, e)
    sign = tl.where(x < 0.0, -1.0, 1.0)
    if FP64:
        direct = tl.log(1.0 + e_big) - tl.log(1.0 - e_big) + tl.log(a_big)
        ddirect = sign * (1.0 / a_big - 2.0 * e_big / (1.0 - e_big * e_big))
    else:
        # one hardware log2 and two fast divisions: log C = log(|x| (1 + e) / (1 - e)), 1 - e >= 0.39 here, and
        # 1/|x| - 2e/(1 - e^2) over one denominator (the same cancellation as the two-term form near |x| = 1/2)
        one_m_e2 = 1.0 - e_big * e_big
        direct = tl.log2(a_big * (1.0 + e_big) * tl.fdiv(1.0, 1.0 - e_big, approx=True)) * 0.6931471805599453
        ddirect = sign * tl.fdiv(one_m_e2 - 2.0 * e_big * a_big, a_big * one_m_e2, approx=True)
    return tl.where(small, series, direct), tl.where(small, dseries, ddirect)


@triton.jit
def _terms(x, t, s, KIND: tl.constexpr, GRAD: tl.constexpr, FP64: tl.constexpr, HALF: tl.constexpr = False):
    """(loss, dloss/dx, dloss/ds) per element; dloss/ds is 0 for the likelihoods without a scale, and the
    gradients are 0 unless GRAD (the compiler drops what is not used).  HALF: the logits are float16 or
    bfloat16, and log1p takes the shorter polynomial."""
    if KIND == 0 or KIND == 4:
        if FP64:
            e = tl.exp(-tl.abs(x))
        else:
            e = tl.exp2(tl.abs(x) * -1.4426950408889634)  # the hardware exp2: two instructions, not five
        if FP64:
            loss = tl.maximum(x, 0.0) - x * t + _log1p_small(e)
            grad = tl.where(x >= 0.0, 1.0, e) / (1.0 + e) - t
        else:
            if HALF:
                log1p_e = _log1p_poly6(e)
            else:
                log1p_e = _log1p_poly(e)
            loss = tl.maximum(x, 0.0) - x * t + log1p_e
            if GRAD or KIND == 4:
                # sigmoid(x) = r or e r, r = 1 / (1 + e) in [1/2, 1]: the fast division (2 ulps) suffices
                r = tl.fdiv(1.0, 1.0 + e, approx=True)
                grad = tl.where(x >= 0.0, r, e * r) - t
            else:
                grad = 0.0
        if KIND == 4:
            log_c, dlog_c = _cb_log_norm(x, e, FP64)
            loss = loss - log_c
            grad = grad - dlog_c
        grad_s = 0.0
    elif KIND == 1:
        inv_sigma = _exp_neg(s, FP64)
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
        inv_sigma = _exp_neg(s, FP64)
        d = x - t
        a = tl.abs(d) * inv_sigma
        loss = a + s + 0.6931471805599453  # log 2
        grad = tl.where(d > 0.0, inv_sigma, tl.where(d < 0.0, -inv_sigma, 0.0))
        grad_s = 1.0 - a
    return loss, grad, grad_s


@triton.jit
def _log_scale(ls_ptr, rows2, ls_stride, cols2, mask, s_scalar, LS_MODE: tl.constexpr, FP64: tl.constexpr,
               EVEN: tl.constexpr = False):
    if LS_MODE == 2:
        s = load_tile(ls_ptr, rows2, ls_stride, cols2, mask, FP64, EVEN)
    else:
        s = s_scalar
    return s


@triton.jit
def _target_rows(rows2, t_rows, T_MOD: tl.constexpr):
    """The target row of each row of x: itself, or (T_MOD) itself mod t_rows (a broadcast target)."""
    if T_MOD:
        out = rows2 % t_rows
    else:
        out = rows2
    return out


@triton.jit
def nll_forward_kernel(
    x_ptr, t_ptr, ls_ptr, loss_ptr, gx_ptr, gls_ptr,
    B, D, x_stride, t_stride, ls_stride, split_cols, n_split, ls_value, grad_div, t_rows,
    KIND: tl.constexpr, LS_MODE: tl.constexpr, GRAD_X: tl.constexpr, GRAD_LS: tl.constexpr,
    FP64: tl.constexpr, EVEN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    T_MOD: tl.constexpr = False,
):
    """Per-(row, split) partial loss sums and, in the same pass, the gradient buffers.  EVEN: every tile is
    whole (B, D and split_cols multiples of the tile), so no element is masked."""
    rows, row_mask = tile_rows(B, BLOCK_R)
    rows2 = rows[:, None]
    t_rows2 = _target_rows(rows2, t_rows, T_MOD)
    col_start, col_end = tile_columns(D, split_cols)
    # per-row sums, added up one tile at a time: no accumulator the size of the tile to zero and reduce
    acc = to_compute(tl.zeros((BLOCK_R,), dtype=tl.float32), FP64)
    acc_ls = tl.zeros_like(acc)
    per_div = inv_div(grad_div, FP64)
    s_scalar = scalar_arg(ls_ptr, ls_value, LS_MODE == 1, FP64)  # one value in memory, or the float argument
    for c0 in range(col_start, col_end, BLOCK_D):
        cols = c0 + tl.arange(0, BLOCK_D).to(tl.int64)
        mask = row_mask[:, None] & (cols < col_end)[None, :]
        cols2 = cols[None, :]
        x = load_tile(x_ptr, rows2, x_stride, cols2, mask, FP64, EVEN)
        t = load_tile(t_ptr, t_rows2, t_stride, cols2, mask, FP64, EVEN)
        s = _log_scale(ls_ptr, rows2, ls_stride, cols2, mask, s_scalar, LS_MODE, FP64, EVEN)
        loss, grad, grad_s = _terms(x, t, s, KIND, GRAD_X, FP64, x_ptr.dtype.element_ty.primitive_bitwidth == 16)
        acc += masked_row_sum(loss, mask, EVEN)
        if GRAD_X:
            store_tile(gx_ptr, rows2 * D + cols2, grad * per_div, mask, EVEN)
        if GRAD_LS:
            if LS_MODE == 2:
                store_tile(gls_ptr, rows2 * D + cols2, grad_s * per_div, mask, EVEN)
            else:
                acc_ls += masked_row_sum(grad_s, mask, EVEN)
    tl.store(loss_ptr + rows * n_split + tl.program_id(1), acc, mask=row_mask)
    if GRAD_LS and LS_MODE == 1:
        tl.store(gls_ptr + rows * n_split + tl.program_id(1), acc_ls, mask=row_mask)


@triton.jit
def _backward_tile(
    x_ptr, t_ptr, ls_ptr, gx_ptr, gls_ptr, rows, active, g, s_scalar, per_div,
    D, x_stride, t_stride, ls_stride, col_start, col_end, t_rows,
    KIND: tl.constexpr, LS_MODE: tl.constexpr, GRAD_X: tl.constexpr, GRAD_LS: tl.constexpr,
    RECOMPUTE: tl.constexpr, FP64: tl.constexpr, BLOCK_D: tl.constexpr, T_MOD: tl.constexpr,
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
            t = load_tile(t_ptr, _target_rows(rows2, t_rows, T_MOD), t_stride, cols2, mask, FP64)
            s = _log_scale(ls_ptr, rows2, ls_stride, cols2, mask, s_scalar, LS_MODE, FP64)
            _, grad, grad_s = _terms(x, t, s, KIND, True, FP64, x_ptr.dtype.element_ty.primitive_bitwidth == 16)
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
    ls_value, grad_div, t_rows,
    KIND: tl.constexpr, LS_MODE: tl.constexpr, GRAD_X: tl.constexpr, GRAD_LS: tl.constexpr,
    RECOMPUTE: tl.constexpr, HAS_RATE: tl.constexpr, SCALAR_GS: tl.constexpr, G_SCALAR: tl.constexpr,
    FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, T_MOD: tl.constexpr = False,
):
    """Backward of the likelihood (and of the rate term): see the module docstring.

    G_SCALAR: g is one value (reductions 'mean' and 'sum'); else one per row (stride g_stride).
    HAS_RATE: also write grate = g * coef (coef one value, or per row with coef_stride 1).
    SCALAR_GS: also write gs = g * s_sum, the gradient of a learned scalar log-scale (G_SCALAR only).
    """
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    per_div = inv_div(grad_div, FP64)
    s_scalar = scalar_arg(ls_ptr, ls_value, LS_MODE == 1, FP64)  # one value in memory, or the float argument
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
                                   tl.minimum(col_start + split_cols, D), t_rows,
                                   KIND, LS_MODE, GRAD_X, GRAD_LS, RECOMPUTE, FP64, BLOCK_D, T_MOD)
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
                                   tl.minimum(col_start + split_cols, D), t_rows,
                                   KIND, LS_MODE, GRAD_X, GRAD_LS, RECOMPUTE, FP64, BLOCK_D, T_MOD)
