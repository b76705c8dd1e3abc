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

from . import _backend, _cpu_fused

KINDS = {"bernoulli": 0, "gaussian": 1, "mse": 2, "laplace": 3}
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}

# How the log-scale is given: a Python float, one value in a 0-dim tensor, or one per element.
LS_FLOAT, LS_SCALAR, LS_ELEMENT = 0, 1, 2


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


# ----------------------------------------------------------------------------- Triton launcher


def _triton_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls):
    B = x.shape[0]
    dtype = _backend.compute_dtype(x, target, log_scale)
    mode = _ls_mode(log_scale)
    gx = torch.empty(x.shape, dtype=x.dtype, device=x.device) if grad_x else _backend.empty(x, x.dtype)
    if B == 0 or x[0].numel() == 0:
        rows = torch.zeros((B,), dtype=dtype, device=x.device)
        gx.zero_()
        gls = _backend.empty(x, dtype)
        if grad_ls:
            gls = torch.zeros_like(log_scale) if mode == LS_ELEMENT else torch.zeros((B,), dtype=dtype, device=x.device)
        return _reduce(rows, reduction), gx, gls
    tiles = _backend.tiling(B, x[0].numel(), x.device)
    partial = torch.empty((B, tiles.n_split), dtype=dtype, device=x.device)
    if grad_ls:
        shape = log_scale.shape if mode == LS_ELEMENT else (B, tiles.n_split)
        gls = torch.empty(shape, dtype=log_scale.dtype if mode == LS_ELEMENT else dtype, device=x.device)
    else:
        gls = _backend.empty(x, dtype)
    _launch_nll(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls, tiles,
                partial, gx, gls, grad=None)
    rows = partial[:, 0] if tiles.n_split == 1 else partial.sum(1)
    if grad_ls and mode == LS_SCALAR:
        gls = gls[:, 0] if tiles.n_split == 1 else gls.sum(1)
    return _reduce(rows, reduction), gx, gls


def _launch_nll(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls, tiles, partial, gx, gls,
                grad):
    B = x.shape[0]
    x2, t2 = _backend.as_rows(x), _backend.as_rows(target)
    mode = _ls_mode(log_scale)
    fp64 = _backend.compute_dtype(x, target, log_scale) == torch.float64
    if fp64 and mode == LS_FLOAT and kind in (1, 3):
        # A float argument reaches the kernel as float32; float64 math wants the exact value.
        log_scale, mode = torch.full((), log_scale_value, dtype=torch.float64, device=x.device), LS_SCALAR
    ls2 = _backend.as_rows(log_scale) if mode == LS_ELEMENT else log_scale
    _backend.kernels("likelihoods").nll_forward_kernel[tiles.grid](
        x2, t2, ls2 if ls2 is not None else x2, partial if partial is not None else x2,
        gx if grad_x else x2, gls if grad_ls else x2, grad if grad is not None else x2,
        B, x2.shape[1], _backend.row_stride(x2), _backend.row_stride(t2),
        _backend.row_stride(ls2) if mode == LS_ELEMENT else 0,
        grad.stride(0) if grad is not None and grad.dim() else 0,
        tiles.split_cols, tiles.n_split, float(log_scale_value), _grad_div(B, reduction),
        KIND=kind, LS_MODE=mode, GRAD_X=grad_x, GRAD_LS=grad_ls, RESCALE=grad is not None, FP64=fp64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )


def _triton_rescale(gx, gls, x, target, log_scale, log_scale_value, kind, reduction, grad):
    """Backward for half-precision buffers: rows with grad != 1 recomputed with grad folded in."""
    B = x.shape[0]
    if B == 0 or x[0].numel() == 0:
        return
    grad_x = gx.numel() > 0
    grad_ls = gls.numel() > 0 and _ls_mode(log_scale) == LS_ELEMENT
    tiles = _backend.tiling(B, x[0].numel(), x.device)
    _launch_nll(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls, tiles,
                None, gx, gls, grad=grad)


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


def _fused_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls, grad_scale):
    """The CPU path through one compiled loop (``_cpu_fused``); None when that is unavailable."""
    B, D = x.shape[0], math.prod(x.shape[1:])
    dtype = _backend.compute_dtype(x, target, log_scale)
    mode = _ls_mode(log_scale)
    if mode == LS_ELEMENT:
        s = log_scale.reshape(B, D)
    elif mode == LS_SCALAR:
        s = log_scale
    else:
        s = torch.full((), log_scale_value, dtype=dtype)
    # The gradient's scale as a (B, 1) column, even where one value would do: a broadcast column keeps
    # Inductor's gradient loop 2-D, so it fuses with the (B, D) row sums into one pass over x and t.
    # With a 0-dim scale the gradient loop is flattened to 1-D and cannot fuse; the Bernoulli loop
    # then keeps exp(-|x|) in a buffer the size of x and reads x and t twice: 1.6x slower at 2^27
    # elements (bench/NOTES.md), twice the peak memory, faster only while everything sits in cache.
    scale = torch.full((B, 1), 1.0 / _grad_div(B, reduction), dtype=dtype)
    if grad_scale is not None:
        scale = grad_scale.to(dtype).reshape((-1, 1) if grad_scale.dim() else ()) * scale
    want_gs = grad_ls and kind in (1, 3)
    result = _cpu_fused.nll_rows(kind, x.reshape(B, D), target.reshape(B, D), s, scale, dtype,
                                 x.dtype if grad_x else None,
                                 log_scale.dtype if want_gs and mode == LS_ELEMENT else None, want_gs)
    if result is None:
        return None
    rows, gx, gls = result
    gx = gx.reshape(x.shape) if gx is not None else _backend.empty(x, x.dtype)
    if gls is None:
        gls = _backend.empty(x, dtype)
    elif mode == LS_ELEMENT:
        gls = gls.reshape(log_scale.shape)
    return _reduce(rows, reduction), gx, gls


@_backend.without_autocast
def _torch_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls, grad_scale=None):
    if _cpu_fused.enabled(x):
        fused = _fused_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls, grad_scale)
        if fused is not None:
            return fused
    # Eager: written for few passes over memory (each torch op is one): row sums of squares go
    # through vecdot, temporaries are updated in place, and nothing is built with torch.where.
    B, D = x.shape[0], math.prod(x.shape[1:])
    dtype = _backend.compute_dtype(x, target, log_scale)
    xx = x.to(dtype).reshape(B, D)
    tt = target.to(dtype).reshape(B, D)
    mode = _ls_mode(log_scale)
    inv_div = 1.0 / _grad_div(B, reduction)
    if grad_scale is not None:  # backward's grad_output, folded in before rounding to x's dtype
        inv_div = grad_scale.to(dtype).reshape((-1, 1) if grad_scale.dim() else ()) * inv_div
    gx = gls = None
    if kind == 0:
        # x - x t - logsigmoid(x)  ==  max(x, 0) - x t + log1p(exp(-|x|)), stable for any logit.
        buf = F.logsigmoid(xx).neg_().add_(xx).addcmul_(xx, tt, value=-1.0)
        rows = buf.sum(1)
        if grad_x:
            # The loss buffer is ours and spent: the gradient reuses its memory.
            gx = torch.sigmoid(xx, out=buf).sub_(tt).mul_(inv_div)
    elif kind == 2:
        diff = xx - tt
        rows = torch.linalg.vecdot(diff, diff)
        if grad_x:
            gx = diff.mul_(2.0 * inv_div)
    elif mode == LS_ELEMENT:
        s = log_scale.to(dtype).reshape(B, D)
        inv_sigma = torch.exp(-s)
        d = (xx - tt).mul_(inv_sigma)
        if kind == 1:
            rows = 0.5 * torch.linalg.vecdot(d, d) + s.sum(1) + D * _cpu_fused.HALF_LOG_2PI
            if grad_ls:
                gls = torch.addcmul(torch.ones_like(d), d, d, value=-1.0).mul_(inv_div)
            if grad_x:
                gx = d.mul_(inv_sigma).mul_(inv_div)
        else:
            a = d.abs()
            rows = a.sum(1) + s.sum(1) + D * _cpu_fused.LOG_2
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
            scaled = diff.abs().sum(1) * inv_sigma
            rows = scaled + D * (s + _cpu_fused.LOG_2)
            if grad_ls:
                gls = D - scaled             # per-row sums of 1 - |x - t| / b
            if grad_x:
                gx = torch.sign(diff).mul_(inv_sigma * inv_div)
    if rows.dim() == 0:  # a per-row constant with D == 0 rows... keep the (B,) shape
        rows = rows.expand(B)
    gx = gx.to(x.dtype).reshape(x.shape) if gx is not None else _backend.empty(x, x.dtype)
    if gls is None:
        gls = _backend.empty(x, dtype)
    elif mode == LS_ELEMENT:
        gls = gls.to(log_scale.dtype).reshape(log_scale.shape)
    return _reduce(rows, reduction), gx, gls


def _torch_scale_rows(buf: Tensor, grad: Tensor) -> None:
    if grad.dim() == 0:
        if grad.device.type == "cpu" and grad.item() == 1.0:  # a CPU read is no device sync
            return
        buf.mul_(grad.to(buf.dtype) if buf.dtype != torch.float64 else grad)
    else:
        buf.mul_(grad.to(buf.dtype).reshape((-1,) + (1,) * (buf.dim() - 1)))


def _torch_rescale(gx, gls, x, target, log_scale, log_scale_value, kind, reduction, grad):
    if grad.dim() == 0 and grad.device.type == "cpu" and grad.item() == 1.0:
        return
    grad_ls = gls.numel() > 0 and _ls_mode(log_scale) == LS_ELEMENT
    _, new_gx, new_gls = _torch_forward(x, target, log_scale, log_scale_value, kind, reduction,
                                        gx.numel() > 0, grad_ls, grad_scale=grad)
    if gx.numel():
        gx.copy_(new_gx)
    if grad_ls:
        gls.copy_(new_gls)


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
    dtype = _backend.compute_dtype(x, target, log_scale)
    out = x.new_empty((x.shape[0],) if reduction == REDUCTIONS["none"] else (), dtype=dtype)
    gx = x.new_empty(x.shape) if grad_x else x.new_empty((0,))
    if grad_log_scale and log_scale is not None and log_scale.dim() > 0:
        gls = log_scale.new_empty(log_scale.shape)
    elif grad_log_scale:
        gls = x.new_empty((x.shape[0],), dtype=dtype)
    else:
        gls = x.new_empty((0,), dtype=dtype)
    return out, gx, gls


def _scale_rows(buf: Tensor, grad: Tensor) -> None:
    (_triton_scale_rows if _backend.use_triton(buf.device) else _torch_scale_rows)(buf, grad)


@torch.library.custom_op("fastvae::scale_rows_", mutates_args=("buf",))
def scale_rows_(buf: Tensor, grad: Tensor) -> None:
    """buf[r] *= grad[r] (grad of shape (B,)) or buf *= grad (0-dim), in place."""
    _scale_rows(buf, grad)


@scale_rows_.register_fake
def _(buf, grad):
    return None


@torch.library.custom_op("fastvae::nll_rescale_", mutates_args=("grad_x", "grad_log_scale"))
def nll_rescale_(
    grad_x: Tensor, grad_log_scale: Tensor, x: Tensor, target: Tensor, log_scale: Optional[Tensor],
    log_scale_value: float, kind: int, reduction: int, grad: Tensor,
) -> None:
    """Backward for float16/bfloat16 buffers: recompute, with ``grad`` folded in before the one
    rounding, the rows whose grad is not 1 (scaling the stored gradient would round twice)."""
    _rescale(grad_x, grad_log_scale, x, target, log_scale, log_scale_value, kind, reduction, grad)


def _rescale(grad_x, grad_log_scale, x, target, log_scale, log_scale_value, kind, reduction, grad) -> None:
    impl = _triton_rescale if _backend.use_triton(x.device) else _torch_rescale
    impl(grad_x, grad_log_scale, x, target, log_scale, log_scale_value, kind, reduction, grad)


@nll_rescale_.register_fake
def _(grad_x, grad_log_scale, x, target, log_scale, log_scale_value, kind, reduction, grad):
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


_HALF = (torch.float16, torch.bfloat16)


def _backward(ctx, grad_out, _grad_gx, _grad_gls):
    if grad_out is None:
        return (None,) * 8
    x, target, log_scale, gx, gls = ctx.saved_tensors
    log_scale_value, kind, reduction, grad_x, grad_ls = ctx.args
    element_ls = grad_ls and log_scale.dim() > 0
    if _backend.tracing(grad_out):
        # Under torch.compile: functional, so the compiler sees (and may fuse) a plain multiply.
        if grad_x:
            gx = gx * _per_row(grad_out, gx).to(gx.dtype)
        if element_ls:
            gls = gls * _per_row(grad_out, gls).to(gls.dtype)
    else:
        if ctx.consumed:
            # The first backward scaled the buffers in place: recompute them for this one.
            _, gx, gls = nll_forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_ls)
        ctx.consumed = True
        # In place through .data: the multiply must not bump the saved buffers' versions, so that a
        # retained graph can still unpack them on a second backward (which recomputes, above).
        # The ops' bodies are called directly: in eager mode the dispatcher adds nothing but time.
        if (grad_x and gx.dtype in _HALF) or (element_ls and gls.dtype in _HALF):
            _rescale(gx.data, gls.data if element_ls else gls.new_empty((0,)), x, target, log_scale,
                     log_scale_value, kind, reduction, grad_out)
        else:
            if grad_x:
                _scale_rows(gx.data, grad_out)
            if element_ls:
                _scale_rows(gls.data, grad_out)
    grad_input = grad_target = grad_log_scale = None
    if grad_x:
        if ctx.needs_input_grad[0]:
            grad_input = gx
        if ctx.needs_input_grad[1] and kind != 0:
            grad_target = (-gx).to(target.dtype)
    if ctx.needs_input_grad[1] and kind == 0:
        scale = grad_out / _grad_div(x.shape[0], reduction)
        grad_target = (-x.to(_backend.compute_dtype(x, target)) * _per_row(scale, x)).to(target.dtype)
    if grad_ls and ctx.needs_input_grad[2]:
        if log_scale.dim() == 0:
            scale = grad_out / _grad_div(x.shape[0], reduction)
            grad_log_scale = (gls * scale).sum().to(log_scale.dtype)
        else:
            grad_log_scale = gls
    return grad_input, grad_target, grad_log_scale, None, None, None, None, None


nll_forward.register_autograd(_backward, setup_context=_setup_context)
