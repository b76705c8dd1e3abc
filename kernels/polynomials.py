"""Polynomials in Horner form, for the hand-written transcendentals of the kernels.

``horner(x, (c_n, ..., c_1, c_0))`` is c_n x^n + ... + c_1 x + c_0, evaluated as
``(...(c_n x + c_{n-1}) x + ...) x + c_0``: n fused multiply-adds.  The coefficients are a constexpr tuple,
highest degree first, and the loop unrolls at compile time, so the machine code is that of the written-out
chain (the constants rounded to the compute dtype as literals are).
"""
import triton
import triton.language as tl


@triton.jit
def horner(x, COEFFS: tl.constexpr):
    """sum_i COEFFS[i] x^(n - i), n = len(COEFFS) - 1, in Horner form (n multiply-adds)."""
    p = COEFFS[0] * x + COEFFS[1]
    for i in tl.static_range(2, len(COEFFS)):
        p = p * x + COEFFS[i]
    return p
