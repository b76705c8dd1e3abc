"""Free bits (Kingma et al. 2016 per dimension, per sample as in Li et al. 2019) against the float64
reference, on every backend: values, gradients, the per-sample values for reduction='none', the loss keeping
the true rate, and the errors."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastvae as fv

import reference as R

F64 = torch.float64


def _latents(batch, shape, seed, device, dtype=F64, scale=0.4):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, *shape, generator=g, dtype=F64) * scale
    lv = torch.randn(batch, *shape, generator=g, dtype=F64) * scale
    return [t.to(dtype).to(device).requires_grad_() for t in (mu, lv)]


@pytest.mark.parametrize("mode", ["dim", "sample"])
def test_free_bits_values_and_gradients(backend, mode):
    @backend.settings(0.3)
    @given(batch=st.integers(1, 9), dims=st.lists(st.integers(1, 5), min_size=1, max_size=2),
           seed=st.integers(0, 10**6), floor=st.sampled_from([0.0, 0.02, 0.05, 0.1, 0.5, 3.0]),
           reduction=st.sampled_from(["mean", "sum", "none"]), op=st.sampled_from(["gaussian_kl", "reparameterize_kl"]),
           dtype=st.sampled_from([F64, torch.float32]))
    def check(batch, dims, seed, floor, reduction, op, dtype):
        mu, lv = _latents(batch, dims, seed, backend.device, dtype)
        if op == "gaussian_kl":
            out = fv.gaussian_kl(mu, lv, reduction=reduction, free_bits=floor, free_bits_mode=mode)
        else:
            eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)
            z, out = fv.reparameterize_kl(mu, lv, eps.to(backend.device), reduction=reduction, free_bits=floor,
                                          free_bits_mode=mode)
            torch.testing.assert_close(z.detach().cpu().double(), R.reparameterize(mu.detach().cpu(), lv.detach().cpu(),
                                       eps), rtol=1e-5, atol=1e-5)
        mu64, lv64 = (t.detach().cpu().double().requires_grad_() for t in (mu, lv))
        ref = R.free_bits_kl(mu64, lv64, floor, mode, reduction=reduction)
        rtol = 1e-10 if dtype == F64 else 2e-5
        torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), rtol=rtol, atol=rtol * 10)
        g = (torch.rand(ref.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64) + 0.5)
        grads = torch.autograd.grad(out, (mu, lv), g.to(out.dtype).to(backend.device))
        ref_grads = torch.autograd.grad(ref, (mu64, lv64), g)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a.cpu().double(), b, rtol=rtol, atol=rtol * 10)

    check()


def test_dimensions_under_the_floor_get_no_gradient(backend):
    dev = backend.device
    mu = torch.tensor([[0.0, 2.0], [0.1, -2.0], [0.0, 1.5]], dtype=F64, device=dev, requires_grad=True)
    lv = torch.zeros(3, 2, dtype=F64, device=dev, requires_grad=True)
    # m_0 = (0 + 0.005 + 0) / 3 is under 0.5 nats, m_1 = (2 + 2 + 1.125) / 3 is over
    out = fv.gaussian_kl(mu, lv, free_bits=0.5)
    torch.testing.assert_close(out.detach().cpu(), torch.tensor(0.5 + 5.125 / 3, dtype=F64))
    out.backward()
    assert torch.equal(mu.grad[:, 0].cpu(), torch.zeros(3, dtype=F64))
    torch.testing.assert_close(mu.grad[:, 1].cpu(), mu.detach()[:, 1].cpu() / 3)
    # the per-sample values average to the objective
    rows = fv.gaussian_kl(mu, lv, free_bits=0.5, reduction="none")
    torch.testing.assert_close(rows.mean(), out.detach())
    torch.testing.assert_close(rows.detach().cpu(), torch.tensor([2.5, 2.5, 1.625], dtype=F64))


@pytest.mark.parametrize("mode", ["dim", "sample"])
def test_the_loss_uses_free_bits_the_rate_stays_true(backend, mode):
    dev = backend.device
    mu, lv = _latents(6, (4,), 3, dev, scale=0.3)
    g = torch.Generator().manual_seed(4)
    recon = torch.randn(6, 10, generator=g, dtype=F64).to(dev).requires_grad_()
    x = torch.rand(6, 10, generator=g, dtype=F64).to(dev)
    out = fv.beta_vae_loss(recon, x, mu, lv, beta=3.0, free_bits=0.2, free_bits_mode=mode)
    d = R.bernoulli_nll(recon.detach().cpu(), x.cpu())
    fb = R.free_bits_kl(mu.detach().cpu(), lv.detach().cpu(), 0.2, mode)
    torch.testing.assert_close(out.loss.detach().cpu(), d + 3.0 * fb)
    torch.testing.assert_close(out.rate.detach().cpu(), R.gaussian_kl(mu.detach().cpu(), lv.detach().cpu()))
    if mode == "sample":  # the rate form gives the same
        z, rate = fv.reparameterize_kl(mu, lv, torch.zeros_like(mu), reduction="none")
        again = fv.beta_vae_loss(recon, x, rate=rate, beta=3.0, free_bits=0.2, free_bits_mode="sample")
        for a, b in zip(again, out):
            torch.testing.assert_close(a, b)


def test_free_bits_errors():
    mu = torch.randn(3, 4)
    with pytest.raises(ValueError, match="free_bits must be >= 0 nats, got -1"):
        fv.gaussian_kl(mu, mu, free_bits=-1.0)
    with pytest.raises(ValueError, match="free_bits_mode must be one of 'dim', 'sample', got 'row'"):
        fv.gaussian_kl(mu, mu, free_bits=0.1, free_bits_mode="row")
    with pytest.raises(TypeError, match="free_bits must be a float"):
        fv.reparameterize_kl(mu, mu, free_bits="0.1")
    x = torch.rand(3, 5)
    with pytest.raises(ValueError, match="free_bits or capacity, not both"):
        fv.beta_vae_loss(x, x, mu, mu, free_bits=0.1, capacity=2.0)
    _, rate = fv.reparameterize_kl(mu, mu, reduction="none")
    with pytest.raises(ValueError, match="free_bits_mode='dim' needs the per-dimension KL"):
        fv.beta_vae_loss(x, x, rate=rate, free_bits=0.1)
