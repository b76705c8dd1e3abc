"""Small float32 CPU inputs: the ops as a few torch ops, backward by lean autograd nodes.

Below ``_cpu_fused.MIN_ELEMENTS`` elements an op on CPU tensors costs host time, not memory
bandwidth: one to five microseconds per dispatched torch op, ten or more per backward node.  The
general autograd Function of the other paths adds its argument handling and Python ``apply``; here
the likelihoods are torch's own loss ops (one C++ node each), and z with the KL rows is one small
Function (:class:`_SampleKL`, five ops backward) where autograd would record eight nodes.  That is
what lets the training pattern at batch 16 cost less than the eager lines it replaces
(bench/NOTES.md, "Small CPU inputs" and the 2026-12-03 entries).

The forward computes what the PyTorch path computes, with the same noise (``latent._noise``): the
same ops in the same order, so z and the rate are bit-identical and the losses equal to rounding.
Higher-order gradients are autograd's (``_SampleKL`` replays its forward under ``create_graph``);
forward-mode AD and ``torch.func`` transforms are refused by the callers before they get here, so an
op behaves the same at every size.  (Batched gradients, ``is_grads_batched=True``, work here through
autograd's own batching; the general Functions refuse them with a clear error.)  Only float32 tensors
of one dtype, no autocast, and the likelihoods whose scale is a Python float take this path;
everything else keeps the Function.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad as _forward_ad

from . import _backend, _cpu_fused
from . import reduction as R

#: The likelihoods this path computes (by kind number): bernoulli, gaussian, mse, laplace.
KINDS = (0, 1, 2, 3)


_F32 = torch.float32
_MIN = _cpu_fused.MIN_ELEMENTS


def _small_cpu(t: Tensor) -> bool:
    # attribute tests only (t.device builds a device object: half a microsecond)
    return t.is_cpu and t.dtype is _F32 and 0 < t.numel() < _MIN


# torch.compile traces these checks (dynamo answers True here); export and AOT tracing hand in tensor
# subclasses, which the type tests refuse.  One Python call, where is_compiling() makes two.
_is_compiling = getattr(torch.compiler, "is_dynamo_compiling", torch.compiler.is_compiling)
_transforms_active = torch._C._are_functorch_transforms_active


def _plain_eager_cpu() -> bool:
    """Eager mode as the small path needs it: not tracing, no torch.func transform, no forward AD, no
    autocast, and a backend other than 'triton' (which on CPU tensors means the interpreter, or an
    error the full path raises)."""
    return not (_is_compiling() or _transforms_active() or _forward_ad._current_level >= 0 or _backend.autocast_on()
                or (_backend._STATE.setting or _backend.get_backend()) == "triton")


def direct_latent(mu, logvar) -> bool:
    """Whether ``reparameterize_kl(mu, logvar)`` (no eps, no free bits) goes straight to :func:`latent`
    after its scalar checks: plain float32 CPU tensors of one shape, small, a gradient to record,
    plain eager mode.  These few attribute tests replace the argument checks and the dispatch of
    the general path, whose Python costs more than the ops at batch 16 (bench/NOTES.md)."""
    return (type(mu) is Tensor and type(logvar) is Tensor and mu.is_cpu and mu.dtype is _F32
            and 0 < mu.numel() < _MIN and logvar.dtype is _F32 and logvar.is_cpu and mu.dim() > 0
            and mu.shape == logvar.shape and torch.is_grad_enabled()
            and (mu.requires_grad or logvar.requires_grad) and _plain_eager_cpu())


def direct_loss(recon, target, rate) -> bool:
    """Whether ``beta_vae_loss(recon, target, rate=rate)`` goes straight to :func:`loss`, like
    :func:`direct_latent`: plain float32 CPU tensors, target of recon's shape, rate of shape (B,)."""
    return (type(recon) is Tensor and type(target) is Tensor and type(rate) is Tensor and recon.is_cpu
            and recon.dtype is _F32 and 0 < recon.numel() < _MIN and target.dtype is _F32 and rate.dtype is _F32
            and target.is_cpu and rate.is_cpu and recon.dim() > 0
            and target.shape == recon.shape and rate.dim() == 1 and rate.shape[0] == recon.shape[0]
            and torch.is_grad_enabled() and (recon.requires_grad or target.requires_grad or rate.requires_grad)
            and _plain_eager_cpu())


def takes_latent(mu: Tensor, logvar: Tensor, eps: Optional[Tensor]) -> bool:
    """Whether :func:`latent` is the path for these inputs (the caller has ruled out tracing,
    torch.func transforms, forward AD and the Triton backend)."""
    return (_small_cpu(mu) and logvar.dtype is _F32 and (eps is None or eps.dtype is _F32)
            and not _backend.autocast_on())


def takes_loss(x: Tensor, target: Tensor, log_scale: Optional[Tensor], kind: int, rate: Optional[Tensor]) -> bool:
    """Whether :func:`loss` is the path (same caller conditions as :func:`takes_latent`)."""
    return (log_scale is None and kind in KINDS and _small_cpu(x) and target.dtype is _F32
            and (rate is None or rate.dtype is _F32) and target.shape == x.shape and not _backend.autocast_on())


def _kl_rows(mu: Tensor, logvar: Tensor, e: Tensor) -> Tensor:
    # 0.5 sum(expm1(logvar) - logvar + mu^2) per sample, e = expm1(logvar); out of place on e, which
    # autograd (expm1's backward reads its output) or _SampleKL keeps
    terms = e.sub(logvar).addcmul_(mu, mu)
    return (terms if terms.dim() == 2 else terms.reshape(mu.shape[0], -1)).sum(1).mul(0.5)


def _replay(mu: Tensor, logvar: Tensor, noise: Tensor, grad_z: Optional[Tensor], grad_kl: Optional[Tensor], needs):
    """The gradients of :class:`_SampleKL` under ``create_graph=True``: the same forward ops recorded by
    autograd and differentiated with a graph (``_backend.replay_grads``), so higher-order gradients are
    autograd's own."""
    def build(m, lv, n):
        if grad_z is not None:
            yield torch.addcmul(m, torch.exp(lv * 0.5), n), grad_z
        if grad_kl is not None:
            yield _kl_rows(m, lv, torch.expm1(lv)), grad_kl

    return tuple(_backend.replay_grads((mu, logvar, noise), needs, build))


class _SampleKL(torch.autograd.Function):
    """z = mu + exp(logvar / 2) noise and the KL rows 0.5 sum(expm1(logvar) - logvar + mu^2) as one
    autograd node (forward: the ops of ``latent._forward_math``, float32, bit for bit), with the
    backward of ``latent._backward_math``::

        grad_mu = g_z + g_r mu,   grad_logvar = (g_z noise exp(logvar / 2) + g_r expm1(logvar)) / 2,
        grad_noise = g_z exp(logvar / 2)

    One Python node with five ops runs faster here than the eight C++ nodes autograd records for
    the same forward, each with its own dispatch and gradient buffer (bench/NOTES.md, 2026-12-03).
    Saved: the inputs, exp(logvar / 2) and expm1(logvar), never written to (a retained graph can be
    run again).  Under ``create_graph=True`` the backward replays the forward with autograd
    (:func:`_replay`)."""

    @staticmethod
    def forward(ctx, mu, logvar, noise):
        std = torch.exp(logvar * 0.5)
        e = torch.expm1(logvar)
        z = torch.addcmul(mu, std, noise)
        kl = _kl_rows(mu, logvar, e)
        ctx.save_for_backward(mu, logvar, noise, std, e)
        ctx.set_materialize_grads(False)
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            ctx.mark_non_differentiable(kl)   # only a given eps needs a gradient: the KL does not use it
        return z, kl

    @staticmethod
    def backward(ctx, grad_z, grad_kl):
        mu, logvar, noise, std, e = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            return _replay(mu, logvar, noise, grad_z, grad_kl, needs)
        g = None if grad_kl is None else grad_kl.view((-1,) + (1,) * (mu.dim() - 1))
        grad_mu = grad_lv = grad_noise = None
        if grad_z is not None:
            if needs[0]:
                grad_mu = grad_z if g is None else torch.addcmul(grad_z, g, mu)
            if needs[1]:   # grad_z first, so the in-place ops write into a tensor batched like it (vmap'd backward)
                grad_lv = torch.mul(grad_z, std).mul_(noise)
                if g is not None:
                    grad_lv.addcmul_(e, g)
                grad_lv.mul_(0.5)
            if needs[2]:
                grad_noise = grad_z * std
        elif g is not None:
            if needs[0]:
                grad_mu = g * mu
            if needs[1]:
                grad_lv = torch.mul(e, g).mul_(0.5)
        return grad_mu, grad_lv, grad_noise


def latent(mu: Tensor, logvar: Tensor, noise: Optional[Tensor], write_z: bool, compute_kl: bool, reduction: int):
    """z = mu + exp(logvar / 2) noise and/or the KL rows 0.5 sum(expm1(logvar) - logvar + mu^2),
    reduced; the ops of ``latent._forward_math`` (float32): both through :class:`_SampleKL`, one of
    them recorded by autograd."""
    if write_z and compute_kl:
        z, kl = _SampleKL.apply(mu, logvar, noise)
    else:
        z = kl = None
        if write_z:
            z = torch.addcmul(mu, torch.exp(logvar * 0.5), noise)
        else:
            kl = _kl_rows(mu, logvar, torch.expm1(logvar))
    if compute_kl and reduction != R.NONE:
        kl = kl.sum() if reduction == R.SUM else kl.mean()
    if write_z and compute_kl:
        return z, kl
    return z if write_z else kl


# torch's loss ops below their Python wrappers in torch.nn.functional (which parse the reduction name and
# check shapes, done by the callers here): the same ATen op, the same node, a few calls less.
_bce_op = torch.binary_cross_entropy_with_logits


def _bce_with_logits(x: Tensor, target: Tensor, reduction: int) -> Tensor:
    return _bce_op(x, target, None, None, reduction)


_TORCH_LOSS = {0: _bce_with_logits, 1: torch._C._nn.mse_loss, 2: torch._C._nn.mse_loss, 3: torch._C._nn.l1_loss}


@functools.lru_cache(maxsize=64)
def _inverse(batch: int) -> Tensor:
    """1 / batch as a 0-dim float32 CPU tensor (cached; never written to)."""
    return torch.tensor(1.0 / batch, dtype=_F32)


#: torch's reduction numbers (torch.nn._reduction.get_enum)
_T_NONE, _T_SUM = 0, 2


def _distortion(x: Tensor, target: Tensor, ls_value: float, kind: int, reduction: int) -> Tensor:
    """The NLL reduced over the batch (per-sample sums for 'none') through torch's own loss op of the
    kind, one node forward and one backward: softplus(x) - x t (torch's formula for the logits form,
    the PyTorch path's to rounding), (x - t)^2, and for a float log_scale s the Gaussian
    0.5 (x - t)^2 e^(-2s) + s + log(2 pi) / 2 and the Laplace |x - t| e^(-s) + s + log 2."""
    B = x.shape[0]
    if kind == 0 and reduction == R.MEAN:   # the batch mean as BCE's weight: one op and one node less than sum / B
        return _bce_op(x, target, _inverse(B), None, _T_SUM)
    torch_loss = _TORCH_LOSS[kind]
    if reduction == R.NONE:
        out = torch_loss(x, target, _T_NONE)
        out = out.sum(-1) if out.dim() == 2 else out.reshape(B, -1).sum(1)
    else:
        out = torch_loss(x, target, _T_SUM)
        if reduction == R.MEAN:
            out = out / B
    if kind == 1 or kind == 3:
        D = x[0].numel()
        per_sample = D * (ls_value + (_cpu_fused.HALF_LOG_2PI if kind == 1 else _cpu_fused.LOG_2))
        scale = 0.5 * math.exp(-2.0 * ls_value) if kind == 1 else math.exp(-ls_value)
        out = out.mul(scale).add(per_sample * B if reduction == R.SUM else per_sample)
    return out


def loss(x: Tensor, target: Tensor, ls_value: float, kind: int, reduction: int, rate: Optional[Tensor], beta,
         capacity):
    """The reduced NLL (``rate`` None) or ``(loss, distortion, rate)``, with the capacity rule of
    :mod:`fastvae.ops.reduction`."""
    distortion = _distortion(x, target, ls_value, kind, reduction)
    if rate is None:
        return distortion
    if reduction == R.MEAN:
        r = rate.mean()
    else:
        r = rate.sum() if reduction == R.SUM else rate.clone()  # an output, not the caller's tensor
    if capacity is None:
        penalty = r
    else:
        penalty = (r - (capacity * x.shape[0] if reduction == R.SUM else capacity)).abs()
    if isinstance(beta, Tensor):
        return distortion + beta * penalty, distortion, r
    return torch.add(distortion, penalty, alpha=beta), distortion, r
