"""Free bits: a floor of ``lambda`` nats on the KL, per latent dimension (Kingma et al. 2016) or per sample.

``'dim'``: with m_j the batch mean of KL_bj, the objective is sum_j max(lambda, m_j); sample b's value is
sum_j (KL_bj if m_j >= lambda else lambda), so the batch mean of the values is the objective
(``kernels/free_bits.py``: the column means, the per-sample values and their backward, in Triton on CUDA;
the same math in torch ops on the PyTorch path).  ``'sample'``: max(lambda, KL_b) per sample.  Either way
what is under the floor gets no gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _backend
from ._philox import exp_m1_m

MODES = ("dim", "sample")


def _kl_elements(mu: Tensor, logvar: Tensor, dtype) -> Tensor:
    m = mu.to(dtype)
    return exp_m1_m(logvar.to(dtype)).addcmul_(m, m).mul_(0.5)


def _triton_forward(mu2, lv2, floor, dtype):
    B, J = mu2.shape
    means = torch.empty(J, dtype=dtype, device=mu2.device)
    rows = torch.empty(B, dtype=dtype, device=mu2.device)
    if B == 0 or J == 0:
        return rows.zero_(), means.zero_()
    small = _backend._STATE.small_tiles
    block_c = 4 if small else min(256, max(4, 1 << (J - 1).bit_length()))
    block_r = 2 if small else max(1, 2048 // block_c)
    kern = _backend.kernels("free_bits")
    fp64 = dtype == torch.float64
    kern.kl_column_means_kernel[(-(-J // block_c),)](mu2, lv2, means, B, J, _backend.row_stride(mu2),
                                                      _backend.row_stride(lv2), FP64=fp64, BLOCK_R=block_r,
                                                      BLOCK_C=block_c)
    kern.free_bits_rows_kernel[(-(-B // block_r),)](mu2, lv2, means, rows, B, J, _backend.row_stride(mu2),
                                                     _backend.row_stride(lv2), float(floor), FP64=fp64,
                                                     BLOCK_R=block_r, BLOCK_C=block_c)
    return rows, means


def _triton_backward(mu2, lv2, means, g, floor, dtype):
    B, J = mu2.shape
    gmu = torch.empty((B, J), dtype=mu2.dtype, device=mu2.device)
    glv = torch.empty((B, J), dtype=lv2.dtype, device=mu2.device)
    if B == 0 or J == 0:
        return gmu, glv
    small = _backend._STATE.small_tiles
    block_c = 4 if small else min(256, max(4, 1 << (J - 1).bit_length()))
    block_r = 2 if small else max(1, 2048 // block_c)
    _backend.kernels("free_bits").free_bits_backward_kernel[(-(-B // block_r),)](
        mu2, lv2, means, g, gmu, glv, B, J, _backend.row_stride(mu2), _backend.row_stride(lv2),
        g.stride(0) if g.dim() else 0, float(floor), FP64=dtype == torch.float64, BLOCK_R=block_r, BLOCK_C=block_c)
    return gmu, glv


def _torch_forward(mu2, lv2, floor, dtype):
    kl = _kl_elements(mu2, lv2, dtype)
    means = kl.mean(0) if kl.shape[0] else torch.zeros(kl.shape[1], dtype=dtype, device=kl.device)
    rows = torch.where(means >= floor, kl, torch.full_like(kl, floor)).sum(1)
    return rows, means


def _torch_backward(mu2, lv2, means, g, floor, dtype):
    active = (means >= floor).to(dtype)
    coef = g.to(dtype).reshape(-1, 1) * active
    grad_mu = mu2.to(dtype) * coef
    grad_lv = torch.expm1(lv2.to(dtype)).mul_(coef).mul_(0.5)
    return grad_mu.to(mu2.dtype), grad_lv.to(lv2.dtype)


class _FreeBitsDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar, floor, triton):
        mu2, lv2 = _backend.as_rows(mu), _backend.as_rows(logvar)
        dtype = _backend.compute_dtype(mu, logvar)
        rows, means = (_triton_forward if triton else _torch_forward)(mu2, lv2, floor, dtype)
        ctx.save_for_backward(mu, logvar, means)
        ctx.cfg = (floor, triton)
        return rows

    @staticmethod
    def backward(ctx, g):
        if _backend.batched_grads(g):
            from .objective import unsupported_transform
            raise unsupported_transform("gaussian_kl (free bits)", _backend.BATCHED_GRADS)
        mu, logvar, means = ctx.saved_tensors
        floor, triton = ctx.cfg
        if torch.is_grad_enabled():  # create_graph: autograd through the eager formula, the same mask
            def build(m, lv):
                elems = (-0.5 * (1 + lv - m.pow(2) - lv.exp())).reshape(m.shape[0], -1)
                return [(torch.where(means >= floor, elems, torch.full_like(elems, floor)).sum(1), g)]

            gm, gl = _backend.replay_grads((mu, logvar), ctx.needs_input_grad[:2], build)
            return gm, gl, None, None
        mu2, lv2 = _backend.as_rows(mu), _backend.as_rows(logvar)
        dtype = _backend.compute_dtype(mu, logvar)
        gm, gl = (_triton_backward if triton else _torch_backward)(mu2, lv2, means, g.contiguous(), floor, dtype)
        return gm.reshape(mu.shape), gl.reshape(logvar.shape), None, None


def per_sample(rows: Tensor, mu: Tensor, logvar: Tensor, floor: float, mode: str) -> Tensor:
    """The per-sample free-bits values (B,) whose batch mean is the free-bits objective; ``rows`` the true
    per-sample KL (used by the 'sample' mode), ``mu``/``logvar`` the posteriors (used by 'dim')."""
    if mode == "sample":
        return torch.clamp_min(rows, floor)
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError("fastvae's free bits do not support torch.func transforms")
    return _FreeBitsDim.apply(mu, logvar, float(floor), _backend.use_triton(mu.device))
