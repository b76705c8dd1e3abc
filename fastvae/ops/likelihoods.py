"""Reconstruction negative log-likelihoods: launchers, the PyTorch path, and the custom ops.

``fastvae::nll_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_log_scale)
    -> (loss, grad_x_buffer, grad_log_scale_buffer)``

computes the reduced loss and, in the same pass, the gradient of the reduced loss for
grad_output = 1.  Backward then only multiplies the buffer by grad_output, in place, and the
Triton kernel predicates that off for rows whose grad_output is exactly 1 (no bytes move after
``loss.backward()``).  A second backward through the same graph (``retain_graph=True``)
recomputes the buffer instead of reusing the scaled one.

``fastvae::scale_rows_(buf, grad)`` is that in-place multiply; it only ever touches buffers the
forward allocated, never a caller's tensor.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _backend

KINDS = {"bernoulli": 0, "gaussian": 1, "mse": 2, "laplace": 3}
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)

# How the log-scale is given: a Python float, one value in a 0-dim tensor, or one per element.
LS_FLOAT, LS_SCALAR, LS_ELEMENT = 0, 1, 2


def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _ls_mode(log_scale: Optional[Tensor]) -> int:
    if log_scale is None:
        return LS_FLOAT
    return LS_SCALAR if log_scale.dim() == 0 else LS_ELEMENT


def _reduce(rows: Tensor, reduction: int) -> Tensor:
    if reduction == REDUCTIONS["none"]:
        return rows
    total = rows.sum()
    return total / rows.shape[0] if reduction == REDUCTIONS["mean"] else total


def _grad_div(batch: int, reduction: int) -> int:
    return max(batch, 1) if reduction == REDUCTIONS["mean"] else 1


def _empty(like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.empty((0,), dtype=dtype, device=like.device)


# ----------------------------------------------------------------------------- Triton launcher


def _triton_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls):
    B = x.shape[0]
    x2, t2 = _backend.as_rows(x), _backend.as_rows(target)
    D = x2.shape[1]
    dtype = _compute_dtype(x, target, log_scale)
    fp64 = dtype == torch.float64
    mode = _ls_mode(log_scale)
    if fp64 and mode == LS_FLOAT and kind in (1, 3):
        # A float argument reaches the kernel as float32; float64 math wants the exact value.
        log_scale, mode = torch.full((), log_scale_value, dtype=dtype, device=x.device), LS_SCALAR
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if grad_x else _empty(x, x.dtype)
    if B == 0 or D == 0:
        rows = torch.zeros((B,), dtype=dtype, device=x.device)
        if grad_x:
            gx.zero_()
        gls = _empty(x, dtype)
        if grad_ls:
            gls = torch.zeros_like(log_scale) if mode == LS_ELEMENT else torch.zeros((B,), dtype=dtype, device=x.device)
        return _reduce(rows, reduction), gx, gls
    tiles = _backend.tiling(B, D, x.device)
    partial = torch.empty((B, tiles.n_split), dtype=dtype, device=x.device)
    ls2 = _backend.as_rows(log_scale) if mode == LS_ELEMENT else log_scale
    if grad_ls:
        if mode == LS_ELEMENT:
            gls = torch.empty(log_scale.shape, dtype=log_scale.dtype, device=x.device)
        else:
            gls = torch.empty((B, tiles.n_split), dtype=dtype, device=x.device)
    else:
        gls = _empty(x, dtype)
    _backend.kernels("likelihoods").nll_forward_kernel[tiles.grid](
        x2, t2, ls2 if ls2 is not None else x2, partial, gx if grad_x else x2, gls if grad_ls else x2,
        B, D, _backend.row_stride(x2), _backend.row_stride(t2),
        _backend.row_stride(ls2) if mode == LS_ELEMENT else 0,
        tiles.split_cols, tiles.n_split, float(log_scale_value), _grad_div(B, reduction),
        KIND=kind, LS_MODE=mode, GRAD_X=grad_x, GRAD_LS=grad_ls, FP64=fp64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )
    rows = partial[:, 0] if tiles.n_split == 1 else partial.sum(1)
    if grad_ls and mode == LS_SCALAR:
        gls = gls[:, 0] if tiles.n_split == 1 else gls.sum(1)
    return _reduce(rows, reduction), gx, gls


def _triton_scale_rows(buf: Tensor, grad: Tensor) -> None:
    B = buf.shape[0]
    D = buf[0].numel() if B else 0
    if B == 0 or D == 0:
        return
    tiles = _backend.tiling(B, D, buf.device)
    _backend.kernels("likelihoods").scale_rows_kernel[tiles.grid](
        buf, grad, B, D, grad.stride(0) if grad.dim() else 0, tiles.split_cols,
        FP64=buf.dtype == torch.float64 or grad.dtype == torch.float64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )


# ----------------------------------------------------------------------------- PyTorch path


def _torch_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls):
    B = x.shape[0]
    dtype = _compute_dtype(x, target, log_scale)
    xx = x.to(dtype).reshape(B, math.prod(x.shape[1:]))
    tt = target.to(dtype).reshape(xx.shape)
    mode = _ls_mode(log_scale)
    s = log_scale.to(dtype).reshape(xx.shape) if mode == LS_ELEMENT else (
        log_scale.to(dtype) if mode == LS_SCALAR else log_scale_value)
    div = _grad_div(B, reduction)
    gx = gls = None
    if kind == 0:
        # softplus(x) - x t  ==  max(x, 0) - x t + log1p(exp(-|x|)); softplus switches to x past 20.
        loss = F.softplus(xx) - xx * tt
        if grad_x:
            gx = torch.sigmoid(xx).sub_(tt)
    elif kind == 2:
        diff = xx - tt
        loss = diff * diff
        if grad_x:
            gx = diff * 2.0
    else:
        inv_sigma = torch.exp(-s) if mode != LS_FLOAT else math.exp(-s)
        diff = xx - tt
        if kind == 1:
            d = diff * inv_sigma
            loss = 0.5 * d * d + (s + _HALF_LOG_2PI)
            if grad_x:
                gx = d * inv_sigma
            if grad_ls:
                gls = 1.0 - d * d
        else:
            a = diff.abs() * inv_sigma
            loss = a + (s + _LOG_2)
            if grad_x:
                gx = torch.sign(diff) * inv_sigma
            if grad_ls:
                gls = 1.0 - a
    rows = loss.sum(1)
    if gx is not None:
        if div != 1:
            gx = gx.div_(div)
        gx = gx.to(x.dtype).reshape(x.shape)
    else:
        gx = _empty(x, x.dtype)
    if gls is not None:
        if mode == LS_ELEMENT:
            gls = (gls / div).to(log_scale.dtype).reshape(log_scale.shape)
        else:
            gls = gls.sum(1)
    else:
        gls = _empty(x, dtype)
    return _reduce(rows, reduction), gx, gls


def _torch_scale_rows(buf: Tensor, grad: Tensor) -> None:
    if grad.dim() == 0:
        if grad.device.type == "cpu" and grad.item() == 1.0:  # a CPU read is no device sync
            return
        buf.mul_(grad.to(buf.dtype) if buf.dtype != torch.float64 else grad)
    else:
        buf.mul_(grad.to(buf.dtype).reshape((-1,) + (1,) * (buf.dim() - 1)))


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("fastvae::nll_forward", mutates_args=())
def nll_forward(
    x: Tensor, target: Tensor, log_scale: Optional[Tensor], log_scale_value: float,
    kind: int, reduction: int, grad_x: bool, grad_log_scale: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Reduced negative log-likelihood and, when asked, its gradient buffers (see module doc)."""
    impl = _triton_forward if _backend.use_triton(x.device) else _torch_forward
    return impl(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_log_scale)


@nll_forward.register_fake
def _(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_log_scale):
    dtype = _compute_dtype(x, target, log_scale)
    out = x.new_empty((x.shape[0],) if reduction == REDUCTIONS["none"] else (), dtype=dtype)
    gx = x.new_empty(x.shape) if grad_x else x.new_empty((0,))
    if grad_log_scale and log_scale is not None and log_scale.dim() > 0:
        gls = log_scale.new_empty(log_scale.shape)
    elif grad_log_scale:
        gls = x.new_empty((x.shape[0],), dtype=dtype)
    else:
        gls = x.new_empty((0,), dtype=dtype)
    return out, gx, gls


@torch.library.custom_op("fastvae::scale_rows_", mutates_args=("buf",))
def scale_rows_(buf: Tensor, grad: Tensor) -> None:
    """buf[r] *= grad[r] (grad of shape (B,)) or buf *= grad (0-dim), in place."""
    if _backend.use_triton(buf.device):
        _triton_scale_rows(buf, grad)
    else:
        _torch_scale_rows(buf, grad)


@scale_rows_.register_fake
def _(buf, grad):
    return None


def _per_row(grad: Tensor, like: Tensor) -> Tensor:
    return grad.reshape((-1,) + (1,) * (like.dim() - 1)) if grad.dim() else grad


def _setup_context(ctx, inputs, output):
    x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls = inputs
    _, gx, gls = output
    ctx.mark_non_differentiable(gx, gls)
    ctx.save_for_backward(x, target, log_scale, gx, gls)
    ctx.args = (log_scale_value, kind, reduction, grad_x, grad_ls)
    ctx.consumed = False
    ctx.set_materialize_grads(False)


def _tracing(t: Tensor) -> bool:
    """True under torch.compile / AOT tracing, where backward must stay functional."""
    return torch.compiler.is_compiling() or type(t) is not torch.Tensor


def _scale(buf: Tensor, grad_out: Tensor, functional: bool) -> Tensor:
    if functional:
        return buf * _per_row(grad_out, buf).to(buf.dtype)
    # .data: the in-place multiply must not bump the saved buffer's version, so that a retained
    # graph can still unpack it on a second backward (which then recomputes, see below).
    scale_rows_(buf.data, grad_out)
    return buf


def _backward(ctx, grad_out, _grad_gx, _grad_gls):
    if grad_out is None:
        return (None,) * 8
    x, target, log_scale, gx, gls = ctx.saved_tensors
    log_scale_value, kind, reduction, grad_x, grad_ls = ctx.args
    functional = _tracing(grad_out)
    if not functional:
        if ctx.consumed:
            # The first backward scaled the buffers in place: recompute them for this one.
            _, gx, gls = nll_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls)
        ctx.consumed = True
    grad_input = grad_target = grad_log_scale = None
    if grad_x:
        gx = _scale(gx, grad_out, functional)
        if ctx.needs_input_grad[0]:
            grad_input = gx
        if ctx.needs_input_grad[1] and kind != 0:
            grad_target = (-gx).to(target.dtype)
    if ctx.needs_input_grad[1] and kind == 0:
        scale = grad_out / _grad_div(x.shape[0], reduction)
        grad_target = (-x.to(_compute_dtype(x, target)) * _per_row(scale, x)).to(target.dtype)
    if grad_ls and ctx.needs_input_grad[2]:
        if log_scale.dim() == 0:
            scale = grad_out / _grad_div(x.shape[0], reduction)
            grad_log_scale = (gls * scale).sum().to(log_scale.dtype)
        else:
            grad_log_scale = _scale(gls, grad_out, functional)
    return grad_input, grad_target, grad_log_scale, None, None, None, None, None


nll_forward.register_autograd(_backward, setup_context=_setup_context)
