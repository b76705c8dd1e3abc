"""Cross-check the float64 reference (tests/reference.py) against torch.distributions and
torch.nn.functional, so that the reference every other test trusts is itself right."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, ContinuousBernoulli, Laplace, Normal, kl_divergence

import reference as R

F64 = torch.float64
SHAPES = [(1, 1), (3, 7), (5, 2, 3), (2, 3, 4, 5)]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=gen(seed), dtype=F64) * scale


def rand(shape, seed, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(shape, generator=gen(seed), dtype=F64)


def per_sample(x):
    return x.flatten(1).sum(1) if x.dim() > 1 else x


def close(a, b, rtol=1e-12, atol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", R.REDUCTIONS)
def test_gaussian_kl_matches_distributions(shape, reduction):
    mu, logvar = randn(shape, 1, 2.0), randn(shape, 2, 1.5)
    std = torch.exp(0.5 * logvar)
    expected = per_sample(kl_divergence(Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(mu))))
    close(R.gaussian_kl(mu, logvar, reduction="none"), expected)
    close(R.gaussian_kl(mu, logvar, reduction=reduction), R.reduce(expected, reduction))


def test_gaussian_kl_extreme_logvar_is_finite_and_right():
    mu = torch.tensor([[0.5, -3.0, 1e3]], dtype=F64)
    logvar = torch.tensor([[-80.0, 80.0, 0.0]], dtype=F64)
    kl = R.gaussian_kl(mu, logvar, reduction="none")
    expected = 0.5 * (0.25 + math.exp(-80) + 80 - 1) + 0.5 * (9 + math.exp(80) - 80 - 1) + 0.5 * 1e6
    assert torch.isfinite(kl).all()
    close(kl, torch.tensor([expected], dtype=F64))


def test_gaussian_kl_gradient_closed_form():
    mu, logvar = randn((4, 6), 3).requires_grad_(), randn((4, 6), 4, 3.0).requires_grad_()
    g = rand((4,), 5, 0.5, 2.0)
    R.gaussian_kl(mu, logvar, reduction="none").backward(g)
    close(mu.grad, mu.detach() * g[:, None])
    close(logvar.grad, 0.5 * (torch.exp(logvar.detach()) - 1) * g[:, None])


@pytest.mark.parametrize("shape", SHAPES)
def test_reparameterize_density(shape):
    """z = mu + sigma * eps is the affine push-forward: log N(z; mu, sigma) = log N(eps; 0, 1) - log sigma."""
    mu, logvar, eps = randn(shape, 6, 3.0), randn(shape, 7), randn(shape, 8)
    z = R.reparameterize(mu, logvar, eps)
    std = torch.exp(0.5 * logvar)
    close(Normal(mu, std).log_prob(z), Normal(0.0, 1.0).log_prob(eps) - torch.log(std), rtol=1e-10, atol=1e-10)
    close((z - mu) / std, eps, rtol=1e-10, atol=1e-10)
    z2, kl = R.reparameterize_kl(mu, logvar, eps, reduction="sum")
    close(z2, z)
    close(kl, R.gaussian_kl(mu, logvar, reduction="sum"))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", R.REDUCTIONS)
def test_bernoulli_binary_targets_match_distributions(shape, reduction):
    logits = randn(shape, 9, 4.0)
    target = (rand(shape, 10) < 0.5).to(F64)
    expected = per_sample(-Bernoulli(logits=logits).log_prob(target))
    close(R.bernoulli_nll(logits, target, reduction="none"), expected)
    close(R.bernoulli_nll(logits, target, reduction=reduction), R.reduce(expected, reduction))


@pytest.mark.parametrize("shape", SHAPES)
def test_bernoulli_soft_targets_match_bce_with_logits(shape):
    logits = randn(shape, 11, 5.0)
    target = rand(shape, 12)
    expected = per_sample(F.binary_cross_entropy_with_logits(logits, target, reduction="none"))
    close(R.bernoulli_nll(logits, target, reduction="none"), expected)


def test_bernoulli_extreme_logits_stable():
    logits = torch.tensor([[1e4, -1e4, 1e4, -1e4, 30.0, -30.0, 0.0]], dtype=F64)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.25, 0.75, 0.3]], dtype=F64)
    elems = R.bernoulli_nll_elements(logits, target)
    expected = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert torch.isfinite(elems).all()
    close(elems, expected)
    # exact values where they are known in closed form
    assert elems[0, 0] == 0.0 and elems[0, 1] == 0.0
    assert elems[0, 2] == 1e4 and elems[0, 3] == 1e4


def test_bernoulli_gradient_is_sigmoid_minus_target_including_zero_logit():
    logits = torch.tensor([[0.0, 2.0, -3.0, 1e4, -1e4]], dtype=F64, requires_grad=True)
    target = torch.tensor([[0.3, 1.0, 0.0, 0.2, 0.9]], dtype=F64, requires_grad=True)
    R.bernoulli_nll(logits, target, reduction="sum").backward()
    close(logits.grad, torch.sigmoid(logits.detach()) - target.detach())
    close(target.grad, -logits.detach())


def test_bernoulli_gradient_tiny_values_are_relatively_exact():
    """For x << 0 and t = 0 the gradient sigmoid(x) is tiny: no O(1) cancellation may swamp it."""
    logits = torch.tensor([[-50.0, -30.0, -700.0, -5.0]], dtype=F64, requires_grad=True)
    target = torch.zeros(1, 4, dtype=F64)
    R.bernoulli_nll(logits, target, reduction="sum").backward(torch.tensor(-1.46, dtype=F64))
    close(logits.grad, -1.46 * torch.sigmoid(logits.detach()), rtol=1e-14, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("log_scale_kind", ["float", "scalar", "full"])
@pytest.mark.parametrize("reduction", R.REDUCTIONS)
def test_gaussian_nll_matches_normal_log_prob(shape, log_scale_kind, reduction):
    mean, target = randn(shape, 13, 2.0), randn(shape, 14, 2.0)
    log_scale = {"float": -0.7, "scalar": torch.tensor(0.4, dtype=F64), "full": randn(shape, 15, 0.5)}[log_scale_kind]
    scale = torch.exp(R.f64(log_scale)).expand(shape)
    expected = per_sample(-Normal(mean, scale).log_prob(target))
    close(R.gaussian_nll(mean, target, log_scale=log_scale, reduction="none"), expected)
    close(R.gaussian_nll(mean, target, log_scale=log_scale, reduction=reduction), R.reduce(expected, reduction))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("log_scale_kind", ["float", "scalar", "full"])
def test_laplace_nll_matches_laplace_log_prob(shape, log_scale_kind):
    loc, target = randn(shape, 16, 2.0), randn(shape, 17, 2.0)
    log_scale = {"float": 0.3, "scalar": torch.tensor(-1.1, dtype=F64), "full": randn(shape, 18, 0.5)}[log_scale_kind]
    scale = torch.exp(R.f64(log_scale)).expand(shape)
    expected = per_sample(-Laplace(loc, scale).log_prob(target))
    close(R.laplace_nll(loc, target, log_scale=log_scale, reduction="none"), expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_mse_matches_functional(shape):
    recon, target = randn(shape, 19, 2.0), randn(shape, 20, 2.0)
    expected = per_sample(F.mse_loss(recon, target, reduction="none"))
    close(R.mse(recon, target, reduction="none"), expected)
    close(R.mse(recon, target, reduction="mean"), expected.mean())


def test_log_scale_gradients_closed_form():
    shape = (3, 5)
    mean, target = randn(shape, 21), randn(shape, 22)
    ls = randn(shape, 23, 0.5).requires_grad_()
    R.gaussian_nll(mean, target, log_scale=ls, reduction="sum").backward()
    q2 = ((target - mean) * torch.exp(-ls.detach())) ** 2
    close(ls.grad, 1 - q2)
    ls0 = torch.tensor(0.2, dtype=F64, requires_grad=True)
    R.laplace_nll(mean, target, log_scale=ls0, reduction="sum").backward()
    close(ls0.grad, (1 - (target - mean).abs() * math.exp(-0.2)).sum())


def test_reduce_helper():
    v = torch.tensor([1.0, 2.0, 6.0], dtype=F64)
    assert R.reduce(v, "none") is v
    assert R.reduce(v, "sum").item() == 9.0
    assert R.reduce(v, "mean").item() == 3.0
    assert R.reduce(v[:0], "sum").item() == 0.0 and R.reduce(v[:0], "none").shape == (0,)
    with pytest.raises(ValueError):
        R.reduce(v, "avg")


@pytest.mark.parametrize("likelihood", R.LIKELIHOODS)
@pytest.mark.parametrize("reduction", R.REDUCTIONS)
def test_beta_vae_loss_composition(likelihood, reduction):
    shape, latent = (4, 3, 5), (4, 6)
    recon, mu, logvar = randn(shape, 24), randn(latent, 25), randn(latent, 26)
    target = rand(shape, 27) if "bernoulli" in likelihood else randn(shape, 27)
    ls = 0.3
    d_rows = {
        "bernoulli": lambda: per_sample(F.binary_cross_entropy_with_logits(recon, target, reduction="none")),
        "gaussian": lambda: per_sample(-Normal(recon, math.exp(ls)).log_prob(target)),
        "mse": lambda: per_sample(F.mse_loss(recon, target, reduction="none")),
        "laplace": lambda: per_sample(-Laplace(recon, math.exp(ls)).log_prob(target)),
        "continuous_bernoulli": lambda: per_sample(-ContinuousBernoulli(logits=recon).log_prob(target)),
    }[likelihood]()
    r_rows = per_sample(kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)))
    beta = 3.5
    out = R.beta_vae_loss(recon, target, mu, logvar, beta=beta, likelihood=likelihood, log_scale=ls,
                          reduction=reduction)
    close(out.distortion, R.reduce(d_rows, reduction))
    close(out.rate, R.reduce(r_rows, reduction))
    close(out.loss, R.reduce(d_rows + beta * r_rows, reduction))


def test_beta_vae_loss_capacity_semantics_by_hand():
    """Per-sample rates 1 and 3 (batch mean 2), capacity 5, beta 2, distortions 10 and 20."""
    # KL of a single latent with logvar 0 is mu^2 / 2: rates 1 and 3 need mu^2 = 2 and 6.
    mu = torch.tensor([[math.sqrt(2.0)], [math.sqrt(6.0)]], dtype=F64)
    logvar = torch.zeros(2, 1, dtype=F64)
    # mse distortion: (recon - target)^2 summed: 10 and 20
    recon = torch.tensor([[1.0, 3.0], [2.0, 4.0]], dtype=F64)
    target = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=F64)
    kw = dict(beta=2.0, likelihood="mse", capacity=5.0)
    none = R.beta_vae_loss(recon, target, mu, logvar, reduction="none", **kw)
    close(none.loss, torch.tensor([10 + 2 * 4, 20 + 2 * 2], dtype=F64))
    mean = R.beta_vae_loss(recon, target, mu, logvar, reduction="mean", **kw)
    close(mean.loss, torch.tensor(15 + 2 * 3, dtype=F64))
    close(mean.rate, torch.tensor(2.0, dtype=F64))
    total = R.beta_vae_loss(recon, target, mu, logvar, reduction="sum", **kw)
    close(total.loss, torch.tensor(30 + 2 * 2 * 3, dtype=F64))
    close(total.distortion, torch.tensor(30.0, dtype=F64))
    # capacity between the per-sample rates: |mean - C| differs from the mean of |r_i - C|
    kw["capacity"] = 2.5
    close(R.beta_vae_loss(recon, target, mu, logvar, reduction="mean", **kw).loss,
          torch.tensor(15 + 2 * 0.5, dtype=F64))
    close(R.beta_vae_loss(recon, target, mu, logvar, reduction="none", **kw).loss,
          torch.tensor([10 + 2 * 1.5, 20 + 2 * 0.5], dtype=F64))
    # tensor beta and capacity behave like floats, and beta gets |rate - C| as its gradient
    beta = torch.tensor(2.0, dtype=F64, requires_grad=True)
    out = R.beta_vae_loss(recon, target, mu, logvar, beta=beta, likelihood="mse",
                          capacity=torch.tensor(2.5, dtype=F64), reduction="sum")
    out.loss.backward()
    close(out.loss.detach(), torch.tensor(30 + 2 * 2 * 0.5, dtype=F64))
    close(beta.grad, torch.tensor(2 * 0.5, dtype=F64))


def test_beta_vae_loss_empty_batch_sum_is_zero():
    empty = torch.zeros(0, 3, dtype=F64)
    out = R.beta_vae_loss(empty, empty, empty, empty, capacity=4.0, reduction="sum")
    assert out.loss.item() == 0.0 and out.rate.item() == 0.0
    assert R.beta_vae_loss(empty, empty, empty, empty, reduction="none").loss.shape == (0,)


def test_reference_upcasts_and_keeps_graph():
    x = torch.randn(3, 4, generator=gen(30)).requires_grad_()
    t = torch.rand(3, 4, generator=gen(31))
    out = R.bernoulli_nll(x, t, reduction="sum")
    assert out.dtype == F64
    out.backward()
    assert x.grad.dtype == torch.float32
    close(x.grad.double(), torch.sigmoid(x.detach().double()) - t.double(), rtol=1e-6, atol=1e-7)


def test_the_reference_covers_the_librarys_likelihoods():
    """reference.py names its likelihoods itself (it does not import fastvae); they are the library's."""
    import fastvae.functional

    assert R.LIKELIHOODS == fastvae.functional.LIKELIHOODS


def test_continuous_bernoulli_against_torch_distributions():
    """Outside torch's Taylor band (|lambda - 1/2| > 1e-3 there) the two agree in float64, values and gradients."""
    g = torch.Generator().manual_seed(40)
    x = (torch.randn(2000, generator=g, dtype=F64) * 6)
    x = x[x.abs() > 0.02].clone().requires_grad_()
    t = torch.rand(x.shape, generator=g, dtype=F64)
    ours = R.continuous_bernoulli_nll_elements(x, t)
    theirs = -ContinuousBernoulli(logits=x).log_prob(t)
    # torch goes through probabilities clamped to [eps, 1 - eps] and atanh of them: good to ~1e-9 here
    close(ours, theirs, rtol=1e-8, atol=1e-9)
    ga, = torch.autograd.grad(ours.sum(), x)
    gb, = torch.autograd.grad(theirs.sum(), x)
    close(ga, gb, rtol=1e-7, atol=1e-8)


def test_continuous_bernoulli_log_norm_by_hand():
    """C(0) = 2; C is even; C(x) ~ |x| for large |x|; log C(x) = log(x / tanh(x / 2)) at a few points."""
    x = torch.tensor([0.0, 1e-6, -1e-6, 0.3, -0.3, 2.0, 40.0, -1e4], dtype=F64)
    logc = R.continuous_bernoulli_log_norm(x)
    assert logc[0].item() == pytest.approx(math.log(2.0), abs=1e-15)
    assert logc[1].item() == pytest.approx(math.log(2.0) + 1e-12 / 12, abs=1e-15)
    assert logc[1].item() == logc[2].item() and logc[3].item() == logc[4].item()
    for v, got in zip((0.3, 2.0, 40.0), (logc[3], logc[5], logc[6])):
        assert got.item() == pytest.approx(math.log(v / math.tanh(v / 2)), rel=1e-14)
    assert logc[7].item() == pytest.approx(math.log(1e4), rel=1e-14)
