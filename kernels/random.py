"""Standard normal noise from Philox4x32-10, addressed by (row, column) rather than by memory.

Element (r, c) of a (B, D) tensor takes its noise from one Philox block:

    counter = (lo32(c // 4), hi32(c // 4), lo32(r), hi32(r)),  key = (lo32(seed), hi32(seed))
    (x0, x1, x2, x3) = philox4x32_10(counter, key)
    u_i = ((x_i >> 8) + 0.5) / 2**24                         in (0, 1), never 0 or 1
    n0, n1 = sqrt(-2 log u0) * (cos(2 pi u1), sin(2 pi u1))   (Box-Muller)
    n2, n3 = sqrt(-2 log u2) * (cos(2 pi u3), sin(2 pi u3))
    eps[r, c] = n_{c % 4}

Because the address is the logical (row, column), the noise does not depend on the block
sizes, the grid or the strides of the inputs, and the PyTorch path (``fastvae/ops/_philox.py``)
reproduces it.  One Philox call yields four normals, so the integer work is a quarter of
one call per element.  Nothing is read or written here: the noise lives in registers and is
regenerated in backward from the same seed.
"""
import triton
import triton.language as tl


@triton.jit
def _uniform_open(x):
    # Top 24 bits + 1/2 ulp: exactly representable in float32 and strictly inside (0, 1),
    # so log() never sees 0 and the normal's tail is cut only beyond 5.8 sigma.
    return ((x >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08


@triton.jit
def philox_normal(seed, rows, cols, BLOCK_D: tl.constexpr):
    """Normal noise for a (BLOCK_R, BLOCK_D) tile.

    ``seed`` is an int64 scalar, ``rows`` an int64 (BLOCK_R, 1) tensor of row indices and
    ``cols`` an int64 (1, BLOCK_D // 4) tensor of column groups (column // 4); the tile's
    first column must be a multiple of 4.  Returns float32 (BLOCK_R, BLOCK_D).
    """
    zero = (rows * 0) + (cols * 0)
    c0 = (cols + zero).to(tl.uint32)
    c1 = ((cols + zero) >> 32).to(tl.uint32)
    c2 = (rows + zero).to(tl.uint32)
    c3 = ((rows + zero) >> 32).to(tl.uint32)
    x0, x1, x2, x3 = tl.philox(seed, c0, c1, c2, c3)
    u0 = _uniform_open(x0)
    u1 = _uniform_open(x1)
    u2 = _uniform_open(x2)
    u3 = _uniform_open(x3)
    two_pi: tl.constexpr = 6.283185307179586
    r01 = tl.sqrt(-2.0 * tl.log(u0))
    r23 = tl.sqrt(-2.0 * tl.log(u2))
    n0 = r01 * tl.cos(two_pi * u1)
    n1 = r01 * tl.sin(two_pi * u1)
    n2 = r23 * tl.cos(two_pi * u3)
    n3 = r23 * tl.sin(two_pi * u3)
    # interleave(interleave(n0, n2), interleave(n1, n3)) puts n_k at column 4 * j + k.
    return tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
