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
]
FUNCS = {"bernoulli": fv.bernoulli_nll, "gaussian": fv.gaussian_nll, "mse": fv.mse, "laplace": fv.laplace_nll}


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    monkeypatch.setenv("FASTVAE_BACKEND", "torch")
    monkeypatch.setenv("FASTVAE_CPU_COMPILE", "1")


def _inputs(likelihood, dtype, ls_form, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(B, D, generator=g)).to(dtype)
    t = torch.rand(B, D, generator=g).to(dtype) if likelihood == "bernoulli" else torch.randn(B, D, generator=g).to(dtype)
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
