"""The fused CPU loop (fastvae/ops/_cpu_fused.py, torch.compile of the per-element formulas) that
the PyTorch path uses for CPU tensors of at least MIN_ELEMENTS elements: values and gradients
against the float64 reference and against the eager path, every likelihood and log_scale form.

Each variant compiles once (a few seconds), so the cases are few and chosen to cover the code.
"""
import pytest
import torch

import fastvae as fv
from fastvae.ops import _cpu_fused

import reference as ref

B, D = 16, _cpu_fused.MIN_ELEMENTS // 16 + 3  # just over the threshold, odd row length

CASES = [
    ("bernoulli", torch.float32, "float"),
    ("bernoulli", torch.bfloat16, "float"),
    ("mse", torch.float32, "float"),
    ("gaussian", torch.float32, "float"),
    ("gaussian", torch.float32, "element"),
    ("gaussian", torch.float64, "scalar"),
    ("laplace", torch.float32, "element"),
    ("laplace", torch.float32, "scalar"),
    ("continuous_bernoulli", torch.float32, "float"),
    ("continuous_bernoulli", torch.float64, "float"),
]
FUNCS = {"bernoulli": fv.bernoulli_nll, "gaussian": fv.gaussian_nll, "mse": fv.mse, "laplace": fv.laplace_nll,
         "continuous_bernoulli": fv.continuous_bernoulli_nll}


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.setenv("FASTVAE_CPU_COMPILE", "1")
    with fv.set_backend("torch"):
        yield


def _inputs(likelihood, dtype, ls_form, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(B, D, generator=g)).to(dtype)
    t = (torch.rand(B, D, generator=g) if likelihood == "bernoulli" else torch.randn(B, D, generator=g)).to(dtype)
    if ls_form == "float":
        ls = 0.3 if likelihood in ("gaussian", "laplace") else 0.0
    elif ls_form == "scalar":
        ls = torch.tensor(-0.2, dtype=dtype)
    else:
        ls = (0.5 * torch.randn(B, D, generator=g)).to(dtype)
    return x, t, ls


def _run(likelihood, x, t, ls, grad_rows):
    x = x.clone().requires_grad_()
    ls = ls.clone().requires_grad_() if isinstance(ls, torch.Tensor) else ls
    kwargs = {"log_scale": ls} if likelihood in ("gaussian", "laplace") else {}
    out = FUNCS[likelihood](x, t, reduction="none", **kwargs)
    out.backward(grad_rows)
    return out.detach(), x.grad, (ls.grad if isinstance(ls, torch.Tensor) else None)


@pytest.mark.parametrize("likelihood,dtype,ls_form", CASES)
def test_fused_matches_reference_and_eager(likelihood, dtype, ls_form, monkeypatch):
    x, t, ls = _inputs(likelihood, dtype, ls_form)
    grad_rows = torch.rand(B, generator=torch.Generator().manual_seed(1)) + 0.5
    calls_before = len(_cpu_fused._compiled)
    fused = _run(likelihood, x, t, ls, grad_rows)
    assert not _cpu_fused._state["failed"], "the fused CPU loop did not compile"
    assert len(_cpu_fused._compiled) >= max(calls_before, 1)
    monkeypatch.setenv("FASTVAE_CPU_COMPILE", "0")
    eager = _run(likelihood, x, t, ls, grad_rows)

    # float64 reference values and gradients
    x64 = x.double().requires_grad_()
    ls64 = ls.double().requires_grad_() if isinstance(ls, torch.Tensor) else ls
    expected = ref.nll_rows(likelihood, x64, t.double(), ls64)
    expected.backward(grad_rows.double())
    assert fused[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(fused[0].double(), expected.detach(), rtol=1e-5, atol=1e-3)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype != torch.bfloat16 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(fused[1].double(), x64.grad.to(dtype).double(), **tol)
    if isinstance(ls, torch.Tensor):
        torch.testing.assert_close(fused[2].double(), ls64.grad.to(dtype).double(), rtol=1e-4, atol=1e-4)
    # and the eager path agrees with the fused loop (to a rounding of the gradient's dtype)
    torch.testing.assert_close(fused[0], eager[0], rtol=1e-5, atol=1e-3)
    for a, b in zip(fused[1:], eager[1:]):
        if a is not None:
            torch.testing.assert_close(a.double(), b.double(), **tol)


def test_half_gradient_rounded_once_through_the_fused_loop():
    """bfloat16 with grad_output != 1 goes through the rescale path, also fused: one rounding."""
    x, t, _ = _inputs("mse", torch.bfloat16, "float", seed=3)
    x = x.requires_grad_()
    fv.mse(x, t, reduction="sum").backward(torch.tensor(0.37))
    exact = (2 * (x.detach().double() - t.double()) * 0.37).to(torch.bfloat16)
    assert torch.equal(x.grad, exact)


def test_small_tensors_and_the_switch_use_the_eager_path(monkeypatch):
    assert not _cpu_fused.enabled(torch.empty(8, 8))
    assert _cpu_fused.enabled(torch.empty(B, D))
    monkeypatch.setenv("FASTVAE_CPU_COMPILE", "0")
    assert not _cpu_fused.enabled(torch.empty(B, D))


# ----------------------------------------------------------------------------- latent ops

LATENT_CASES = [(torch.float32, True), (torch.bfloat16, True), (torch.float32, False)]


def _latent_inputs(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, D, generator=g).to(dtype)
    logvar = (0.7 * torch.randn(B, D, generator=g)).to(dtype)
    return mu, logvar


@pytest.mark.parametrize("dtype,with_kl", LATENT_CASES)
def test_fused_latent_matches_reference(dtype, with_kl):
    """reparameterize(_kl) through the compiled loop: z, KL and both gradients against float64 math
    on the CPU noise for the same seed, with grad_z and grad_kl other than 1."""
    from fastvae.ops import draw_seed, standard_normal

    mu, logvar = _latent_inputs(dtype)
    mu_, lv_ = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    gen = torch.Generator().manual_seed(11)
    if with_kl:
        z, kl = fv.reparameterize_kl(mu_, lv_, generator=gen, reduction="none")
    else:
        z, kl = fv.reparameterize(mu_, lv_, generator=gen), None
    assert ("latent_forward", torch.get_num_threads()) in _cpu_fused._compiled
    assert not _cpu_fused._state["failed"], "the fused CPU loop did not compile"
    eps = standard_normal(draw_seed(torch.device("cpu"), torch.Generator().manual_seed(11)), mu).double()

    mu64, lv64 = mu.double().requires_grad_(), logvar.double().requires_grad_()
    z_ref, kl_ref = ref.reparameterize_kl(mu64, lv64, eps, reduction="none")
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    assert z.dtype == dtype
    torch.testing.assert_close(z.double(), z_ref.detach().to(dtype).double(), **tol)

    gens = torch.Generator().manual_seed(2)
    grad_z = (torch.randn(B, D, generator=gens) + 0.5).to(dtype)
    outs, grads, ref_outs, ref_grads = [z], [grad_z], [z_ref], [grad_z.double()]
    if with_kl:
        assert kl.dtype == torch.float32
        torch.testing.assert_close(kl.double(), kl_ref.detach(), rtol=1e-5, atol=1e-3)
        grad_kl = torch.rand(B, generator=gens) + 0.5
        outs.append(kl), grads.append(grad_kl), ref_outs.append(kl_ref), ref_grads.append(grad_kl.double())
    torch.autograd.backward(outs, grads)
    assert ("latent_backward", torch.get_num_threads()) in _cpu_fused._compiled
    torch.autograd.backward(ref_outs, ref_grads)
    torch.testing.assert_close(mu_.grad.double(), mu64.grad.to(dtype).double(), **tol)
    torch.testing.assert_close(lv_.grad.double(), lv64.grad.to(dtype).double(), **tol)


def test_fused_latent_agrees_with_the_eager_path_and_shards_exactly(monkeypatch):
    """The compiled loop gives the eager path's z to rounding; within the fused path, shards with
    a row offset draw exactly (bitwise) the rows of the whole batch."""
    mu, logvar = _latent_inputs(torch.float32, seed=4)
    mu2, lv2 = torch.cat([mu, mu.flip(0)]), torch.cat([logvar, logvar.flip(0)])
    whole = fv.reparameterize(mu2, lv2, generator=torch.Generator().manual_seed(3))
    first = fv.reparameterize(mu2[:B], lv2[:B], generator=torch.Generator().manual_seed(3))
    second = fv.reparameterize(mu2[B:], lv2[B:], generator=torch.Generator().manual_seed(3), row_offset=B)
    assert torch.equal(torch.cat([first, second]), whole)
    monkeypatch.setenv("FASTVAE_CPU_COMPILE", "0")
    eager = fv.reparameterize(mu2, lv2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(whole, eager, rtol=1e-5, atol=1e-5)
    assert not torch.equal(whole[:B], whole[B:].flip(0))  # the rows draw different noise


def test_fused_bernoulli_keeps_relative_precision_of_tiny_losses():
    """Confident, correct logits: each element's loss is log1p(exp(-|x|)), down to 1e-13; the loop's
    log1p (log of 1 + e plus the rounding error of 1 + e) must keep its relative precision."""
    g = torch.Generator().manual_seed(7)
    x = 10.0 + 20.0 * torch.rand(B, D, generator=g)
    sign = torch.where(torch.rand(B, D, generator=g) < 0.5, -1.0, 1.0)
    x, t = x * sign, (sign > 0).float()
    out = fv.bernoulli_nll(x, t, reduction="none")
    expected = ref.nll_rows("bernoulli", x.double(), t.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=0.0)


def test_fused_functions_trace_without_graph_breaks():
    """A graph break would split a fused loop into pieces (and warn on every new shape): each function
    the fused path compiles must trace as one graph."""
    from fastvae.ops import latent

    g = torch.Generator().manual_seed(5)
    mu, lv, eps = (torch.randn(64, 40, generator=g) for _ in range(3))
    cases = [
        (latent._forward_math, (mu, lv, eps, True, True, torch.float32, torch.float32)),
        (latent._backward_math, (mu, lv, eps, torch.randn(64, 40, generator=g), torch.rand(64, generator=g), 3,
                                 torch.float32)),
    ]
    x, t, s = torch.randn(8, 50, generator=g), torch.rand(8, 50, generator=g), torch.randn(8, 50, generator=g)
    for fn in _cpu_fused._KINDS:
        cases.append((fn, (x, t, s, torch.full((8, 1), 0.5), torch.float32, torch.float32, torch.float32, True)))
    for fn, args in cases:
        explanation = torch._dynamo.explain(fn)(*args)
        assert explanation.graph_break_count == 0, (fn.__name__, explanation.break_reasons)
        assert explanation.graph_count == 1, fn.__name__


@pytest.mark.parametrize("likelihood", ["bernoulli", "mse"])
def test_fused_loop_allocates_only_the_gradient(likelihood):
    """One pass: the loop's only large allocation is the gradient (x.grad takes it over). A second
    loop would keep exp(-|x|) or a copy of x - t in a buffer of x's size."""
    from fastvae.bench import peak_memory

    x, t, _ = _inputs(likelihood, torch.float32, "float", seed=9)
    x.requires_grad_()

    def step():
        FUNCS[likelihood](x, t).backward()
        x.grad = None

    step()  # compiled outside the measurement
    peak, how = peak_memory(step, "cpu")
    if peak is None:
        pytest.skip(f"no CPU memory profile here: {how}")
    assert peak <= x.nbytes + 64 * B, (peak, x.nbytes)
