"""Bad input is rejected clearly; non-finite input stays confined to its samples; empty batches;
backend selection errors."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import fastvae as fv

ROOT = Path(__file__).resolve().parents[1]

# every op: (name, its tensor argument names, a call from a dict of tensors + kwargs)
X_SHAPE, Z_SHAPE = (4, 3), (4, 5)
OPS = {
    "reparameterize": (("mu", "logvar", "eps"),
                       lambda t, **kw: fv.reparameterize(t["mu"], t["logvar"], t["eps"], **kw)),
    "gaussian_kl": (("mu", "logvar"), lambda t, **kw: fv.gaussian_kl(t["mu"], t["logvar"], **kw)),
    "reparameterize_kl": (("mu", "logvar", "eps"),
                          lambda t, **kw: fv.reparameterize_kl(t["mu"], t["logvar"], t["eps"], **kw)),
    "bernoulli_nll": (("logits", "target"), lambda t, **kw: fv.bernoulli_nll(t["logits"], t["target"], **kw)),
    "gaussian_nll": (("mean", "target"), lambda t, **kw: fv.gaussian_nll(t["mean"], t["target"], **kw)),
    "mse": (("recon", "target"), lambda t, **kw: fv.mse(t["recon"], t["target"], **kw)),
    "laplace_nll": (("loc", "target"), lambda t, **kw: fv.laplace_nll(t["loc"], t["target"], **kw)),
    "beta_vae_loss": (("recon", "target", "mu", "logvar"),
                      lambda t, **kw: fv.beta_vae_loss(t["recon"], t["target"], t["mu"], t["logvar"], **kw)),
}
REDUCING = [op for op in OPS if op != "reparameterize"]
LATENT_NAMES = ("mu", "logvar", "eps")


def make(op, batch=4, dtype=torch.float32, device="cpu", seed=0):
    names, _ = OPS[op]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n in names:
        shape = (batch, *(Z_SHAPE if n in LATENT_NAMES else X_SHAPE)[1:])
        t = torch.rand(shape, generator=g) if n == "target" else torch.randn(shape, generator=g)
        out[n] = t.to(dtype).to(device)
    return out


def call(op, tensors, **kw):
    return OPS[op][1](tensors, **kw)


def names_re(*names):
    return r"\b(" + "|".join(names) + r")\b"


# ----------------------------------------------------------------------------- ValueError


@pytest.mark.parametrize("op", list(OPS))
def test_mismatched_shapes_name_the_argument(op):
    names, _ = OPS[op]
    for bad in names:
        t = make(op)
        # same batch, different per-sample size
        t[bad] = torch.randn(t[bad].shape[0], t[bad].shape[1] + 1)
        if op == "beta_vae_loss":
            # recon/target and mu/logvar are checked in pairs
            partner = {"recon": "target", "target": "recon", "mu": "logvar", "logvar": "mu"}[bad]
            expect = names_re(bad, partner)
        else:
            expect = names_re(*names)
        with pytest.raises(ValueError, match=expect):
            call(op, t)


@pytest.mark.parametrize("op", list(OPS))
def test_same_numel_different_shape_is_rejected(op):
    names, _ = OPS[op]
    t = make(op)
    last = names[-1]
    t[last] = t[last].reshape(t[last].shape[0], -1, 1)  # (4, 3, 1) vs (4, 3): same data, other shape
    with pytest.raises(ValueError, match=names_re(*names)):
        call(op, t)


def test_beta_vae_loss_batch_mismatch():
    t = make("beta_vae_loss")
    t["mu"], t["logvar"] = torch.randn(5, 5), torch.randn(5, 5)
    with pytest.raises(ValueError, match=names_re("recon", "target", "mu", "logvar")):
        call("beta_vae_loss", t)


@pytest.mark.parametrize("op", list(OPS))
def test_zero_dim_inputs_are_rejected(op):
    names, _ = OPS[op]
    t = {n: torch.tensor(0.3) for n in names}
    with pytest.raises(ValueError, match=names_re(*names)):
        call(op, t)


@pytest.mark.parametrize("op", list(OPS))
def test_different_devices_are_rejected(op):
    names, _ = OPS[op]
    other = "cuda" if torch.cuda.is_available() else "meta"
    for bad in names[1:]:
        t = make(op)
        t[bad] = t[bad].to(other)
        with pytest.raises(ValueError, match=names_re(*names)):
            call(op, t)


@pytest.mark.parametrize("op", REDUCING)
@pytest.mark.parametrize("reduction", ["avg", "MEAN", None, "batchmean"])
def test_unknown_reduction(op, reduction):
    with pytest.raises(ValueError, match="reduction"):
        call(op, make(op), reduction=reduction)


@pytest.mark.parametrize("likelihood", ["poisson", "Bernoulli", "", "l2"])
def test_unknown_likelihood(likelihood):
    with pytest.raises(ValueError, match="likelihood"):
        call("beta_vae_loss", make("beta_vae_loss"), likelihood=likelihood)


@pytest.mark.parametrize("op,kw", [("gaussian_nll", {}), ("laplace_nll", {}),
                                   ("beta_vae_loss", {"likelihood": "gaussian"}),
                                   ("beta_vae_loss", {"likelihood": "laplace"})])
@pytest.mark.parametrize("shape", [(3,), (4, 1), (1, 3), (1,), (4, 3, 1), (12,)])
def test_log_scale_shape(op, kw, shape):
    """log_scale must be 0-dim or the target's shape (4, 3): broadcastable shapes are rejected too."""
    with pytest.raises(ValueError, match="log_scale"):
        call(op, make(op), log_scale=torch.zeros(shape), **kw)


@pytest.mark.parametrize("op", ["gaussian_nll", "laplace_nll"])
def test_log_scale_on_another_device(op):
    other = "cuda" if torch.cuda.is_available() else "meta"
    with pytest.raises(ValueError, match="log_scale"):
        call(op, make(op), log_scale=torch.zeros(X_SHAPE, device=other))


# ----------------------------------------------------------------------------- TypeError


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_and_bool_tensors_are_type_errors(op, dtype):
    names, _ = OPS[op]
    for bad in names:
        t = make(op)
        t[bad] = (t[bad] > 0.5).to(dtype)
        with pytest.raises(TypeError):
            call(op, t)


@pytest.mark.parametrize("op", ["gaussian_nll", "laplace_nll"])
def test_integer_log_scale_tensor_is_a_type_error(op):
    with pytest.raises(TypeError):
        call(op, make(op), log_scale=torch.zeros(X_SHAPE, dtype=torch.int64))


# ----------------------------------------------------------------------------- non-finite input


NONFINITE = [math.nan, math.inf, -math.inf]
# which inputs each output of a multi-output op depends on
DEPENDS = {
    "reparameterize_kl": [("mu", "logvar", "eps"), ("mu", "logvar")],
    "beta_vae_loss": [("recon", "target", "mu", "logvar"), ("recon", "target"), ("mu", "logvar")],
}


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_input_stays_in_its_sample(op, value, cpu_backend):
    names, _ = OPS[op]
    batch, row = 5, 2
    for bad in names:
        t = make(op, batch=batch, seed=3)
        t = {k: v.clone().requires_grad_(k != "eps") for k, v in t.items()}
        poisoned = t[bad].detach().clone()
        poisoned[row, 1] = value
        t[bad] = poisoned.requires_grad_(bad != "eps")
        kw = {} if op == "reparameterize" else {"reduction": "none"}
        out = call(op, t, **kw)
        outs = [out] if torch.is_tensor(out) else list(out)
        for k, o in enumerate(outs):
            others = torch.cat([o[:row], o[row + 1:]])
            assert torch.isfinite(others).all(), f"{op}: {bad}[{row}] = {value} leaked into other samples: {o}"
            if math.isnan(value) and bad in DEPENDS.get(op, [names])[k]:
                assert not torch.isfinite(o[row]).all(), f"{op}: NaN in {bad} gave a finite result {o[row]}"
        # gradients of the other samples stay finite too
        leaves = [v for v in t.values() if v.requires_grad]
        grads = torch.autograd.grad([o.sum() for o in outs], leaves, allow_unused=True)
        for name, gr in zip([k for k, v in t.items() if v.requires_grad], grads):
            if gr is not None:
                others = torch.cat([gr[:row], gr[row + 1:]])
                assert torch.isfinite(others).all(), f"{op}: {bad}[{row}] = {value} leaked into grad of {name}"


@pytest.mark.parametrize("op", REDUCING)
def test_nan_input_makes_reduced_loss_nan(op, cpu_backend):
    names, _ = OPS[op]
    t = make(op, seed=4)
    t[names[0]][1, 0] = math.nan
    for reduction in ("mean", "sum"):
        out = call(op, t, reduction=reduction)
        out = out if torch.is_tensor(out) else out[-1] if op == "reparameterize_kl" else out[0]
        assert torch.isnan(out), f"{op} {reduction}: {out}"


# ----------------------------------------------------------------------------- empty batch


@pytest.mark.parametrize("op", list(OPS))
def test_empty_batch(op, cpu_backend):
    t = {k: v.requires_grad_(k != "eps") for k, v in make(op, batch=0).items()}
    if op == "reparameterize":
        z = call(op, t)
        assert z.shape == (0, Z_SHAPE[1])
        z.sum().backward()
        assert t["mu"].grad.shape == (0, Z_SHAPE[1])
        return
    total = call(op, t, reduction="sum")
    none = call(op, t, reduction="none")
    total_t = [total] if torch.is_tensor(total) else list(total)
    none_t = [none] if torch.is_tensor(none) else list(none)
    if op == "reparameterize_kl":
        assert total_t[0].shape == (0, Z_SHAPE[1])
        total_t, none_t = total_t[1:], none_t[1:]
    for s in total_t:
        assert s.shape == () and s.item() == 0.0 and s.dtype == torch.float32, s
    for n in none_t:
        assert n.shape == (0,) and n.dtype == torch.float32, n
    total_t[0].backward()
    for k, v in t.items():
        if v.requires_grad:
            assert v.grad is not None and v.grad.shape == v.shape and v.grad.numel() == 0, k


def test_empty_batch_with_capacity_sum_is_zero(cpu_backend):
    t = make("beta_vae_loss", batch=0)
    out = call("beta_vae_loss", t, reduction="sum", capacity=3.0, beta=2.0)
    assert out.loss.item() == 0.0 and out.rate.item() == 0.0 and out.distortion.item() == 0.0


# ----------------------------------------------------------------------------- backends


def run_python(code, env_updates, drop=()):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_updates)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


CALL_AND_REPORT = """
    import torch
    try:
        import fastvae as fv
        fv.gaussian_kl(torch.randn(2, 3), torch.randn(2, 3))
    except Exception as err:
        print("RAISED", type(err).__name__, err)
    else:
        print("NO ERROR")
"""


def test_triton_backend_on_cpu_without_interpreter_is_a_clear_error():
    res = run_python(CALL_AND_REPORT, {"FASTVAE_BACKEND": "triton"}, drop=("TRITON_INTERPRET",))
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert out.startswith("RAISED"), out
    # a clear error tells how to fix it (the interpreter, or another backend)
    assert "TRITON_INTERPRET" in out or "FASTVAE_BACKEND" in out, out


def test_unknown_backend_value_is_a_clear_error():
    res = run_python(CALL_AND_REPORT, {"FASTVAE_BACKEND": "cudnn"})
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout
    assert out.startswith("RAISED ValueError"), out
    assert "FASTVAE_BACKEND" in out and "cudnn" in out, out


def test_unknown_backend_value_in_process():
    with pytest.raises(ValueError, match="backend must be one of auto, triton, torch, got 'gpu'"):
        fv.set_backend("gpu")
    with pytest.raises(TypeError, match="backend must be a str"):
        fv.set_backend(None)


def test_set_backend_switches_and_restores(kernel_launches):
    """set_backend takes effect at once; as a context manager it restores the previous setting."""
    before = fv.get_backend()
    mu = torch.randn(2, 3)
    with fv.set_backend("triton"):
        assert fv.get_backend() == "triton"
        fv.gaussian_kl(mu, mu)
        assert kernel_launches, "the triton backend launched no kernel"
        with fv.set_backend("torch"):
            launched = len(kernel_launches)
            fv.gaussian_kl(mu, mu)
            assert len(kernel_launches) == launched
        assert fv.get_backend() == "triton"
    assert fv.get_backend() == before


def test_backend_environment_is_read_once():
    """FASTVAE_BACKEND is the default's source, read once: changing os.environ later changes nothing."""
    code = """
        import os, torch
        os.environ["FASTVAE_BACKEND"] = "torch"
        import fastvae as fv
        print(fv.get_backend())
        os.environ["FASTVAE_BACKEND"] = "triton"
        print(fv.get_backend())
        fv.set_backend("auto")
        print(fv.get_backend())
    """
    res = run_python(code, {})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["torch", "torch", "auto"], res.stdout


# ----------------------------------------------------------------------------- the rate form of beta_vae_loss


def test_beta_vae_loss_takes_mu_and_logvar_or_rate():
    recon, target = torch.randn(4, 6), torch.rand(4, 6)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    rate = torch.rand(4)
    with pytest.raises(ValueError, match="either mu and logvar or rate, not both: got rate and mu and logvar"):
        fv.beta_vae_loss(recon, target, mu, logvar, rate=rate)
    with pytest.raises(ValueError, match="not both: got rate and mu"):
        fv.beta_vae_loss(recon, target, mu, rate=rate)
    with pytest.raises(ValueError, match="give mu and logvar, or rate"):
        fv.beta_vae_loss(recon, target)
    with pytest.raises(ValueError, match="logvar is missing"):
        fv.beta_vae_loss(recon, target, mu)
    with pytest.raises(ValueError,
                       match=r"rate must be the per-sample KL of shape \(B,\) = \(4,\).*got shape \(4, 3\)"):
        fv.beta_vae_loss(recon, target, rate=torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"rate must be the per-sample KL of shape \(B,\) = \(4,\).*got shape \(3,\)"):
        fv.beta_vae_loss(recon, target, rate=torch.rand(3))
    with pytest.raises(TypeError, match="rate must be a floating-point tensor"):
        fv.beta_vae_loss(recon, target, rate=torch.ones(4, dtype=torch.int64))


def test_one_element_beta_and_capacity_are_accepted():
    recon, target = torch.randn(4, 6), torch.rand(4, 6)
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    a = fv.beta_vae_loss(recon, target, mu, logvar, beta=torch.tensor([2.0]), capacity=torch.tensor([1.5]))
    b = fv.beta_vae_loss(recon, target, mu, logvar, beta=2.0, capacity=1.5)
    assert a.loss.shape == () and torch.equal(a.loss, b.loss)
    with pytest.raises(ValueError,
                       match=r"capacity must be a float or a one-element tensor, got a tensor of shape \(2,\)"):
        fv.beta_vae_loss(recon, target, mu, logvar, capacity=torch.tensor([1.0, 2.0]))
