"""Reparameterization + closed-form KL: launchers, the PyTorch path, the autograd node and the
custom ops.

:func:`latent` is what ``reparameterize``, ``gaussian_kl`` and ``reparameterize_kl`` call: one
kernel forward (z and the per-row KL; the batch reduction, when asked, is ``reduction.finish``'s)
and one kernel backward, with the noise regenerated from the same seed, never stored.

Noise.  The Triton kernels draw Philox4x32-10 normals addressed by (seed, row, column)
(``kernels/random.py``).  The PyTorch path on CPU tensors draws torch's own CPU generator instead:
a ``torch.Generator`` seeded with the call's seed gives one stream of standard normals, and
element (r, c) of a (B, D) input is number ``(row_offset + r) * D + c`` of it.  That costs what
``torch.randn`` costs (a Philox twin written in torch ops is some forty eager passes, ~0.5 ms per
call at any size), and keeps what users rely on: ``torch.manual_seed`` reproduces z, a shard with
``row_offset`` draws exactly its rows of the whole batch's noise (torch fills a normal tensor
whose size is a multiple of 16 prefix-consistently, which ``tests/test_rng.py`` pins), and backward
regenerates forward's noise.  So CPU and CUDA tensors do not draw the same numbers for one seed.
"""
from __future__ import annotations

import math
import threading
from typing import Optional

import torch
from torch import Tensor

from . import _backend, _cpu_fused, eager, small
from . import reduction as R
from ._philox import exp_m1_m, philox_normal

# ----------------------------------------------------------------------------- Triton launchers

#: The GPU tiling of the latent kernels: 2048 elements a program and iteration over 4 warps (8 per
#: thread: two Philox calls), which keeps them under 128 registers, four CTAs per SM (bench/NOTES.md).
LATENT_TILE, LATENT_WARPS = 2048, 4


def _triton_forward(mu, logvar, eps, seed, write_z, compute_kl, row_offset, reduction):
    B = mu.shape[0]
    mu2, lv2 = _backend.as_rows(mu), _backend.as_rows(logvar)
    D = mu2.shape[1]
    acc_dtype = _backend.compute_dtype(mu, logvar)
    fp64 = acc_dtype == torch.float64
    z = torch.empty(mu.shape, dtype=torch.result_type(mu, logvar), device=mu.device) if write_z else None
    if B == 0 or D == 0:
        rows = torch.zeros((B,), dtype=acc_dtype, device=mu.device)
        return z, (R.finish(rows, reduction, dtype=acc_dtype).loss if compute_kl else None)
    tiles = _backend.tiling(B, D, mu.device, LATENT_TILE, LATENT_WARPS)
    partial = None
    if compute_kl:
        partial = torch.empty((B, tiles.n_split) if tiles.n_split > 1 else (B,), dtype=acc_dtype, device=mu.device)
    eps2 = _backend.as_rows(eps) if eps is not None else mu2
    _backend.kernels("latent").latent_forward_kernel[tiles.grid](
        mu2, lv2, eps2, seed if seed is not None else mu2, z if write_z else mu2, partial if compute_kl else mu2,
        B, D, _backend.row_stride(mu2), _backend.row_stride(lv2), _backend.row_stride(eps2),
        tiles.split_cols, tiles.n_split, row_offset,
        HAS_EPS=eps is not None, WRITE_Z=write_z, COMPUTE_KL=compute_kl, FP64=fp64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )
    if not compute_kl:
        return z, None
    if reduction == R.NONE and partial.dim() == 1:
        return z, partial
    return z, R.finish(partial, reduction, dtype=acc_dtype).loss


def _triton_backward(mu, logvar, eps, seed, grad_z, grad_kl, row_offset, kl_div):
    B = mu.shape[0]
    mu2, lv2 = _backend.as_rows(mu), _backend.as_rows(logvar)
    D = mu2.shape[1]
    fp64 = _backend.compute_dtype(mu, logvar) == torch.float64
    grad_mu = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    grad_lv = torch.empty(logvar.shape, dtype=logvar.dtype, device=mu.device)
    if B == 0 or D == 0:
        return grad_mu, grad_lv
    tiles = _backend.tiling(B, D, mu.device, LATENT_TILE, LATENT_WARPS)
    eps2 = _backend.as_rows(eps) if eps is not None else mu2
    gz2 = _backend.as_rows(grad_z) if grad_z is not None else mu2
    gkl = grad_kl if grad_kl is not None else mu2
    gkl_stride = (grad_kl.stride(0) if grad_kl.dim() else 0) if grad_kl is not None else 0
    _backend.kernels("latent").latent_backward_kernel[tiles.grid](
        mu2, lv2, eps2, seed if seed is not None else mu2, gz2, gkl, grad_mu, grad_lv,
        B, D, _backend.row_stride(mu2), _backend.row_stride(lv2), _backend.row_stride(eps2),
        _backend.row_stride(gz2), gkl_stride, kl_div, tiles.split_cols, row_offset,
        HAS_EPS=eps is not None, HAS_GZ=grad_z is not None, HAS_GKL=grad_kl is not None, FP64=fp64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )
    return grad_mu, grad_lv


# ----------------------------------------------------------------------------- PyTorch path


_GENERATORS = threading.local()


def _cpu_normal(seed: Tensor, shape, rows: int, cols: int, row_offset: int) -> Tensor:
    """float32 standard normals of ``shape`` (rows x cols elements): element (r, c) is number
    (row_offset + r) * cols + c of the normal stream of a CPU generator seeded with ``seed`` (see
    the module docstring)."""
    start = row_offset * cols
    stop = start + rows * cols
    # One generator per thread, re-seeded per call: creating one costs more than seeding it (and at
    # batch 16 a helper function for this costs a measurable share of the step).
    gen = getattr(_GENERATORS, "gen", None)
    if gen is None:
        gen = _GENERATORS.gen = torch.Generator()
    gen.manual_seed(int(seed))
    if start == 0 and stop >= 16 and stop % 16 == 0:
        return torch.randn(shape, generator=gen)
    # torch fills a normal tensor of 16k elements (k >= 1) prefix-consistently, not one of other sizes
    size = max(16, -(-stop // 16) * 16)
    return torch.randn(size, generator=gen)[start:stop].view(shape)


def standard_normal(seed: Tensor, mu: Tensor, row_offset: int = 0) -> Tensor:
    """The noise fastvae's in-kernel sampling uses for ``seed`` on ``mu``'s device and backend, as a
    float32 tensor of ``mu``'s shape (for baselines that must draw the same numbers)."""
    if _backend.use_triton(mu.device):
        zeros = torch.zeros(mu.shape, dtype=torch.float32, device=mu.device)
        return _triton_forward(zeros, zeros, None, seed, True, False, row_offset, R.NONE)[0]
    return _noise(mu, None, seed, torch.float32, row_offset)


def _noise(mu, eps, seed, dtype, row_offset):
    if eps is not None:
        return _as(eps, dtype)
    shape = mu.shape
    B = shape[0]
    D = math.prod(shape[1:])
    if mu.is_cpu:
        return _as(_cpu_normal(seed, shape, B, D, row_offset), dtype)
    # the PyTorch path on an accelerator: the kernels' own Philox, written in torch ops
    return _as(philox_normal(seed, B, D, row_offset), dtype).reshape(shape)


def _as(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x if x.dtype == dtype else x.to(dtype)


def _forward_math(mu, logvar, eps, write_z, compute_kl, dtype, z_dtype):
    """(z or None, kl rows or None) in plain torch ops: run as is, or compiled into one fused loop
    for large CPU tensors (``_cpu_fused``).  Few ops, no Python scalars in tensor arithmetic: on
    small tensors each op is a microsecond or two of host time, and that is the cost."""
    m, lv = _as(mu, dtype), _as(logvar, dtype)
    z = kl = None
    if write_z:
        z = _as(torch.addcmul(m, torch.exp(lv * 0.5), eps), z_dtype)
    if compute_kl:
        # exp_m1_m returns a fresh tensor: mu^2 is added into it in place (one buffer of mu's size),
        # and the halving, exact in binary, comes after the row sums.
        B = mu.shape[0]
        terms = exp_m1_m(lv).addcmul_(m, m)
        kl = (terms if terms.dim() == 2 else terms.reshape(B, -1)).sum(1).mul_(0.5) if mu.numel() else \
            torch.zeros((B,), dtype=dtype, device=mu.device)
    return z, kl


def _backward_math(mu, logvar, eps, grad_z, grad_kl, kl_div, dtype):
    """(grad_mu, grad_logvar) in plain torch ops, like :func:`_forward_math`:

        grad_mu = g_z + g_r mu,   grad_logvar = (g_z eps exp(logvar / 2) + g_r expm1(logvar)) / 2
    """
    m, lv = _as(mu, dtype), _as(logvar, dtype)
    grad_mu = grad_lv = None
    if grad_kl is not None:
        g = _as(grad_kl, dtype)
        if g.dim():
            g = g.view((-1,) + (1,) * (mu.dim() - 1))
        if kl_div != 1:
            g = g / kl_div
    if grad_z is not None:
        gz = _as(grad_z, dtype)
        grad_lv = torch.exp(lv * 0.5).mul_(eps).mul_(gz)
        if grad_kl is not None:
            grad_mu = torch.addcmul(gz, g, m)
            grad_lv.addcmul_(torch.expm1(lv), g)
        else:
            grad_mu = gz.clone() if gz is grad_z else gz  # an op's output may not alias its input
        grad_lv.mul_(0.5)
    elif grad_kl is not None:
        grad_mu = g * m
        grad_lv = torch.expm1(lv).mul_(g * 0.5)
    else:
        grad_mu, grad_lv = torch.zeros_like(m), torch.zeros_like(lv)
    return _as(grad_mu, mu.dtype), _as(grad_lv, logvar.dtype)


def _torch_forward(mu, logvar, eps, seed, write_z, compute_kl, row_offset, reduction):
    dtype = _backend.compute_dtype(mu, logvar)
    noise = _noise(mu, eps, seed, dtype, row_offset) if write_z else None
    args = (mu, logvar, noise, write_z, compute_kl, dtype, torch.result_type(mu, logvar) if write_z else dtype)
    out = _cpu_fused.call("latent_forward", _forward_math, *args) if _cpu_fused.enabled(mu) else None
    z, kl = out if out is not None else _forward_math(*args)
    if compute_kl and reduction != R.NONE:
        kl = kl.sum() if reduction == R.SUM else kl.mean()
    return z, kl


def _torch_backward(mu, logvar, eps, seed, grad_z, grad_kl, row_offset, kl_div):
    dtype = _backend.compute_dtype(mu, logvar)
    noise = _noise(mu, eps, seed, dtype, row_offset) if grad_z is not None else None
    args = (mu, logvar, noise, grad_z, grad_kl, kl_div, dtype)
    out = _cpu_fused.call("latent_backward", _backward_math, *args) if _cpu_fused.enabled(mu) else None
    return out if out is not None else _backward_math(*args)


_IMPLS = {True: (_triton_forward, _triton_backward), False: (_torch_forward, _torch_backward)}


@_backend.without_autocast
def _forward_impl(mu, logvar, eps, seed, write_z, compute_kl, row_offset, reduction):
    return _IMPLS[_backend.use_triton(mu.device)][0](mu, logvar, eps, seed, write_z, compute_kl, row_offset,
                                                      reduction)


@_backend.without_autocast
def _backward_impl(mu, logvar, eps, seed, grad_z, grad_kl, row_offset, kl_div):
    return _IMPLS[_backend.use_triton(mu.device)][1](mu, logvar, eps, seed, grad_z, grad_kl, row_offset, kl_div)


# ----------------------------------------------------------------------------- eager autograd node


def _higher_order(ctx, grad_z, grad_kl):
    """Backward under create_graph=True: autograd through the eager formulas, with the same noise
    (``_backend.replay_grads``)."""
    mu, logvar, eps, seed = ctx.saved_tensors
    write_z, compute_kl, row_offset, reduction = ctx.cfg[:4]
    dtype = _backend.compute_dtype(mu, logvar)

    def build(m, lv, e):
        m, lv = m.to(dtype), lv.to(dtype)
        if grad_z is not None:
            noise = e.to(dtype) if e is not None else _noise(mu, None, seed, dtype, row_offset).detach()
            yield m + torch.exp(0.5 * lv) * noise, grad_z.to(dtype)
        if grad_kl is not None:
            yield eager.reduce(eager.kl_rows(m, lv), ("none", "mean", "sum")[reduction]), grad_kl

    return tuple(_backend.replay_grads((mu, logvar, eps), ctx.needs_input_grad[:3], build)) + (None, None)


class _Latent(torch.autograd.Function):
    """Eager autograd node of :func:`latent`; ``cfg`` is (write_z, compute_kl, row_offset, reduction,
    triton), the implementation chosen once by the caller."""

    @staticmethod
    def forward(ctx, mu, logvar, eps, seed, cfg):
        write_z, compute_kl, row_offset, reduction, triton = cfg
        z, kl = _IMPLS[triton][0](mu, logvar, eps, seed, write_z, compute_kl, row_offset, reduction)
        ctx.save_for_backward(mu, logvar, eps, seed)
        ctx.cfg = cfg
        ctx.set_materialize_grads(False)
        if compute_kl and not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            ctx.mark_non_differentiable(kl)   # only a given eps needs a gradient: the KL does not use it
        if write_z and compute_kl:
            return z, kl
        return z if write_z else kl

    @staticmethod
    def backward(ctx, *grads):
        if _backend.batched_grads(*grads):   # a vmap'd backward: the noise cannot be redrawn there
            raise _unsupported(_backend.BATCHED_GRADS)
        write_z, compute_kl, row_offset, reduction, triton = ctx.cfg
        grad_z = grads[0] if write_z else None
        grad_kl = grads[-1] if compute_kl else None
        if torch.is_grad_enabled():
            return _higher_order(ctx, grad_z, grad_kl)
        mu, logvar, eps, seed = ctx.saved_tensors
        grad_mu = grad_lv = grad_eps = None
        if grad_z is not None or grad_kl is not None:
            backward = _backward_impl if _backend.autocast_on() else _IMPLS[triton][1]
            grad_mu, grad_lv = backward(mu, logvar, eps, seed, grad_z, grad_kl, row_offset,
                                        R.divisor(mu.shape[0], reduction))
        if eps is not None and ctx.needs_input_grad[2] and grad_z is not None:
            grad_eps = (grad_z * torch.exp(0.5 * logvar.to(grad_z.dtype))).to(eps.dtype)
        return grad_mu, grad_lv, grad_eps, None, None

    @staticmethod
    def jvp(ctx, *tangents):
        raise _unsupported("forward-mode AD")


_apply_latent = _backend.apply_function(_Latent)


def _unsupported(what: str) -> RuntimeError:
    from .objective import unsupported_transform
    return unsupported_transform("reparameterize / gaussian_kl", what)


# ----------------------------------------------------------------------------- custom ops (tracing)


@torch.library.custom_op("fastvae::latent_forward", mutates_args=())
def latent_forward(
    mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Optional[Tensor], write_z: bool, compute_kl: bool,
    row_offset: int = 0, reduction: int = 0,
) -> tuple[Tensor, Tensor]:
    """z = mu + exp(logvar/2) eps (noise from ``seed`` when eps is None) and the KL to N(0, I), reduced."""
    z, kl = _forward_impl(mu, logvar, eps, seed, write_z, compute_kl, row_offset, reduction)
    dtype = _backend.compute_dtype(mu, logvar)
    return (z if z is not None else _backend.empty(mu, mu.dtype)), (kl if kl is not None else _backend.empty(mu, dtype))


@latent_forward.register_fake
def _(mu, logvar, eps, seed, write_z, compute_kl, row_offset=0, reduction=0):
    dtype = _backend.compute_dtype(mu, logvar)
    z = mu.new_empty(mu.shape, dtype=torch.result_type(mu, logvar)) if write_z else mu.new_empty((0,))
    kl_shape = ((mu.shape[0],) if reduction == R.NONE else ()) if compute_kl else (0,)
    return z, mu.new_empty(kl_shape, dtype=dtype)


@torch.library.custom_op("fastvae::latent_backward", mutates_args=())
def latent_backward(
    mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Optional[Tensor],
    grad_z: Optional[Tensor], grad_kl: Optional[Tensor], row_offset: int = 0, kl_div: int = 1,
) -> tuple[Tensor, Tensor]:
    """Gradients of mu and logvar given grad_z (per element) and grad_kl (per row, or one value / kl_div)."""
    return _backward_impl(mu, logvar, eps, seed, grad_z, grad_kl, row_offset, kl_div)


@latent_backward.register_fake
def _(mu, logvar, eps, seed, grad_z, grad_kl, row_offset=0, kl_div=1):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _traced_setup(ctx, inputs, output):
    mu, logvar, eps, seed, write_z, compute_kl, row_offset, reduction = inputs
    ctx.save_for_backward(mu, logvar, eps, seed)
    ctx.cfg = (write_z, compute_kl, row_offset, reduction)
    ctx.set_materialize_grads(False)


def _traced_backward(ctx, grad_z, grad_kl):
    mu, logvar, eps, seed = ctx.saved_tensors
    write_z, compute_kl, row_offset, reduction = ctx.cfg
    grad_z = grad_z if write_z else None
    grad_kl = grad_kl if compute_kl else None
    grad_mu = grad_lv = grad_eps = None
    if grad_z is not None or grad_kl is not None:
        grad_mu, grad_lv = latent_backward(mu, logvar, eps, seed, grad_z, grad_kl, row_offset,
                                           R.divisor(mu.shape[0], reduction))
    if eps is not None and ctx.needs_input_grad[2] and grad_z is not None:
        grad_eps = (grad_z * torch.exp(0.5 * logvar.to(grad_z.dtype))).to(eps.dtype)
    return grad_mu, grad_lv, grad_eps, None, None, None, None, None


latent_forward.register_autograd(_traced_backward, setup_context=_traced_setup)


# ----------------------------------------------------------------------------- entry point


#: Seeds are drawn uniformly from [0, SEED_BOUND).
SEED_BOUND = 2**62


def draw_seed(device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    """An int64 seed drawn on ``device`` from ``generator`` (or the device's default one).

    The draw is a device op: no host read, so it is reproducible under ``torch.manual_seed``,
    advances the generator like any random op, and can be captured in a CUDA graph.
    """
    if device.type == "cpu":
        return torch.randint(SEED_BOUND, (), dtype=torch.int64, generator=generator)
    return torch.randint(SEED_BOUND, (), dtype=torch.int64, device=device, generator=generator)


def small_sample_kl(mu: Tensor, logvar: Tensor, generator: Optional[torch.Generator], row_offset: int,
                    reduction: int):
    """``latent(mu, logvar, None, seed, True, True, row_offset, reduction)`` for the inputs that
    :func:`fastvae.ops.small.direct_latent` accepts, with the seed drawn here as :func:`draw_seed` does:
    the same z and KL in fewer Python calls."""
    seed = torch.randint(SEED_BOUND, (), dtype=torch.int64, generator=generator)
    B = mu.shape[0]
    return small.latent(mu, logvar, _cpu_normal(seed, mu.shape, B, mu.numel() // B, row_offset), True, True,
                        reduction)


def latent(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Optional[Tensor], write_z: bool,
           compute_kl: bool, row_offset: int = 0, reduction: int = R.NONE):
    """z, the reduced KL, or both ``(z, kl)`` (arguments assumed checked)."""
    if _backend.tracing(mu):
        z, kl = latent_forward(mu, logvar, eps, seed, write_z, compute_kl, row_offset, reduction)
        if write_z and compute_kl:
            return z, kl
        return z if write_z else kl
    if torch._C._are_functorch_transforms_active():
        raise _unsupported("torch.func transforms (vmap, grad, jvp)")
    forward_ad = _backend.forward_ad_active()
    if not (torch.is_grad_enabled() and (mu.requires_grad or logvar.requires_grad
                                         or (eps is not None and eps.requires_grad))) and not forward_ad:
        z, kl = _forward_impl(mu, logvar, eps, seed, write_z, compute_kl, row_offset, reduction)
        if write_z and compute_kl:
            return z, kl
        return z if write_z else kl
    triton = _backend.use_triton_on(mu)
    if not (triton or forward_ad) and small.takes_latent(mu, logvar, eps):
        noise = _noise(mu, eps, seed, torch.float32, row_offset) if write_z else None
        return small.latent(mu, logvar, noise, write_z, compute_kl, reduction)
    cfg = (write_z, compute_kl, row_offset, reduction, triton)
    if _backend.autocast_on():
        with _backend.autocast_off():
            return _apply_latent(mu, logvar, eps, seed, cfg)
    return _apply_latent(mu, logvar, eps, seed, cfg)
