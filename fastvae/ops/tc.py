"""The minibatch estimates of log q(z) and log prod_k q(z_k) for beta-TCVAE: launchers, the PyTorch path
(chunked), and the autograd node.

:func:`log_densities` returns ``(log q(z_i), sum_k log q(z_ik))`` for the rows of z against the diagonal
Gaussians of a batch (``kernels/tc.py`` has the formulas and the estimators' weights).  Memory is O(B J)
whatever B: the Triton kernels stream over the batch with online log-sum-exps, the PyTorch path walks
it in chunks of at most ``CHUNK_ELEMENTS`` (row, row, dim) terms; backward recomputes the pairwise
densities from the saved log-sum-exps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _backend

ESTIMATORS = ("mss", "mws")
#: The PyTorch path's chunk: (rows of z) x (rows of the batch) x J terms at a time; backward keeps about six
#: temporaries of this size (2 MiB each in float32), so the peak stays near 12 MiB whatever the batch.
CHUNK_ELEMENTS = 1 << 19
_LOG_2PI = math.log(2.0 * math.pi)


def _blocks(J: int, small: bool) -> tuple[int, int, int]:
    block_k = max(2, 1 << max(0, (J - 1).bit_length()))
    if small:  # the test switch: several blocks in every loop
        return 2, 2, block_k
    block_i = 16 if block_k <= 256 else 4
    block_j = max(1, min(16, 4096 // (block_i * block_k)))
    return block_i, block_j, block_k


def _sizes(z, mu, logvar):
    """(B, BT, J, the compute dtype) of a problem: rows of z, rows of the batch, latent dimensions."""
    return z.shape[0], mu.shape[0], z.shape[1], _backend.compute_dtype(z, mu, logvar)


def _log_density_outputs(B: int, J: int, dtype, device):
    """Empty ``(lse, lsem)``: log q(z_i) (B,) and log q(z_ik) (B, J)."""
    return torch.empty(B, dtype=dtype, device=device), torch.empty(B, J, dtype=dtype, device=device)


def _triton_forward(z, mu, logvar, row0, n_data, mss):
    B, BT, J, dtype = _sizes(z, mu, logvar)
    lse, lsem = _log_density_outputs(B, J, dtype, z.device)
    if B == 0:
        return lse, lsem
    bi, bj, bk = _blocks(J, _backend._STATE.small_tiles)
    _backend.kernels("tc").tc_forward_kernel[(-(-B // bi),)](
        z, mu, logvar, lse, lsem, B, BT, J, row0, z.stride(0), mu.stride(0), n_data,
        MSS=mss, FP64=dtype == torch.float64, BLOCK_I=bi, BLOCK_J=bj, BLOCK_K=bk, num_warps=4,
    )
    return lse, lsem


def _triton_backward(z, mu, logvar, row0, n_data, mss, lse, lsem, g, h):
    B, BT, J, dtype = _sizes(z, mu, logvar)
    gz, gmu, glv = (torch.empty(n, J, dtype=dtype, device=z.device) for n in (B, BT, BT))
    bi, bj, bk = _blocks(J, _backend._STATE.small_tiles)
    kern = _backend.kernels("tc")
    args = (z, mu, logvar, lse, lsem, g, h)
    shape = (B, BT, J, row0, z.stride(0), mu.stride(0), n_data)
    meta = dict(MSS=mss, FP64=dtype == torch.float64, BLOCK_I=bi, BLOCK_J=bj, BLOCK_K=bk, num_warps=4)
    if B:
        kern.tc_backward_z_kernel[(-(-B // bi),)](*args, gz, *shape, **meta)
    if BT:
        if B:
            kern.tc_backward_params_kernel[(-(-BT // bj),)](*args, gmu, glv, *shape, **meta)
        else:
            gmu.zero_()
            glv.zero_()
    return gz, gmu, glv


def _log_weights(rows: Tensor, cols: Tensor, BT: int, n_data: int, mss: bool, dtype) -> Tensor:
    """log w_ij for global row indices ``rows`` (ci,) and batch indices ``cols`` (cj,)."""
    if not mss:
        return torch.full((rows.numel(), cols.numel()), -math.log(n_data * BT), dtype=dtype, device=rows.device)
    m = BT - 1
    diag = rows[:, None] == cols[None, :]
    nxt = ((rows + 1) % BT)[:, None] == cols[None, :]
    lw = torch.full(diag.shape, -math.log(m), dtype=dtype, device=rows.device)
    lw.masked_fill_(nxt, math.log((n_data - m) / (n_data * m)))
    return lw.masked_fill_(diag, -math.log(n_data))


def _chunks(B: int, BT: int, J: int):
    ci = max(1, min(B, 256))
    cj = max(1, min(BT, CHUNK_ELEMENTS // max(1, ci * J)))
    return ci, cj


def _pair_terms(z, mu, logvar, i0, i1, j0, j1, row0, BT, n_data, mss, dtype):
    """(l_ikj, z - mu, exp(-logvar), log w_ij) for rows i0:i1 of z and j0:j1 of the batch, laid out
    (i, k, j): every reduction over the batch runs along the contiguous last dimension."""
    zi = z[i0:i1].to(dtype)[:, :, None]
    mj, lj = mu[j0:j1].to(dtype).t(), logvar[j0:j1].to(dtype).t()   # (J, cj)
    iv = torch.exp(-lj)
    d = zi - mj[None]
    l3 = (d * d).mul_(iv[None]).add_(lj[None]).add_(_LOG_2PI).mul_(-0.5)
    rows = torch.arange(row0 + i0, row0 + i1, device=z.device)
    cols = torch.arange(j0, j1, device=z.device)
    return l3, d, iv, _log_weights(rows, cols, BT, n_data, mss, dtype)


def _online(state, values):
    """Fold a chunk into a running log-sum-exp over the last dim: state (max, sum) or None."""
    top = values.amax(-1)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    total = torch.exp(values - top[..., None]).sum(-1)
    if state is None:
        return top, total
    m, s = state
    new = torch.maximum(m, top)
    return new, s * torch.exp(m - new) + total * torch.exp(top - new)


@_backend.without_autocast
def _torch_forward(z, mu, logvar, row0, n_data, mss):
    B, BT, J, dtype = _sizes(z, mu, logvar)
    lse, lsem = _log_density_outputs(B, J, dtype, z.device)
    ci, cj = _chunks(B, BT, J)
    for i0 in range(0, B, ci):
        i1 = min(B, i0 + ci)
        joint = marg = None
        for j0 in range(0, BT, cj):
            l3, _, _, lw = _pair_terms(z, mu, logvar, i0, i1, j0, min(BT, j0 + cj), row0, BT, n_data, mss, dtype)
            joint = _online(joint, l3.sum(1) + lw)
            marg = _online(marg, l3.add_(lw[:, None, :]))
        lse[i0:i1] = joint[0] + torch.log(joint[1])
        lsem[i0:i1] = marg[0] + torch.log(marg[1])
    return lse, lsem


@_backend.without_autocast
def _torch_backward(z, mu, logvar, row0, n_data, mss, lse, lsem, g, h):
    B, BT, J, dtype = _sizes(z, mu, logvar)
    # accumulated chunk by chunk; the batch's gradients laid out (J, BT), as the chunks' terms are
    gz, gmu, glv = (torch.zeros(*shape, dtype=dtype, device=z.device) for shape in ((B, J), (J, BT), (J, BT)))
    ci, cj = _chunks(B, BT, J)
    for i0 in range(0, B, ci):
        i1 = min(B, i0 + ci)
        gi, hi = g[i0:i1].to(dtype), h[i0:i1].to(dtype)
        for j0 in range(0, BT, cj):
            j1 = min(BT, j0 + cj)
            l3, d, iv, lw = _pair_terms(z, mu, logvar, i0, i1, j0, j1, row0, BT, n_data, mss, dtype)
            p = torch.exp(l3.sum(1) + lw - lse[i0:i1, None])                         # (ci, cj)
            c = torch.exp(l3.add_(lw[:, None, :]).sub_(lsem[i0:i1, :, None])).mul_(hi[:, None, None])
            c.add_(p[:, None, :] * gi[:, None, None])       # c_ikj = g_i p_ij + h_i p_ijk
            cd = c * d * iv[None]                            # c (z - mu) / var
            gz[i0:i1] -= cd.sum(2)
            gmu[:, j0:j1] += cd.sum(0)
            glv[:, j0:j1] += 0.5 * (cd.mul_(d).sum(0) - c.sum(0))
    return gz, gmu.t().contiguous(), glv.t().contiguous()


class _LogDensities(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, mu, logvar, row0, n_data, mss, triton):
        impl = _triton_forward if triton else _torch_forward
        lse, lsem = impl(z, mu, logvar, row0, n_data, mss)
        ctx.save_for_backward(z, mu, logvar, lse, lsem)
        ctx.cfg = (row0, n_data, mss, triton)
        return lse, lsem.sum(1)

    @staticmethod
    def backward(ctx, g_joint, g_prod):
        if _backend.batched_grads(g_joint, g_prod):
            from .objective import unsupported_transform
            raise unsupported_transform("tc_decomposition", _backend.BATCHED_GRADS)
        z, mu, logvar, lse, lsem = ctx.saved_tensors
        row0, n_data, mss, triton = ctx.cfg
        if torch.is_grad_enabled():
            raise RuntimeError("fastvae.tc_decomposition does not support higher-order gradients "
                               "(create_graph=True): its backward recomputes the pairwise densities in a kernel")
        zero = torch.zeros(z.shape[0], dtype=lse.dtype, device=z.device)
        g = g_joint.to(lse.dtype) if g_joint is not None else zero
        h = g_prod.to(lse.dtype) if g_prod is not None else zero
        impl = _triton_backward if triton else _torch_backward
        gz, gmu, glv = impl(z, mu, logvar, row0, n_data, mss, lse, lsem, g.contiguous(), h.contiguous())
        return gz.to(z.dtype), gmu.to(mu.dtype), glv.to(logvar.dtype), None, None, None, None


def log_densities(z: Tensor, mu: Tensor, logvar: Tensor, *, row0: int, dataset_size: int, estimator: str):
    """``(log q(z_i), sum_k log q(z_ik))`` of shape (B,) each; ``mu``/``logvar`` are the whole batch's rows
    (BT, J), row i of z is row ``row0 + i`` of it.  Arguments assumed checked."""
    if torch._C._are_functorch_transforms_active():
        raise RuntimeError("fastvae.tc_decomposition does not support torch.func transforms")
    z, mu, logvar = z.contiguous(), mu.contiguous(), logvar.contiguous()
    return _LogDensities.apply(z, mu, logvar, int(row0), int(dataset_size), estimator == "mss",
                               _backend.use_triton(z.device))


def _collective(new: str, old: str):
    """torch.distributed's single-tensor collective under its current name (``new``, torch >= 2.13) or
    the one it had before (``old``)."""
    import torch.distributed as dist

    return getattr(dist, new, None) or getattr(dist, old)


class _GatherRows(torch.autograd.Function):
    """All-gather of equal row blocks along dim 0, differentiable: the gradient of rank r's block is the
    sum over the ranks of their gradients for rows of block r (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, group):
        import torch.distributed as dist

        ctx.group = group
        world = dist.get_world_size(group)
        out = x.new_empty((world * x.shape[0], *x.shape[1:]))
        _collective("all_gather_single", "all_gather_into_tensor")(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        import torch.distributed as dist

        world = dist.get_world_size(ctx.group)
        grad = grad.contiguous()
        out = grad.new_empty((grad.shape[0] // world, *grad.shape[1:]))
        _collective("reduce_scatter_single", "reduce_scatter_tensor")(out, grad, group=ctx.group)
        return out, None


def gather_rows(x: Tensor, group) -> Tensor:
    """The rows of ``x`` from every rank of ``group``, in rank order, with gradients flowing back to each
    rank's own rows.  Every rank must pass the same shape (torch.distributed raises otherwise)."""
    return _GatherRows.apply(x.contiguous(), group)
