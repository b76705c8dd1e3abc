"""Autograd: gradcheck of every op (float64), opcheck of every registered custom op, repeated
backward through a retained graph, autocast, and gradients reaching the target."""
from __future__ import annotations

import functools
import math

import pytest
import torch

import fastvae as fv
import fastvae.ops

import reference as R

F64 = torch.float64
REDUCTIONS = ("mean", "sum", "none")


def randn(*shape, seed, scale=1.0, dtype=F64, requires_grad=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=F64) * scale).to(dtype).to(device)
    return x.requires_grad_(requires_grad)


def rand(*shape, seed, lo=0.05, hi=0.95, dtype=F64, requires_grad=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64)).to(dtype).to(device)
    return x.requires_grad_(requires_grad)


def gradcheck(fn, inputs, backend):
    # the interpreter is slower: a random projection of the Jacobian is enough there
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=backend.slow)


@pytest.fixture
def dev(backend):
    return backend.device


# ----------------------------------------------------------------------------- gradcheck


def test_gradcheck_reparameterize_with_eps(backend, dev):
    mu, lv = randn(3, 4, seed=1, device=dev), randn(3, 4, seed=2, device=dev)
    eps = randn(3, 4, seed=3, device=dev)
    gradcheck(fv.reparameterize, (mu, lv, eps), backend)  # eps gets a gradient too
    eps.requires_grad_(False)
    gradcheck(lambda m, v: fv.reparameterize(m, v, eps), (mu, lv), backend)


def test_gradcheck_reparameterize_without_eps(backend, dev):
    """gradcheck calls the function many times: every call reseeds its own generator."""

    def fn(m, v):
        return fv.reparameterize(m, v, generator=torch.Generator(device=m.device).manual_seed(1234))

    mu, lv = randn(2, 5, seed=4, device=dev), randn(2, 5, seed=5, device=dev)
    gradcheck(fn, (mu, lv), backend)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_latent(backend, dev, reduction):
    mu, lv = randn(3, 2, 2, seed=6, device=dev), randn(3, 2, 2, seed=7, device=dev)
    eps = randn(3, 2, 2, seed=8, requires_grad=False, device=dev)
    gradcheck(functools.partial(fv.gaussian_kl, reduction=reduction), (mu, lv), backend)
    gradcheck(lambda m, v: fv.reparameterize_kl(m, v, eps, reduction=reduction), (mu, lv), backend)

    def seeded(m, v):
        gen = torch.Generator(device=m.device).manual_seed(99)
        return fv.reparameterize_kl(m, v, generator=gen, reduction=reduction)

    gradcheck(seeded, (mu, lv), backend)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_bernoulli_and_mse(backend, dev, reduction):
    x, t = randn(3, 5, seed=9, scale=3.0, device=dev), rand(3, 5, seed=10, device=dev)
    gradcheck(functools.partial(fv.bernoulli_nll, reduction=reduction), (x, t), backend)
    y = randn(3, 5, seed=11, device=dev)
    gradcheck(functools.partial(fv.mse, reduction=reduction), (x, y), backend)


@pytest.mark.parametrize("op", ["gaussian_nll", "laplace_nll"])
@pytest.mark.parametrize("log_scale", ["float", "scalar", "full"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_scaled_likelihoods(backend, dev, op, log_scale, reduction):
    x, t = randn(3, 4, seed=12, device=dev), randn(3, 4, seed=13, device=dev)
    fn = getattr(fv, op)
    if log_scale == "float":
        gradcheck(lambda a, b: fn(a, b, log_scale=-0.4, reduction=reduction), (x, t), backend)
        return
    ls = randn(seed=14, scale=0.5, device=dev) if log_scale == "scalar" else randn(3, 4, seed=14, scale=0.5, device=dev)
    gradcheck(lambda a, b, s: fn(a, b, log_scale=s, reduction=reduction), (x, t, ls), backend)


@pytest.mark.parametrize("likelihood", R.LIKELIHOODS)
@pytest.mark.parametrize("capacity", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_beta_vae_loss(backend, dev, likelihood, capacity, reduction):
    if backend.name == "tiles" and (capacity or likelihood not in ("bernoulli", "gaussian")):
        # the tiling touches the split partial sums of each reduction; the capacity rule and the other
        # likelihoods' formulas are the same kernels' on 'triton', whatever the tiling
        pytest.skip("checked on 'triton': tiles run one logits and one scaled likelihood without a capacity")
    recon = randn(3, 6, seed=15, scale=2.0, device=dev)
    target = rand(3, 6, seed=16, device=dev) if likelihood == "bernoulli" else randn(3, 6, seed=16, device=dev)
    mu, lv = randn(3, 2, seed=17, device=dev), randn(3, 2, seed=18, device=dev)
    beta = torch.tensor(2.5, dtype=F64, device=dev, requires_grad=True)
    inputs = [recon, target, mu, lv, beta]
    scaled = likelihood in ("gaussian", "laplace")
    if scaled:
        inputs.append(randn(seed=19, scale=0.3, device=dev))
    rates = R.rows(R.gaussian_kl_elements(mu.detach().cpu(), lv.detach().cpu()))
    cap = None
    if capacity:  # far from the rate, where |rate - C| is smooth
        cap = 0.5 * (rates.min() if reduction == "none" else rates.mean()).item()

    def fn(r, t, m, v, b, *ls):
        kw = {"log_scale": ls[0]} if ls else {}
        return tuple(fv.beta_vae_loss(r, t, m, v, beta=b, likelihood=likelihood, capacity=cap,
                                      reduction=reduction, **kw))

    gradcheck(fn, tuple(inputs), backend)


# ----------------------------------------------------------------------------- opcheck


def _registered_fastvae_ops():
    return sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastvae::"))


def _op_name(op):
    for attr in ("_qualname", "_name", "__name__"):
        name = getattr(op, attr, None)
        if isinstance(name, str):
            return name.split("::")[-1]
    return str(op)


def _sample_args():
    """Sample calls of each custom op, keyed by its name (schemas as in fastvae.ops)."""
    def t(*shape, seed, rg=True, lo=None):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        if lo is not None:
            x = x.abs().clamp(0.05, 0.95)
        return x.requires_grad_(rg)

    seed = torch.tensor([123456789], dtype=torch.int64)
    kinds, reductions = fastvae.ops.KINDS, fastvae.ops.REDUCTIONS
    s = {}
    s["latent_forward"] = [
        (t(3, 5, seed=1), t(3, 5, seed=2), t(3, 5, seed=3, rg=False), None, True, True),
        (t(3, 5, seed=1), t(3, 5, seed=2), None, seed, True, True),
        (t(2, 3, 4, seed=1), t(2, 3, 4, seed=2), None, seed, True, False),
        (t(3, 5, seed=1), t(3, 5, seed=2), None, None, False, True),
        (t(4, 6, seed=1, rg=False).double(), t(4, 6, seed=2, rg=False).double(), None, seed, True, True),
        (t(3, 5, seed=1), t(3, 5, seed=2), None, seed, True, True, 7),
        (t(3, 5, seed=1), t(3, 5, seed=2), None, seed, True, True, 0, reductions["mean"]),
        (t(3, 5, seed=1), t(3, 5, seed=2), None, None, False, True, 0, reductions["sum"]),
    ]
    # latent_backward is itself a backward (no double backward): its inputs need no grad
    s["latent_backward"] = [
        (t(3, 5, seed=1, rg=False), t(3, 5, seed=2, rg=False), None, seed, t(3, 5, seed=4, rg=False),
         t(3, seed=5, rg=False)),
        (t(3, 5, seed=1, rg=False), t(3, 5, seed=2, rg=False), t(3, 5, seed=3, rg=False), None,
         t(3, 5, seed=4, rg=False), None),
        (t(3, 5, seed=1, rg=False), t(3, 5, seed=2, rg=False), None, None, None, t(3, seed=5, rg=False)),
        (t(3, 5, seed=1, rg=False), t(3, 5, seed=2, rg=False), None, seed, t(3, 5, seed=4, rg=False),
         t(3, seed=5, rg=False), 7),
        (t(3, 5, seed=1, rg=False), t(3, 5, seed=2, rg=False), None, seed, t(3, 5, seed=4, rg=False),
         t(seed=5, rg=False), 0, 3),
    ]
    objective = []
    for kind_name, kind in kinds.items():
        for red in reductions.values():
            target = t(3, 4, seed=7, rg=False, lo=True) if kind_name == "bernoulli" else t(3, 4, seed=7, rg=False)
            rate = t(3, seed=9).abs()
            # a likelihood alone; with a rate (float beta); with a tensor beta and a capacity
            objective.append((t(3, 4, seed=6), target, None, 0.0, None, None, 1.0, None, 0.0, False, kind, red,
                              True, False))
            objective.append((t(3, 4, seed=6), target, None, 0.0, rate, None, 4.0, None, 0.0, False, kind, red,
                              True, False))
            objective.append((t(3, 4, seed=6), target, None, 0.0, rate, t(seed=10).abs(), 0.0, None, 0.5, True,
                              kind, red, True, False))
            if kind_name in ("gaussian", "laplace"):
                objective.append((t(3, 4, seed=6), target, t(seed=8), 0.0, None, None, 1.0, None, 0.0, False, kind,
                                  red, True, True))
                objective.append((t(3, 4, seed=6), target, t(3, 4, seed=8), 0.0, rate, None, 2.0, t(seed=11).abs(),
                                  0.0, True, kind, red, True, True))
                objective.append((t(3, 4, seed=6, rg=False), target, None, 0.7, None, None, 1.0, None, 0.0, False,
                                  kind, red, False, False))
    s["objective_forward"] = objective
    s["log_weights_forward"] = [
        (t(3, 5, seed=1), t(3, 5, seed=2), seed, 4),
        (t(2, 3, 4, seed=1), t(2, 3, 4, seed=2), seed, 1),
        (t(4, 6, seed=1, rg=False).double(), t(4, 6, seed=2, rg=False).double(), seed, 3),
    ]
    s["log_weights_backward"] = [
        (t(3, 5, seed=1, rg=False), t(3, 5, seed=2, rg=False), seed, 2, t(2, 3, 5, seed=3, rg=False),
         t(2, 3, seed=4, rg=False)),
        (t(3, 5, seed=1, rg=False), t(3, 5, seed=2, rg=False), seed, 2, None, t(2, 3, seed=4, rg=False)),
        (t(3, 5, seed=1, rg=False), t(3, 5, seed=2, rg=False), seed, 2, t(2, 3, 5, seed=3, rg=False), None),
    ]
    return s


def test_custom_ops_list_covers_every_registered_op():
    listed = sorted(f"fastvae::{_op_name(op)}" for op in fastvae.ops.CUSTOM_OPS)
    assert listed == _registered_fastvae_ops()


@pytest.mark.parametrize("op", fastvae.ops.CUSTOM_OPS, ids=_op_name)
def test_opcheck(op, cpu_backend):
    samples = _sample_args().get(_op_name(op))
    assert samples, f"no opcheck samples for custom op {_op_name(op)}: add them to _sample_args"
    # the full check (incl. aot_dispatch_dynamic) on the torch path; the interpreter skips the slow part
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    if not cpu_backend.slow:
        utils = utils + ("test_aot_dispatch_dynamic",)
    for args in samples:
        torch.library.opcheck(op, args, test_utils=utils)


# ----------------------------------------------------------------------------- repeated backward


def _grad_out(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (0.5 + torch.rand(shape, generator=g)).to(dtype) * -1.3


BACKWARD_CASES = {
    "reparameterize_eps": lambda x, t, m, v, e: fv.reparameterize(m, v, e),
    "reparameterize_noise": lambda x, t, m, v, e: fv.reparameterize(m, v),
    "reparameterize_kl": lambda x, t, m, v, e: sum(o.sum() * 0.7 for o in fv.reparameterize_kl(m, v)),
    "gaussian_kl": lambda x, t, m, v, e: fv.gaussian_kl(m, v, reduction="none"),
    "bernoulli_nll": lambda x, t, m, v, e: fv.bernoulli_nll(x, t.sigmoid(), reduction="none"),
    "gaussian_nll": lambda x, t, m, v, e: fv.gaussian_nll(x, t, log_scale=m[:, :1].mean() * 0.1, reduction="mean"),
    "mse": lambda x, t, m, v, e: fv.mse(x, t, reduction="sum"),
    "laplace_nll": lambda x, t, m, v, e: fv.laplace_nll(x, t, log_scale=0.3 * t.detach(), reduction="none"),
    "beta_vae_loss": lambda x, t, m, v, e: fv.beta_vae_loss(x, t.sigmoid(), m, v, beta=3.0, capacity=0.5).loss,
}


@pytest.mark.parametrize("case", list(BACKWARD_CASES))
def test_retained_graph_backward_twice(case, backend):
    dev = backend.device
    x, t = randn(4, 6, seed=20, dtype=torch.float32), randn(4, 6, seed=21, dtype=torch.float32)
    m, v = randn(4, 3, seed=22, dtype=torch.float32), randn(4, 3, seed=23, dtype=torch.float32)
    e = randn(4, 3, seed=24, dtype=torch.float32, requires_grad=False)
    leaves = [a.detach().to(dev).requires_grad_() for a in (x, t, m, v)]
    torch.manual_seed(5)
    out = BACKWARD_CASES[case](*leaves, e.to(dev))
    g = _grad_out(out.shape, 25).to(dev)
    out.backward(g, retain_graph=True)
    first = [a.grad.clone() if a.grad is not None else None for a in leaves]
    assert any(f is not None for f in first)
    # the second backward accumulates the same gradient again
    out.backward(g, retain_graph=True)
    for a, f in zip(leaves, first):
        if f is not None:
            torch.testing.assert_close(a.grad, 2 * f, rtol=1e-6, atol=0)
    # and torch.autograd.grad on the same graph gives it once more, with another grad_output too
    again = torch.autograd.grad(out, [a for a, f in zip(leaves, first) if f is not None], g, retain_graph=True)
    for a, f in zip(again, [f for f in first if f is not None]):
        torch.testing.assert_close(a, f, rtol=1e-6, atol=0)
    other = torch.autograd.grad(out, [a for a, f in zip(leaves, first) if f is not None], 2 * g)
    for a, f in zip(other, [f for f in first if f is not None]):
        torch.testing.assert_close(a, 2 * f, rtol=1e-6, atol=1e-12)


def test_loss_used_twice_in_one_graph(backend):
    """The same op output feeding two terms: its backward gets the summed grad_output."""
    dev = backend.device
    x = randn(3, 5, seed=26, dtype=torch.float32).detach().to(dev).requires_grad_()
    t = rand(3, 5, seed=27, dtype=torch.float32, requires_grad=False).to(dev)
    rows = fv.bernoulli_nll(x, t, reduction="none")
    (rows.sum() * 2 + (rows * torch.arange(3.0, device=dev)).sum()).backward()
    w = 2 + torch.arange(3.0)
    expected = (torch.sigmoid(x.detach().cpu().double()) - t.cpu().double()) * w[:, None].double()
    torch.testing.assert_close(x.grad.cpu().double(), expected, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- autocast


def test_autocast_bfloat16_returns_float32_loss(cpu_backend):
    torch.manual_seed(0)
    enc = torch.nn.Linear(8, 2 * 5)
    dec = torch.nn.Linear(5, 12)
    x = torch.rand(6, 8)
    target = torch.rand(6, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = enc(x)
        assert h.dtype == torch.bfloat16
        mu, logvar = h.chunk(2, dim=1)
        z, kl = fv.reparameterize_kl(mu, logvar)
        assert z.dtype == torch.bfloat16 and kl.dtype == torch.float32
        logits = dec(z)
        assert logits.dtype == torch.bfloat16
        out = fv.beta_vae_loss(logits, target, mu, logvar, beta=4.0)
    assert out.loss.dtype == torch.float32, out.loss.dtype
    assert out.distortion.dtype == torch.float32 and out.rate.dtype == torch.float32
    ref = R.beta_vae_loss(logits.detach(), target, mu.detach(), logvar.detach(), beta=4.0)
    torch.testing.assert_close(out.loss.double(), ref.loss, rtol=2e-5, atol=1e-5)
    out.loss.backward()
    for p in (*enc.parameters(), *dec.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("op", ["gaussian_kl", "bernoulli_nll", "gaussian_nll", "mse", "laplace_nll",
                                "beta_vae_loss"])
def test_autocast_keeps_float32_inputs_in_float32(op, cpu_backend):
    """Losses are computed in float32 under autocast (like torch's own losses), not downcast."""
    a, b = randn(4, 7, seed=30, dtype=torch.float32), rand(4, 7, seed=31, dtype=torch.float32)
    call = {
        "gaussian_kl": lambda: fv.gaussian_kl(a, b),
        "bernoulli_nll": lambda: fv.bernoulli_nll(a, b),
        "gaussian_nll": lambda: fv.gaussian_nll(a, b, log_scale=0.2),
        "mse": lambda: fv.mse(a, b),
        "laplace_nll": lambda: fv.laplace_nll(a, b, log_scale=0.2),
        "beta_vae_loss": lambda: fv.beta_vae_loss(a, b, a, b, likelihood="gaussian").loss,
    }[op]
    eager = call()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = call()
    assert auto.dtype == torch.float32
    torch.testing.assert_close(auto, eager, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- target gradients


@pytest.mark.parametrize("op", ["bernoulli_nll", "gaussian_nll", "mse", "laplace_nll", "beta_vae_loss"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_reaches_the_target(op, reduction, backend):
    dev = backend.device
    x = randn(5, 2, 3, seed=40, dtype=torch.float32, scale=2.0)
    t = (rand if op in ("bernoulli_nll", "beta_vae_loss") else randn)(5, 2, 3, seed=41, dtype=torch.float32)
    mu, lv = randn(5, 4, seed=42, dtype=torch.float32), randn(5, 4, seed=43, dtype=torch.float32)
    ls = randn(5, 2, 3, seed=44, dtype=torch.float32, scale=0.3)
    leaves = [a.detach().to(dev).requires_grad_() for a in (x, t, mu, lv, ls)]
    refs = [a.detach().double().requires_grad_() for a in (x, t, mu, lv, ls)]

    def run(ns, xx, tt, mm, vv, ll):
        if op == "bernoulli_nll":
            return ns.bernoulli_nll(xx, tt, reduction=reduction)
        if op == "mse":
            return ns.mse(xx, tt, reduction=reduction)
        if op in ("gaussian_nll", "laplace_nll"):
            return getattr(ns, op)(xx, tt, log_scale=ll, reduction=reduction)
        return ns.beta_vae_loss(xx, tt, mm, vv, beta=1.5, reduction=reduction).loss

    out = run(fv, *leaves)
    ref = run(R, *refs)
    g = _grad_out(out.shape, 45)
    out.backward(g.to(dev))
    ref.backward(g.double())
    assert leaves[1].grad is not None, "no gradient for the target"
    for name, a, r in zip(("input", "target", "mu", "logvar", "log_scale"), leaves, refs):
        if r.grad is None:
            continue
        assert a.grad is not None, f"no gradient for {name}"
        torch.testing.assert_close(a.grad.cpu().double(), r.grad, rtol=2e-5, atol=2e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------- higher order, transforms


def _eager_objective(name, x, t, mu, lv, ls):
    """The same objective in torch's own losses (float64), for second-order checks."""
    import torch.nn.functional as F

    if name == "bernoulli_nll":
        return F.binary_cross_entropy_with_logits(x, t, reduction="none").sum(1).mean()
    if name == "gaussian_nll":
        return (0.5 * ((t - x) * torch.exp(-ls)) ** 2 + ls + 0.5 * math.log(2 * math.pi)).sum(1).mean()
    if name == "gaussian_kl":
        return (-0.5 * (1 + lv - mu ** 2 - lv.exp()).sum(1)).sum()
    rows = F.binary_cross_entropy_with_logits(x, t, reduction="none").sum(1)
    kl = -0.5 * (1 + lv - mu ** 2 - lv.exp()).sum(1)
    return (rows + 3.0 * kl).mean()


def _fused_objective(name, x, t, mu, lv, ls):
    if name == "bernoulli_nll":
        return fv.bernoulli_nll(x, t)
    if name == "gaussian_nll":
        return fv.gaussian_nll(x, t, log_scale=ls)
    if name == "gaussian_kl":
        return fv.gaussian_kl(mu, lv, reduction="sum")
    _, rate = fv.reparameterize_kl(mu, lv, torch.zeros_like(mu), reduction="none")
    return fv.beta_vae_loss(x, t, rate=rate, beta=3.0).loss


@pytest.mark.parametrize("name", ["bernoulli_nll", "gaussian_nll", "gaussian_kl", "beta_vae_loss"])
def test_gradient_penalty_through_the_ops_equals_torch(name, backend):
    """create_graph=True: a gradient penalty's gradient equals the one through torch's own losses."""
    dev = backend.device
    x = randn(4, 6, seed=60, scale=2.0, device=dev)
    t = rand(4, 6, seed=61, device=dev, requires_grad=False)
    mu, lv = randn(4, 3, seed=62, device=dev), randn(4, 3, seed=63, scale=0.5, device=dev)
    ls = randn(seed=64, scale=0.3, device=dev)
    results = []
    for fn in (_fused_objective, _eager_objective):
        leaves = [a.detach().clone().requires_grad_() for a in (x, mu, lv, ls)]
        xx, mm, vv, ss = leaves
        out = fn(name, xx, t, mm, vv, ss)
        wrt = [xx, ss] if name == "gaussian_nll" else [mm, vv] if name == "gaussian_kl" else [xx, mm, vv] \
            if name == "beta_vae_loss" else [xx]
        grads = torch.autograd.grad(out, wrt, create_graph=True)
        penalty = sum((g * g).sum() for g in grads) + 0.3 * out
        penalty.backward()
        results.append([a.grad for a in leaves])
    for a, b in zip(*results):
        if b is None:
            assert a is None or torch.count_nonzero(a) == 0
            continue
        assert a is not None
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=1e-9, atol=1e-11)


def test_gradgradcheck_of_the_fused_ops(backend):
    dev = backend.device
    x, t = randn(3, 4, seed=70, device=dev), rand(3, 4, seed=71, device=dev)
    mu, lv = randn(3, 2, seed=72, device=dev), randn(3, 2, seed=73, device=dev)
    eps = randn(3, 2, seed=74, device=dev, requires_grad=False)
    assert torch.autograd.gradgradcheck(lambda a, b: fv.bernoulli_nll(a, b, reduction="none"), (x, t))
    assert torch.autograd.gradgradcheck(lambda m, v: fv.reparameterize_kl(m, v, eps, reduction="none"), (mu, lv))

    def seeded(m, v):
        return fv.reparameterize(m, v, generator=torch.Generator(device=m.device).manual_seed(3))

    assert torch.autograd.gradgradcheck(seeded, (mu, lv))

    def vae(r, tt, m, v):
        _, rate = fv.reparameterize_kl(m, v, eps, reduction="none")
        return tuple(fv.beta_vae_loss(r, tt, rate=rate, beta=2.0, capacity=0.3))

    assert torch.autograd.gradgradcheck(vae, (x, t, mu, lv))


@pytest.mark.parametrize("op", ["bernoulli_nll", "gaussian_kl", "reparameterize"])
def test_torch_func_transforms_are_a_clear_error(op, backend):
    dev = backend.device
    a, b = torch.randn(3, 4, device=dev), torch.rand(3, 4, device=dev)
    fn = {"bernoulli_nll": lambda u: fv.bernoulli_nll(u, b),
          "gaussian_kl": lambda u: fv.gaussian_kl(u, b),
          "reparameterize": lambda u: fv.reparameterize(u, b, torch.zeros_like(u))}[op]
    with pytest.raises(RuntimeError, match=r"fastvae\..*does not support torch\.func"):
        torch.func.vmap(fn)(a[None])
    with pytest.raises(RuntimeError, match=r"fastvae\..*does not support torch\.func"):
        torch.func.jvp(fn, (a,), (torch.ones_like(a),))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(a, torch.ones_like(a))
        with pytest.raises(RuntimeError, match=r"fastvae\..*forward-mode AD"):
            fn(dual)
