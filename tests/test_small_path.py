"""The small-input CPU path (``fastvae.ops.small``): float32 CPU tensors below the compiled loop's size
run as torch ops (z and the KL together one lean autograd node) instead of through the general autograd
Functions.

It must compute what the Function path computes: z and the rate bit for bit (same ops, same noise),
the losses and every gradient to float32 rounding, for every likelihood it takes, reduction, beta
and capacity form; both are checked against the float64 reference.  The Function path is reached
here by turning the small path off (``_no_small_path``).
"""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fastvae
from fastvae.ops import _cpu_fused, small

import reference as ref

pytestmark = pytest.mark.usefixtures("torch_backend")

LIKELIHOODS = ("bernoulli", "gaussian", "mse", "laplace")


def _inputs(seed, B, J, D, likelihood):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, J, generator=g)
    logvar = torch.randn(B, J, generator=g) * 0.7
    recon = torch.randn(B, D, generator=g) * 2
    target = torch.rand(B, D, generator=g) if likelihood == "bernoulli" else torch.randn(B, D, generator=g)
    grad_z = torch.randn(B, J, generator=g)
    return mu, logvar, recon, target, grad_z


def _step(mu, logvar, recon, target, grad_z, grad_out, *, likelihood, reduction, beta, capacity, log_scale, seed):
    leaves = [t.clone().requires_grad_() for t in (mu, logvar, recon)]
    torch.manual_seed(seed)
    z, rate = fastvae.reparameterize_kl(leaves[0], leaves[1], reduction="none")
    kw = {"log_scale": log_scale} if likelihood in ("gaussian", "laplace") else {}
    out = fastvae.beta_vae_loss(leaves[2], target, rate=rate, beta=beta, capacity=capacity, likelihood=likelihood,
                                reduction=reduction, **kw)
    g = grad_out.expand(out.loss.shape) if reduction == "none" else grad_out
    torch.autograd.backward([out.loss, z], [g, grad_z])
    return z.detach(), rate.detach(), [t.detach() for t in out], [t.grad for t in leaves], out.loss.grad_fn


@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 9), J=st.integers(1, 6), D=st.integers(1, 40),
       likelihood=st.sampled_from(LIKELIHOODS), reduction=st.sampled_from(["mean", "sum", "none"]),
       beta_kind=st.sampled_from(["float", "tensor"]), with_capacity=st.booleans(),
       log_scale=st.sampled_from([0.0, -0.7, 0.4]))
def test_small_path_equals_the_function_path_and_the_reference(seed, B, J, D, likelihood, reduction, beta_kind,
                                                               with_capacity, log_scale):
    mu, logvar, recon, target, grad_z = _inputs(seed, B, J, D, likelihood)
    grad_out = torch.tensor(0.37 + (seed % 7) * 0.3)   # never 1: the scaling of every gradient is exercised
    beta = 3.5 if beta_kind == "float" else torch.tensor(3.5)
    capacity = (2.0 if beta_kind == "float" else torch.tensor(2.0)) if with_capacity else None
    ls = log_scale if likelihood in ("gaussian", "laplace") else 0.0
    kw = dict(likelihood=likelihood, reduction=reduction, beta=beta, capacity=capacity, log_scale=ls, seed=seed)
    z, rate, outs, grads, node = _step(mu, logvar, recon, target, grad_z, grad_out, **kw)
    assert "Backward" in type(node).__name__ and not type(node).__name__.startswith("_Loss")  # the small path ran
    with pytest.MonkeyPatch.context() as m:
        for name in ("takes_latent", "takes_loss", "direct_latent", "direct_loss"):
            m.setattr(small, name, lambda *a: False)
        z2, rate2, outs2, grads2, node2 = _step(mu, logvar, recon, target, grad_z, grad_out, **kw)
    assert type(node2).__name__.startswith("_Loss")
    assert torch.equal(z, z2) and torch.equal(rate, rate2)
    for a, b in zip(outs + grads, outs2 + grads2):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5 * max(1.0, b.abs().max().item()))

    # and the float64 reference, with the noise the op drew (z - mu) / std
    m64, lv64, x64, t64 = (ref.f64(t).requires_grad_() for t in (mu, logvar, recon, target))
    eps = ((z.double() - mu.double()) / torch.exp(0.5 * logvar.double())).detach()
    z64 = m64 + torch.exp(0.5 * lv64) * eps
    rate64 = ref.gaussian_kl(m64, lv64, reduction="none")
    rows = ref.nll_rows(likelihood, x64, t64, ls)
    dist, r = ref.reduce(rows, reduction), ref.reduce(rate64, reduction)
    gap = r if capacity is None else (r - float(capacity) * (B if reduction == "sum" else 1)).abs()
    loss64 = dist + float(beta) * gap
    g = grad_out.double().expand(loss64.shape) if reduction == "none" else grad_out.double()
    torch.autograd.backward([loss64, z64], [g, grad_z.double()])
    for a, b in zip(outs + grads, [loss64, dist, r, m64.grad, lv64.grad, x64.grad]):
        torch.testing.assert_close(a.double(), b.detach(), rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_only_small_float32_cpu_inputs_take_it():
    x = torch.randn(4, 8)
    assert small.takes_loss(x, torch.rand(4, 8), None, 0, None)
    assert not small.takes_loss(x.double(), torch.rand(4, 8).double(), None, 0, None)       # float64: the Function
    assert not small.takes_loss(x, torch.rand(4, 8), torch.zeros(()), 1, None)             # a tensor log_scale
    assert not small.takes_loss(x, torch.rand(4, 8), None, 4, None)                        # continuous Bernoulli
    assert not small.takes_loss(x, torch.rand(8), None, 0, None)                           # a broadcast target
    n = _cpu_fused.MIN_ELEMENTS
    big = torch.randn(n // 64, 64)
    assert not small.takes_loss(big, big, None, 0, None)                                   # the compiled loop's size
    assert not small.takes_latent(torch.randn(0, 3), torch.randn(0, 3), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not small.takes_latent(x, x, None)


def test_the_public_shortcut_takes_only_what_the_small_path_takes():
    mu, lv = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    x, t, rate = torch.randn(4, 8, requires_grad=True), torch.rand(4, 8), torch.rand(4)
    assert small.direct_latent(mu, lv) and small.direct_loss(x, t, rate)
    assert not small.direct_latent(mu.detach(), lv)                          # nothing to differentiate
    with torch.no_grad():
        assert not small.direct_latent(mu, lv) and not small.direct_loss(x, t, rate)
    assert not small.direct_latent(mu, lv[:, :2])                            # shapes differ: the checks raise
    assert not small.direct_latent(mu.double(), lv.double())
    assert not small.direct_latent(torch.randn((), requires_grad=True), torch.randn(()))   # 0-dim
    assert not small.direct_loss(x, t[:, :4], rate)
    assert not small.direct_loss(x, t, rate[:3])
    assert not small.direct_loss(x, t, rate[:, None])
    assert not small.direct_loss(x, t.double(), rate)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not small.direct_latent(mu, lv) and not small.direct_loss(x, t, rate)
    with fastvae.set_backend("triton"):
        assert not small.direct_latent(mu, lv) and not small.direct_loss(x, t, rate)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(small, "_is_compiling", lambda: True)
        assert not small.direct_latent(mu, lv) and not small.direct_loss(x, t, rate)


def test_the_shortcut_checks_what_the_general_path_checks():
    mu, lv = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    x, t, rate = torch.randn(4, 8, requires_grad=True), torch.rand(4, 8), torch.rand(4)
    with pytest.raises(ValueError, match="reduction must be"):
        fastvae.reparameterize_kl(mu, lv, reduction="avg")
    with pytest.raises(ValueError, match="row_offset must be >= 0"):
        fastvae.reparameterize_kl(mu, lv, row_offset=-1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fastvae.reparameterize_kl(mu, lv, generator=3)
    with pytest.raises(ValueError, match="free_bits_mode must be"):
        fastvae.reparameterize_kl(mu, lv, free_bits_mode="row")
    with pytest.raises(ValueError, match="reduction must be"):
        fastvae.beta_vae_loss(x, t, rate=rate, reduction="avg")
    with pytest.raises(TypeError, match="beta must be a float"):
        fastvae.beta_vae_loss(x, t, rate=rate, beta="4")
    with pytest.raises(ValueError, match="capacity must be a float or a one-element tensor"):
        fastvae.beta_vae_loss(x, t, rate=rate, capacity=torch.ones(2))
    with pytest.raises(ValueError, match="log_scale applies to"):
        fastvae.beta_vae_loss(x, t, rate=rate, log_scale=0.5)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        fastvae.beta_vae_loss(x, t, rate=rate, likelihood="poisson")


def test_the_shortcut_draws_the_general_paths_noise_for_every_generator_and_offset():
    mu, lv = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    for offset in (0, 3):
        gen_a, gen_b = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
        z, rate = fastvae.reparameterize_kl(mu, lv, generator=gen_a, row_offset=offset, reduction="sum")
        with pytest.MonkeyPatch.context() as m:
            for name in ("takes_latent", "direct_latent"):
                m.setattr(small, name, lambda *a: False)
            z2, rate2 = fastvae.reparameterize_kl(mu, lv, generator=gen_b, row_offset=offset, reduction="sum")
        assert torch.equal(z, z2) and torch.equal(rate, rate2)
        assert torch.equal(gen_a.get_state(), gen_b.get_state())   # one seed drawn by each
    # int beta and a one-element capacity through the shortcut, as through the general path
    x, t = torch.randn(6, 8, requires_grad=True), torch.rand(6, 8)
    r = torch.rand(6, requires_grad=True)
    a = fastvae.beta_vae_loss(x, t, rate=r, beta=4, capacity=torch.tensor([1.5]))
    b = fastvae.beta_vae_loss(x, t, rate=r, beta=4.0, capacity=1.5)
    assert torch.equal(a.loss, b.loss)


def test_double_backward_through_the_small_path_is_torchs():
    torch.manual_seed(0)
    x = torch.randn(5, 7, dtype=torch.float32, requires_grad=True)
    t = torch.rand(5, 7)
    (g,) = torch.autograd.grad(fastvae.bernoulli_nll(x, t), x, create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), x)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="sum") / 5
    (e,) = torch.autograd.grad(expected, x, create_graph=True)
    (ee,) = torch.autograd.grad((e * e).sum(), x)
    torch.testing.assert_close(gg, ee)
    assert gg.abs().sum() > 0


@pytest.mark.parametrize("outputs", ["both", "z", "rate"])
def test_the_latent_node_of_the_small_path_is_torchs_to_second_order(outputs):
    # the one-node z + KL of the training pattern: its gradient (grad_out other than 1, a retained graph run
    # twice) and a gradient penalty through it (create_graph) against the float64 formulas, same noise
    torch.manual_seed(5)
    mu, lv = torch.randn(6, 4, requires_grad=True), (0.7 * torch.randn(6, 4)).requires_grad_()
    gz, gr = torch.randn(6, 4), torch.rand(6) + 0.3
    z, rate = fastvae.reparameterize_kl(mu, lv, reduction="none")
    assert type(rate.grad_fn).__name__ == "_SampleKLBackward"
    eps = ((z.double() - mu.double()) / torch.exp(0.5 * lv.double())).detach()
    m64, v64 = (ref.f64(t.detach()).requires_grad_() for t in (mu, lv))
    z64, rate64 = m64 + torch.exp(0.5 * v64) * eps, ref.gaussian_kl(m64, v64, reduction="none")
    pairs = {"both": ([z, rate], [z64, rate64], [gz, gr]), "z": ([z], [z64], [gz]), "rate": ([rate], [rate64], [gr])}
    outs, outs64, grads = pairs[outputs]
    first = torch.autograd.grad(outs, [mu, lv], grads, retain_graph=True, allow_unused=True)
    again = torch.autograd.grad(outs, [mu, lv], grads, create_graph=True, allow_unused=True)
    exp = torch.autograd.grad(outs64, [m64, v64], [g.double() for g in grads], create_graph=True, allow_unused=True)
    for a, b, e in zip(first, again, exp):
        if e is None:
            assert a is None or not a.abs().sum()
            continue
        torch.testing.assert_close(a.double(), e.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, b)
    live = [(a, e) for a, e in zip(again, exp) if e is not None and a is not None]
    pen = sum((a * a).sum() for a, _ in live)
    pen64 = sum((e * e).sum() for _, e in live)
    second = torch.autograd.grad(pen, [mu, lv], allow_unused=True)
    second64 = torch.autograd.grad(pen64, [m64, v64], allow_unused=True)
    for a, e in zip(second, second64):
        if e is None:
            assert a is None or not a.abs().sum()
            continue
        assert e.abs().sum() > 0
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5)


def test_a_given_eps_gets_its_gradient_through_the_small_path():
    torch.manual_seed(6)
    mu, lv = torch.randn(5, 3, requires_grad=True), torch.randn(5, 3, requires_grad=True)
    eps = torch.randn(5, 3, requires_grad=True)
    gz, gr = torch.randn(5, 3), torch.rand(5)
    z, rate = fastvae.reparameterize_kl(mu, lv, eps, reduction="none")
    torch.autograd.backward([z, rate], [gz, gr])
    m64, v64, e64 = (ref.f64(t.detach()).requires_grad_() for t in (mu, lv, eps))
    torch.autograd.backward([m64 + torch.exp(0.5 * v64) * e64, ref.gaussian_kl(m64, v64, reduction="none")],
                            [gz.double(), gr.double()])
    for a, b in ((mu, m64), (lv, v64), (eps, e64)):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-6)


def test_forward_ad_and_vmap_still_refused_on_small_inputs():
    import torch.autograd.forward_ad as fwAD

    x, t = torch.randn(3, 4), torch.rand(3, 4)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
        fastvae.bernoulli_nll(fwAD.make_dual(x, torch.randn(3, 4)), t)
    with pytest.raises(RuntimeError, match="torch.func"):
        torch.func.vmap(lambda a: fastvae.bernoulli_nll(a[None], t[:1]))(x)
    mu, lv = torch.randn(3, 2), torch.randn(3, 2)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD"):
        fastvae.reparameterize_kl(fwAD.make_dual(mu, torch.randn(3, 2)), lv)


def test_the_rate_returned_is_not_the_callers_tensor():
    rate = torch.rand(4, requires_grad=True)
    out = fastvae.beta_vae_loss(torch.randn(4, 6, requires_grad=True), torch.rand(4, 6), rate=rate, reduction="none")
    assert out.rate.data_ptr() != rate.data_ptr()
    assert math.isclose(out.rate.sum().item(), rate.sum().item(), rel_tol=1e-6)


# --------------------------------------------------------------------------- second-order gradients of every
# op's autograd node: float32 runs the small path where it has one, float64 the general Function


def _op_outputs(op, mu, lv, x, eps, t, dtype):
    """The op's differentiable outputs as one scalar."""
    if op == "reparameterize_kl":
        z, rate = fastvae.reparameterize_kl(mu, lv, eps, reduction="none")
        return (z * z).sum() + (rate * torch.arange(1.0, 5.0, dtype=dtype)).sum()
    if op == "beta_vae_loss":
        _, rate = fastvae.reparameterize_kl(mu, lv, eps, reduction="none")
        out = fastvae.beta_vae_loss(x, t, rate=rate, beta=2.5, capacity=0.4)
        return out.loss + 0.3 * out.distortion
    if op == "free_bits":
        return fastvae.gaussian_kl(mu, lv, free_bits=0.2)
    if op == "iwae":
        s = fastvae.reparameterize_log_weights(mu, lv, 2, generator=torch.Generator().manual_seed(1))
        return (s.z * s.z).sum() + s.log_ratio.sum()
    raise AssertionError(op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["reparameterize_kl", "beta_vae_loss", "free_bits", "iwae"])
def test_create_graph_runs_the_inputs_hooks_once(op, dtype):
    # The replayed backward under create_graph must stop at its own views of the inputs: a hook (or
    # retain_grad) on an input runs once, and a hook that scales the gradient scales it once.
    g = torch.Generator().manual_seed(3)
    leaf = torch.randn(4, 14, generator=g, dtype=dtype, requires_grad=True)
    eps, t = torch.randn(4, 3, generator=g, dtype=dtype), torch.rand(4, 8, generator=g, dtype=dtype)
    grads = []
    for create_graph in (False, True):
        calls = []
        inputs = [leaf[:, :3] * 1.0, leaf[:, 3:6] * 1.0, leaf[:, 6:] * 1.0]    # mu, logvar, logits: non-leaves
        for a in inputs:
            a.register_hook(lambda grad, calls=calls: (calls.append(1), grad * 2)[1])
            a.retain_grad()
        (gl,) = torch.autograd.grad(_op_outputs(op, *inputs, eps, t, dtype), leaf, create_graph=create_graph)
        used = 3 if op == "beta_vae_loss" else 2
        assert len(calls) == used, (create_graph, len(calls))
        grads.append(gl)
    torch.testing.assert_close(grads[1], grads[0])
    assert grads[1].requires_grad and grads[0].abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_tensor_as_mu_and_logvar_gets_both_partials_under_create_graph(dtype):
    g = torch.Generator().manual_seed(4)
    x = (0.5 * torch.randn(4, 3, generator=g, dtype=dtype)).requires_grad_()
    eps = torch.randn(4, 3, generator=g, dtype=dtype)
    z, kl = fastvae.reparameterize_kl(x, x, eps, reduction="sum")
    first = torch.autograd.grad(z.sum() + kl, x, retain_graph=True)[0]
    second = torch.autograd.grad(z.sum() + kl, x, create_graph=True)[0]
    x64 = x.detach().double().requires_grad_()
    ref_z = x64 + torch.exp(0.5 * x64) * eps.double()
    (expected,) = torch.autograd.grad(ref_z.sum() + ref.gaussian_kl(x64, x64, reduction="sum"), x64)
    for got in (first, second):
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_only_a_given_eps_needing_a_gradient(dtype):
    g = torch.Generator().manual_seed(5)
    mu, lv = torch.randn(4, 3, generator=g, dtype=dtype), torch.randn(4, 3, generator=g, dtype=dtype)
    eps = torch.randn(4, 3, generator=g, dtype=dtype, requires_grad=True)
    z, kl = fastvae.reparameterize_kl(mu, lv, eps, reduction="none")
    assert z.requires_grad and not kl.requires_grad     # the KL does not depend on eps
    (ge,) = torch.autograd.grad((z * z).sum() + kl.sum(), eps, create_graph=True)
    std = torch.exp(0.5 * lv)
    torch.testing.assert_close(ge, 2 * (mu + std * eps) * std)
    (gge,) = torch.autograd.grad(ge.sum(), eps)
    torch.testing.assert_close(gge, 2 * std * std)


@pytest.mark.parametrize("outputs", ["z", "both"])
def test_batched_backward_through_the_small_path(outputs):
    # torch.autograd.functional.jacobian(vectorize=True) and is_grads_batched vmap the backward
    g = torch.Generator().manual_seed(6)
    mu, lv = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)

    def fn(m, v):
        torch.manual_seed(0)
        z, rate = fastvae.reparameterize_kl(m, v, reduction="none")
        return z if outputs == "z" else torch.cat([z.flatten(), rate])

    batched = torch.autograd.functional.jacobian(fn, (mu, lv), vectorize=True)
    looped = torch.autograd.functional.jacobian(fn, (mu, lv))
    for a, b in zip(batched, looped):
        torch.testing.assert_close(a, b)
        assert b.abs().sum() > 0


@pytest.mark.parametrize("op", ["reparameterize_kl", "bernoulli_nll", "free_bits", "iwae"])
def test_batched_backward_through_the_general_functions_is_a_clear_error(op):
    # float64 takes the general autograd Functions, whose backward redraws the noise or writes buffers in place
    mu, lv, x = torch.randn(3, 2).double(), torch.randn(3, 2).double(), torch.randn(3, 4).double()
    fns = {"reparameterize_kl": (lambda m: fastvae.reparameterize_kl(m, lv, reduction="none")[0], mu),
           "bernoulli_nll": (lambda a: fastvae.bernoulli_nll(a, torch.rand(3, 4).double(), reduction="none"), x),
           "free_bits": (lambda m: fastvae.gaussian_kl(m, lv, free_bits=0.1), mu),
           "iwae": (lambda m: fastvae.reparameterize_log_weights(m, lv, 2).log_ratio, mu)}
    fn, arg = fns[op]
    with pytest.raises(RuntimeError, match="does not support batched gradients"):
        torch.autograd.functional.jacobian(fn, arg, vectorize=True)
    assert torch.autograd.functional.jacobian(fn, arg).abs().sum() > 0     # the looped form works
