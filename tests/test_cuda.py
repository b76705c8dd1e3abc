"""Checks that only mean something on a GPU: no host syncs on the hot path, CUDA graph capture,
large and bfloat16 shapes on the compiled kernels, and the kernels against the PyTorch path.

Skipped without CUDA (CI has none); a GPU session runs them with the rest of the suite.
"""
import pytest
import torch

import fastvae as fv

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

LIKELIHOODS = fv.functional.LIKELIHOODS


def _batch(B=64, D=4096, L=32, dtype=torch.float32, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(B, D, device="cuda", generator=g).to(dtype).requires_grad_()
    t = torch.rand(B, D, device="cuda", generator=g).to(dtype)
    mu = torch.randn(B, L, device="cuda", generator=g).to(dtype).requires_grad_()
    logvar = (0.5 * torch.randn(B, L, device="cuda", generator=g)).to(dtype).requires_grad_()
    return x, t, mu, logvar


@pytest.fixture(autouse=True)
def _auto_backend():
    with fv.set_backend("auto"):
        yield


def _step(x, t, mu, logvar, likelihood, beta=4.0, capacity=None, reduction="mean"):
    """The training pattern: z and the rate in one pass, the rate into the loss."""
    z, rate = fv.reparameterize_kl(mu, logvar, reduction="none")
    recon = x + 0.01 * z.float().sum(1, keepdim=True).to(x.dtype)  # a decoder stand-in: z's gradient flows
    return fv.beta_vae_loss(recon, t, rate=rate, beta=beta, likelihood=likelihood, capacity=capacity,
                            reduction=reduction)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_training_step_makes_no_host_sync(likelihood):
    x, t, mu, logvar = _batch()
    _step(x, t, mu, logvar, likelihood).loss.backward()  # compile + warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for reduction in ("mean", "none"):
            out = _step(x, t, mu, logvar, likelihood, beta=torch.tensor(4.0, device="cuda"),
                        capacity=torch.tensor(2.0, device="cuda"), reduction=reduction)
            out.loss.sum().backward()
            out = fv.beta_vae_loss(x, t, mu, logvar, beta=4.0, likelihood=likelihood)
            out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_training_pattern_launches_few_kernels():
    """On the GPU as in the interpreter test (tests/test_launches.py): at most 3 kernels forward besides the
    seed draw, counted by the profiler; backward at most 3 besides the decoder stand-in's."""
    x, t, mu, logvar = _batch(B=256)
    leaf = x.detach().requires_grad_()
    for _ in range(2):  # compile
        z, rate = fv.reparameterize_kl(mu, logvar, reduction="none")
        fv.beta_vae_loss(leaf, t, rate=rate, beta=4.0).loss.backward()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        z, rate = fv.reparameterize_kl(mu, logvar, reduction="none")
        out = fv.beta_vae_loss(leaf, t, rate=rate, beta=4.0)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    fused = [k for k in kernels if "random" not in k.lower() and "randint" not in k.lower()]
    assert len(fused) <= 3, kernels
    grad = torch.ones((), device="cuda")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.autograd.backward([out.loss, z], [grad, torch.zeros_like(z)])
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) <= 3, kernels


def test_reparameterize_kl_captures_in_a_cuda_graph():
    _, _, mu, logvar = _batch()
    mu, logvar = mu.detach(), logvar.detach()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fv.reparameterize_kl(mu, logvar)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z, kl = fv.reparameterize_kl(mu, logvar)
    graph.replay()
    first = z.clone()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.isfinite(first).all() and torch.isfinite(kl)
    assert not torch.equal(first, z), "each replay must draw fresh noise"
    expected = fv.gaussian_kl(mu, logvar)
    torch.testing.assert_close(kl, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_kernels_match_the_pytorch_path_at_training_sizes(likelihood, dtype):
    x, t, mu, logvar = _batch(B=257, D=12288, L=10, dtype=dtype, seed=3)
    grad_out = torch.tensor(0.37, device="cuda")
    results = {}
    for backend in ("triton", "torch"):
        with fv.set_backend(backend):
            for p in (x, mu, logvar):
                p.grad = None
            g = torch.Generator(device="cuda").manual_seed(11)
            z, rate = fv.reparameterize_kl(mu, logvar, generator=g, reduction="none")
            out = fv.beta_vae_loss(x, t, rate=rate, beta=3.0, likelihood=likelihood)
            (out.loss * grad_out + (z.float() * 0.1).sum()).backward()
            results[backend] = [out.loss.detach(), z.detach(), x.grad, mu.grad, logvar.grad]
    # tolerances relative to each tensor's size (the gradients are ~1/B: an absolute tolerance would
    # pass an all-zero gradient)
    rtol = 2e-5 if dtype == torch.float32 else 2e-2
    names = ("loss", "z", "x.grad", "mu.grad", "logvar.grad")
    for name, a, b in zip(names, results["triton"], results["torch"]):
        scale = b.float().abs().max()
        assert scale > 0, f"{name}: the reference is all zero"
        err = (a.float() - b.float()).abs().max()
        assert err <= rtol * scale, f"{name}: max error {err.item():.3g} > {rtol} * {scale.item():.3g}"


def test_row_offsets_and_large_rows():
    """A row of 2^22 elements (many column splits) and a shard offset on the compiled kernels."""
    mu = torch.randn(2, 1 << 22, device="cuda")
    logvar = 0.1 * torch.randn(2, 1 << 22, device="cuda")
    g = lambda: torch.Generator(device="cuda").manual_seed(5)  # noqa: E731
    whole, kl = fv.reparameterize_kl(mu, logvar, generator=g(), reduction="none")
    shard, _ = fv.reparameterize_kl(mu[1:], logvar[1:], generator=g(), row_offset=1)
    assert torch.equal(whole[1:], shard)
    expected = 0.5 * (mu.double() ** 2 + logvar.double().exp() - logvar.double() - 1).sum(1)
    torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-3)
    eps = ((whole - mu) / torch.exp(0.5 * logvar)).double()
    assert abs(eps.mean().item()) < 5e-3 and abs(eps.var().item() - 1) < 5e-3


def test_train_on_cuda_restores_the_current_device_and_its_generator(tmp_path):
    """fastvae.train.train() makes its device the current one and seeds generators; it puts both back."""
    from fastvae.train import TrainConfig, train

    images = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    current = torch.cuda.current_device()
    cuda_rng, cpu_rng = torch.cuda.get_rng_state(current), torch.get_rng_state()
    config = TrainConfig(model="mlp", hidden=(16,), latent_dim=2, batch_size=8, steps=2, plots=False,
                         device=f"cuda:{torch.cuda.device_count() - 1}")
    result = train(config, out=str(tmp_path / "run"), dataset=torch.utils.data.TensorDataset(images),
                   progress=False, log=lambda *_: None)
    assert result.step == 2 and result.metrics["device"] == config.device
    assert torch.cuda.current_device() == current
    assert torch.equal(torch.cuda.get_rng_state(current), cuda_rng)
    assert torch.equal(torch.get_rng_state(), cpu_rng)
