"""The batch reduction and the ``distortion + beta * rate`` combine: the one place they live.

Every loss op ends here: the per-sample row sums a likelihood (or the KL) produced, optionally the
per-sample rate, ``beta`` and the capacity ``C`` go in; the reduced loss, distortion and rate, and
the coefficient backward needs, come out (``kernels/objective.py`` states the formulas).  On CUDA
that is one small Triton kernel; on the PyTorch path a few torch ops.

    'mean': loss = D + beta * |R - C|        coef = beta * sign(R - C) / B
    'sum':  loss = D + beta * |R - C * B|    coef = beta * sign(R - C * B)
    'none': loss_r = d_r + beta * |r_r - C|  coef_r = beta * sign(r_r - C)

Without a capacity the penalty is ``beta * R`` and coef is ``beta / B`` ('mean') or ``beta``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _backend

NONE, MEAN, SUM = 0, 1, 2
REDUCTIONS = {"none": NONE, "mean": MEAN, "sum": SUM}

Scalar = Union[float, Tensor]


def divisor(batch: int, reduction: int) -> int:
    """What the batch's sum is divided by: B for a mean (1 for an empty batch), else 1."""
    return max(batch, 1) if reduction == MEAN else 1


class Finished(NamedTuple):
    loss: Tensor
    distortion: Optional[Tensor]   # None without a rate (then loss is the distortion)
    rate: Optional[Tensor]
    coef: Union[Tensor, float, None]  # d loss / d rate_r per unit grad_output
    s_total: Optional[Tensor]         # reduced d loss / d log_scale partials, when given


def _as_kernel_scalar(value, device: torch.device):
    """(tensor to read, float value): a float, or a 0-dim tensor read on the device (no host sync);
    a CPU tensor next to CUDA inputs is read on the host, which is no device sync either."""
    if isinstance(value, Tensor):
        if value.device == device:
            return value, 0.0
        return None, float(value)
    return None, float(value)


def _triton_finish(parts, reduction, rate, beta, capacity, s_parts, dtype) -> Finished:
    B = parts.shape[0]
    device = parts.device
    out_shape = (B,) if reduction == NONE else ()
    loss = torch.empty(out_shape, dtype=dtype, device=device)
    has_rate = rate is not None
    dist = torch.empty(out_shape, dtype=dtype, device=device) if has_rate else None
    rate_out = torch.empty(out_shape, dtype=dtype, device=device) if has_rate else None
    has_cap = capacity is not None
    coef = None
    if has_rate:
        coef = torch.empty((B,) if reduction == NONE and has_cap else (), dtype=dtype, device=device)
    s_out = torch.empty(out_shape, dtype=dtype, device=device) if s_parts is not None else None
    beta_t, beta_v = _as_kernel_scalar(beta, device)
    cap_t, cap_v = _as_kernel_scalar(capacity, device) if has_cap else (None, 0.0)
    a = parts if parts.dim() == 2 else parts[:, None]
    r = rate if rate is None or rate.dim() == 2 else rate[:, None]
    s = s_parts if s_parts is None or s_parts.dim() == 2 else s_parts[:, None]
    block = _backend.finish_block(B)
    _backend.kernels("objective").finish_kernel[(1,)](
        a, a.shape[1], r if has_rate else a, (r.stride(0) if B > 1 else r.shape[1]) if has_rate else 0,
        r.shape[1] if has_rate else 1, s if s is not None else a, s.shape[1] if s is not None else 1,
        beta_t if beta_t is not None else a, beta_v, cap_t if cap_t is not None else a, cap_v,
        loss, dist if has_rate else loss, rate_out if has_rate else loss, coef if has_rate else loss,
        s_out if s_out is not None else loss, B,
        REDUCTION=reduction, HAS_RATE=has_rate, BETA_PTR=beta_t is not None, HAS_CAP=has_cap,
        CAP_PTR=cap_t is not None, HAS_S=s is not None, FP64=dtype == torch.float64, BLOCK=block, num_warps=4,
    )
    return Finished(loss, dist, rate_out, coef, s_out)


def _torch_finish(parts, reduction, rate, beta, capacity, s_parts, dtype) -> Finished:
    B = parts.shape[0]
    d = parts if parts.dim() == 1 else parts.sum(1)
    s = None if s_parts is None else (s_parts if s_parts.dim() == 1 else s_parts.sum(1))
    if reduction != NONE:
        d = d.sum() if reduction == SUM else d.mean()
        if s is not None:
            s = s.sum() if reduction == SUM else s.mean()
    if rate is None:
        return Finished(d, None, None, None, s)
    r = rate if rate.dtype == dtype else rate.to(dtype)
    if r.dim() == 2:
        r = r.sum(1)
    if reduction != NONE:
        r = r.sum() if reduction == SUM else r.mean()
    inv = 1.0 / divisor(B, reduction)
    if isinstance(beta, Tensor) and beta.dtype != dtype:
        beta = beta.to(dtype)
    if capacity is None:
        loss = torch.add(d, r, alpha=beta) if isinstance(beta, float) else d + beta * r
        return Finished(loss, d, r, beta * inv, s)
    if isinstance(capacity, Tensor) and capacity.dtype != dtype:
        capacity = capacity.to(dtype)
    gap = r - (capacity * B if reduction == SUM else capacity)
    loss = torch.add(d, gap.abs(), alpha=beta) if isinstance(beta, float) else d + beta * gap.abs()
    return Finished(loss, d, r, (beta * inv) * torch.sign(gap), s)


def finish(parts: Tensor, reduction: int, *, rate: Optional[Tensor] = None, beta: Scalar = 1.0,
           capacity: Optional[Scalar] = None, s_parts: Optional[Tensor] = None,
           dtype: torch.dtype = torch.float32) -> Finished:
    """Reduce ``parts`` ((B,) row sums or (B, n) partial sums) over the batch, combined with ``rate``.

    ``beta`` and ``capacity`` are floats or 0-dim tensors; outputs are in ``dtype``.
    """
    return FINISH[_backend.use_triton(parts.device)](parts, reduction, rate, beta, capacity, s_parts, dtype)


#: The implementations by backend (True: Triton), for callers that chose it once.
FINISH = {True: _triton_finish, False: _torch_finish}
