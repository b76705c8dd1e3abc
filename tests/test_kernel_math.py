"""The kernels' own transcendentals against float64, over their whole input ranges (in the interpreter).

The kernels avoid libdevice (slow on the GPU, absent in the interpreter): log1p of exp(-|x|) is a
polynomial, the noise's log, sin and cos are range-reduced polynomials, exp(x) - 1 - x near 0 is a
fitted polynomial.  Each is checked here where it is used, edges included, against the error bound its
docstring states.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter")

if os.environ.get("TRITON_INTERPRET") == "1":
    import triton
    import triton.language as tl

    from fastvae.ops import _backend

    _lik = _backend.kernels("likelihoods")
    _rand = _backend.kernels("random")
    _lat = _backend.kernels("latent")
    _log1p8, _log1p6, _log_unit, _box_muller, _exp_m1_m = (
        _lik._log1p_poly, _lik._log1p_poly6, _rand._log_unit, _rand._box_muller, _lat._exp_m1_m)

    @triton.jit
    def _unary_kernel(x_ptr, y_ptr, n, WHICH: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.5)
        if WHICH == 0:
            y = _log1p8(x)
        elif WHICH == 1:
            y = _log1p6(x)
        elif WHICH == 2:
            y = _log_unit(x)
        else:
            y = _exp_m1_m(x, tl.exp2(x * 0.7213475204444817), False)
        tl.store(y_ptr + offs, y, mask=mask)

    @triton.jit
    def _box_muller_kernel(r_ptr, a_ptr, c_ptr, s_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        xr = tl.load(r_ptr + offs, mask=mask, other=0).to(tl.uint32)
        xa = tl.load(a_ptr + offs, mask=mask, other=0).to(tl.uint32)
        nc, ns = _box_muller(xr, xa)
        tl.store(c_ptr + offs, nc, mask=mask)
        tl.store(s_ptr + offs, ns, mask=mask)


def _run(which, x):
    x = torch.as_tensor(x, dtype=torch.float32).contiguous()
    y = torch.empty_like(x)
    block = 1024
    _unary_kernel[(triton.cdiv(x.numel(), block),)](x, y, x.numel(), WHICH=which, BLOCK=block)
    return y.double()


def _grid_01(n=200_001):
    g = np.linspace(0, 1, n, dtype=np.float32)
    tiny = np.logspace(-38, -1, 2000).astype(np.float32)
    return np.concatenate([g, tiny, [0.0, 1.0, np.float32(1) - np.float32(2.0**-24)]]).astype(np.float32)


@pytest.mark.parametrize("which,bound", [(0, 2.5e-7), (1, 1.6e-6)])
def test_log1p_polynomials(which, bound):
    e = _grid_01()
    got = _run(which, e).numpy()
    ref = np.log1p(e.astype(np.float64))
    rel = np.abs(got - ref) / np.maximum(ref, 1e-300)
    rel[ref == 0] = np.abs(got[ref == 0])
    assert rel.max() <= bound, (rel.max(), e[rel.argmax()])


def test_log_of_the_noise_radius():
    """log(u) for every u the radius can take, ((k + 1) / 2^24 for k < 2^24), relative error and the sign
    right up to u = 1 (where the radius is small and a wrong sign would give a NaN)."""
    k = np.concatenate([np.arange(0, 4096), np.random.default_rng(0).integers(0, 2**24, 200_000),
                        np.arange(2**24 - 4096, 2**24)])
    u = ((k + 1) * 2.0**-24).astype(np.float32)
    got = _run(2, u).numpy()
    ref = np.log(u.astype(np.float64))
    assert (got <= 0).all()
    assert got[u == 1.0][0] == 0.0
    ok = ref != 0
    rel = np.abs(got[ok] - ref[ok]) / np.abs(ref[ok])
    assert rel.max() <= 4e-7, (rel.max(), u[ok][rel.argmax()])


def test_exp_m1_m_near_zero_and_at_the_switch():
    x = np.concatenate([np.linspace(-3, 3, 100_001), np.logspace(-8, -0.2, 2000), -np.logspace(-8, -0.2, 2000),
                        [0.49999997, 0.5, -0.5, -0.49999997]]).astype(np.float32)
    got = _run(3, x).numpy()
    ref = np.expm1(x.astype(np.float64)) - x.astype(np.float64)
    ok = ref > 0
    rel = np.abs(got[ok] - ref[ok]) / ref[ok]
    small = np.abs(x[ok]) < 0.5
    assert rel[small].max() <= 4e-7, rel[small].max()
    # past the switch the direct form loses at most four bits (the hardware exp2 adds two ulps)
    assert rel[~small].max() <= 4e-6, rel[~small].max()


def test_box_muller_against_float64():
    """Every quadrant, its edges, and the extremes of the radius (u = 2^-24 and u = 1)."""
    edges = [0, 1, 2**29 - 1, 2**29, 2**29 + 1, 2**30 - 1, 2**30, 3 * 2**29, 2**31 - 1, 2**31, 5 * 2**29,
             3 * 2**30 - 1, 3 * 2**30, 7 * 2**29, 7 * 2**29 + 1, 2**32 - 1]
    rng = np.random.default_rng(1)
    xa = np.concatenate([np.array(edges, dtype=np.uint64), rng.integers(0, 2**32, 100_000, dtype=np.uint64)])
    xr = np.concatenate([np.array([0, 255, 2**32 - 1, 2**32 - 256] * 4, dtype=np.uint64),
                         rng.integers(0, 2**32, 100_000, dtype=np.uint64)])
    n = len(xa)
    ta, tr = (torch.from_numpy(v.astype(np.int64)) for v in (xa, xr))
    nc, ns = torch.empty(n), torch.empty(n)
    _box_muller_kernel[(triton.cdiv(n, 1024),)](tr, ta, nc, ns, n, BLOCK=1024)
    u = ((xr >> np.uint64(8)) + np.uint64(1)).astype(np.float64) * 2.0**-24
    radius = np.sqrt(-2.0 * np.log(u))
    angle = xa.astype(np.float64) * (2 * math.pi / 2**32)
    for got, ref in ((nc.double().numpy(), radius * np.cos(angle)), (ns.double().numpy(), radius * np.sin(angle))):
        assert np.isfinite(got).all()
        err = np.abs(got - ref) / (1.0 + np.abs(ref))
        assert err.max() <= 1e-6, (err.max(), int(err.argmax()))
    assert np.abs(nc.numpy()).max() <= 5.8 and np.abs(ns.numpy()).max() <= 5.8
