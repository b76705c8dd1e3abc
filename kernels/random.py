"""Standard normal noise from Philox4x32-10, addressed by (row, column) rather than by memory.

Element (r, c) of a (B, D) tensor takes its noise from one Philox block:

    counter = (lo32(c // 4), hi32(c // 4), lo32(r), hi32(r)),  key = (lo32(seed), hi32(seed))
    (x0, x1, x2, x3) = philox4x32_10(counter, key)
    radius: u_i = ((x_i >> 8) + 1) / 2**24         in (0, 1], so log never sees 0
    angle:  a_i = x_i / 2**32                        in [0, 1), all 32 bits
    n0, n1 = sqrt(-2 log u0) * (cos(2 pi a1), sin(2 pi a1))   (Box-Muller)
    n2, n3 = sqrt(-2 log u2) * (cos(2 pi a3), sin(2 pi a3))
    eps[r, c] = n_{c % 4}

Because the address is the logical (row, column), the noise does not depend on the block sizes, the
grid or the strides of the inputs, and ``fastvae/ops/_philox.py`` reproduces it (to the rounding of the
transcendentals).  One Philox call yields four normals, so the integer work is a quarter of one call per
element.  Nothing is read or written here: the noise lives in registers and is regenerated in backward.

The transcendentals are written out instead of calling libdevice (whose ``logf``, ``sinf`` and
``cosf`` cost about twenty instructions each, the last two with a branch to a large-argument
reduction that 2 pi a never needs):

* ``log u``: u = 2^k m with m in [sqrt(1/2), sqrt(2)) by integer arithmetic on the bits (exact), then
  k log 2 + log1p(m - 1) with a degree-8 polynomial (max relative error 2.8e-7); log u stays accurate
  as u -> 1, where the radius is small.
* ``sin, cos(2 pi a)``: the quadrant n = round(4 a) and the remainder come from the 32-bit integer
  itself (exact), so t = 2 pi (a - n/4) lies in [-pi/4, pi/4), where degree-7 and degree-6
  polynomials are accurate to 1.1e-7 (absolute); the quadrant rotates (cos t, sin t).
* ``sqrt``: the hardware square root.

Philox4x32 with 10 rounds is the Random123 default (Salmon et al., SC 2011), which passes TestU01's
BigCrush; the transform is the exact Box-Muller up to those polynomial errors, far below what the
statistical tests of tests/test_rng.py (moments, KS at 2.6e5 samples, correlations) can see.
"""
import triton
import triton.language as tl

from .polynomials import horner


@triton.jit
def _log_unit(u):
    """log(u) for u in (0, 1], float32, without libdevice."""
    bits = u.to(tl.int32, bitcast=True)
    k = (bits - 0x3F3504F3) >> 23                    # u = 2^k m, m in [sqrt(1/2), sqrt(2))
    f = (bits - (k << 23)).to(tl.float32, bitcast=True) - 1.0   # exact (Sterbenz)
    p = horner(f, (-0.1013319343328476, 0.1623453050851822, -0.1724741905927658, 0.19898530840873718,
                   -0.24970035254955292, 0.33335116505622864, -0.5000036358833313, 0.9999999403953552))
    return k.to(tl.float32) * 0.6931471805599453 + p * f


@triton.jit
def _box_muller(xr, xa):
    """(n_cos, n_sin): two independent normals from the Philox words xr (radius) and xa (angle)."""
    u = ((xr >> 8) + 1).to(tl.float32) * 5.9604644775390625e-08    # (0, 1], exact
    radius = tl.sqrt(-2.0 * _log_unit(u))
    quadrant = (xa + 0x20000000) >> 30                               # round(4 a) mod 4
    rest = (xa - (quadrant << 30)).to(tl.int32, bitcast=True)        # in [-2^29, 2^29): a - n/4
    t = rest.to(tl.float32) * 1.4629180792671596e-09    # 2 pi 2^-32 (a - n/4): t in [-pi/4, pi/4)
    t2 = t * t
    s = (-0.00019500713096931577 * t2 + 0.008332004770636559) * t2 - 0.16666649281978607
    s = t + (s * t2) * t
    c = (-0.001357840490527451 * t2 + 0.0416543148458004) * t2 - 0.49999839067459106
    c = c * t2 + 0.9999999403953552
    # cos(t + n pi/2), sin(t + n pi/2) for n = 0..3: (c, s), (-s, c), (-c, -s), (s, -c)
    odd = (quadrant & 1) != 0
    cos_q = tl.where(odd, -s, c)
    sin_q = tl.where(odd, c, s)
    flip = (quadrant & 2) != 0
    return radius * tl.where(flip, -cos_q, cos_q), radius * tl.where(flip, -sin_q, sin_q)


@triton.jit
def philox_normal(seed, rows, cols, BLOCK_D: tl.constexpr):
    """Normal noise for a (BLOCK_R, BLOCK_D) tile.

    ``seed`` is an int64 scalar, ``rows`` an int64 (BLOCK_R, 1) tensor of row indices and
    ``cols`` an int64 (1, BLOCK_D // 4) tensor of column groups (column // 4); the tile's
    first column must be a multiple of 4.  Returns float32 (BLOCK_R, BLOCK_D).
    """
    # the 32-bit words of the counters, split before broadcasting: no 64-bit arithmetic per element
    c0, c2 = tl.broadcast(cols.to(tl.uint32), rows.to(tl.uint32))
    c1, c3 = tl.broadcast((cols >> 32).to(tl.uint32), (rows >> 32).to(tl.uint32))
    x0, x1, x2, x3 = tl.philox(seed, c0, c1, c2, c3)
    n0, n1 = _box_muller(x0, x1)
    n2, n3 = _box_muller(x2, x3)
    # interleave(interleave(n0, n2), interleave(n1, n3)) puts n_k at column 4 * j + k.
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
