"""k importance samples of a Gaussian posterior and their log weights: launchers, the PyTorch path, the
autograd node and the custom ops.

For posteriors N(mu_b, exp(lv_b)) (B rows of J elements) and samples s < k, row r = s B + b of a (k B, J)
problem is

    z_r  = mu_b + exp(lv_b / 2) eps_r,    lr_r = log p(z_r) - log q(z_r | x_b) = sum_j (eps_rj^2 - z_rj^2 + lv_bj) / 2

with p = N(0, I) (the log 2 pi terms cancel).  The noise is that of :mod:`fastvae.ops.latent` for a (k B, J)
input: Philox at (seed, row r, column) in the kernels, the CPU generator's stream on CPU tensors.  Forward
writes z and lr in one pass; backward regenerates the noise and sums over the k samples, so nothing of
size k B J is saved.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _backend
from ._philox import philox_normal
from .latent import _as, _cpu_normal, _unsupported

#: The GPU tiling of the log-weight kernels (the latent kernels': 2048 elements, 4 warps a program).
TILE, WARPS = 2048, 4


def _rows(t: Tensor) -> Tensor:
    return _backend.as_rows(t)


# ----------------------------------------------------------------------------- Triton launchers


def _triton_forward(mu, logvar, seed, k):
    mu2, lv2 = _rows(mu), _rows(logvar)
    B, J = mu2.shape
    dtype = _backend.compute_dtype(mu, logvar)
    z = torch.empty((k, B, J), dtype=torch.result_type(mu, logvar), device=mu.device)
    lr = torch.empty((k, B), dtype=dtype, device=mu.device)
    if k * B == 0:
        return z, lr
    if J == 0:
        return z, lr.zero_()
    # The kernels walk whole rows (no column splits): the tiling's tile shape and its row blocks.
    tiles = _backend.tiling(k * B, J, mu.device, TILE, WARPS)
    _backend.kernels("iwae").log_weights_forward_kernel[(tiles.grid[0],)](
        mu2, lv2, seed, z, lr, B, J, k, _backend.row_stride(mu2), _backend.row_stride(lv2),
        FP64=dtype == torch.float64, BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )
    return z, lr


def _triton_backward(mu, logvar, seed, k, grad_z, grad_lr):
    mu2, lv2 = _rows(mu), _rows(logvar)
    B, J = mu2.shape
    dtype = _backend.compute_dtype(mu, logvar)
    grad_mu = torch.empty((B, J), dtype=mu.dtype, device=mu.device)
    grad_lv = torch.empty((B, J), dtype=logvar.dtype, device=mu.device)
    if B * J == 0:
        return grad_mu.view(mu.shape), grad_lv.view(logvar.shape)
    if k == 0:
        return grad_mu.zero_().view(mu.shape), grad_lv.zero_().view(logvar.shape)
    tiles = _backend.tiling(B, J, mu.device, TILE, WARPS)
    gz = grad_z.reshape(k * B, J) if grad_z is not None else mu2
    if grad_z is not None and (J > 1 and gz.stride(1) != 1 or gz.stride(0) != J):
        gz = gz.contiguous()
    glr = grad_lr.reshape(k * B).contiguous() if grad_lr is not None else mu2
    _backend.kernels("iwae").log_weights_backward_kernel[(tiles.grid[0],)](
        mu2, lv2, seed, gz, glr, grad_mu, grad_lv, B, J, k, _backend.row_stride(mu2), _backend.row_stride(lv2),
        HAS_GZ=grad_z is not None, HAS_GLR=grad_lr is not None, FP64=dtype == torch.float64,
        BLOCK_R=tiles.block_r, BLOCK_D=tiles.block_d, num_warps=tiles.num_warps,
    )
    return grad_mu.view(mu.shape), grad_lv.view(logvar.shape)



# ----------------------------------------------------------------------------- PyTorch path


def _noise(seed: Tensor, k: int, B: int, J: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(k, B, J) standard normals: element (s, b, j) is that of row s B + b of a (k B, J) problem."""
    if device.type == "cpu":
        eps = _cpu_normal(seed, (k * B, J), k * B, J, 0)
    else:
        eps = philox_normal(seed, k * B, J, 0)
    return _as(eps, dtype).view(k, B, J)


def _torch_forward(mu, logvar, seed, k):
    mu2, lv2 = _rows(mu), _rows(logvar)
    B, J = mu2.shape
    dtype = _backend.compute_dtype(mu, logvar)
    m, lv = _as(mu2, dtype), _as(lv2, dtype)
    eps = _noise(seed, k, B, J, dtype, mu.device)
    z = torch.addcmul(m, torch.exp(lv * 0.5), eps)                  # (k, B, J)
    # eps^2 - z^2 + lv, summed per row and halved after: two passes over (k, B, J)
    lr = (torch.linalg.vecdot(eps, eps) - torch.linalg.vecdot(z, z)).add_(lv.sum(1)).mul_(0.5)
    return _as(z, torch.result_type(mu, logvar)), lr


def _torch_backward(mu, logvar, seed, k, grad_z, grad_lr):
    """grad_mu = sum_s (g_z - g_r z),  grad_lv = sum_s (g_z sigma eps + g_r (1 - z sigma eps)) / 2."""
    mu2, lv2 = _rows(mu), _rows(logvar)
    B, J = mu2.shape
    dtype = _backend.compute_dtype(mu, logvar)
    m, lv = _as(mu2, dtype), _as(lv2, dtype)
    eps = _noise(seed, k, B, J, dtype, mu.device)
    se = eps.mul_(torch.exp(lv * 0.5))                                # sigma eps, in the noise's buffer
    grad_mu = torch.zeros((B, J), dtype=dtype, device=mu.device)
    grad_lv = torch.zeros((B, J), dtype=dtype, device=mu.device)
    if grad_z is not None:
        gz = _as(grad_z.reshape(k, B, J), dtype)
        grad_mu += gz.sum(0)
        grad_lv += torch.linalg.vecdot(gz, se, dim=0)
    if grad_lr is not None:
        gr = _as(grad_lr, dtype).reshape(k, B, 1)
        z = se + m
        grad_mu -= (gr * z).sum(0)
        grad_lv += gr.sum(0) - torch.linalg.vecdot(gr * z, se, dim=0)
    grad_lv.mul_(0.5)
    return _as(grad_mu, mu.dtype).view(mu.shape), _as(grad_lv, logvar.dtype).view(logvar.shape)


_IMPLS = {True: (_triton_forward, _triton_backward), False: (_torch_forward, _torch_backward)}


@_backend.without_autocast
def _forward_impl(mu, logvar, seed, k):
    return _IMPLS[_backend.use_triton(mu.device)][0](mu, logvar, seed, k)


@_backend.without_autocast
def _backward_impl(mu, logvar, seed, k, grad_z, grad_lr):
    return _IMPLS[_backend.use_triton(mu.device)][1](mu, logvar, seed, k, grad_z, grad_lr)


def _z_shape(mu: Tensor, k: int) -> tuple[int, ...]:
    return (k,) + tuple(mu.shape)


# ----------------------------------------------------------------------------- eager autograd node


def _higher_order(ctx, grad_z, grad_lr):
    """Backward under create_graph=True: autograd through the same formulas in torch ops, the noise fixed
    (``_backend.replay_grads``)."""
    mu, logvar, seed = ctx.saved_tensors
    k = ctx.k
    dtype = _backend.compute_dtype(mu, logvar)

    def build(m, lv):
        m, lv = _rows(m).to(dtype), _rows(lv).to(dtype)
        B, J = m.shape
        eps = _noise(seed, k, B, J, dtype, mu.device).detach()
        z = m + torch.exp(0.5 * lv) * eps
        if grad_z is not None:
            yield z, grad_z.reshape(k, B, J).to(dtype)
        if grad_lr is not None:
            yield 0.5 * (eps * eps - z * z + lv).sum(-1), grad_lr.to(dtype)

    grads = _backend.replay_grads((mu, logvar), ctx.needs_input_grad[:2], build)
    result = [None if g is None else g.reshape(t.shape).to(t.dtype) for g, t in zip(grads, (mu, logvar))]
    return tuple(result) + (None, None, None)


class _LogWeights(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar, seed, k, triton):
        z, lr = _IMPLS[triton][0](mu, logvar, seed, k)
        ctx.save_for_backward(mu, logvar, seed)
        ctx.k, ctx.triton = k, triton
        ctx.set_materialize_grads(False)
        return z.view(_z_shape(mu, k)), lr

    @staticmethod
    def backward(ctx, grad_z, grad_lr):
        if _backend.batched_grads(grad_z, grad_lr):
            raise _unsupported(_backend.BATCHED_GRADS)
        if torch.is_grad_enabled():
            return _higher_order(ctx, grad_z, grad_lr)
        if grad_z is None and grad_lr is None:
            return None, None, None, None, None
        mu, logvar, seed = ctx.saved_tensors
        backward = _backward_impl if _backend.autocast_on() else _IMPLS[ctx.triton][1]
        grad_mu, grad_lv = backward(mu, logvar, seed, ctx.k, grad_z, grad_lr)
        return grad_mu, grad_lv, None, None, None

    @staticmethod
    def jvp(ctx, *tangents):
        raise _unsupported("forward-mode AD")


_apply = _backend.apply_function(_LogWeights)


# ----------------------------------------------------------------------------- custom ops (tracing)


@torch.library.custom_op("fastvae::log_weights_forward", mutates_args=())
def log_weights_forward(mu: Tensor, logvar: Tensor, seed: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """k samples z (k, *mu.shape) of N(mu, exp(logvar)) and log p(z) - log q(z|x) (k, B), noise from ``seed``."""
    z, lr = _forward_impl(mu, logvar, seed, k)
    return z.view(_z_shape(mu, k)), lr


@log_weights_forward.register_fake
def _(mu, logvar, seed, k):
    dtype = _backend.compute_dtype(mu, logvar)
    return (mu.new_empty(_z_shape(mu, k), dtype=torch.result_type(mu, logvar)),
            mu.new_empty((k, mu.shape[0]), dtype=dtype))


@torch.library.custom_op("fastvae::log_weights_backward", mutates_args=())
def log_weights_backward(mu: Tensor, logvar: Tensor, seed: Tensor, k: int, grad_z: Optional[Tensor],
                         grad_log_ratio: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Gradients of mu and logvar from those of z and of the log ratio, the noise regenerated."""
    return _backward_impl(mu, logvar, seed, k, grad_z, grad_log_ratio)


@log_weights_backward.register_fake
def _(mu, logvar, seed, k, grad_z, grad_log_ratio):
    return mu.new_empty(mu.shape), logvar.new_empty(logvar.shape)


def _traced_setup(ctx, inputs, output):
    mu, logvar, seed, k = inputs
    ctx.save_for_backward(mu, logvar, seed)
    ctx.k = k
    ctx.set_materialize_grads(False)


def _traced_backward(ctx, grad_z, grad_lr):
    mu, logvar, seed = ctx.saved_tensors
    if grad_z is None and grad_lr is None:
        return None, None, None, None
    grad_mu, grad_lv = log_weights_backward(mu, logvar, seed, ctx.k, grad_z, grad_lr)
    return grad_mu, grad_lv, None, None


log_weights_forward.register_autograd(_traced_backward, setup_context=_traced_setup)


# ----------------------------------------------------------------------------- entry point


def log_weights(mu: Tensor, logvar: Tensor, seed: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(z of shape (k, *mu.shape), log p(z) - log q(z|x) of shape (k, B)); arguments assumed checked."""
    if _backend.tracing(mu):
        return log_weights_forward(mu, logvar, seed, k)
    if torch._C._are_functorch_transforms_active():
        raise _unsupported("torch.func transforms (vmap, grad, jvp)")
    triton = _backend.use_triton(mu.device)
    if not (torch.is_grad_enabled() and (mu.requires_grad or logvar.requires_grad)) \
            and not _backend.forward_ad_active():
        z, lr = _forward_impl(mu, logvar, seed, k)
        return z.view(_z_shape(mu, k)), lr
    if _backend.autocast_on():
        with _backend.autocast_off():
            return _apply(mu, logvar, seed, k, triton)
    return _apply(mu, logvar, seed, k, triton)


