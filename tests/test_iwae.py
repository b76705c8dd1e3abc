"""Importance sampling: reparameterize_log_weights against the float64 reference and torch.distributions, its
noise and gradients; the likelihoods with a target broadcast over sample dims against a copied target;
iwae_bound and iwae_loss; on every backend."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastvae as fv

import reference as R

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _latents(batch, dims, seed, device, dtype=F64):
    g = _gen(seed)
    mu = torch.randn(batch, *dims, generator=g, dtype=F64) * 0.7
    lv = torch.randn(batch, *dims, generator=g, dtype=F64) * 0.5
    return [t.to(dtype).to(device).requires_grad_() for t in (mu, lv)]


def _seeded(backend, seed):
    return torch.Generator(device=backend.device).manual_seed(seed)


# ----------------------------------------------------------------------------- reparameterize_log_weights


def test_log_ratio_is_the_reference_of_the_same_z(backend):
    @backend.settings(0.3)
    @given(batch=st.integers(1, 6), dims=st.lists(st.integers(1, 6), min_size=1, max_size=2),
           k=st.integers(1, 5), seed=st.integers(0, 10**6), dtype=st.sampled_from([F64, torch.float32]))
    def check(batch, dims, k, seed, dtype):
        mu, lv = _latents(batch, dims, seed, backend.device, dtype)
        z, log_ratio = fv.reparameterize_log_weights(mu, lv, k, generator=_seeded(backend, seed))
        assert z.shape == (k, batch, *dims) and z.dtype == dtype
        assert log_ratio.shape == (k, batch) and log_ratio.dtype == (F64 if dtype == F64 else torch.float32)
        ref = R.log_ratio(z.detach().cpu(), mu.detach().cpu(), lv.detach().cpu())
        tol = 1e-10 if dtype == F64 else 3e-4
        torch.testing.assert_close(log_ratio.detach().cpu().double(), ref, rtol=tol, atol=tol)

    check()


def test_log_ratio_matches_torch_distributions():
    mu, lv = _latents(4, (3,), 0, "cpu")
    z, log_ratio = fv.reparameterize_log_weights(mu, lv, 6, generator=_gen(1))
    zd = z.detach()
    prior = torch.distributions.Normal(torch.zeros_like(zd), torch.ones_like(zd))
    post = torch.distributions.Normal(mu.detach(), torch.exp(0.5 * lv.detach()))
    expected = (prior.log_prob(zd) - post.log_prob(zd)).sum(-1)
    torch.testing.assert_close(log_ratio.detach(), expected, rtol=1e-12, atol=1e-12)


def test_the_noise_is_reparameterize_on_k_copies_of_the_batch(backend):
    # sample s, row b draws reparameterize's noise of row s * B + b of a (k B, J) input for the same seed
    mu, lv = _latents(5, (7,), 3, backend.device)
    z, _ = fv.reparameterize_log_weights(mu, lv, 3, generator=_seeded(backend, 11))
    z_rows = fv.reparameterize(mu.detach().repeat(3, 1), lv.detach().repeat(3, 1), generator=_seeded(backend, 11))
    torch.testing.assert_close(z.detach().reshape(15, 7), z_rows, rtol=0, atol=0)
    # torch.manual_seed reproduces it; another seed does not
    again, _ = fv.reparameterize_log_weights(mu, lv, 3, generator=_seeded(backend, 11))
    other, _ = fv.reparameterize_log_weights(mu, lv, 3, generator=_seeded(backend, 12))
    assert torch.equal(z, again) and not torch.equal(z, other)


def test_noise_statistics(backend):
    B, J, k = (64, 64, 16) if not backend.slow else (8, 16, 8)
    mu = torch.zeros(B, J, device=backend.device)
    z, log_ratio = fv.reparameterize_log_weights(mu, torch.zeros_like(mu), k, generator=_seeded(backend, 5))
    eps = z.double().flatten()
    n = eps.numel()
    assert abs(eps.mean().item()) < 5 / math.sqrt(n)
    assert abs(eps.var().item() - 1) < 6 * math.sqrt(2 / n)
    # mu = 0, logvar = 0: the posterior is the prior, every weight is exactly 1
    torch.testing.assert_close(log_ratio, torch.zeros_like(log_ratio), rtol=0, atol=1e-6)
    # the samples differ from each other
    assert not torch.equal(z[0], z[1])


def test_gradients_against_autograd_of_the_reference(backend):
    @backend.settings(0.3)
    @given(batch=st.integers(1, 5), J=st.integers(1, 9), k=st.integers(1, 4), seed=st.integers(0, 10**6),
           outputs=st.sampled_from(["z", "log_ratio", "both"]), dtype=st.sampled_from([F64, torch.float32]))
    def check(batch, J, k, seed, outputs, dtype):
        mu, lv = _latents(batch, (J,), seed, backend.device, dtype)
        z, log_ratio = fv.reparameterize_log_weights(mu, lv, k, generator=_seeded(backend, seed))
        m64, l64 = (t.detach().cpu().double().requires_grad_() for t in (mu, lv))
        eps = (z.detach().cpu().double() - m64.detach()) * torch.exp(-0.5 * l64.detach())
        z_ref = m64 + torch.exp(0.5 * l64) * eps
        lr_ref = R.log_ratio(z_ref, m64, l64)
        g = _gen(seed + 1)
        gz = torch.randn(z.shape, generator=g, dtype=F64)
        gr = torch.rand(log_ratio.shape, generator=g, dtype=F64) + 0.5
        outs, refs, gouts = [], [], []
        if outputs in ("z", "both"):
            outs.append(z), refs.append(z_ref), gouts.append(gz)
        if outputs in ("log_ratio", "both"):
            outs.append(log_ratio), refs.append(lr_ref), gouts.append(gr)
        grads = torch.autograd.grad(outs, (mu, lv), [g_.to(o.dtype).to(backend.device) for g_, o in zip(gouts, outs)])
        ref_grads = torch.autograd.grad(refs, (m64, l64), gouts)
        tol = 1e-9 if dtype == F64 else 3e-4
        for a, b in zip(grads, ref_grads):
            assert a.dtype == dtype
            torch.testing.assert_close(a.cpu().double(), b, rtol=tol, atol=tol)

    check()


def test_second_order_gradients():
    mu, lv = _latents(3, (4,), 7, "cpu")
    _, log_ratio = fv.reparameterize_log_weights(mu, lv, 2, generator=_gen(2))
    (g_mu,) = torch.autograd.grad(log_ratio.sum(), mu, create_graph=True)
    # d lr / d mu = -sum_s z_s, and d/dmu of that is -k (the noise fixed)
    (h,) = torch.autograd.grad(g_mu.sum(), mu)
    torch.testing.assert_close(h, torch.full_like(h, -2.0))


def test_log_weights_errors():
    mu = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        fv.reparameterize_log_weights(mu, mu, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        fv.reparameterize_log_weights(mu, mu, 2.0)
    with pytest.raises(ValueError, match="logvar must have the same shape as mu"):
        fv.reparameterize_log_weights(mu, torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="log_weights must be \\(k, B\\)"):
        fv.iwae_bound(torch.zeros(3))
    with pytest.raises(ValueError, match="log_ratio must be \\(k, B\\)"):
        fv.iwae_loss(torch.zeros(2, 3, 4), torch.zeros(3, 4), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="target must be \\(B, \\*\\)"):
        fv.iwae_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3))


# ----------------------------------------------------------------------------- broadcast target

_NLL = {"bernoulli": fv.bernoulli_nll, "gaussian": fv.gaussian_nll, "mse": fv.mse, "laplace": fv.laplace_nll,
        "continuous_bernoulli": fv.continuous_bernoulli_nll}


def _target(likelihood, shape, g, dtype):
    if likelihood in ("bernoulli", "continuous_bernoulli"):
        return torch.rand(shape, generator=g, dtype=F64).to(dtype)
    return torch.randn(shape, generator=g, dtype=F64).to(dtype)


def test_broadcast_target_equals_the_copied_target(backend):
    @backend.settings(0.5)
    @given(likelihood=st.sampled_from(sorted(_NLL)), lead=st.lists(st.integers(1, 3), min_size=1, max_size=2),
           batch=st.integers(1, 4), dims=st.lists(st.integers(1, 6), min_size=1, max_size=2),
           reduction=st.sampled_from(["none", "mean", "sum"]), ls=st.sampled_from(["float", "scalar", "element"]),
           seed=st.integers(0, 10**6), dtype=st.sampled_from([F64, torch.float32]))
    def check(likelihood, lead, batch, dims, reduction, ls, seed, dtype):
        g = _gen(seed)
        dev = backend.device
        shape = (*lead, batch, *dims)
        x = (torch.randn(shape, generator=g, dtype=F64) * 2).to(dtype).to(dev).requires_grad_()
        t = _target(likelihood, (batch, *dims), g, dtype).to(dev).requires_grad_()
        kw = {}
        if likelihood in ("gaussian", "laplace"):
            if ls == "float":
                kw["log_scale"] = 0.3
            elif ls == "scalar":
                kw["log_scale"] = (torch.randn((), generator=g, dtype=F64) * 0.3).to(dtype).to(dev).requires_grad_()
            else:
                kw["log_scale"] = (torch.randn(shape, generator=g, dtype=F64) * 0.3).to(dtype).to(dev) \
                    .requires_grad_()
        fn = _NLL[likelihood]
        out = fn(x, t, reduction=reduction, **kw)
        # the same rows with the target copied k times (k = prod(lead))
        copies = math.prod(lead)
        t_copy = t.detach().clone().requires_grad_()
        x_rows = x.reshape(copies * batch, *dims)
        kw_rows = {n: (v.reshape(x_rows.shape) if isinstance(v, torch.Tensor) and v.dim() else v)
                   for n, v in kw.items()}
        ref = fn(x_rows, t_copy.repeat(copies, *[1] * len(dims)), reduction=reduction, **kw_rows)
        if reduction == "none":
            assert out.shape == (*lead, batch)
            ref = ref.reshape(*lead, batch)
        tol = 1e-10 if dtype == F64 else 2e-5
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
        # and the float64 reference with the target broadcast by torch itself
        x64, t64 = x.detach().cpu().double(), t.detach().cpu().double()
        ls64 = kw.get("log_scale", 0.0)
        ls64 = ls64.detach().cpu().double() if isinstance(ls64, torch.Tensor) else ls64
        t_full = t64.expand(shape)
        ref64 = R.nll_rows(likelihood, x64.reshape(copies * batch, *dims), t_full.reshape(copies * batch, *dims),
                           ls64.reshape(copies * batch, *dims) if isinstance(ls64, torch.Tensor) and ls64.dim()
                           else ls64)
        ref64 = R.reduce(ref64, reduction)
        torch.testing.assert_close(out.detach().cpu().double(), ref64.reshape(out.shape), rtol=tol * 10, atol=tol * 10)
        grad_out = (torch.rand(out.shape, generator=g, dtype=F64) + 0.5).to(out.dtype).to(dev)
        params = [v for v in kw.values() if isinstance(v, torch.Tensor)]
        grads = torch.autograd.grad(out, [x, t, *params], grad_out)
        ref_grads = torch.autograd.grad(ref, [x, t_copy, *params], grad_out)
        for a, b in zip(grads, ref_grads):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * 10)

    check()


def test_broadcast_target_is_not_copied():
    # the op reads the (B, D) target in place: peak memory of a (k, B, D) call stays near the logits' own
    x = torch.randn(64, 32, 256)
    t = torch.rand(32, 256)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fv.bernoulli_nll(x, t, reduction="none")
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    # one buffer the size of x (the loss terms) and the row sums; a copied target would be a second one
    assert x.numel() * 4 <= allocated <= x.numel() * 4 * 1.2


def test_broadcast_target_half_precision_gradient():
    g = _gen(4)
    x = torch.randn(3, 5, 40, generator=g).to(torch.bfloat16).requires_grad_()
    t = torch.rand(5, 40, generator=g).to(torch.bfloat16)
    grad_out = torch.rand(3, 5, generator=g) + 0.5
    fv.bernoulli_nll(x, t, reduction="none").backward(grad_out)
    x_rows = x.detach().reshape(15, 40).requires_grad_()
    fv.bernoulli_nll(x_rows, t.repeat(3, 1), reduction="none").backward(grad_out.reshape(15))
    torch.testing.assert_close(x.grad.reshape(15, 40), x_rows.grad, rtol=0, atol=0)


def test_broadcast_shape_errors():
    with pytest.raises(ValueError, match="trailing dims"):
        fv.mse(torch.zeros(3, 5, 7), torch.zeros(4, 7))
    with pytest.raises(ValueError, match="trailing dims"):
        fv.bernoulli_nll(torch.zeros(5, 7), torch.zeros(3, 5, 7))
    with pytest.raises(ValueError, match="log_scale must be .* of mean's shape"):
        fv.gaussian_nll(torch.zeros(3, 5, 7), torch.zeros(5, 7), log_scale=torch.zeros(5, 7))
    with pytest.raises(ValueError, match="target must have the same shape as recon"):
        fv.beta_vae_loss(torch.zeros(3, 5, 7), torch.zeros(5, 7), rate=torch.zeros(3))


# ----------------------------------------------------------------------------- iwae_bound, iwae_loss


def test_iwae_bound_against_the_reference(backend):
    g = _gen(0)
    for k, B in ((1, 3), (4, 5), (50, 2)):
        lw = (torch.randn(k, B, generator=g, dtype=F64) * 30).to(backend.device).requires_grad_()
        for reduction in ("none", "mean", "sum"):
            out = fv.iwae_bound(lw, reduction=reduction)
            ref = R.iwae_bound(lw.cpu(), reduction=reduction)
            torch.testing.assert_close(out.cpu(), ref)
    # stable at any scale: log weights of -1e4 and 1e4
    big = torch.tensor([[1e4, -1e4], [1e4 - 1.0, -1e4 + 2.0]], dtype=torch.float32)
    out = fv.iwae_bound(big, reduction="none")
    torch.testing.assert_close(out.double(), R.iwae_bound(big, reduction="none"), rtol=1e-6, atol=1e-3)
    assert torch.isfinite(out).all()


def test_iwae_bound_gradient_is_the_normalized_weights():
    lw = torch.randn(6, 4, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(fv.iwae_bound(lw, reduction="sum"), lw)
    torch.testing.assert_close(g, torch.softmax(lw.detach(), 0))


def test_k1_iwae_loss_is_the_sampled_elbo(backend):
    g = _gen(3)
    dev = backend.device
    mu, lv = _latents(4, (3,), 5, dev)
    z, log_ratio = fv.reparameterize_log_weights(mu, lv, 1, generator=_seeded(backend, 9))
    logits = torch.randn(1, 4, 10, generator=g, dtype=F64).to(dev)
    x = torch.rand(4, 10, generator=g, dtype=F64).to(dev)
    out = fv.iwae_loss(logits, x, log_ratio)
    nll = R.bernoulli_nll(logits[0].cpu(), x.cpu(), reduction="none")
    sampled_kl = -log_ratio[0].detach().cpu()          # log q(z|x) - log p(z) at the sample
    torch.testing.assert_close(out.loss.detach().cpu(), (nll + sampled_kl).mean())
    torch.testing.assert_close((out.distortion + out.rate).detach(), out.loss.detach())
    # the sampled KL averages to the analytic one (fewer samples in the interpreter: the bound scales)
    n = 400 if backend.slow else 2000
    mu0 = torch.zeros(1, 3, dtype=F64, device=dev) + 0.4
    lv0 = torch.zeros(1, 3, dtype=F64, device=dev) - 0.3
    _, lr_many = fv.reparameterize_log_weights(mu0.expand(n, 3).contiguous(), lv0.expand(n, 3).contiguous(), 1,
                                               generator=_seeded(backend, 1))
    analytic = R.gaussian_kl(mu0.cpu(), lv0.cpu(), reduction="sum")
    assert abs(-lr_many.mean().item() - analytic.item()) < 4 * (-lr_many).std().item() / math.sqrt(n)


def test_iwae_loss_equals_its_two_lines_and_trains():
    g = _gen(8)
    mu, lv = _latents(6, (2,), 1, "cpu")
    decoder = torch.nn.Linear(2, 12).double()
    x = (torch.rand(6, 12, generator=g, dtype=F64) > 0.5).double()
    z, log_ratio = fv.reparameterize_log_weights(mu, lv, 5, generator=_gen(4))
    logits = decoder(z)
    out = fv.iwae_loss(logits, x, log_ratio)
    two_lines = -fv.iwae_bound(log_ratio - fv.bernoulli_nll(logits, x, reduction="none"))
    torch.testing.assert_close(out.loss, two_lines)
    grads = torch.autograd.grad(out.loss, [mu, lv, decoder.weight])
    assert all(torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)
