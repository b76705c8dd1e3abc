"""Reparameterization + closed-form KL: launchers, the PyTorch path, and the custom ops.

``fastvae::latent_forward(mu, logvar, eps, seed, write_z, compute_kl) -> (z, kl_rows)``
``fastvae::latent_backward(mu, logvar, eps, seed, grad_z, grad_kl) -> (grad_mu, grad_logvar)``

Both are registered with torch.library so ``torch.compile(fullgraph=True)`` sees them as
opaque calls with known output shapes; autograd connects them.  The noise is never stored:
backward receives the same int64 ``seed`` tensor and regenerates it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backend, _cpu_fused
from ._philox import exp_m1_m, philox_normal


# ----------------------------------------------------------------------------- Triton launchers


def _triton_forward(mu, logvar, eps, seed, write_z, compute_kl, row_offset):
    B = mu.shape[0]
    mu2, lv2 = _backend.as_rows(mu), _backend.as_rows(logvar)
    D = mu2.shape[1]
    fp64 = _backend.compute_dtype(mu, logvar) == torch.float64
    z = torch.empty(mu.shape, dtype=torch.result_type(mu, logvar), device=mu.device) if write_z else _backend.empty(mu, mu.dtype)
    acc_dtype = torch.float64 if fp64 else torch.float32
    if B == 0 or D == 0:
        return z, torch.zeros((B,), dtype=acc_dtype, device=mu.device)
    tiles = _backend.tiling(B, D, mu.device)
    partial = torch.empty((B, tiles.n_split), dtype=acc_dtype, device=mu.device) if compute_kl else mu2
    eps2 = _backend.as_rows(eps) if eps is not None else mu2
    _backend.kernels("latent").latent_forward_kernel[tiles.grid](
        mu2, lv2, eps2, seed if seed is not None else mu2, z if write_z else mu2, partial,
        B, D, _backend.row_stride(mu2), _backend.row_stride(lv2), _backend.row_stride(eps2),
        tiles.split_cols, tiles.n_split, row_offset,
        HAS_EPS=eps is not None, WRITE_Z=write_z, COMPUTE_KL=compute_kl, FP64=fp64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )
    if not compute_kl:
        return z, _backend.empty(mu, acc_dtype)
    kl = partial[:, 0] if tiles.n_split == 1 else partial.sum(1)
    return z, kl


def _triton_backward(mu, logvar, eps, seed, grad_z, grad_kl, row_offset):
    B = mu.shape[0]
    mu2, lv2 = _backend.as_rows(mu), _backend.as_rows(logvar)
    D = mu2.shape[1]
    fp64 = _backend.compute_dtype(mu, logvar) == torch.float64
    grad_mu = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    grad_lv = torch.empty(logvar.shape, dtype=logvar.dtype, device=mu.device)
    if B == 0 or D == 0:
        return grad_mu, grad_lv
    tiles = _backend.tiling(B, D, mu.device)
    eps2 = _backend.as_rows(eps) if eps is not None else mu2
    gz2 = _backend.as_rows(grad_z) if grad_z is not None else mu2
    gkl = grad_kl if grad_kl is not None else mu2
    gkl_stride = grad_kl.stride(0) if grad_kl is not None else 0
    _backend.kernels("latent").latent_backward_kernel[(tiles.grid[0], tiles.n_split)](
        mu2, lv2, eps2, seed if seed is not None else mu2, gz2, gkl, grad_mu, grad_lv,
        B, D, _backend.row_stride(mu2), _backend.row_stride(lv2), _backend.row_stride(eps2),
        _backend.row_stride(gz2), gkl_stride, tiles.split_cols, row_offset,
        HAS_EPS=eps is not None, HAS_GZ=grad_z is not None, HAS_GKL=grad_kl is not None, FP64=fp64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )
    return grad_mu, grad_lv


# ----------------------------------------------------------------------------- PyTorch path


def _noise(mu, eps, seed, dtype, row_offset):
    if eps is not None:
        return eps.to(dtype)
    B = mu.shape[0]
    D = mu[0].numel() if B else 0
    return philox_normal(seed, B, D, row_offset).to(dtype).reshape(mu.shape)


def _forward_math(mu, logvar, eps, seed, write_z, compute_kl, row_offset, dtype, z_dtype):
    """(z or None, kl rows or None) in plain torch ops: run as is, or compiled into a few fused loops
    for large CPU tensors (``_cpu_fused``)."""
    m, lv = mu.to(dtype), logvar.to(dtype)
    z = kl = None
    if write_z:
        z = (m + torch.exp(0.5 * lv) * _noise(mu, eps, seed, dtype, row_offset)).to(z_dtype)
    if compute_kl:
        # exp_m1_m returns a fresh tensor: mu^2 is added into it in place (one buffer of mu's size),
        # and the halving, exact in binary, comes after the row sums.
        kl = exp_m1_m(lv).addcmul_(m, m).reshape(mu.shape[0], -1).sum(1).mul_(0.5) if mu.numel() else \
            torch.zeros((mu.shape[0],), dtype=dtype, device=mu.device)
    return z, kl


def _backward_math(mu, logvar, eps, seed, grad_z, grad_kl, row_offset, dtype):
    """(grad_mu, grad_logvar) in plain torch ops, like :func:`_forward_math`."""
    m, lv = mu.to(dtype), logvar.to(dtype)
    grad_mu = grad_lv = None
    if grad_z is not None:
        gz = grad_z.to(dtype)
        grad_mu = gz.clone() if gz is grad_z else gz  # an op's output may not alias its input
        grad_lv = 0.5 * gz * _noise(mu, eps, seed, dtype, row_offset) * torch.exp(0.5 * lv)
    if grad_kl is not None:
        g = grad_kl.to(dtype).reshape((-1,) + (1,) * (mu.dim() - 1))
        kl_mu = g * m
        kl_lv = torch.expm1(lv).mul_(0.5 * g)  # d/dlogvar of the KL (expm1: accurate near 0), in place
        grad_mu = kl_mu if grad_mu is None else grad_mu + kl_mu
        grad_lv = kl_lv if grad_lv is None else grad_lv + kl_lv
    if grad_mu is None:
        grad_mu, grad_lv = torch.zeros_like(m), torch.zeros_like(lv)
    return grad_mu.to(mu.dtype), grad_lv.to(logvar.dtype)


def _fuse(mu, eps, needs_noise) -> bool:
    # Compiling pays off where the in-kernel noise is drawn: the Philox twin is some forty integer
    # ops per four normals, each a pass over memory in eager mode.
    return needs_noise and eps is None and _cpu_fused.enabled(mu)


@_backend.without_autocast
def _torch_forward(mu, logvar, eps, seed, write_z, compute_kl, row_offset):
    dtype = _backend.compute_dtype(mu, logvar)
    args = (mu, logvar, eps, seed, write_z, compute_kl, row_offset, dtype, torch.result_type(mu, logvar))
    out = _cpu_fused.call("latent_forward", _forward_math, *args) if _fuse(mu, eps, write_z) else None
    z, kl = out if out is not None else _forward_math(*args)
    return (z if write_z else _backend.empty(mu, mu.dtype)), (kl if compute_kl else _backend.empty(mu, dtype))


@_backend.without_autocast
def _torch_backward(mu, logvar, eps, seed, grad_z, grad_kl, row_offset):
    args = (mu, logvar, eps, seed, grad_z, grad_kl, row_offset, _backend.compute_dtype(mu, logvar))
    out = _cpu_fused.call("latent_backward", _backward_math, *args) if _fuse(mu, eps, grad_z is not None) else None
    return out if out is not None else _backward_math(*args)


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("fastvae::latent_forward", mutates_args=())
def latent_forward(
    mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Optional[Tensor], write_z: bool, compute_kl: bool,
    row_offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """z = mu + exp(logvar/2) eps (noise from ``seed`` when eps is None) and per-row KL to N(0, I)."""
    impl = _triton_forward if _backend.use_triton(mu.device) else _torch_forward
    return impl(mu, logvar, eps, seed, write_z, compute_kl, row_offset)


@latent_forward.register_fake
def _(mu, logvar, eps, seed, write_z, compute_kl, row_offset=0):
    dtype = _backend.compute_dtype(mu, logvar)
    z = mu.new_empty(mu.shape, dtype=torch.result_type(mu, logvar)) if write_z else mu.new_empty((0,))
    kl = mu.new_empty((mu.shape[0],) if compute_kl else (0,), dtype=dtype)
    return z, kl


@torch.library.custom_op("fastvae::latent_backward", mutates_args=())
def latent_backward(
    mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Optional[Tensor],
    grad_z: Optional[Tensor], grad_kl: Optional[Tensor], row_offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Gradients of mu and logvar given grad_z (per element) and grad_kl (per row)."""
    return _backward_impl(mu, logvar, eps, seed, grad_z, grad_kl, row_offset)


def _backward_impl(mu, logvar, eps, seed, grad_z, grad_kl, row_offset):
    impl = _triton_backward if _backend.use_triton(mu.device) else _torch_backward
    return impl(mu, logvar, eps, seed, grad_z, grad_kl, row_offset)


@latent_backward.register_fake
def _(mu, logvar, eps, seed, grad_z, grad_kl, row_offset=0):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _setup_context(ctx, inputs, output):
    mu, logvar, eps, seed, write_z, compute_kl, row_offset = inputs
    ctx.save_for_backward(mu, logvar, eps, seed)
    ctx.write_z, ctx.compute_kl, ctx.row_offset = write_z, compute_kl, row_offset
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_z, grad_kl):
    mu, logvar, eps, seed = ctx.saved_tensors
    grad_z = grad_z if ctx.write_z else None
    grad_kl = grad_kl if ctx.compute_kl else None
    grad_mu = grad_lv = grad_eps = None
    if grad_z is not None or grad_kl is not None:
        # Traced: the registered op; eager: its body, without the dispatcher's round trip.
        backward = latent_backward if _backend.tracing(mu) else _backward_impl
        grad_mu, grad_lv = backward(mu, logvar, eps, seed, grad_z, grad_kl, ctx.row_offset)
    if eps is not None and ctx.needs_input_grad[2] and grad_z is not None:
        grad_eps = (grad_z * torch.exp(0.5 * logvar.to(grad_z.dtype))).to(eps.dtype)
    return grad_mu, grad_lv, grad_eps, None, None, None, None


latent_forward.register_autograd(_backward, setup_context=_setup_context)


def draw_seed(device: torch.device, generator: Optional[torch.Generator]) -> Tensor:
    """An int64 Philox seed drawn on ``device`` from ``generator`` (or the device's default one).

    The draw is a device op: no host read, so it is reproducible under ``torch.manual_seed``,
    advances the generator like any random op, and can be captured in a CUDA graph.
    """
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device, generator=generator)
