"""The loss ops: one likelihood alone, or the beta-VAE objective (likelihood + rate).

:func:`loss` is what every public loss calls.  Forward is two launches on CUDA: the likelihood
kernel (row sums and the gradient buffer in one pass, ``likelihoods.nll_rows``) and the
reduction/combine kernel (``reduction.finish``); backward is one (``likelihoods.nll_backward``:
the buffer times grad_output, skipped when that is 1, plus the gradient of the rate).

In eager mode the op is a plain ``torch.autograd.Function`` (a few microseconds of host time);
under ``torch.compile`` / AOT tracing it is the registered custom op ``fastvae::objective_forward``
with the same implementation, and its backward is written in torch ops on the saved buffers so the
compiler can fuse the multiply into what follows.  Higher-order gradients (``create_graph=True``)
are taken through the eager formulas of :mod:`fastvae.ops.eager`; forward-mode AD and
``torch.func`` transforms raise a clear error.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backend, eager, small
from . import likelihoods as L
from . import reduction as R

KIND_NAMES = {v: k for k, v in L.KINDS.items()}


def unsupported_transform(op: str, what: str) -> RuntimeError:
    return RuntimeError(
        f"fastvae.{op} does not support {what}: its fused kernels compute first-order reverse-mode gradients "
        "(and higher orders through torch.autograd.grad(..., create_graph=True)). For forward-mode AD or "
        "torch.func transforms, write the term with the eager formulas in fastvae.ops.eager instead."
    )


def _forward(x, target, log_scale, ls_value, kind, reduction, grad_x, grad_ls, rate, beta, capacity, triton):
    """(Finished, grad_x buffer or None, per-element grad_log_scale buffer or None); ``triton``: the
    backend, chosen once by the caller."""
    div = R.divisor(x.shape[0], reduction)
    dtype = _backend.compute_dtype(x, target, log_scale)
    parts, gx, gls = L.ROWS[triton](x, target, log_scale, ls_value, kind, div, grad_x, grad_ls)
    scalar_ls = gls is not None and log_scale.dim() == 0
    if rate is None and reduction == R.NONE and parts.dim() == 1:
        return R.Finished(parts, None, None, None, gls if scalar_ls else None), gx, (None if scalar_ls else gls)
    done = R.FINISH[triton](parts, reduction, rate, beta, capacity, gls if scalar_ls else None, dtype)
    return done, gx, (None if scalar_ls else gls)


def _per_row(g: Tensor, like: Tensor) -> Tensor:
    return g.reshape((-1,) + (1,) * (like.dim() - 1)) if g.dim() else g


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    if a is None:
        return b
    return a if b is None else a + b


def _fold(grad: Tensor, target: Tensor) -> Tensor:
    """The gradient of a target broadcast over x's leading samples: summed over them."""
    if target.shape[0] == grad.shape[0]:
        return grad
    return grad.reshape((-1,) + tuple(target.shape)).sum(0)


def expand_target(target: Tensor, x: Tensor) -> Tensor:
    """A broadcast target copied to x's rows (for the eager formulas, which do not broadcast rows)."""
    if target.shape[0] == x.shape[0]:
        return target
    return target.repeat((x.shape[0] // target.shape[0],) + (1,) * (target.dim() - 1))


def _input_grads(needs, x, target, log_scale, rate, beta, capacity, cfg, gx, gls, gs, g_x, grate, g_loss, dtype):
    """The gradient tuple of the inputs (x, target, log_scale, rate, beta, capacity) from the
    scaled buffers and the grad_outputs."""
    ls_value, kind, reduction, grad_x, grad_ls = cfg[:5]
    B = x.shape[0]
    div = R.divisor(B, reduction)
    grad_in = grad_t = grad_ls_out = grad_rate = grad_beta = grad_cap = None
    if g_x is not None:
        if needs[0]:
            grad_in = gx
        if needs[1]:
            if kind in L.LOGIT_KINDS:  # d/dt of max(x,0) - x t + log1p(exp(-|x|)) (- log C(x)) is -x
                grad_t = _fold(-x.to(dtype) * _per_row(g_x / div, x), target).to(target.dtype)
            else:
                grad_t = _fold(-gx, target).to(target.dtype)
        if needs[2] and grad_ls:
            grad_ls_out = gls if log_scale.dim() else gs.to(log_scale.dtype)
    if needs[3] and grate is not None:
        grad_rate = (grate if grate.dim() else grate.expand(B)).to(rate.dtype)
    if g_loss is not None and (needs[4] or needs[5]):
        r = rate.to(dtype)
        if reduction != R.NONE:
            r = r.sum() if reduction == R.SUM else r.mean()
        gap = None if capacity is None else r - (capacity * B if reduction == R.SUM else capacity)
        if needs[4]:  # d loss / d beta: the reduced rate, or |rate - C|
            grad_beta = (g_loss * (r if gap is None else gap.abs())).sum().to(beta.dtype)
        if needs[5]:  # d loss / d C: -beta sign(rate - C), times B for 'sum'
            grad_cap = (-(g_loss * beta * torch.sign(gap)).sum() * (B if reduction == R.SUM else 1)).to(capacity.dtype)
    return grad_in, grad_t, grad_ls_out, grad_rate, grad_beta, grad_cap


def _higher_order(ctx, g_loss, g_dist, g_rate):
    """Backward under create_graph=True: autograd through the eager formulas, any order
    (``_backend.replay_grads``)."""
    x, target, log_scale, rate, beta_t, cap_t = ctx.saved_tensors
    ls_value, kind, reduction = ctx.cfg[:3]
    dtype = _backend.compute_dtype(x, target, log_scale)
    red = ("none", "mean", "sum")[reduction]

    def build(xx, tt, ls, r, b, c):
        s = ls.to(dtype) if ls is not None else ls_value
        rows = eager.nll_rows(KIND_NAMES[kind], xx.to(dtype), expand_target(tt, xx).to(dtype), s)
        if r is None:
            return [(eager.reduce(rows, red), g_loss)]
        outs = eager.combine(rows, r.to(dtype), b if b is not None else ctx.beta, c if c is not None else ctx.capacity,
                             red)
        return zip(outs, (g_loss, g_dist, g_rate))

    return tuple(_backend.replay_grads((x, target, log_scale, rate, beta_t, cap_t), ctx.needs_input_grad[:6], build))


class _Loss(torch.autograd.Function):
    """Eager autograd node of :func:`loss` (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, target, log_scale, rate, beta_t, cap_t, beta, capacity, cfg):
        ls_value, kind, reduction, grad_x, grad_ls, triton = cfg
        done, gx, gls = _forward(x, target, log_scale, ls_value, kind, reduction, grad_x, grad_ls, rate,
                                 beta, capacity, triton)
        ctx.save_for_backward(x, target, log_scale, rate, beta_t, cap_t)
        # The buffers are the op's own and not outputs: kept on ctx, handed over (not copied) in backward.
        ctx.gx, ctx.gls, ctx.coef, ctx.s_total = gx, gls, done.coef, done.s_total
        ctx.cfg, ctx.beta, ctx.capacity = cfg, beta, capacity
        ctx.consumed = False
        ctx.set_materialize_grads(False)
        if rate is None:
            return done.loss
        return done.loss, done.distortion, done.rate

    @staticmethod
    def backward(ctx, g_loss, g_dist=None, g_rate=None):
        if _backend.batched_grads(g_loss, g_dist, g_rate):
            raise unsupported_transform(KIND_NAMES[ctx.cfg[1]] + " loss", _backend.BATCHED_GRADS)
        if torch.is_grad_enabled():
            return _higher_order(ctx, g_loss, g_dist, g_rate) + (None, None, None)
        x, target, log_scale, rate, beta_t, cap_t = ctx.saved_tensors
        ls_value, kind, reduction, grad_x, grad_ls, triton = ctx.cfg
        gx, gls = ctx.gx, ctx.gls
        ctx.gx = ctx.gls = None
        if ctx.consumed:
            # A second backward through a retained graph: the first one scaled the buffers in place.
            _, gx, gls = _forward(x, target, log_scale, ls_value, kind, reduction, grad_x, grad_ls, None, 1.0, None,
                                  triton)
        ctx.consumed = True
        div = R.divisor(x.shape[0], reduction)
        dtype = _backend.compute_dtype(x, target, log_scale)
        coef = ctx.coef if rate is not None else None
        if g_dist is None and g_rate is None:
            g_x = g_loss
            grate = gs = None
            if g_x is not None:
                grate, gs = L.BACKWARD[triton](x, target, log_scale, ls_value, kind, div, gx, gls, g_x, coef,
                                               ctx.s_total)
        else:
            g_x = _add(g_loss, g_dist)
            grate = _add(None if g_loss is None or coef is None else g_loss * coef,
                         None if g_rate is None else g_rate / div)
            gs = None
            if g_x is not None:
                _, gs = L.nll_backward(x, target, log_scale, ls_value, kind, div, gx, gls, g_x, None, ctx.s_total)
        grads = _input_grads(ctx.needs_input_grad, x, target, log_scale, rate, ctx.beta, ctx.capacity, ctx.cfg,
                             gx, gls, gs, g_x, grate, g_loss, dtype)
        return grads + (None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        raise unsupported_transform(KIND_NAMES[ctx.cfg[1]] + " loss", "forward-mode AD")


_apply_loss = _backend.apply_function(_Loss)


# ----------------------------------------------------------------------------- traced path


@torch.library.custom_op("fastvae::objective_forward", mutates_args=())
def objective_forward(
    x: Tensor, target: Tensor, log_scale: Optional[Tensor], log_scale_value: float, rate: Optional[Tensor],
    beta: Optional[Tensor], beta_value: float, capacity: Optional[Tensor], capacity_value: float,
    has_capacity: bool, kind: int, reduction: int, grad_x: bool, grad_log_scale: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, distortion, rate, grad_x buffer, grad_log_scale buffer, coef, s_total): see :func:`loss`."""
    beta_arg = beta if beta is not None else beta_value
    cap_arg = (capacity if capacity is not None else capacity_value) if has_capacity else None
    done, gx, gls = _forward(x, target, log_scale, log_scale_value, kind, reduction, grad_x, grad_log_scale,
                             rate, beta_arg, cap_arg, _backend.use_triton(x.device))
    dtype = _backend.compute_dtype(x, target, log_scale)

    def own(t):  # a custom op's outputs may not alias its inputs or each other
        if t is None:
            return _backend.empty(x, dtype)
        if not isinstance(t, Tensor):
            return torch.full((), t, dtype=dtype, device=x.device)
        return t.clone() if (t is rate or t is x or t is target or t is log_scale) else t

    return (own(done.loss), own(done.distortion), own(done.rate), own(gx), own(gls), own(done.coef),
            own(done.s_total))


@objective_forward.register_fake
def _(x, target, log_scale, log_scale_value, rate, beta, beta_value, capacity, capacity_value, has_capacity, kind,
      reduction, grad_x, grad_log_scale):
    dtype = _backend.compute_dtype(x, target, log_scale)
    B = x.shape[0]
    out = (B,) if reduction == R.NONE else ()
    with_rate = rate is not None
    loss = x.new_empty(out, dtype=dtype)
    dist = x.new_empty(out if with_rate else (0,), dtype=dtype)
    rate_out = x.new_empty(out if with_rate else (0,), dtype=dtype)
    gx = x.new_empty(x.shape) if grad_x else x.new_empty((0,))
    element_ls = grad_log_scale and log_scale is not None and log_scale.dim() > 0
    gls = log_scale.new_empty(log_scale.shape) if element_ls else x.new_empty((0,), dtype=dtype)
    if with_rate:
        coef = x.new_empty((B,) if reduction == R.NONE and has_capacity else (), dtype=dtype)
    else:
        coef = x.new_empty((0,), dtype=dtype)
    scalar_ls = grad_log_scale and log_scale is not None and log_scale.dim() == 0
    s_total = x.new_empty(out if scalar_ls else (0,), dtype=dtype)
    return loss, dist, rate_out, gx, gls, coef, s_total


def _traced_setup(ctx, inputs, output):
    (x, target, log_scale, log_scale_value, rate, beta, beta_value, capacity, capacity_value, has_capacity, kind,
     reduction, grad_x, grad_ls) = inputs
    _, _, _, gx, gls, coef, s_total = output
    ctx.mark_non_differentiable(gx, gls, coef, s_total)
    ctx.save_for_backward(x, target, log_scale, rate, beta, capacity, gx, gls, coef, s_total)
    ctx.cfg = (log_scale_value, kind, reduction, grad_x, grad_ls)
    ctx.beta_value, ctx.capacity_value, ctx.has_capacity = beta_value, capacity_value, has_capacity
    ctx.set_materialize_grads(False)


def _traced_backward(ctx, g_loss, g_dist, g_rate, *_buffers):
    x, target, log_scale, rate, beta_t, cap_t, gx, gls, coef, s_total = ctx.saved_tensors
    ls_value, kind, reduction, grad_x, grad_ls = ctx.cfg[:5]
    dtype = _backend.compute_dtype(x, target, log_scale)
    div = R.divisor(x.shape[0], reduction)
    with_rate = rate is not None
    if not with_rate:  # distortion and rate are placeholders then
        g_dist = g_rate = None
    g_x = _add(g_loss, g_dist)
    gs = None
    if g_x is not None:
        # Functional, so the compiler sees (and may fuse) a plain multiply.
        if grad_x:
            gx = gx * _per_row(g_x, gx).to(gx.dtype)
        if grad_ls and log_scale.dim():
            gls = gls * _per_row(g_x, gls).to(gls.dtype)
        if grad_ls and not log_scale.dim():
            gs = (g_x.to(dtype) * s_total).sum()
    grate = None
    if with_rate:
        grate = _add(None if g_loss is None else g_loss * coef, None if g_rate is None else g_rate / div)
    beta = beta_t if beta_t is not None else ctx.beta_value
    capacity = (cap_t if cap_t is not None else ctx.capacity_value) if ctx.has_capacity else None
    needs = ctx.needs_input_grad
    grads = _input_grads((needs[0], needs[1], needs[2], needs[4], needs[5], needs[7]), x, target, log_scale, rate,
                         beta, capacity, ctx.cfg, gx, gls, gs, g_x, grate, g_loss, dtype)
    return (grads[0], grads[1], grads[2], None, grads[3], grads[4], None, grads[5], None, None, None, None, None,
            None)


objective_forward.register_autograd(_traced_backward, setup_context=_traced_setup)


# ----------------------------------------------------------------------------- entry point


def _requires_grad(t: Optional[Tensor]) -> bool:
    return t is not None and isinstance(t, Tensor) and t.requires_grad


def loss(x: Tensor, target: Tensor, log_scale: Optional[Tensor], ls_value: float, kind: int, reduction: int, *,
         rate: Optional[Tensor] = None, beta=1.0, capacity=None):
    """The reduced loss (``rate`` None) or ``(loss, distortion, rate)`` of ``distortion + beta * rate``.

    Arguments are assumed checked (the functional API does that once).  ``beta`` and ``capacity``
    are floats or 0-dim tensors.
    """
    beta_t = beta if isinstance(beta, Tensor) else None
    cap_t = capacity if isinstance(capacity, Tensor) else None
    grad_on = torch.is_grad_enabled()
    grad_x = grad_on and (x.requires_grad or (kind not in L.LOGIT_KINDS and target.requires_grad))
    grad_ls = grad_on and _requires_grad(log_scale)
    if _backend.tracing(x):
        out = objective_forward(x, target, log_scale, ls_value, rate, beta_t,
                                0.0 if beta_t is not None else float(beta), cap_t,
                                0.0 if cap_t is not None or capacity is None else float(capacity),
                                capacity is not None, kind, reduction, grad_x, grad_ls)
        return out[0] if rate is None else (out[0], out[1], out[2])
    forward_ad = _backend.forward_ad_active()
    differentiable = grad_on and (x.requires_grad or target.requires_grad or grad_ls or _requires_grad(rate)
                                  or _requires_grad(beta_t) or _requires_grad(cap_t)) or forward_ad
    if torch._C._are_functorch_transforms_active():
        raise unsupported_transform(KIND_NAMES[kind] + " loss", "torch.func transforms (vmap, grad, jvp)")
    triton = _backend.use_triton_on(x)
    if differentiable and not (triton or forward_ad) and small.takes_loss(x, target, log_scale, kind, rate):
        return small.loss(x, target, ls_value, kind, reduction, rate, beta, capacity)
    if _backend.autocast_on():
        with _backend.autocast_off():
            return _apply(differentiable, x, target, log_scale, rate, beta_t, cap_t, beta, capacity,
                          (ls_value, kind, reduction, grad_x, grad_ls, triton))
    return _apply(differentiable, x, target, log_scale, rate, beta_t, cap_t, beta, capacity,
                  (ls_value, kind, reduction, grad_x, grad_ls, triton))


def _apply(differentiable, x, target, log_scale, rate, beta_t, cap_t, beta, capacity, cfg):
    if not differentiable:
        ls_value, kind, reduction, _, _, triton = cfg
        done, _, _ = _forward(x, target, log_scale, ls_value, kind, reduction, False, False, rate, beta, capacity,
                              triton)
        return done.loss if rate is None else (done.loss, done.distortion, done.rate)
    return _apply_loss(x, target, log_scale, rate, beta_t, cap_t, beta, capacity, cfg)
