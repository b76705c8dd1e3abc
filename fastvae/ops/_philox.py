"""The PyTorch twin of ``kernels/random.py``: the same Philox4x32-10 words, bit for bit, and the same
Box-Muller transform with exact transcendentals (the kernels' polynomials agree to about 1e-7).  It is
the reference the kernels' noise is tested against, and the noise of the PyTorch path on CUDA tensors.

Integers are held in int64 tensors and masked to 32 bits.  The 32x32 -> 64-bit products that
Philox needs are taken modulo 2^64 in int64 (two's complement), whose low 64 bits are the
unsigned product's: the high word is ``(p >> 32) & (2^32 - 1)`` and the low word ``p & (2^32 - 1)``.
``tests/test_rng.py`` pins this against the Triton kernels' noise.
"""
from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85


def _mulhilo(a: torch.Tensor, const: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a * const for a in [0, 2^32)."""
    product = a * const
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    for _ in range(rounds):
        hi_b, lo_b = _mulhilo(c2, _ROUND_B)
        hi_a, lo_a = _mulhilo(c0, _ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0, c1, c2, c3


def _radius_uniform(x: torch.Tensor) -> torch.Tensor:
    """((x >> 8) + 1) / 2^24 in (0, 1], float64 (exact)."""
    return ((x >> 8) + 1).to(torch.float64) * 5.9604644775390625e-08


def philox_normal(seed: torch.Tensor, rows: int, cols: int, row_offset: int = 0) -> torch.Tensor:
    """float32 (rows, cols) standard normals; element (r, c) matches ``kernels.random.philox_normal``."""
    device = seed.device
    groups = -(-cols // 4)
    seed = seed.reshape(()).to(torch.int64)
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    r = torch.arange(row_offset, row_offset + rows, device=device, dtype=torch.int64)[:, None]
    g = torch.arange(groups, device=device, dtype=torch.int64)[None, :]
    shape = (rows, groups)
    c0 = (g & _MASK32).expand(shape)
    c1 = ((g >> 32) & _MASK32).expand(shape)
    c2 = (r & _MASK32).expand(shape)
    c3 = ((r >> 32) & _MASK32).expand(shape)
    x0, x1, x2, x3 = philox4x32(c0, c1, c2, c3, k0, k1)
    # radius from u in (0, 1] (top 24 bits, + 1), angle from a in [0, 1) (all 32 bits), as the kernels
    # do; the transcendentals in float64 here, so the two agree to the kernels' polynomial error
    r01 = torch.sqrt(-2.0 * torch.log(_radius_uniform(x0)))
    r23 = torch.sqrt(-2.0 * torch.log(_radius_uniform(x2)))
    a1, a3 = (x.to(torch.float64) * (2.0 * math.pi / 2**32) for x in (x1, x3))
    n = torch.stack((r01 * torch.cos(a1), r01 * torch.sin(a1), r23 * torch.cos(a3), r23 * torch.sin(a3)), dim=-1)
    return n.to(torch.float32).reshape(rows, groups * 4)[:, :cols]


def exp_m1_m(x: torch.Tensor) -> torch.Tensor:
    """exp(x) - 1 - x without the cancellation of the direct form near 0.

    float32 input: ``expm1(x) - x``; its absolute error, about |x| * 2^-24, is below the rounding
    of the O(1) terms it is summed with (mu^2, and the row sum).  float64 input: the Taylor series
    for |x| < 1/2, as in ``kernels.latent._exp_m1_m``.
    """
    if x.dtype != torch.float64:
        return torch.expm1(x).sub_(x)  # in place: one buffer of x's size, not two
    term = 0.5 * x * x
    series = term
    for k in range(3, 19):
        term = term * (x * (1.0 / k))
        series = series + term
    return torch.where(x.abs() < 0.5, series, torch.expm1(x) - x)
