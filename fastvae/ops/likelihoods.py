"""Reconstruction negative log-likelihoods: launchers and the PyTorch path.

:func:`nll_rows` computes, in one pass over x and the target, the per-sample sums of the
per-element loss and, when asked, the gradient of ``sum_r rows_r / grad_div`` (grad_output = 1)
into buffers the op owns.  :func:`nll_backward` is backward: it makes those buffers grad_output
times themselves, in place (or recomputes them for float16/bfloat16 buffers, so the gradient is
rounded once), skipping rows whose grad_output is exactly 1 without a host read, and in the same
launch writes the gradient of the rate term (``grad_output * coef``).  The reduction over the batch
and the combine with the rate are :mod:`fastvae.ops.reduction`'s.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _backend, _cpu_fused

KINDS = {"bernoulli": 0, "gaussian": 1, "mse": 2, "laplace": 3, "continuous_bernoulli": 4}
#: The likelihoods that take logits (their decoder's output is not the data's mean).
LOGIT_KINDS = (KINDS["bernoulli"], KINDS["continuous_bernoulli"])
SCALED_KINDS = (KINDS["gaussian"], KINDS["laplace"])
#: The likelihoods with a scale (a log_scale argument; ``learn_scale=True`` on a model), by name.
SCALED_LIKELIHOODS = tuple(name for name, kind in KINDS.items() if kind in SCALED_KINDS)

# How the log-scale is given: a Python float, one value in a 0-dim tensor, or one per element.
LS_FLOAT, LS_SCALAR, LS_ELEMENT = 0, 1, 2
HALF = (torch.float16, torch.bfloat16)


def ls_mode(log_scale: Optional[Tensor]) -> int:
    if log_scale is None:
        return LS_FLOAT
    return LS_SCALAR if log_scale.dim() == 0 else LS_ELEMENT


# ----------------------------------------------------------------------------- Triton launchers

#: The GPU tiling of the likelihood kernels: 4096 elements a program and iteration over 4 warps, 32 per
#: thread, so the row reduction and the address set-up at either end of a program weigh half what they
#: weigh over 8 warps (bench/NOTES.md).
NLL_TILE, NLL_WARPS = 4096, 4


def _ls_args(x, log_scale, log_scale_value, kind):
    """(log_scale tensor or None, mode, fp64): a float log_scale under float64 math is passed as a
    float64 0-dim tensor, since a float argument reaches the kernel as float32."""
    mode = ls_mode(log_scale)
    fp64 = _backend.compute_dtype(x, log_scale) == torch.float64
    if fp64 and mode == LS_FLOAT and kind in SCALED_KINDS:
        log_scale, mode = torch.full((), log_scale_value, dtype=torch.float64, device=x.device), LS_SCALAR
    return log_scale, mode, fp64


def _triton_rows(x, target, log_scale, log_scale_value, kind, grad_div, grad_x, grad_ls):
    B = x.shape[0]
    D = x[0].numel() if B else 0
    dtype = _backend.compute_dtype(x, target, log_scale)
    mode = ls_mode(log_scale)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if grad_x else None
    if B == 0 or D == 0:
        gls = None
        if grad_ls:
            gls = torch.zeros_like(log_scale) if mode == LS_ELEMENT else torch.zeros((B,), dtype=dtype, device=x.device)
        return torch.zeros((B,), dtype=dtype, device=x.device), (gx.zero_() if gx is not None else None), gls
    tiles = _backend.tiling(B, D, x.device, NLL_TILE, NLL_WARPS)
    parts = torch.empty((B, tiles.n_split) if tiles.n_split > 1 else (B,), dtype=dtype, device=x.device)
    gls = None
    if grad_ls:
        if mode == LS_ELEMENT:
            gls = torch.empty(log_scale.shape, dtype=log_scale.dtype, device=x.device)
        else:
            gls = torch.empty(parts.shape, dtype=dtype, device=x.device)
    x2, t2 = _backend.as_rows(x), _backend.as_rows(target)
    ls, kmode, fp64 = _ls_args(x, log_scale, log_scale_value, kind)
    ls2 = _backend.as_rows(ls) if kmode == LS_ELEMENT else ls
    _backend.kernels("likelihoods").nll_forward_kernel[tiles.grid](
        x2, t2, ls2 if ls2 is not None else x2, parts, gx if grad_x else x2, gls if grad_ls else x2,
        B, D, _backend.row_stride(x2), _backend.row_stride(t2), _backend.row_stride(ls2) if kmode == LS_ELEMENT else 0,
        tiles.split_cols, tiles.n_split, float(log_scale_value), grad_div, t2.shape[0],
        KIND=kind, LS_MODE=kmode, GRAD_X=grad_x, GRAD_LS=grad_ls, FP64=fp64, EVEN=tiles.even,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, T_MOD=t2.shape[0] != B, num_warps=tiles.num_warps,
    )
    return parts, gx, gls


def _triton_backward(x, target, log_scale, log_scale_value, kind, grad_div, gx, gls, g, coef, s_total):
    B = x.shape[0]
    D = x[0].numel() if B else 0
    dtype = _backend.compute_dtype(x, target, log_scale)
    per_row = g.dim() > 0
    grate = None
    if coef is not None:
        grate = torch.empty((B,) if per_row or coef.dim() else (), dtype=dtype, device=x.device)
    gs = None
    if s_total is not None and not per_row:
        gs = torch.empty((), dtype=dtype, device=x.device)
    element_ls = gls is not None and ls_mode(log_scale) == LS_ELEMENT
    if B == 0 or D == 0:
        if grate is not None:
            grate = g * coef
        return grate, (g * s_total if gs is not None else None)
    tiles = _backend.tiling(B, D, x.device, NLL_TILE, NLL_WARPS)
    x2, t2 = _backend.as_rows(x), _backend.as_rows(target)
    ls, kmode, fp64 = _ls_args(x, log_scale, log_scale_value, kind)
    ls2 = _backend.as_rows(ls) if kmode == LS_ELEMENT else ls
    recompute = (gx is not None and gx.dtype in HALF) or (element_ls and gls.dtype in HALF)
    _backend.kernels("likelihoods").nll_backward_kernel[(tiles.programs,)](
        x2, t2, ls2 if ls2 is not None else x2, gx if gx is not None else x2, gls if element_ls else x2, g,
        coef if coef is not None else x2, grate if grate is not None else x2,
        s_total if gs is not None else x2, gs if gs is not None else x2,
        B, D, _backend.row_stride(x2), _backend.row_stride(t2), _backend.row_stride(ls2) if kmode == LS_ELEMENT else 0,
        g.stride(0) if per_row else 0, (coef.stride(0) if coef.dim() else 0) if coef is not None else 0,
        tiles.split_cols, tiles.n_split, tiles.n_tiles, float(log_scale_value), grad_div, t2.shape[0],
        KIND=kind, LS_MODE=kmode, GRAD_X=gx is not None, GRAD_LS=element_ls, RECOMPUTE=recompute,
        HAS_RATE=coef is not None, SCALAR_GS=gs is not None, G_SCALAR=not per_row, FP64=fp64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, T_MOD=t2.shape[0] != B, num_warps=tiles.num_warps,
    )
    if s_total is not None and per_row:
        gs = torch.dot(g.to(dtype), s_total)
    return grate, gs


# ----------------------------------------------------------------------------- PyTorch path


def _fused_rows(x, target, log_scale, log_scale_value, kind, grad_div, grad_x, grad_ls, grad_scale):
    """The CPU path through one compiled loop (``_cpu_fused``); None when that is unavailable."""
    B, D = x.shape[0], math.prod(x.shape[1:])
    dtype = _backend.compute_dtype(x, target, log_scale)
    mode = ls_mode(log_scale)
    if mode == LS_ELEMENT:
        s = log_scale.reshape(B, D)
    elif mode == LS_SCALAR:
        s = log_scale
    else:
        s = torch.full((), log_scale_value, dtype=dtype)
    # The gradient's scale as a (B, 1) column, even where one value would do: a broadcast column keeps
    # Inductor's gradient loop 2-D, so it fuses with the (B, D) row sums into one pass over x and t
    # (a 0-dim scale flattens the gradient loop to 1-D, which then cannot fuse; bench/NOTES.md).
    scale = torch.full((B, 1), 1.0 / grad_div, dtype=dtype)
    if grad_scale is not None:
        scale = grad_scale.to(dtype).reshape((-1, 1) if grad_scale.dim() else ()) * scale
    want_gs = grad_ls and kind in SCALED_KINDS
    result = _cpu_fused.nll_rows(kind, x.reshape(B, D), target.reshape(B, D), s, scale, dtype,
                                 x.dtype if grad_x else None,
                                 log_scale.dtype if want_gs and mode == LS_ELEMENT else None, want_gs)
    if result is None:
        return None
    rows, gx, gls = result
    if gx is not None:
        gx = gx.reshape(x.shape)
    if gls is not None and mode == LS_ELEMENT:
        gls = gls.reshape(log_scale.shape)
    return rows, gx, gls


def _torch_rows(x, target, log_scale, log_scale_value, kind, grad_div, grad_x, grad_ls, grad_scale=None):
    # Long on purpose: one branch per likelihood, each a handful of in-place torch ops, so the memory passes of
    # every kind read side by side (and match the kernel's branches in kernels/likelihoods.py).
    broadcast = target.shape[0] != x.shape[0]
    if _cpu_fused.enabled(x) and not broadcast:
        fused = _fused_rows(x, target, log_scale, log_scale_value, kind, grad_div, grad_x, grad_ls, grad_scale)
        if fused is not None:
            return fused
    # Eager: written for few passes over memory (each torch op is one): row sums of squares go
    # through vecdot, temporaries are updated in place, and nothing is built with torch.where.
    # A broadcast target (x's rows k samples of each of its Bt rows) stays (Bt, D): x is viewed as
    # (k, Bt, D) and the ops broadcast, so no copy of the target is made here either.
    B, D = x.shape[0], math.prod(x.shape[1:])
    dtype = _backend.compute_dtype(x, target, log_scale)
    Bt = target.shape[0]
    xx = x if x.dtype == dtype else x.to(dtype)
    tt = _rows_view(target if target.dtype == dtype else target.to(dtype), Bt, D)
    xx = xx.reshape(B // Bt, Bt, D) if broadcast else _rows_view(xx, B, D)
    mode = ls_mode(log_scale)
    inv_div = 1.0 / grad_div
    if grad_scale is not None:  # backward's grad_output, folded in before rounding to x's dtype
        inv_div = grad_scale.to(dtype).reshape(xx.shape[:-1] + (1,) if grad_scale.dim() else ()) * inv_div
    gx = gls = None
    if kind == 0:
        # softplus(x) - x t  ==  max(x, 0) - x t + log1p(exp(-|x|)), stable for any logit (torch's
        # softplus returns x itself beyond x = 20, where log1p(exp(-x)) < 2.1e-9 is below x's ulp).
        buf = F.softplus(xx).addcmul_(xx, tt, value=-1.0)
        rows = buf.sum(-1)
        if grad_x:
            # The loss buffer is ours and spent: the gradient reuses its memory.
            gx = torch.sigmoid(xx, out=buf).sub_(tt)
            if not isinstance(inv_div, float) or inv_div != 1.0:
                gx.mul_(inv_div)
    elif kind == 4:
        e = torch.exp(-xx.abs())
        log_c, dlog_c = _cpu_fused.cb_log_norm(xx, e)
        buf = F.softplus(xx).addcmul_(xx, tt, value=-1.0).sub_(log_c)
        rows = buf.sum(-1)
        if grad_x:
            gx = torch.sigmoid(xx, out=buf).sub_(tt).sub_(dlog_c)
            if not isinstance(inv_div, float) or inv_div != 1.0:
                gx.mul_(inv_div)
    elif kind == 2:
        diff = xx - tt
        rows = torch.linalg.vecdot(diff, diff)
        if grad_x:
            gx = diff.mul_(2.0 * inv_div)
    elif mode == LS_ELEMENT:
        s = log_scale.to(dtype).reshape(xx.shape)
        inv_sigma = torch.exp(-s)
        d = (xx - tt).mul_(inv_sigma)
        if kind == 1:
            rows = 0.5 * torch.linalg.vecdot(d, d) + s.sum(-1) + D * _cpu_fused.HALF_LOG_2PI
            if grad_ls:
                gls = torch.addcmul(torch.ones_like(d), d, d, value=-1.0).mul_(inv_div)
            if grad_x:
                gx = d.mul_(inv_sigma).mul_(inv_div)
        else:
            a = d.abs()
            rows = a.sum(-1) + s.sum(-1) + D * _cpu_fused.LOG_2
            if grad_ls:
                gls = a.neg_().add_(1.0).mul_(inv_div)
            if grad_x:
                gx = torch.sign(d).mul_(inv_sigma).mul_(inv_div)
    else:
        s = log_scale.to(dtype) if mode == LS_SCALAR else log_scale_value
        inv_sigma = torch.exp(-s) if mode == LS_SCALAR else math.exp(-s)
        diff = xx - tt
        if kind == 1:
            d = diff.mul_(inv_sigma)
            squares = torch.linalg.vecdot(d, d)
            rows = 0.5 * squares + D * (s + _cpu_fused.HALF_LOG_2PI)
            if grad_ls:
                gls = D - squares            # per-row sums of 1 - d^2
            if grad_x:
                gx = d.mul_(inv_sigma * inv_div)
        else:
            scaled = diff.abs().sum(-1) * inv_sigma
            rows = scaled + D * (s + _cpu_fused.LOG_2)
            if grad_ls:
                gls = D - scaled             # per-row sums of 1 - |x - t| / b
            if grad_x:
                gx = torch.sign(diff).mul_(inv_sigma * inv_div)
    if rows.dim() == 0:  # a per-row constant with D == 0 rows: keep the (B,) shape
        rows = rows.expand(B)
    elif broadcast:
        rows = rows.reshape(B)
        if gls is not None and mode != LS_ELEMENT:
            gls = gls.reshape(B)
    if gx is not None:
        gx = gx if gx.dtype == x.dtype else gx.to(x.dtype)
        if gx.shape != x.shape:
            gx = gx.reshape(x.shape)
    if gls is not None and mode == LS_ELEMENT:
        gls = gls.to(log_scale.dtype).reshape(log_scale.shape)
    return rows, gx, gls


def _rows_view(t: Tensor, rows: int, cols: int) -> Tensor:
    # Each view is a dispatcher call: none when the tensor is already (B, D).
    return t if t.dim() == 2 else t.reshape(rows, cols)


def _unit(g: Tensor) -> bool:
    """grad_output is exactly one value 1: known without a device sync only for a CPU tensor."""
    return g.dim() == 0 and g.device.type == "cpu" and g.item() == 1.0


def _per_row(g: Tensor, like: Tensor) -> Tensor:
    return g.reshape((-1,) + (1,) * (like.dim() - 1)) if g.dim() else g


def _torch_backward(x, target, log_scale, log_scale_value, kind, grad_div, gx, gls, g, coef, s_total):
    element_ls = gls is not None and ls_mode(log_scale) == LS_ELEMENT
    if (gx is not None or element_ls) and not _unit(g):
        if (gx is not None and gx.dtype in HALF) or (element_ls and gls.dtype in HALF):
            _, new_gx, new_gls = _torch_rows(x, target, log_scale, log_scale_value, kind, grad_div,
                                             gx is not None, element_ls, grad_scale=g)
            if gx is not None:
                gx.copy_(new_gx)
            if element_ls:
                gls.copy_(new_gls)
        else:
            if gx is not None:
                gx.mul_(_per_row(g, gx).to(gx.dtype) if gx.dtype != torch.float64 else _per_row(g, gx))
            if element_ls:
                gls.mul_(_per_row(g, gls).to(gls.dtype) if gls.dtype != torch.float64 else _per_row(g, gls))
    grate = None if coef is None else g * coef
    gs = None
    if s_total is not None:
        gs = g * s_total if g.dim() == 0 else torch.dot(g.to(s_total.dtype), s_total)
    return grate, gs


def nll_rows(x: Tensor, target: Tensor, log_scale: Optional[Tensor], log_scale_value: float, kind: int,
             grad_div: int, grad_x: bool, grad_ls: bool):
    """(row sums (B,) or partial sums (B, n), grad_x buffer or None, grad_log_scale buffer or None).

    The gradient buffers hold d(sum_r rows_r / grad_div) / dx (x's shape and dtype) and, for a
    per-element log_scale, the same for log_scale; for a 0-dim log_scale the un-divided per-row
    (or per-(row, split)) sums of d loss / d log_scale.
    """
    return ROWS[_backend.use_triton(x.device)](x, target, log_scale, log_scale_value, kind, grad_div, grad_x,
                                               grad_ls)


def nll_backward(x, target, log_scale, log_scale_value, kind, grad_div, gx, gls, g, coef=None, s_total=None):
    """Scale ``gx`` (and a per-element ``gls``) by grad_output ``g`` in place; return
    ``(g * coef or None, g * s_total or its dot product or None)``."""
    if gx is None and gls is None and coef is None and s_total is None:
        return None, None
    return BACKWARD[_backend.use_triton(x.device)](x, target, log_scale, log_scale_value, kind, grad_div, gx, gls,
                                                   g, coef, s_total)


#: The implementations by backend (True: Triton), for callers that chose it once.
ROWS = {True: _triton_rows, False: _torch_rows}
BACKWARD = {True: _triton_backward, False: _torch_backward}
