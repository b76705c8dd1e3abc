"""torch.compile(fullgraph=True) of code calling the ops (torch path on CPU) matches eager, values
and gradients.  Compiling is slow on a small CPU: two compiled functions in all, each covering
several ops (forward and backward are both compiled)."""
from __future__ import annotations

import pytest
import torch

import fastvae as fv

torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 16)


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(s, generator=g)  # noqa: E731
    return {
        "h": r(6, 2 * 5),                          # encoder output: mu, logvar = h.chunk(2, dim=1)
        "eps": r(6, 5),
        "logits": r(6, 3, 4) * 2,
        "target": torch.rand(6, 3, 4, generator=g),
        "recon": r(6, 3, 4),
        "log_scale": r(6, 3, 4) * 0.3,
        "beta": torch.tensor(2.5),
    }


def _compare(fn, inputs, grad_names, seed):
    """Run fn eager and compiled on fresh leaves; compare outputs and gradients."""
    results = []
    for f in (fn, torch.compile(fn, fullgraph=True, dynamic=False)):
        leaves = {k: v.clone().requires_grad_(k in grad_names) for k, v in inputs.items()}
        outs = f(**leaves)
        g = torch.Generator().manual_seed(seed)
        gouts = [torch.rand(o.shape, generator=g) + 0.5 for o in outs]
        torch.autograd.backward(list(outs), gouts)
        results.append(([o.detach() for o in outs], {k: leaves[k].grad for k in grad_names}))
    (eager_outs, eager_grads), (comp_outs, comp_grads) = results
    for i, (a, b) in enumerate(zip(comp_outs, eager_outs)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, i=i: f"output {i}: {m}")
    for k in grad_names:
        assert comp_grads[k] is not None, f"compiled: no gradient for {k}"
        torch.testing.assert_close(comp_grads[k], eager_grads[k], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, k=k: f"grad {k}: {m}")


@pytest.fixture(autouse=True)
def _fresh_dynamo(torch_backend):
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_bernoulli_vae_step_matches_eager():
    """reparameterize_kl + beta_vae_loss (bernoulli, tensor beta) + gaussian_kl, mean reduction."""

    def step(h, eps, logits, target, recon, log_scale, beta):
        mu, logvar = h.chunk(2, dim=1)
        z, kl = fv.reparameterize_kl(mu, logvar, eps)
        out = fv.beta_vae_loss(logits, target, mu, logvar, beta=beta, likelihood="bernoulli")
        z2 = fv.reparameterize(mu, logvar, eps)
        return z, kl, out.loss, out.distortion, out.rate, fv.gaussian_kl(mu, logvar, reduction="sum"), z2 * z

    _compare(step, _inputs(1), ("h", "logits", "target", "beta"), seed=2)


def test_compiled_scaled_likelihoods_match_eager(monkeypatch):
    """gaussian/laplace NLL with a per-element log_scale, mse, capacity, reduction='none' and 'sum'.

    With FASTVAE_BACKEND unset (auto), as most users run it: CPU tensors take the torch path.
    """
    monkeypatch.delenv("FASTVAE_BACKEND", raising=False)

    def step(h, eps, logits, target, recon, log_scale, beta):
        mu, logvar = h.chunk(2, dim=1)
        g = fv.gaussian_nll(recon, target, log_scale=log_scale, reduction="none")
        lap = fv.laplace_nll(recon, target, log_scale=log_scale.mean(), reduction="sum")
        m = fv.mse(recon, target, reduction="mean")
        cap = fv.beta_vae_loss(recon, target, mu, logvar, beta=beta, likelihood="gaussian", log_scale=0.1,
                               capacity=0.5, reduction="none")
        return g, lap, m, cap.loss, fv.bernoulli_nll(logits, target, reduction="none")

    _compare(step, _inputs(3), ("h", "logits", "recon", "target", "log_scale", "beta"), seed=4)
