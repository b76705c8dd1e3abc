"""The batch reduction and the ``distortion + beta * rate`` combine, in one small kernel.

``finish_kernel`` is the last forward step of every fastvae loss: it takes the per-(row, split)
partial sums a producing kernel wrote (the likelihood's ``(B, n_split)`` row sums, or the KL's),
optionally the per-sample rate ``(B,)`` (or its ``(B, n_split)`` partials), and writes in one pass

    d_r   = sum_k a[r, k]                      per-sample distortion (or KL, for the latent ops)
    r_r   = sum_k rate[r, k]                   per-sample rate
    reduction 'none':  loss_r = d_r + beta * r_r            or  d_r + beta * |r_r - C|
    reduction 'mean':  D = sum_r d_r / B,  R = sum_r r_r / B,  loss = D + beta * |R - C|
    reduction 'sum':   D = sum_r d_r,      R = sum_r r_r,      loss = D + beta * |R - C * B|

(without a capacity C the penalty is ``beta * R``), and the coefficient backward needs,
``coef = d loss / d r_r`` per unit of grad_output:

    'mean': beta * sign(R - C) / B      'sum': beta * sign(R - C B)      'none': beta * sign(r_r - C)

(``beta / B``, ``beta`` and ``beta`` without a capacity; sign(0) = 0, as torch's ``abs`` gradient).
With a learned scalar log-scale it also reduces the partial sums of d loss / d log_scale the
likelihood kernel wrote, the same way as the distortion.

One program walks the batch BLOCK rows at a time in a fixed order: the sums are deterministic
(no atomics) and float32 (float64 for float64 inputs).  ``beta`` and ``C`` come either as float
arguments (cast to the compute dtype here) or as 0-dim tensors read from memory, so a schedule that
updates them on the device never makes the host wait.

Bytes: reads 4 (n_a + n_rate [+ n_s]) bytes a row, writes 4 bytes a row per per-sample output
('none') or a few scalars; B of 65536 is half a MiB, a few microseconds.
"""
import triton
import triton.language as tl

from .tiles import scalar_arg, to_compute


@triton.jit
def _row_sums(ptr, rows, mask, stride, n_parts, FP64: tl.constexpr):
    total = to_compute(tl.load(ptr + rows * stride, mask=mask, other=0.0), FP64)
    for k in range(1, n_parts):
        total += to_compute(tl.load(ptr + rows * stride + k, mask=mask, other=0.0), FP64)
    return total


@triton.jit
def _sign(x):
    return tl.where(x > 0.0, 1.0, tl.where(x < 0.0, -1.0, 0.0))


@triton.jit
def finish_kernel(
    a_ptr, a_parts, r_ptr, r_stride, r_parts, s_ptr, s_parts,
    beta_ptr, beta_value, cap_ptr, cap_value,
    loss_ptr, dist_ptr, rate_ptr, coef_ptr, s_out_ptr,
    B,
    REDUCTION: tl.constexpr, HAS_RATE: tl.constexpr, BETA_PTR: tl.constexpr, HAS_CAP: tl.constexpr,
    CAP_PTR: tl.constexpr, HAS_S: tl.constexpr, FP64: tl.constexpr, BLOCK: tl.constexpr,
):
    """REDUCTION: 0 'none', 1 'mean', 2 'sum'. See the module docstring for what is written."""
    # Long on purpose: one program does the reduction over the batch and then the combine, so its two
    # halves share the accumulators (a split would pass them through global memory or a second launch).
    beta = scalar_arg(beta_ptr, beta_value, BETA_PTR, FP64)
    cap = scalar_arg(cap_ptr, cap_value, CAP_PTR, FP64)
    zero = to_compute(tl.zeros((BLOCK,), dtype=tl.float32), FP64)
    acc_a = zero
    acc_r = zero
    acc_s = zero
    for r0 in range(0, B, BLOCK):
        rows = r0 + tl.arange(0, BLOCK).to(tl.int64)
        mask = rows < B
        a = _row_sums(a_ptr, rows, mask, a_parts, a_parts, FP64)
        if HAS_RATE:
            r = _row_sums(r_ptr, rows, mask, r_stride, r_parts, FP64)
        if HAS_S:
            s = _row_sums(s_ptr, rows, mask, s_parts, s_parts, FP64)
        if REDUCTION == 0:
            if HAS_RATE:
                if HAS_CAP:
                    loss = a + beta * tl.abs(r - cap)
                    tl.store(coef_ptr + rows, beta * _sign(r - cap), mask=mask)
                else:
                    loss = a + beta * r
                tl.store(dist_ptr + rows, a, mask=mask)
                tl.store(rate_ptr + rows, r, mask=mask)
            else:
                loss = a
            tl.store(loss_ptr + rows, loss, mask=mask)
            if HAS_S:
                tl.store(s_out_ptr + rows, s, mask=mask)
        else:
            acc_a += a
            if HAS_RATE:
                acc_r += r
            if HAS_S:
                acc_s += s
    if REDUCTION != 0:
        if REDUCTION == 1:
            inv = 1.0 / tl.maximum(B, 1).to(zero.dtype)
            # the mean of nothing is NaN, as torch's mean
            total_a = tl.where(B == 0, float("nan"), tl.sum(acc_a, axis=0) * inv)
            cap_b = cap
        else:
            inv = tl.full([], 1.0, zero.dtype)
            total_a = tl.sum(acc_a, axis=0)
            cap_b = cap * B
        loss = total_a
        if HAS_RATE:
            total_r = tl.sum(acc_r, axis=0) * inv
            if REDUCTION == 1:
                total_r = tl.where(B == 0, float("nan"), total_r)
            if HAS_CAP:
                loss = total_a + beta * tl.abs(total_r - cap_b)
                coef = beta * _sign(total_r - cap_b) * inv
            else:
                loss = total_a + beta * total_r
                coef = beta * inv
            tl.store(dist_ptr, total_a)
            tl.store(rate_ptr, total_r)
            tl.store(coef_ptr, coef)
        tl.store(loss_ptr, loss)
        if HAS_S:
            tl.store(s_out_ptr, tl.sum(acc_s, axis=0) * inv)
    elif HAS_RATE and not HAS_CAP:
        tl.store(coef_ptr, beta)
