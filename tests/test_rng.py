"""The in-kernel noise of reparameterize / reparameterize_kl (no eps given).

The noise is recovered as eps = (z - mu) / exp(logvar / 2) from float64 inputs (so the recovery is
exact to ~1e-16) and tested for the standard normal distribution, independence across elements,
rows and calls, reproducibility under torch.manual_seed and torch.Generator, agreement between the
backends, and for backward using the very noise of forward.

Statistical thresholds are 5 standard errors (and p > 1e-4 for the KS test) with fixed seeds, so
the tests are deterministic and a correct generator fails them with negligible probability.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
from scipy import stats

import fastvae as fv

F64 = torch.float64


def inputs(shape, seed, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g, dtype=F64) * 2
    logvar = torch.randn(shape, generator=g, dtype=F64) - 0.5
    return mu.to(dtype).to(device), logvar.to(dtype).to(device)


def recovered(z, mu, logvar):
    return ((z.double() - mu.double()) / torch.exp(0.5 * logvar.double())).cpu()


def sizes(backend):
    """(rows, cols) of the statistical tests: large on torch/cuda, small in the interpreter."""
    return (24, 83) if backend.slow else (512, 390)


def corr(a, b):
    a = a.reshape(-1) - a.mean()
    b = b.reshape(-1) - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def seeded(seed, fn, device="cpu"):
    torch.manual_seed(seed)
    if device == "cuda":
        torch.cuda.manual_seed(seed)
    return fn()


# ----------------------------------------------------------------------------- distribution


@pytest.mark.parametrize("op", ["reparameterize", "reparameterize_kl"])
def test_noise_is_standard_normal(op, backend):
    rows, cols = sizes(backend)
    mu, logvar = inputs((rows, cols), 1, device=backend.device)
    fn = getattr(fv, op)
    z = seeded(7, lambda: fn(mu, logvar), backend.device)
    z = z[0] if isinstance(z, tuple) else z
    eps = recovered(z, mu, logvar).reshape(-1)
    n = eps.numel()
    assert torch.isfinite(eps).all()
    assert abs(eps.mean().item()) < 5 / math.sqrt(n), f"mean {eps.mean().item()}"
    assert abs(eps.var().item() - 1) < 5 * math.sqrt(2 / n), f"variance {eps.var().item()}"
    # third and fourth moments of N(0, 1): 0 and 3 (standard errors sqrt(15/n) and sqrt(96/n))
    assert abs((eps**3).mean().item()) < 5 * math.sqrt(15 / n)
    assert abs((eps**4).mean().item() - 3) < 5 * math.sqrt(96 / n)
    p = stats.kstest(eps.numpy(), "norm").pvalue
    assert p > 1e-4, f"KS test against N(0, 1): p = {p}"
    # no repeated stream: nearly all values distinct (float32 noise has a few coincidences at most)
    assert torch.unique(eps.float()).numel() > 0.99 * n


def test_noise_tails_and_range(torch_backend):
    """A million draws: the extremes are where N(0, 1) puts them (no clipping, no infinities)."""
    mu, logvar = inputs((1000, 1000), 2)
    eps = recovered(seeded(3, lambda: fv.reparameterize(mu, logvar)), mu, logvar).reshape(-1)
    assert torch.isfinite(eps).all()
    # P(|e| > 4) = 6.3e-5: about 63 in a million; P(|e| > 4.5) = 6.8e-6
    n4 = int((eps.abs() > 4).sum())
    assert 25 < n4 < 120, n4
    assert eps.abs().max() > 4.5


def test_noise_uncorrelated_between_neighbouring_elements(backend):
    rows, cols = sizes(backend)
    mu, logvar = inputs((rows, cols), 4, device=backend.device)
    eps = recovered(seeded(11, lambda: fv.reparameterize(mu, logvar), backend.device), mu, logvar)
    for lag in (1, 2, 3, 4, 5, 8, 64):
        if lag >= cols:
            continue
        a, b = eps[:, :-lag], eps[:, lag:]
        assert abs(corr(a, b)) < 5 / math.sqrt(a.numel()), (lag, corr(a, b))
        # also the squares (dependence that is not linear correlation)
        assert abs(corr(a**2, b**2)) < 5 / math.sqrt(a.numel()), (lag, corr(a**2, b**2))


def test_noise_uncorrelated_between_rows_and_calls(backend):
    rows, cols = sizes(backend)
    mu, logvar = inputs((rows, cols), 5, device=backend.device)
    torch.manual_seed(12)
    e1 = recovered(fv.reparameterize(mu, logvar), mu, logvar)
    e2 = recovered(fv.reparameterize(mu, logvar), mu, logvar)  # the next call, no reseeding
    e3 = recovered(fv.reparameterize_kl(mu, logvar)[0], mu, logvar)
    bound = 5 / math.sqrt(e1.numel())
    assert abs(corr(e1[:-1], e1[1:])) < 5 / math.sqrt(e1[1:].numel()), "neighbouring rows correlated"
    assert abs(corr(e1[: rows // 2], e1[rows // 2: 2 * (rows // 2)])) < 5 / math.sqrt(e1.numel() / 2)
    assert abs(corr(e1, e2)) < bound, "two successive calls are correlated"
    assert abs(corr(e2, e3)) < bound, "successive calls of the two ops are correlated"
    assert not torch.equal(e1, e2)
    # row r of one call must not be a shifted copy of another row of the next call
    assert abs(corr(e1[1:], e2[:-1])) < 5 / math.sqrt(e1[1:].numel())
    # columns of different rows: rows are not permutations / reflections of each other
    assert abs(corr(e1[:-1], e1[1:].flip(1))) < 5 / math.sqrt(e1[1:].numel())


def test_noise_independent_across_batch_layouts(backend):
    """Noise of a (B, C, H, W) input: rows differ and elements along every dim are uncorrelated."""
    shape = (6, 3, 5, 7) if backend.slow else (40, 4, 16, 16)
    mu, logvar = inputs(shape, 6, device=backend.device)
    eps = recovered(seeded(13, lambda: fv.reparameterize(mu, logvar), backend.device), mu, logvar)
    for dim in range(4):
        n = eps.shape[dim]
        a, b = eps.narrow(dim, 0, n - 1), eps.narrow(dim, 1, n - 1)
        assert abs(corr(a, b)) < 5 / math.sqrt(a.numel()), f"dim {dim}: {corr(a, b)}"


# ----------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("dtype", [torch.float32, F64, torch.float16, torch.bfloat16])
def test_manual_seed_reproduces(backend, dtype):
    mu, logvar = inputs((5, 37), 8, dtype=dtype, device=backend.device)
    z1 = seeded(21, lambda: fv.reparameterize(mu, logvar), backend.device)
    z2 = seeded(21, lambda: fv.reparameterize(mu, logvar), backend.device)
    z3 = seeded(22, lambda: fv.reparameterize(mu, logvar), backend.device)
    assert z1.dtype == dtype and z1.shape == mu.shape
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, z3)
    assert torch.isfinite(z1).all()
    # the noise does not depend on the values of mu and logvar
    mu2, logvar2 = inputs((5, 37), 9, dtype=dtype, device=backend.device)
    z4 = seeded(21, lambda: fv.reparameterize(mu2, logvar2), backend.device)
    rtol = {torch.float32: 1e-5, F64: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(recovered(z4, mu2, logvar2), recovered(z1, mu, logvar), rtol=rtol, atol=rtol * 10)


def test_generator_reproduces_and_is_independent_of_global_seed(backend):
    mu, logvar = inputs((6, 29), 10, device=backend.device)
    gen = lambda s: torch.Generator(device=backend.device).manual_seed(s)  # noqa: E731
    torch.manual_seed(0)
    z1 = fv.reparameterize(mu, logvar, generator=gen(5))
    torch.manual_seed(1)  # a different global state must not matter
    z2 = fv.reparameterize(mu, logvar, generator=gen(5))
    z3 = fv.reparameterize(mu, logvar, generator=gen(6))
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, z3)
    # one generator advances: two successive draws differ, replaying the generator reproduces both
    g = gen(7)
    a, b = fv.reparameterize(mu, logvar, generator=g), fv.reparameterize(mu, logvar, generator=g)
    g = gen(7)
    a2, b2 = fv.reparameterize(mu, logvar, generator=g), fv.reparameterize(mu, logvar, generator=g)
    assert not torch.equal(a, b)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    # the same generator for reparameterize_kl gives the same z
    zk, _ = fv.reparameterize_kl(mu, logvar, generator=gen(5))
    assert torch.equal(zk, z1)


def test_global_rng_advances(backend):
    """Drawing noise consumes torch's generator: a later torch.randn differs from an unconsumed one."""
    mu, logvar = inputs((3, 4), 11, device=backend.device)
    torch.manual_seed(31)
    fresh = torch.randn(8, device=backend.device)
    torch.manual_seed(31)
    fv.reparameterize(mu, logvar)
    after = torch.randn(8, device=backend.device)
    assert not torch.equal(fresh, after)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (2, 3, 7), (7, 130)])
@pytest.mark.parametrize("tiles", ["default", "small"])
def test_triton_noise_is_the_philox_reference(shape, tiles):
    """The Triton kernels (interpreter) draw the Philox4x32-10 normals of the twin in
    fastvae/ops/_philox.py, element (r, c) from counter (c // 4, r): the reference of the GPU noise,
    whatever the tiling (tiny tiles: column splits, column loops, Philox counters from an offset)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter")
    import contextlib

    from fastvae.ops import _backend, draw_seed
    from fastvae.ops._philox import philox_normal

    mu, logvar = inputs(shape, 12, dtype=torch.float32)
    small = _backend.small_tiles() if tiles == "small" else contextlib.nullcontext()
    with fv.set_backend("triton"), small:
        z = fv.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(42))
        zk, _ = fv.reparameterize_kl(mu, logvar, generator=torch.Generator().manual_seed(42), row_offset=5)
    rows = shape[0]
    cols = math.prod(shape[1:])
    seed = draw_seed(torch.device("cpu"), torch.Generator().manual_seed(42))
    for out, offset in ((z, 0), (zk, 5)):
        eps = philox_normal(seed, rows, cols, offset).reshape(shape).double()
        expected = mu.double() + torch.exp(0.5 * logvar.double()) * eps
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(z, zk)


def test_cpu_noise_is_the_generator_stream(torch_backend):
    """The PyTorch path on CPU tensors: element (r, c) of a (B, D) draw is normal number
    (row_offset + r) * D + c of a CPU generator seeded with the call's seed."""
    from fastvae.ops import draw_seed

    mu, logvar = inputs((9, 7), 13)
    z = fv.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(8), row_offset=3)
    seed = int(draw_seed(torch.device("cpu"), torch.Generator().manual_seed(8)))
    stream = torch.randn(16 * 10, generator=torch.Generator().manual_seed(seed))
    eps = stream[3 * 7: 12 * 7].reshape(9, 7).double()
    torch.testing.assert_close(recovered(z, mu, logvar), eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rows,cols,offset", [(1, 1, 0), (3, 5, 1), (5, 3, 2), (2, 9, 7), (17, 1, 15), (4, 33, 0),
                                              (16, 1, 0), (8, 2, 16), (3, 16, 5), (13, 16, 3)])
def test_cpu_noise_prefix_consistency(rows, cols, offset):
    """The property the CPU noise rests on: torch fills normal tensors whose size is a multiple of 16
    prefix-consistently, so a shard reads the same numbers as the whole batch (odd sizes too)."""
    from fastvae.ops import latent

    seed = torch.tensor([123456789], dtype=torch.int64)
    total = offset + rows + 3
    whole = latent._cpu_normal(seed, (total, cols), total, cols, 0)
    shard = latent._cpu_normal(seed, (rows, cols), rows, cols, offset)
    assert torch.equal(shard, whole[offset: offset + rows])


# ----------------------------------------------------------------------------- backward


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("op", ["reparameterize", "reparameterize_kl"])
def test_backward_uses_the_forward_noise(backend, dtype, op):
    shape = (9, 13) if backend.slow else (33, 70)
    mu0, lv0 = inputs(shape, 13, dtype=dtype, device=backend.device)
    mu, logvar = mu0.clone().requires_grad_(), lv0.clone().requires_grad_()
    torch.manual_seed(51)
    if op == "reparameterize":
        z = fv.reparameterize(mu, logvar)
        outs = [z]
    else:
        z, kl = fv.reparameterize_kl(mu, logvar, reduction="none")
        outs = [z, kl]
    # draw more noise between forward and backward: backward must not redraw from the generator
    torch.randn(100, device=backend.device)
    g = torch.Generator().manual_seed(52)
    grad_z = ((torch.rand(shape, generator=g, dtype=F64) + 0.5) * torch.where(
        torch.rand(shape, generator=g) < 0.5, -1.0, 1.0).double()).to(dtype).to(backend.device)
    grads = [grad_z]
    if op == "reparameterize_kl":
        grad_kl = (torch.rand(shape[0], generator=g, dtype=F64) + 0.5).to(dtype).to(backend.device)
        grads.append(grad_kl)
    torch.autograd.backward(outs, grads)
    zd, mud, lvd, gz = (t.detach().double().cpu() for t in (z, mu0, lv0, grad_z))
    # d z / d logvar = exp(logvar / 2) * eps / 2 = (z - mu) / 2 with the noise of forward
    expected_lv = gz * (zd - mud) / 2
    expected_mu = gz.clone()
    # tolerance: (z - mu) carries the rounding of z
    mag_lv = gz.abs() * (zd.abs() + mud.abs()) / 2
    if op == "reparameterize_kl":
        gk = grad_kl.double().cpu()[:, None]
        expected_lv = expected_lv + gk * 0.5 * (torch.exp(lvd) - 1)
        expected_mu = expected_mu + gk * mud
        mag_lv = mag_lv + gk * 0.5 * (torch.exp(lvd) + 1)
    rtol = 2e-5 if dtype == torch.float32 else 1e-10
    err = (logvar.grad.double().cpu() - expected_lv).abs()
    worst = int((err / mag_lv).argmax())
    assert (err <= rtol * mag_lv).all(), (
        f"logvar.grad differs from grad_z * (z - mu) / 2: worst element {worst}: "
        f"{logvar.grad.reshape(-1)[worst].item()} vs {expected_lv.reshape(-1)[worst].item()}")
    torch.testing.assert_close(mu.grad.double().cpu(), expected_mu, rtol=rtol, atol=rtol * 1e-3)
    # a second backward through a fresh graph with the same seed gives the same gradient
    mu2, lv2 = mu0.clone().requires_grad_(), lv0.clone().requires_grad_()
    torch.manual_seed(51)
    outs2 = [fv.reparameterize(mu2, lv2)] if op == "reparameterize" else list(
        fv.reparameterize_kl(mu2, lv2, reduction="none"))
    torch.autograd.backward(outs2, grads)
    assert torch.equal(lv2.grad, logvar.grad)


def test_reparameterize_kl_z_equals_reparameterize_z(backend):
    mu, logvar = inputs((4, 3, 10), 14, dtype=torch.float32, device=backend.device)
    for red in ("mean", "sum", "none"):
        z1 = seeded(61, lambda: fv.reparameterize(mu, logvar), backend.device)
        z2, kl = seeded(61, lambda red=red: fv.reparameterize_kl(mu, logvar, reduction=red), backend.device)
        assert torch.equal(z1, z2), red
        torch.testing.assert_close(kl, fv.gaussian_kl(mu, logvar, reduction=red), rtol=1e-6, atol=1e-6)


def test_noncontiguous_inputs_get_the_same_noise(backend):
    """The noise is a function of the element's (row, position): layout must not change it."""
    h = torch.randn(6, 2 * 15, dtype=F64).to(backend.device)
    mu_v, lv_v = h.chunk(2, dim=1)
    assert not mu_v.is_contiguous()
    z_view = seeded(71, lambda: fv.reparameterize(mu_v, lv_v), backend.device)
    z_copy = seeded(71, lambda: fv.reparameterize(mu_v.contiguous(), lv_v.contiguous()), backend.device)
    torch.testing.assert_close(z_view, z_copy, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("op", ["reparameterize", "reparameterize_kl"])
def test_row_offset_shards_draw_the_rows_of_the_whole_batch(backend, op):
    """Two shards with row_offset 0 and B draw exactly the noise of one call on the 2B batch."""
    dev = backend.device
    mu = torch.randn(10, 7, device=dev)
    logvar = torch.randn(10, 7, device=dev) * 0.3
    fn = getattr(fv, op)

    def z_of(m, lv, row_offset):
        g = torch.Generator(device=dev).manual_seed(2024)
        out = fn(m, lv, generator=g, row_offset=row_offset)
        return out[0] if isinstance(out, tuple) else out

    whole = z_of(mu, logvar, 0)
    first = z_of(mu[:4], logvar[:4], 0)
    second = z_of(mu[4:], logvar[4:], 4)
    assert torch.equal(torch.cat([first, second]), whole)
    # and an offset changes the noise: the shard is not simply the head of the batch
    assert not torch.equal(z_of(mu[4:], logvar[4:], 0), second)


def test_row_offset_is_checked():
    mu = torch.randn(3, 2)
    with pytest.raises(ValueError, match="row_offset"):
        fv.reparameterize(mu, mu, row_offset=-1)
    with pytest.raises(TypeError, match="row_offset"):
        fv.reparameterize_kl(mu, mu, row_offset=1.5)
