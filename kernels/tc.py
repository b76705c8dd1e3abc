"""The minibatch log densities of beta-TCVAE (Chen et al. 2018), streamed over the batch like attention.

For z_i (rows of z, i < B) and the diagonal Gaussians q(. | x_j) of the batch (rows of mu, logvar,
j < BT: the whole batch, all ranks' rows under data parallelism; row i of z is row ``row0 + i`` of it):

    l_ijk = log N(z_ik; mu_jk, exp(lv_jk)) = -1/2 ((z_ik - mu_jk)^2 exp(-lv_jk) + lv_jk + log 2 pi)
    log q(z_i)        ~= logsumexp_j [sum_k l_ijk + log w_ij]           (``tc_forward_kernel``: lse)
    log q(z_ik)       ~= logsumexp_j [l_ijk + log w_ij]                  (per k: lse_m, (B, J))

with the weights of minibatch weighted sampling (w_ij = 1 / (N BT)) or minibatch stratified sampling
(M = BT - 1: w_ii = 1/N, w_i,(i+1) mod BT = (N - M) / (N M), the other BT - 2 weights 1/M).

Nothing of size B x BT is ever stored: a program owns BLOCK_I rows of z and walks the batch BLOCK_J rows
of (mu, logvar) at a time, keeping an online log-sum-exp (running max and rescaled sum) for the joint and
one per latent dimension; backward recomputes l_ijk from the saved log-sum-exps (softmax weights
p_ij = exp(S_ij - lse_i), p_ijk = exp(l_ijk + log w_ij - lse_m_ik)), as flash attention recomputes its
scores.  With g the gradient of log q(z_i) and h_i that of log q(z_ik) (one value per row: the gradient of
their sum over k), c_ijk = g_i p_ij + h_i p_ijk and

    d/dz_ik  = sum_j c_ijk (-(z_ik - mu_jk) exp(-lv_jk))                 (``tc_backward_z_kernel``)
    d/dmu_jk = sum_i c_ijk (z_ik - mu_jk) exp(-lv_jk)                     (``tc_backward_params_kernel``)
    d/dlv_jk = sum_i c_ijk ((z_ik - mu_jk)^2 exp(-lv_jk) - 1) / 2

two passes, one parallel over i and one over j, so every sum is a program's own (no atomics,
deterministic).  Bytes: each program reads BT rows of (mu, logvar) per BLOCK_I rows of z, so the traffic is
about B BT J / BLOCK_I elements; the work, B BT J exponentials, is what bounds it.
"""
import triton
import triton.language as tl

from .tiles import tile_rows, to_compute, to_scalar


@triton.jit
def _log_weight_values(N, BT, MSS: tl.constexpr, FP64: tl.constexpr):
    """(log w_ii, log w_i,i+1, log w of the others) in the compute dtype, from the integers N and BT."""
    n = to_scalar(N, FP64)
    bt = to_scalar(BT, FP64)
    if MSS:
        m = bt - 1.0
        out = -tl.log(n), tl.log((n - m) / (n * m)), -tl.log(m)
    else:
        w = -tl.log(n * bt)
        out = w, w, w
    return out


@triton.jit
def _columns_and_weights(J, N, BT, MSS: tl.constexpr, FP64: tl.constexpr, BLOCK_K: tl.constexpr):
    """(k, k < J, log w_ii, log w_i,i+1, log w of the others): the latent dimensions and the weights."""
    k = tl.arange(0, BLOCK_K)
    log_diag, log_next, log_other = _log_weight_values(N, BT, MSS, FP64)
    return k, k < J, log_diag, log_next, log_other


@triton.jit
def _log_weights(gi, j, j_mask, BT, log_diag, log_next, log_other, MSS: tl.constexpr):
    """log w_ij for global rows gi (BLOCK_I, 1) and batch rows j (1, BLOCK_J); -inf past the batch."""
    if MSS:
        nxt = (gi + 1) % BT
        lw = tl.where(j == gi, log_diag, tl.where(j == nxt, log_next, log_other))
    else:
        lw = tl.zeros_like(gi + j).to(log_other.dtype) + log_other
    return tl.where(j_mask, lw, float("-inf"))


@triton.jit
def _densities(z3, mu_ptr, lv_ptr, j, j_mask, k, k_mask, p_stride, FP64: tl.constexpr):
    """(l_ijk with padded k zeroed, z - mu, exp(-logvar)) for a (BLOCK_I, BLOCK_J, BLOCK_K) block."""
    offs = j[:, None] * p_stride + k[None, :]
    m2 = j_mask[:, None] & k_mask[None, :]
    mu = to_compute(tl.load(mu_ptr + offs, mask=m2, other=0.0), FP64)
    lv = to_compute(tl.load(lv_ptr + offs, mask=m2, other=0.0), FP64)
    iv = tl.exp(-lv)
    d = z3 - mu[None, :, :]
    l3 = -0.5 * (d * d * iv[None, :, :] + lv[None, :, :] + 1.8378770664093453)  # log(2 pi)
    l3 = tl.where(k_mask[None, None, :], l3, 0.0)
    return l3, d, iv


@triton.jit
def _pair_block(z3, gi, mu_ptr, lv_ptr, j, BT, k, k_mask, p_stride, log_diag, log_next, log_other,
                MSS: tl.constexpr, FP64: tl.constexpr):
    """(l_ijk, z - mu, exp(-logvar), log w_ij) of the rows of z3 (global rows gi) and batch rows j."""
    j_mask = j < BT
    l3, d, iv = _densities(z3, mu_ptr, lv_ptr, j, j_mask, k, k_mask, p_stride, FP64)
    lw = _log_weights(gi, j[None, :], j_mask[None, :], BT, log_diag, log_next, log_other, MSS)
    return l3, d, iv, lw


@triton.jit
def _load_z(z_ptr, i, i_mask, k, k_mask, z_stride, FP64: tl.constexpr):
    """The (BLOCK_I, BLOCK_K) rows i of z in the compute dtype, 0 where masked."""
    return to_compute(tl.load(z_ptr + i[:, None] * z_stride + k[None, :], mask=i_mask[:, None] & k_mask[None, :],
                              other=0.0), FP64)


@triton.jit
def _row_inputs(z_ptr, lse_ptr, lsem_ptr, g_ptr, h_ptr, i, i_mask, k, k_mask, J, z_stride, FP64: tl.constexpr):
    """What backward reads for rows i of z: (z, lse_i, lse_m_ik, g_i, h_i) in the compute dtype."""
    z = _load_z(z_ptr, i, i_mask, k, k_mask, z_stride, FP64)
    lse = to_compute(tl.load(lse_ptr + i, mask=i_mask, other=0.0), FP64)
    lsem = to_compute(tl.load(lsem_ptr + i[:, None] * J + k[None, :], mask=i_mask[:, None] & k_mask[None, :],
                              other=0.0), FP64)
    g = to_compute(tl.load(g_ptr + i, mask=i_mask, other=0.0), FP64)
    h = to_compute(tl.load(h_ptr + i, mask=i_mask, other=0.0), FP64)
    return z, lse, lsem, g, h


@triton.jit
def tc_forward_kernel(
    z_ptr, mu_ptr, lv_ptr, lse_ptr, lsem_ptr,
    B, BT, J, row0, z_stride, p_stride, N,
    MSS: tl.constexpr, FP64: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """lse_i = log q(z_i) and lse_m_ik = log q(z_ik): see the module docstring."""
    i, i_mask = tile_rows(B, BLOCK_I)
    k, k_mask, log_diag, log_next, log_other = _columns_and_weights(J, N, BT, MSS, FP64, BLOCK_K)
    z = _load_z(z_ptr, i, i_mask, k, k_mask, z_stride, FP64)
    z3 = z[:, None, :]
    gi = (row0 + i)[:, None]
    m_joint = tl.full((BLOCK_I,), float("-inf"), z.dtype)
    s_joint = tl.zeros((BLOCK_I,), z.dtype)
    m_marg = tl.full((BLOCK_I, BLOCK_K), float("-inf"), z.dtype)
    s_marg = tl.zeros((BLOCK_I, BLOCK_K), z.dtype)
    for j0 in range(0, BT, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
        l3, d, iv, lw = _pair_block(z3, gi, mu_ptr, lv_ptr, j, BT, k, k_mask, p_stride, log_diag, log_next,
                                    log_other, MSS, FP64)
        s_ij = tl.sum(l3, axis=2) + lw
        new = tl.maximum(m_joint, tl.max(s_ij, axis=1))
        s_joint = s_joint * tl.exp(m_joint - new) + tl.sum(tl.exp(s_ij - new[:, None]), axis=1)
        m_joint = new
        v = l3 + lw[:, :, None]
        new_m = tl.maximum(m_marg, tl.max(v, axis=1))
        s_marg = s_marg * tl.exp(m_marg - new_m) + tl.sum(tl.exp(v - new_m[:, None, :]), axis=1)
        m_marg = new_m
    tl.store(lse_ptr + i, m_joint + tl.log(s_joint), mask=i_mask)
    tl.store(lsem_ptr + i[:, None] * J + k[None, :], m_marg + tl.log(s_marg), mask=i_mask[:, None] & k_mask[None, :])


@triton.jit
def _coefficients(l3, lw, lse, lsem, g, h):
    """c_ijk = g_i p_ij + h_i p_ijk (see the module docstring)."""
    p = tl.exp(tl.sum(l3, axis=2) + lw - lse[:, None])
    pk = tl.exp(l3 + lw[:, :, None] - lsem[:, None, :])
    return g[:, None, None] * p[:, :, None] + h[:, None, None] * pk


@triton.jit
def tc_backward_z_kernel(
    z_ptr, mu_ptr, lv_ptr, lse_ptr, lsem_ptr, g_ptr, h_ptr, gz_ptr,
    B, BT, J, row0, z_stride, p_stride, N,
    MSS: tl.constexpr, FP64: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """d/dz of g . log q(z) + h . sum_k log q(z_k), rows of z in parallel, the batch walked."""
    i, i_mask = tile_rows(B, BLOCK_I)
    k, k_mask, log_diag, log_next, log_other = _columns_and_weights(J, N, BT, MSS, FP64, BLOCK_K)
    z, lse, lsem, g, h = _row_inputs(z_ptr, lse_ptr, lsem_ptr, g_ptr, h_ptr, i, i_mask, k, k_mask, J, z_stride, FP64)
    z3 = z[:, None, :]
    gi = (row0 + i)[:, None]
    gz = tl.zeros((BLOCK_I, BLOCK_K), z.dtype)
    for j0 in range(0, BT, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
        l3, d, iv, lw = _pair_block(z3, gi, mu_ptr, lv_ptr, j, BT, k, k_mask, p_stride, log_diag, log_next,
                                    log_other, MSS, FP64)
        c = _coefficients(l3, lw, lse, lsem, g, h)
        gz += tl.sum(c * (-d * iv[None, :, :]), axis=1)
    tl.store(gz_ptr + i[:, None] * J + k[None, :], gz, mask=i_mask[:, None] & k_mask[None, :])


@triton.jit
def tc_backward_params_kernel(
    z_ptr, mu_ptr, lv_ptr, lse_ptr, lsem_ptr, g_ptr, h_ptr, gmu_ptr, glv_ptr,
    B, BT, J, row0, z_stride, p_stride, N,
    MSS: tl.constexpr, FP64: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """d/dmu and d/dlogvar of the same, rows of (mu, logvar) in parallel, the rows of z walked."""
    j, j_mask = tile_rows(BT, BLOCK_J)
    k, k_mask, log_diag, log_next, log_other = _columns_and_weights(J, N, BT, MSS, FP64, BLOCK_K)
    gmu = tl.zeros((BLOCK_J, BLOCK_K), tl.float64 if FP64 else tl.float32)
    glv = tl.zeros_like(gmu)
    for i0 in range(0, B, BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I).to(tl.int64)
        i_mask = i < B
        z, lse, lsem, g, h = _row_inputs(z_ptr, lse_ptr, lsem_ptr, g_ptr, h_ptr, i, i_mask, k, k_mask, J, z_stride,
                                         FP64)
        l3, d, iv, lw = _pair_block(z[:, None, :], (row0 + i)[:, None], mu_ptr, lv_ptr, j, BT, k, k_mask, p_stride,
                                    log_diag, log_next, log_other, MSS, FP64)
        c = _coefficients(l3, lw, lse, lsem, g, h)
        c = tl.where(i_mask[:, None, None], c, 0.0)
        gmu += tl.sum(c * d * iv[None, :, :], axis=0)
        glv += tl.sum(c * 0.5 * (d * d * iv[None, :, :] - 1.0), axis=0)
    pm = j_mask[:, None] & k_mask[None, :]
    tl.store(gmu_ptr + j[:, None] * J + k[None, :], gmu, mask=pm)
    tl.store(glv_ptr + j[:, None] * J + k[None, :], glv, mask=pm)
