"""fastvae.nn modules and fastvae.models: agreement with the functional API and the float64 reference,
train/eval behaviour of the latent layer, shapes, gradients, and a short training run. CPU, seconds."""

import pytest
import torch
from torch import nn

import fastvae
from fastvae.models import MLPVAE, VAE, ConvVAE, GlimpseVAE, VAEOutput
from fastvae.nn import BetaVAELoss, GaussianLatent, LatentOutput

import reference as R


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: intra-op threads only add contention on a shared CI box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _loss_inputs(likelihood, batch=4, features=12, latent=3, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    recon = torch.randn(batch, features, generator=gen, dtype=dtype)
    if likelihood == "bernoulli":
        target = torch.rand(batch, features, generator=gen, dtype=dtype).round()
    else:
        target = torch.randn(batch, features, generator=gen, dtype=dtype)
    mu = torch.randn(batch, latent, generator=gen, dtype=dtype)
    logvar = 0.5 * torch.randn(batch, latent, generator=gen, dtype=dtype)
    return recon, target, mu, logvar


# -- BetaVAELoss ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", R.LIKELIHOODS)
@pytest.mark.parametrize("reduction", R.REDUCTIONS)
@pytest.mark.parametrize("capacity", [None, 2.5])
def test_beta_vae_loss_module_matches_functional_and_reference(likelihood, reduction, capacity):
    recon, target, mu, logvar = _loss_inputs(likelihood)
    log_scale = 0.3 if likelihood in ("gaussian", "laplace") else 0.0
    loss_fn = BetaVAELoss(beta=4.0, likelihood=likelihood, capacity=capacity, reduction=reduction)
    out = loss_fn(recon, target, mu, logvar, log_scale)
    assert isinstance(out, fastvae.VAELoss)
    expected = fastvae.beta_vae_loss(
        recon, target, mu, logvar, beta=4.0, likelihood=likelihood, log_scale=log_scale,
        capacity=capacity, reduction=reduction,
    )
    reference = R.beta_vae_loss(
        recon, target, mu, logvar, beta=4.0, likelihood=likelihood, log_scale=log_scale,
        capacity=capacity, reduction=reduction,
    )
    for got, want, ref in zip(out, expected, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert got.shape == ((4,) if reduction == "none" else ())
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_beta_vae_loss_module_float64():
    recon, target, mu, logvar = _loss_inputs("bernoulli", dtype=torch.float64)
    out = BetaVAELoss(beta=2.0)(recon, target, mu, logvar)
    reference = R.beta_vae_loss(recon, target, mu, logvar, beta=2.0)
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss, reference[0], rtol=1e-12, atol=1e-12)


def test_beta_vae_loss_module_schedule_attributes():
    recon, target, mu, logvar = _loss_inputs("bernoulli")
    loss_fn = BetaVAELoss()
    for beta, capacity in [(0.5, None), (torch.tensor(2.0), None), (torch.tensor(3.0), torch.tensor(1.5))]:
        loss_fn.beta, loss_fn.capacity = beta, capacity
        expected = fastvae.beta_vae_loss(recon, target, mu, logvar, beta=float(beta),
                                         capacity=None if capacity is None else float(capacity))
        torch.testing.assert_close(loss_fn(recon, target, mu, logvar).loss, expected.loss)


def test_beta_vae_loss_module_gradients_and_log_scale_tensor():
    recon, target, mu, logvar = _loss_inputs("gaussian")
    recon, mu, logvar = (t.requires_grad_() for t in (recon, mu, logvar))
    log_scale = torch.tensor(0.2, requires_grad=True)
    BetaVAELoss(likelihood="gaussian")(recon, target, mu, logvar, log_scale).loss.backward()
    for t in (recon, mu, logvar, log_scale):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("kwargs, name", [({"likelihood": "poisson"}, "likelihood"),
                                          ({"reduction": "batchmean"}, "reduction")])
def test_beta_vae_loss_module_rejects_bad_options(kwargs, name):
    with pytest.raises(ValueError, match=name):
        BetaVAELoss(**kwargs)


def test_beta_vae_loss_module_repr():
    loss_fn = BetaVAELoss(beta=4.0, likelihood="gaussian", capacity=25.0)
    assert repr(loss_fn) == "BetaVAELoss(beta=4, likelihood='gaussian', capacity=25, reduction='mean')"
    loss_fn.beta = torch.tensor(0.5)
    loss_fn.capacity = None
    assert "beta=0.5" in repr(loss_fn) and "capacity=None" in repr(loss_fn)


# -- GaussianLatent ------------------------------------------------------------------------------------------


def _latent(in_features=16, latent_dim=4, seed=0):
    torch.manual_seed(seed)
    return GaussianLatent(in_features, latent_dim)


def test_gaussian_latent_train_samples_and_rate_is_per_sample_kl():
    latent = _latent().train()
    h = torch.randn(4096, 16)
    out = latent(h)
    assert isinstance(out, LatentOutput)
    assert out.z.shape == out.mu.shape == out.logvar.shape == (4096, 4)
    assert out.rate.shape == (4096,)
    torch.testing.assert_close(out.rate, fastvae.gaussian_kl(out.mu, out.logvar, reduction="none"))
    # z = mu + sigma * eps with eps ~ N(0, I)
    eps = ((out.z - out.mu) / torch.exp(0.5 * out.logvar)).detach()
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1) < 0.05


def test_gaussian_latent_eval_returns_mean_unless_asked_to_sample():
    latent = _latent().eval()
    h = torch.randn(8, 16)
    out = latent(h)
    assert torch.equal(out.z, out.mu)
    torch.testing.assert_close(out.rate, fastvae.gaussian_kl(out.mu, out.logvar, reduction="none"))
    sampled = latent(h, sample=True)
    assert not torch.equal(sampled.z, sampled.mu)
    torch.testing.assert_close(sampled.rate, out.rate)
    assert torch.equal(latent.train()(h, sample=False).z, out.mu)


def test_gaussian_latent_is_deterministic_under_seed():
    latent = _latent()
    h = torch.randn(8, 16)
    torch.manual_seed(123)
    z1 = latent(h).z
    torch.manual_seed(123)
    z2 = latent(h).z
    assert torch.equal(z1, z2)
    assert not torch.equal(z1, latent(h).z)
    z3 = latent(h, generator=torch.Generator().manual_seed(7)).z
    z4 = latent(h, generator=torch.Generator().manual_seed(7)).z
    assert torch.equal(z3, z4)


def test_gaussian_latent_gradients_reach_both_heads():
    latent = _latent()
    h = torch.randn(8, 16, requires_grad=True)
    out = latent(h)
    (out.z.square().sum() + out.rate.sum()).backward()
    grad_w, grad_b = latent.linear.weight.grad, latent.linear.bias.grad
    for rows in (slice(0, 4), slice(4, 8)):  # mu head, logvar head
        assert grad_w[rows].abs().sum() > 0 and grad_b[rows].abs().sum() > 0
    assert h.grad.abs().sum() > 0


def test_gaussian_latent_init_starts_near_unit_variance():
    latent = _latent(in_features=256, latent_dim=10)
    _, logvar = latent.linear(torch.rand(64, 256)).chunk(2, dim=1)
    assert logvar.abs().max() < 0.05
    assert latent.linear.weight[10:].abs().max() > 0  # small, not zero


def test_gaussian_latent_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        _latent()(torch.randn(8, 15))
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        _latent()(torch.randn(8, 2, 8))


# -- models --------------------------------------------------------------------------------------------------


def _generic_vae(likelihood="bernoulli", **kwargs):
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(2 * 6, 10), nn.ReLU())
    decoder = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 2 * 6), nn.Unflatten(1, (2, 6)))
    return VAE(encoder, decoder, 3, likelihood=likelihood, **kwargs)


MODELS = {
    "vae": (lambda **kw: _generic_vae(**kw), (2, 6), 3),
    "mlp": (lambda **kw: MLPVAE(12, [10, 8], 3, input_shape=(3, 4), **kw), (3, 4), 3),
    "mlp-flat": (lambda **kw: MLPVAE(12, 10, 3, **kw), (12,), 3),
    "conv64": (lambda **kw: ConvVAE(1, 64, 5, **kw), (1, 64, 64), 5),
    "conv32": (lambda **kw: ConvVAE(3, 32, 4, **kw), (3, 32, 32), 4),
    "glimpse64": (lambda **kw: GlimpseVAE(1, 64, 5, **kw), (1, 64, 64), 5),
    "glimpse32": (lambda **kw: GlimpseVAE(3, 32, 4, **kw), (3, 32, 32), 4),
}


def _batch(shape, likelihood, batch=3, seed=1):
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(seed))
    return x.round() if likelihood == "bernoulli" else x


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_shapes(name):
    make, shape, latent_dim = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x = _batch(shape, "bernoulli")
    out = model(x)
    assert isinstance(out, VAEOutput)
    assert out.recon.shape == x.shape
    assert out.mu.shape == out.logvar.shape == out.z.shape == (3, latent_dim)
    assert model.decode(out.z).shape == (3, *shape)
    assert model.reconstruct(x).shape == x.shape
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, *shape) and samples.min() >= 0 and samples.max() <= 1


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_model_loss_backward_reaches_all_parameters(name, likelihood):
    make, shape, _ = MODELS[name]
    torch.manual_seed(0)
    learn_scale = likelihood == "gaussian"
    model = make(likelihood=likelihood, learn_scale=learn_scale)
    assert (model.log_scale is not None) == learn_scale
    x = _batch(shape, likelihood)
    out = model.loss(x, beta=4.0)
    assert all(torch.isfinite(t) for t in out)
    out.loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", ["vae", "mlp", "conv32", "glimpse32"])
def test_model_loss_is_beta_vae_loss_of_forward(name):
    make, shape, _ = MODELS[name]
    torch.manual_seed(0)
    model = make(likelihood="gaussian", learn_scale=True)
    with torch.no_grad():
        model.log_scale.fill_(-0.5)
    x = _batch(shape, "gaussian")
    kwargs = dict(beta=torch.tensor(3.0), capacity=0.5, reduction="none")
    got = model.loss(x, generator=torch.Generator().manual_seed(4), **kwargs)
    out = model(x, generator=torch.Generator().manual_seed(4))
    want = fastvae.beta_vae_loss(out.recon, x, out.mu, out.logvar, likelihood="gaussian",
                                 log_scale=model.log_scale, **kwargs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    # explicit overrides win over the model's likelihood and learned scale
    got = model.loss(x, likelihood="laplace", log_scale=0.0, generator=torch.Generator().manual_seed(4))
    want = fastvae.beta_vae_loss(out.recon, x, out.mu, out.logvar, likelihood="laplace")
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)
    # a likelihood without a scale ignores the learned one
    got = model.loss(x, likelihood="mse", generator=torch.Generator().manual_seed(4))
    want = fastvae.beta_vae_loss(out.recon, x, out.mu, out.logvar, likelihood="mse")
    torch.testing.assert_close(got.loss, want.loss, rtol=0, atol=0)


def test_mlp_vae_takes_any_input_shape_with_in_features():
    model = MLPVAE(12, 8, 3)
    for shape in [(12,), (3, 4), (2, 3, 2)]:
        x = _batch(shape, "bernoulli")
        assert model(x).recon.shape == x.shape
        assert model.reconstruct(x).shape == x.shape
    assert model.sample(2).shape == (2, 12)  # no input_shape given: flat


def test_model_eval_is_deterministic_and_train_is_seeded():
    torch.manual_seed(0)
    model = MLPVAE(12, 8, 3)
    x = _batch((12,), "bernoulli")
    model.eval()
    out = model(x)
    assert torch.equal(out.z, out.mu)
    assert torch.equal(model(x).recon, out.recon)
    torch.testing.assert_close(model.reconstruct(x), torch.sigmoid(out.recon))
    model.train()
    torch.manual_seed(5)
    z1 = model(x).z
    torch.manual_seed(5)
    assert torch.equal(model(x).z, z1)
    assert not torch.equal(z1, out.mu)


def test_mlp_vae_training_reduces_loss():
    torch.manual_seed(0)
    model = MLPVAE(16, 32, 4)
    x = _batch((16,), "bernoulli", batch=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            loss = model.loss(x).loss.item()
        model.train()
        return loss

    before = eval_loss()
    for _ in range(40):
        optimizer.zero_grad()
        model.loss(x).loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.8 * before, (before, after)


def test_conv_vae_parameter_count_matches_architecture():
    def conv(c_in, c_out):  # 4x4 kernel + bias
        return c_in * c_out * 16 + c_out

    def linear(n_in, n_out):
        return n_in * n_out + n_out

    channels, latent_dim = 3, 10
    encoder = conv(channels, 32) + conv(32, 32) + conv(32, 64) + conv(64, 64) + linear(64 * 4 * 4, 256)
    heads = linear(256, 2 * latent_dim)
    decoder = linear(latent_dim, 256) + linear(256, 64 * 4 * 4)
    decoder += conv(64, 64) + conv(64, 32) + conv(32, 32) + conv(32, channels)
    model = ConvVAE(channels, 64, latent_dim)
    assert sum(p.numel() for p in model.parameters()) == encoder + heads + decoder
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in convs)
    assert ConvVAE(channels, 64, latent_dim, likelihood="gaussian", learn_scale=True).log_scale.shape == ()


@pytest.mark.parametrize("name", ["mlp", "conv32", "glimpse32"])
def test_model_state_dict_round_trip(name):
    make, shape, _ = MODELS[name]
    torch.manual_seed(0)
    model = make(likelihood="gaussian", learn_scale=True)
    with torch.no_grad():
        model.log_scale.fill_(0.7)
    torch.manual_seed(1)
    clone = make(likelihood="gaussian", learn_scale=True)
    clone.load_state_dict(model.state_dict())
    assert "log_scale" in model.state_dict()
    x = _batch(shape, "gaussian")
    model.eval()
    clone.eval()
    assert torch.equal(model(x).recon, clone(x).recon)
    assert torch.equal(model.loss(x).loss, clone.loss(x).loss)


def test_model_float64():
    torch.manual_seed(0)
    model = MLPVAE(12, 8, 3).double()
    out = model.loss(_batch((12,), "bernoulli").double())
    assert out.loss.dtype == torch.float64
    assert model.sample(2).dtype == torch.float64


def test_models_reject_bad_shapes_and_options():
    with pytest.raises(ValueError, match=r"\(B, 1, 64, 64\)"):
        ConvVAE()(torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, 1, 64, 64\)"):
        ConvVAE()(torch.rand(1, 64, 64))
    with pytest.raises(ValueError, match="image_size"):
        ConvVAE(image_size=28)
    with pytest.raises(ValueError, match=r"\(B, 3, 4\).*12 elements"):
        MLPVAE(12, 8, 3, input_shape=(3, 4))(torch.rand(2, 13))
    with pytest.raises(ValueError, match="input_shape"):
        MLPVAE(12, 8, 3, input_shape=(3, 5))
    with pytest.raises(ValueError, match=r"z: expected shape \(B, 3\)"):
        MLPVAE(12, 8, 3).decode(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="learn_scale"):
        MLPVAE(12, 8, 3, learn_scale=True)
    with pytest.raises(ValueError, match="likelihood"):
        ConvVAE(likelihood="categorical")
    with pytest.raises(ValueError, match="encoder_features"):
        VAE(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten()), nn.Identity(), 3)
    bad_decoder = VAE(nn.Linear(12, 8), nn.Linear(3, 11), 3)
    with pytest.raises(ValueError, match=r"decoder output.*\(2, 12\)"):
        bad_decoder(torch.rand(2, 12))
    with pytest.raises(ValueError, match=r"encoder output.*\(B, 8\)"):
        VAE(nn.Linear(12, 8), nn.Linear(3, 12), 3)(torch.rand(2, 5, 12))
