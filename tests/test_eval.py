"""fastvae.eval.log_likelihood where the answer is known: a linear-Gaussian VAE, whose log p(x) is a
Gaussian's in closed form and whose exact posterior is a Gaussian the encoder can represent."""
from __future__ import annotations

import math

import pytest
import torch

import fastvae as fv
from fastvae import eval as E
from fastvae.models import VAE

import reference as R

F64 = torch.float64
D, J, SIGMA = 6, 3, 0.5


class _Problem:
    """x | z ~ N(W z + b, sigma^2 I), z ~ N(0, I), with W's columns orthogonal so that the exact posterior
    N(M (x - b), A^-1), A = I + W^T W / sigma^2, M = A^-1 W^T / sigma^2, has a diagonal covariance."""

    def __init__(self, n=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, J, generator=g, dtype=F64))
        self.W = q * torch.tensor([1.6, 1.0, 0.6], dtype=F64)
        self.b = torch.randn(D, generator=g, dtype=F64) * 0.3
        cov = self.W @ self.W.T + SIGMA**2 * torch.eye(D, dtype=F64)
        # drawn from the seeded generator (not torch's global one), so the problem does not depend on what ran before
        self.x = self.b + torch.randn(n, D, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
        self.log_px = R.linear_gaussian_log_px(self.x, self.W, self.b, SIGMA)
        torch.testing.assert_close(self.log_px, torch.distributions.MultivariateNormal(self.b, cov).log_prob(self.x))
        a_inv = torch.linalg.inv(torch.eye(J, dtype=F64) + self.W.T @ self.W / SIGMA**2)
        self.post_var = torch.diagonal(a_inv)
        torch.testing.assert_close(a_inv, torch.diag(self.post_var))  # diagonal indeed
        self.M = a_inv @ self.W.T / SIGMA**2

    def model(self, mean_scale=1.0, logvar_shift=0.0):
        decoder = torch.nn.Linear(J, D).double()
        vae = VAE(torch.nn.Identity(), decoder, J, encoder_features=D, likelihood="gaussian",
                  learn_scale=True).double()
        with torch.no_grad():
            decoder.weight.copy_(self.W)
            decoder.bias.copy_(self.b)
            vae.log_scale.fill_(math.log(SIGMA))
            lin = vae.latent.linear
            lin.weight.zero_()
            lin.bias.zero_()
            lin.weight[:J] = self.M * mean_scale
            lin.bias[:J] = -(self.M * mean_scale) @ self.b
            lin.bias[J:] = torch.log(self.post_var) + logvar_shift
        return vae


@pytest.fixture(scope="module")
def problem():
    return _Problem()


def test_the_exact_posterior_gives_the_exact_log_likelihood_for_every_k(problem):
    model = problem.model()
    for k, chunk in ((1, None), (7, 3), (64, None)):
        est = E.log_likelihood(model, problem.x, k=k, chunk=chunk, batch_size=20, progress=False,
                               generator=torch.Generator().manual_seed(k))
        assert est.shape == problem.log_px.shape and est.dtype == F64
        torch.testing.assert_close(est, problem.log_px, rtol=1e-10, atol=1e-10)


def test_a_perturbed_encoder_rises_toward_the_exact_value(problem):
    model = problem.model(mean_scale=0.7, logvar_shift=0.6)
    gaps = {}
    for k in (1, 10, 5000):
        est = E.log_likelihood(model, problem.x, k=k, chunk=1000, progress=False,
                               generator=torch.Generator().manual_seed(1))
        gaps[k] = (problem.log_px - est).mean().item()
    # a lower bound that tightens with k: far below at k = 1, within 0.05 nats per sample at k = 5000
    assert gaps[1] > 0.3, gaps
    assert gaps[1] > gaps[10] > gaps[5000] - 0.02, gaps
    assert abs(gaps[5000]) < 0.05, gaps


def test_the_bound_is_monotone_in_k_in_expectation(problem):
    # E[L_1] <= E[L_4] <= E[L_32], each expectation over many draws of the samples
    model = problem.model(mean_scale=0.6, logvar_shift=0.8)
    x = problem.x[:4].repeat(400, 1)
    means = [E.log_likelihood(model, x, k=k, progress=False, batch_size=4096,
                              generator=torch.Generator().manual_seed(k)).mean().item() for k in (1, 4, 32)]
    assert means[0] < means[1] < means[2], means


def test_chunks_and_batches_change_nothing_but_the_noise(problem):
    # one chunk of k samples draws the noise of one seed; the estimate does not depend on the batching
    model = problem.model(mean_scale=0.8)
    a = E.log_likelihood(model, problem.x, k=16, chunk=16, batch_size=48, progress=False,
                         generator=torch.Generator().manual_seed(3))
    lw = E.log_weights(model, problem.x, 16, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, fv.iwae_bound(lw, reduction="none"))
    # chunked: an online log-sum-exp of the chunks' weights
    gen = torch.Generator().manual_seed(5)
    b = E.log_likelihood(model, problem.x, k=16, chunk=5, progress=False, generator=gen)
    gen = torch.Generator().manual_seed(5)
    parts = [E.log_weights(model, problem.x, n, generator=gen) for n in (5, 5, 5, 1)]
    torch.testing.assert_close(b, fv.iwae_bound(torch.cat(parts), reduction="none"))


def test_data_loaders_and_the_model_mode(problem):
    model = problem.model(mean_scale=0.9).train()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(problem.x), batch_size=10)
    est = E.log_likelihood(model, loader, k=4, progress=False)
    assert est.shape == (48,) and torch.isfinite(est).all()
    assert model.training  # restored
    assert all(p.grad is None for p in model.parameters())


def test_a_bernoulli_model_and_a_large_k_stay_in_memory():
    torch.manual_seed(0)
    model = fv.models.MLPVAE(64, 32, 4, input_shape=(1, 8, 8))
    x = (torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    est = E.log_likelihood(model, x, k=2000, chunk=100, progress=False)
    elbo = -model.eval().loss(x, reduction="none").loss.detach()
    assert est.shape == (16,) and torch.isfinite(est).all()
    # the IS estimate is above the ELBO (at z = mu here, so only on average)
    assert est.mean() > elbo.mean() - 1.0


def test_errors(problem):
    model = problem.model()
    with pytest.raises(ValueError, match="k must be >= 1"):
        E.log_likelihood(model, problem.x, k=0)
    with pytest.raises(TypeError, match="model must be a fastvae VAE"):
        E.log_likelihood(torch.nn.Linear(2, 2), problem.x)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        E.log_likelihood(model, problem.x, batch_size=0)
    with pytest.raises(ValueError, match="data must be a \\(N, ...\\) tensor"):
        E.log_likelihood(model, problem.x[0])


def test_the_model_iwae_loss_is_the_negative_bound(problem):
    model = problem.model(mean_scale=0.8)
    out = model.iwae_loss(problem.x, k=8, generator=torch.Generator().manual_seed(2))
    lw = E.log_weights(model, problem.x, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.loss, -fv.iwae_bound(lw))
    out.loss.backward()
    assert model.latent.linear.weight.grad.abs().sum() > 0 and model.log_scale.grad is not None
