"""beta-TCVAE: the streamed decomposition against the dense (B, B, J) float64 reference, its identity, the
estimators' weights, memory, errors, and the loss."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastvae as fv

import reference as R

F64 = torch.float64


def _inputs(batch, dim, seed, dtype=F64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, dim, generator=g, dtype=F64) * 1.5
    logvar = torch.randn(batch, dim, generator=g, dtype=F64) * 0.7 - 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn(batch, dim, generator=g, dtype=F64)
    return [t.to(dtype).to(device).requires_grad_() for t in (z, mu, logvar)]


@pytest.mark.parametrize("estimator", ["mss", "mws"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_streamed_equals_dense_values_and_gradients(backend, estimator, reduction):
    @backend.settings(0.2)
    @given(batch=st.integers(2, 13), dim=st.integers(1, 6), seed=st.integers(0, 10**6),
           n_extra=st.integers(0, 1000), dtype=st.sampled_from([F64, torch.float32]))
    def check(batch, dim, seed, n_extra, dtype):
        z, mu, lv = _inputs(batch, dim, seed, dtype, backend.device)
        n = batch + n_extra
        out = fv.tc_decomposition(z, mu, lv, dataset_size=n, estimator=estimator, reduction=reduction)
        refs = [a.detach().cpu().double().requires_grad_() for a in (z, mu, lv)]
        ref = R.tc_terms(*refs, dataset_size=n, estimator=estimator, reduction=reduction)
        rtol = 1e-9 if dtype == F64 else 2e-4
        g = torch.Generator().manual_seed(seed + 1)
        gouts = [(torch.rand(o.shape, generator=g, dtype=F64) + 0.5) * (-1) ** k for k, o in enumerate(ref)]
        for name, a, b in zip(("mi", "tc", "dwkl"), out, ref):
            assert a.dtype == (F64 if dtype == F64 else torch.float32)
            torch.testing.assert_close(a.detach().cpu().double(), b.detach(), rtol=rtol, atol=rtol * 10,
                                       msg=lambda m, name=name: f"{name}: {m}")
        grads = torch.autograd.grad(out, (z, mu, lv), [go.to(o.dtype).to(o.device) for go, o in zip(gouts, out)])
        ref_grads = torch.autograd.grad(ref, refs, gouts)
        for name, a, b in zip(("z", "mu", "logvar"), grads, ref_grads):
            torch.testing.assert_close(a.cpu().double(), b, rtol=rtol, atol=rtol * 10 * (1 + b.abs().max().item()),
                                       msg=lambda m, name=name: f"grad of {name}: {m}")

    check()


def test_the_terms_add_up_to_the_sampled_kl(backend):
    """mi + tc + dwkl = log q(z_i | x_i) - log p(z_i), per sample, exactly (the estimators cancel)."""
    z, mu, lv = _inputs(11, 5, 3, device=backend.device)
    terms = fv.tc_decomposition(z, mu, lv, dataset_size=500, reduction="none")
    zd, md, vd = (t.detach().cpu() for t in (z, mu, lv))
    log_qzx = (-0.5 * ((zd - md) ** 2 * torch.exp(-vd) + vd + math.log(2 * math.pi))).sum(1)
    log_pz = (-0.5 * (zd ** 2 + math.log(2 * math.pi))).sum(1)
    torch.testing.assert_close((terms.mi + terms.tc + terms.dwkl).detach().cpu(), log_qzx - log_pz,
                               rtol=1e-12, atol=1e-12)


def test_mss_weights_put_1_over_n_on_the_diagonal():
    """The widely copied `W.view(-1)[::M+1] = 1/N` with M + 1 = B fills column 0, not the diagonal
    (rtqichen/beta-tcvae PR #1): here the diagonal holds 1/N, the next column (N - M)/(N M), rows sum to 1."""
    batch, n = 6, 40
    w = torch.exp(R.tc_log_weights(batch, n, "mss"))
    m = batch - 1
    assert torch.allclose(w.sum(1), torch.ones(batch, dtype=F64))
    assert torch.allclose(torch.diagonal(w), torch.full((batch,), 1 / n, dtype=F64))
    idx = torch.arange(batch)
    assert torch.allclose(w[idx, (idx + 1) % batch], torch.full((batch,), (n - m) / (n * m), dtype=F64))
    # and the op uses exactly these weights: a batch where only the diagonal pair is near makes log q(z_i)
    # sit at log q(z_i | x_i) + log(1/N)
    mu = torch.arange(batch, dtype=F64)[:, None] * 100.0
    lv = torch.zeros(batch, 1, dtype=F64)
    terms = fv.tc_decomposition(mu.clone(), mu, lv, dataset_size=n, reduction="none")
    torch.testing.assert_close(terms.mi, torch.full((batch,), math.log(n), dtype=F64), rtol=1e-12, atol=1e-9)


def test_memory_is_linear_in_the_batch():
    """B = 2048, J = 8 on the PyTorch path: the dense (B, B, J) tensor alone would be 128 MiB in float32;
    forward and backward together allocate at most 32 MiB beyond their inputs."""
    from torch.profiler import ProfilerActivity, profile

    with fv.set_backend("torch"):
        z, mu, lv = _inputs(2048, 8, 5, dtype=torch.float32)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            t = fv.tc_decomposition(z, mu, lv, dataset_size=100_000)
            (t.mi + t.tc + t.dwkl).backward()
    events = []

    def walk(node):
        from torch._C._profiler import _EventType

        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    current = peak = 0
    for _, size in sorted(events):
        current += size
        peak = max(peak, current)
    assert events, "the profiler recorded no allocation"
    assert peak <= 32 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert all(g is not None and torch.isfinite(g).all() for g in (z.grad, mu.grad, lv.grad))


def test_bad_arguments_name_themselves():
    z, mu, lv = _inputs(4, 3, 1)
    with pytest.raises(ValueError, match="dataset_size must be at least the .* batch size 4, got 3"):
        fv.tc_decomposition(z, mu, lv, dataset_size=3)
    with pytest.raises(TypeError, match="dataset_size must be an int"):
        fv.tc_decomposition(z, mu, lv, dataset_size=10.0)
    with pytest.raises(ValueError, match="estimator must be one of 'mss', 'mws', got 'is'"):
        fv.tc_decomposition(z, mu, lv, dataset_size=10, estimator="is")
    with pytest.raises(ValueError, match=r"z must be \(B, J\)"):
        fv.tc_decomposition(z[:, :, None], mu, lv, dataset_size=10)
    with pytest.raises(ValueError, match="mu must have the same shape as z"):
        fv.tc_decomposition(z, mu[:, :2], lv, dataset_size=10)
    with pytest.raises(ValueError, match="'mss' needs a batch of at least 2"):
        fv.tc_decomposition(z[:1], mu[:1], lv[:1], dataset_size=10)


def test_beta_tcvae_loss_combines_the_terms(backend):
    dev = backend.device
    z, mu, lv = _inputs(7, 4, 9, device=dev)
    g = torch.Generator().manual_seed(2)
    recon = torch.randn(7, 12, generator=g, dtype=F64).to(dev).requires_grad_()
    target = torch.rand(7, 12, generator=g, dtype=F64).to(dev)
    out = fv.beta_tcvae_loss(recon, target, z, mu, lv, dataset_size=1000, alpha=1.5, beta=6.0, gamma=0.5)
    t = R.tc_terms(z.detach().cpu(), mu.detach().cpu(), lv.detach().cpu(), dataset_size=1000)
    d = R.bernoulli_nll(recon.detach().cpu(), target.cpu())
    torch.testing.assert_close(out.distortion.detach().cpu(), d)
    torch.testing.assert_close(out.loss.detach().cpu(), d + 1.5 * t[0] + 6.0 * t[1] + 0.5 * t[2])
    torch.testing.assert_close(out.rate.detach().cpu(), R.gaussian_kl(mu.detach().cpu(), lv.detach().cpu()))
    out.loss.backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in (recon, z, mu, lv))


def test_the_module_is_the_function():
    from fastvae.nn import BetaTCVAELoss

    z, mu, lv = _inputs(5, 3, 21)
    g = torch.Generator().manual_seed(3)
    recon, target = torch.randn(5, 7, generator=g, dtype=F64), torch.rand(5, 7, generator=g, dtype=F64)
    module = BetaTCVAELoss(dataset_size=50, alpha=0.5, beta=4.0, gamma=2.0, estimator="mws")
    a = module(recon, target, z, mu, lv)
    b = fv.beta_tcvae_loss(recon, target, z, mu, lv, dataset_size=50, alpha=0.5, beta=4.0, gamma=2.0,
                           estimator="mws")
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    assert "estimator='mws'" in repr(module)
    with pytest.raises(ValueError, match="estimator must be one of"):
        BetaTCVAELoss(dataset_size=50, estimator="dense")
