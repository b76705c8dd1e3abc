"""Property tests of the core ops against the float64 reference (tests/reference.py).

For every op and backend, hypothesis draws shapes (batch 1, odd and non-power-of-two sizes, wide
rows, 1-4-D inputs), layouts (contiguous, ``h.chunk`` views, transposed views, strided slices whose
holes hold NaN), dtypes, reductions, value ranges (extremes included) and random grad_outputs, and
checks values and gradients:

* float32 / float64: |op - ref| <= rtol * magnitude, elementwise, where magnitude is the sum of the
  absolute values of the terms of the formula (so cancellation the formula itself has in any
  floating-point evaluation is not held against the op); rtol 2e-5 (float32), 1e-10 (float64).
* float16 / bfloat16: the op's largest error over a tensor (in units of the magnitude) is no worse
  than twice the largest error of torch's eager formula evaluated in that dtype, plus a slack of
  one correct rounding of the output (HALF_ULPS_SLACK) and fp32-level error.
* Anything whose magnitude fits the output dtype must come out finite.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, note
from hypothesis import strategies as st

import fastvae as fv

import reference as R

F64 = torch.float64
HALF = (torch.float16, torch.bfloat16)
RTOL = {torch.float32: 2e-5, torch.float64: 1e-10}
# float16/bfloat16 slack on top of twice torch's error: this many half-ulps (one correct rounding of
# the output); fp32-level error (1e-5 of the magnitude) is always allowed on top
HALF_ULPS_SLACK = 1
DTYPES = [torch.float32, torch.float32, torch.float64, torch.float16, torch.bfloat16]
OPS = ["reparameterize", "gaussian_kl", "reparameterize_kl", "bernoulli_nll", "gaussian_nll", "mse",
       "laplace_nll", "continuous_bernoulli_nll", "beta_vae_loss"]
EXTREMES = {
    "logvar": [-80.0, 80.0, -30.0, 30.0],
    "logit": [1e4, -1e4, 50.0, -50.0],
    "normal": [1e3, -1e3],
}


# ----------------------------------------------------------------------------- comparison


def _tiny(dtype):
    info = torch.finfo(dtype)
    return info.smallest_normal * info.eps + 1e-300


def compare(what, actual, ref, mag, *, in_dtype, baseline=None, interpreted=False):
    """Assert that `actual` (any dtype/device) matches the float64 `ref` (see module docstring).

    `interpreted`: the Triton interpreter truncates float32 -> bfloat16 casts (round toward zero,
    even with fp_downcast_rounding='rtne'), so bfloat16 results carry up to one ulp per cast
    there: two more roundings are allowed for them.
    """
    assert tuple(actual.shape) == tuple(ref.shape), f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    a = actual.detach().to("cpu", F64)
    ref = ref.detach().to("cpu", F64)
    mag = mag.detach().to("cpu", F64).expand(ref.shape)
    out_info = torch.finfo(actual.dtype)
    tiny = _tiny(actual.dtype)
    representable = torch.isfinite(ref) & (mag < out_info.max / 4)
    err = (a - ref).abs()
    nonfinite = representable & ~torch.isfinite(a)
    if nonfinite.any():
        i = tuple(torch.nonzero(nonfinite)[0].tolist())
        raise AssertionError(f"{what}: {int(nonfinite.sum())} of {ref.numel()} elements not finite; first at {i}: "
                             f"actual={a[i].item()!r} reference={ref[i].item()!r}")
    if in_dtype in HALF:
        # largest error over the tensor, in units of the magnitude, op vs torch's eager formula; the
        # op is first allowed HALF_ULPS_SLACK half-ulps of its output (subnormal spacing included)
        assert baseline is not None
        b = baseline.detach().to("cpu", F64)
        usable = representable & torch.isfinite(b)
        if not usable.any():
            return
        scale = mag.clamp_min(1e-300)
        step = out_info.smallest_normal * out_info.eps  # the spacing of subnormals
        ulps = HALF_ULPS_SLACK * 0.5 * torch.maximum(out_info.eps * ref.abs(), torch.full_like(ref, step))
        if interpreted and actual.dtype == torch.bfloat16:
            ulps = ulps + 2 * torch.maximum(out_info.eps * ref.abs(), torch.full_like(ref, step))
        op_err = ((err - ulps).clamp_min(0) / scale)[usable]
        b_err = ((b - ref).abs() / scale)[usable]
        bound = 2 * b_err.max() + 1e-5
        if not op_err.max() <= bound:
            k = int(op_err.argmax())
            i = tuple(torch.nonzero(usable)[k].tolist())
            j = tuple(torch.nonzero(usable)[int(b_err.argmax())].tolist())
            raise AssertionError(
                f"{what}: error beyond one rounding {op_err.max().item():.3g} (in units of the magnitude) is "
                f"more than twice torch's eager {in_dtype} error {b_err.max().item():.3g}; "
                f"worst at {i}: actual={a[i].item()!r} reference={ref[i].item()!r} magnitude={mag[i].item()!r} "
                f"torch-eager={b[i].item()!r}; torch's worst at {j}: {b[j].item()!r} vs {ref[j].item()!r}")
        return
    tol = RTOL[in_dtype] * mag + tiny
    bad = representable & ~(err <= tol)
    if bad.any():
        i = tuple(torch.nonzero(bad)[0].tolist())
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {ref.numel()} elements off; first at {i}: actual={a[i].item()!r} "
            f"reference={ref[i].item()!r} magnitude={mag[i].item()!r} tolerance={tol[i].item()!r}")


# ----------------------------------------------------------------------------- inputs


@st.composite
def shapes(draw, max_elems):
    """(batch, *per-sample) with at most max_elems elements."""
    batch = min(draw(st.one_of(st.just(1), st.integers(2, 9), st.sampled_from([16, 31, 64]))), max_elems)
    nd = draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3]))
    dims = [draw(st.integers(1, 24)) for _ in range(nd)]
    if nd and draw(st.integers(0, 3)) == 0:  # a wide row
        dims[-1] = draw(st.integers(200, max(200, max_elems)))
    while dims and batch * math.prod(dims) > max_elems:
        rest = batch * math.prod(dims[:-1])
        if rest <= max_elems // 2:
            dims[-1] = max(1, max_elems // rest)
        else:
            dims[:-1] = [max(1, d // 2) for d in dims[:-1]]
    return (batch, *dims)


@st.composite
def latent_shapes(draw, batch, max_elems):
    nd = draw(st.sampled_from([1, 1, 2]))
    dims = [draw(st.integers(1, 40 if nd == 1 else 8)) for _ in range(nd)]
    dims[-1] = max(1, min(dims[-1], max_elems // (batch * math.prod(dims[:-1]))))
    return (batch, *dims)


def values(role, shape, gen, scale, n_extreme, binary=False):
    """float64 values for a tensor of the given role."""
    if role == "prob":
        t = torch.rand(shape, generator=gen, dtype=F64)
        return (t < 0.5).to(F64) if binary else t
    if role == "logvar":
        t = torch.randn(shape, generator=gen, dtype=F64) * min(scale, 3.0)
    elif role == "log_scale":
        t = (torch.rand(shape, generator=gen, dtype=F64) * 4 - 2)
    elif role == "logit":
        t = torch.randn(shape, generator=gen, dtype=F64) * scale * 3
    else:  # normal, eps
        t = torch.randn(shape, generator=gen, dtype=F64) * (scale if role == "normal" else 1.0)
    if role in EXTREMES and n_extreme and t.numel():
        flat = t.view(-1)
        pos = torch.randint(0, flat.numel(), (n_extreme,), generator=gen)
        choice = torch.randint(0, len(EXTREMES[role]), (n_extreme,), generator=gen)
        flat[pos] = torch.tensor(EXTREMES[role], dtype=F64)[choice]
    return t


def laid_out(group, layout, dtype, device, grads):
    """Tensors with the values of `group` (float64, one shape) in the given memory layout.

    Returns views that are non-leaf when the layout is not contiguous; `grads[i]` says whether
    tensor i requires grad.
    """
    shape = group[0].shape
    if layout in ("chunk", "transpose") and len(shape) < 2:
        layout = "slice"
    if layout == "chunk":
        # every tensor of the group is a chunk of one buffer, plus a NaN chunk nobody may read
        parts = [v.to(dtype) for v in group] + [torch.full(shape, math.nan, dtype=dtype)]
        base = torch.cat(parts, dim=1).to(device)
        base.requires_grad_(any(grads))
        views = list(base.chunk(len(parts), dim=1))[: len(group)]
        return [v if g else v.detach() for v, g in zip(views, grads)]
    out = []
    for v, g in zip(group, grads):
        if layout == "contiguous":
            out.append(v.to(dtype).to(device).requires_grad_(g))
        elif layout == "transpose":
            base = v.transpose(-1, -2).contiguous().to(dtype).to(device).requires_grad_(g)
            out.append(base.transpose(-1, -2))
        elif layout == "slice":
            base = torch.full((*shape[:-1], 2 * shape[-1]), math.nan, dtype=dtype)
            base[..., ::2] = v.to(dtype)
            base = base.to(device).requires_grad_(g)
            out.append(base[..., ::2])
        else:
            raise AssertionError(layout)
    return out


def grad_output(gen, shape, dtype, device):
    """Random grad_output, never 1: magnitude in [0.5, 2], random sign."""
    g = 0.5 + 1.5 * torch.rand(shape, generator=gen, dtype=F64)
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    return (g * sign).to(dtype).to(device)


# ----------------------------------------------------------------------------- magnitudes


def bcast(w, like):
    """Per-sample weights (B,) broadcast against an elementwise tensor (B, ...)."""
    return w.reshape(w.shape[0], *([1] * (like.dim() - 1)))


def kl_mags(mu, lv):
    value = 0.5 * (mu * mu + torch.exp(lv) + lv.abs() + 1)
    return value, {"mu": mu.abs(), "logvar": 0.5 * (torch.exp(lv) + 1)}


def lik_mags(likelihood, x, t, ls):
    """Elementwise value magnitude and per-unit-upstream gradient magnitudes of a likelihood."""
    if likelihood == "bernoulli":
        return x.abs() * (1 + t.abs()) + 1, {"x": torch.sigmoid(x) + t.abs(), "target": x.abs()}
    if likelihood == "continuous_bernoulli":
        # log C(x) grows like log|x|; d log C / dx is at most 1/2 (1/x - 1/sinh x)
        return x.abs() * (1 + t.abs()) + 1 + torch.log1p(x.abs()), {"x": torch.sigmoid(x) + t.abs() + 0.5,
                                                                     "target": x.abs()}
    if likelihood == "mse":
        d = (x - t).abs()
        return d * d, {"x": 2 * d, "target": 2 * d}
    e = torch.exp(-ls)
    if likelihood == "gaussian":
        q = (t - x).abs() * e
        return 0.5 * q * q + ls.abs() + 1, {"x": q * e, "target": q * e, "log_scale": 1 + q * q}
    if likelihood == "laplace":
        q = (t - x).abs() * e
        e = e.expand(q.shape)
        return q + ls.abs() + 1, {"x": e, "target": e, "log_scale": 1 + q}
    raise AssertionError(likelihood)


def reduce_mag(elem_mag, reduction):
    return R.reduce(R.rows(elem_mag), reduction)


def per_sample_weight(g, reduction, batch):
    """|d output / d per-sample value| for a grad_output g of a reduced output."""
    g = g.detach().to("cpu", F64).abs()
    if reduction == "none":
        return g
    return (g / max(batch, 1) if reduction == "mean" else g).expand(batch)


def sum_to(mag, like):
    """Gradient magnitude of a 0-dim input: the sum of the elementwise magnitudes."""
    return mag.sum() if like.dim() == 0 else mag


# ----------------------------------------------------------------------------- the op cases


class Case:
    """One drawn op call: the tensors (views) and keyword arguments it gets."""

    def __init__(self, op, tensors, kwargs, dtype, reduction, likelihood=None):
        self.op, self.tensors, self.kwargs = op, tensors, kwargs
        self.dtype, self.reduction, self.likelihood = dtype, reduction, likelihood

    def __repr__(self):
        shapes = {k: (tuple(v.shape), tuple(v.stride())) for k, v in self.tensors.items()}
        kw = {k: (f"tensor{tuple(v.shape)}" if torch.is_tensor(v) else v) for k, v in self.kwargs.items()}
        return f"Case({self.op}, {self.dtype}, {self.reduction!r}, shapes/strides={shapes}, kwargs={kw})"

    def call(self, fn_ns, tensors=None, kwargs=None):
        t = self.tensors if tensors is None else tensors
        kw = self.kwargs if kwargs is None else kwargs
        op = getattr(fn_ns, self.op)
        if self.op == "reparameterize":
            out = op(t["mu"], t["logvar"], t["eps"])
        elif self.op == "gaussian_kl":
            out = op(t["mu"], t["logvar"], reduction=self.reduction)
        elif self.op == "reparameterize_kl":
            out = op(t["mu"], t["logvar"], t["eps"], reduction=self.reduction)
        elif self.op == "beta_vae_loss":
            out = op(t["recon"], t["target"], t["mu"], t["logvar"], reduction=self.reduction, **kw)
        else:
            first = next(iter(t))
            out = op(t[first], t["target"], reduction=self.reduction, **kw)
        return tuple(out) if isinstance(out, tuple) else (out,)


NLL_INPUT = {"bernoulli_nll": "logits", "gaussian_nll": "mean", "mse": "recon", "laplace_nll": "loc",
             "continuous_bernoulli_nll": "logits"}
NLL_KIND = {"bernoulli_nll": "bernoulli", "gaussian_nll": "gaussian", "mse": "mse", "laplace_nll": "laplace",
            "continuous_bernoulli_nll": "continuous_bernoulli"}


@st.composite
def cases(draw, op, backend, dtypes=None):
    dtype = draw(st.sampled_from(dtypes or DTYPES))
    reduction = draw(st.sampled_from(R.REDUCTIONS))
    layout = draw(st.sampled_from(["contiguous", "contiguous", "chunk", "transpose", "slice"]))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.05, 1.0, 1.0, 4.0]))
    n_extreme = draw(st.sampled_from([0, 0, 1, 3]))
    gen = torch.Generator().manual_seed(seed)
    dev = backend.device
    note(f"op={op} dtype={dtype} reduction={reduction} layout={layout} seed={seed} scale={scale} "
         f"extremes={n_extreme}")
    tensors, kwargs, likelihood = {}, {}, None

    if op in ("reparameterize", "gaussian_kl", "reparameterize_kl"):
        shape = draw(shapes(backend.max_elems // (3 if op != "gaussian_kl" else 2)))
        mu = values("normal", shape, gen, scale, n_extreme)
        lv = values("logvar", shape, gen, scale, n_extreme)
        names, group = ["mu", "logvar"], [mu, lv]
        if op != "gaussian_kl":
            names.append("eps")
            group.append(values("eps", shape, gen, 1.0, 0))
        views = laid_out(group, layout, dtype, dev, [n != "eps" for n in names])
        tensors = dict(zip(names, views))
    else:
        shape = draw(shapes(backend.max_elems // 3))
        if op == "beta_vae_loss":
            likelihood = draw(st.sampled_from(R.LIKELIHOODS))
            input_name = "recon"
        else:
            likelihood = NLL_KIND[op]
            input_name = NLL_INPUT[op]
        if likelihood in ("bernoulli", "continuous_bernoulli"):
            x = values("logit", shape, gen, scale, n_extreme)
            t = values("prob", shape, gen, scale, 0, binary=draw(st.booleans()))
        else:
            x = values("normal", shape, gen, scale, n_extreme)
            t = values("normal", shape, gen, scale, 0)
        target_grad = draw(st.booleans())
        xv, tv = laid_out([x, t], layout, dtype, dev, [True, target_grad])
        tensors = {input_name: xv, "target": tv}
        if likelihood in ("gaussian", "laplace"):
            kind = draw(st.sampled_from(["default", "float", "scalar", "full"]))
            if kind == "float":
                kwargs["log_scale"] = float(values("log_scale", (), gen, 1.0, 0))
            elif kind == "scalar":
                kwargs["log_scale"] = values("log_scale", (), gen, 1.0, 0).to(dtype).to(dev).requires_grad_()
            elif kind == "full":
                kwargs["log_scale"] = values("log_scale", shape, gen, 1.0, 0).to(dtype).to(dev).requires_grad_()
            note(f"log_scale kind={kind}")
        if op == "beta_vae_loss":
            lshape = draw(latent_shapes(shape[0], backend.max_elems // 3))
            mu = values("normal", lshape, gen, scale, n_extreme)
            lv = values("logvar", lshape, gen, scale, n_extreme)
            muv, lvv = laid_out([mu, lv], layout, dtype, dev, [True, True])
            tensors.update(mu=muv, logvar=lvv)
            beta = 0.1 + 7.9 * torch.rand((), generator=gen, dtype=F64).item()
            loss_dtype = F64 if dtype == F64 else torch.float32
            if draw(st.booleans()):
                beta = torch.tensor(beta, dtype=loss_dtype, device=dev, requires_grad=True)
            kwargs["beta"] = beta
            cap = draw(st.sampled_from([None, "below", "above"]))
            if cap is not None:
                r = R.rows(R.gaussian_kl_elements(muv.detach().cpu(), lvv.detach().cpu()))
                if reduction == "none":
                    c = 0.5 * r.min().item() if cap == "below" else 1.6 * r.max().item() + 1.0
                else:
                    c = 0.5 * r.mean().item() if cap == "below" else 1.6 * r.mean().item() + 1.0
                if draw(st.booleans()):
                    c = torch.tensor(c, dtype=loss_dtype, device=dev)
                kwargs["capacity"] = c
            kwargs["likelihood"] = likelihood
            note(f"likelihood={likelihood} beta={'tensor' if torch.is_tensor(beta) else 'float'} capacity={cap}")
    note(f"shapes={ {k: tuple(v.shape) for k, v in tensors.items()} }")
    return Case(op, tensors, kwargs, dtype, reduction, likelihood), gen


def _f64_inputs(case):
    """Detached float64 CPU leaves mirroring the op's differentiable inputs."""
    t64 = {k: v.detach().to("cpu", F64).requires_grad_(v.requires_grad) for k, v in case.tensors.items()}
    kw64 = {k: (v.detach().to("cpu", F64).requires_grad_(v.requires_grad) if torch.is_tensor(v) else v)
            for k, v in case.kwargs.items()}
    return t64, kw64


def _eager_inputs(case):
    """Detached leaves in the op's dtype (on CPU) for torch's eager formula."""
    te = {k: v.detach().cpu().clone().requires_grad_(v.requires_grad) for k, v in case.tensors.items()}
    kwe = {k: (v.detach().cpu().clone().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v)
           for k, v in case.kwargs.items()}
    return te, kwe


class Eager:
    """torch's own eager formulas, evaluated in the inputs' dtype (the baseline for float16/bfloat16)."""

    @staticmethod
    def _rows(x):
        return x.flatten(1).sum(1) if x.dim() > 1 else x

    @staticmethod
    def _ls(ls, like):
        return ls if torch.is_tensor(ls) else torch.tensor(float(ls), dtype=like.dtype)

    @classmethod
    def _red(cls, x, reduction):
        rows = cls._rows(x)
        return rows if reduction == "none" else (rows.mean() if reduction == "mean" else rows.sum())

    @classmethod
    def _kl(cls, mu, lv):
        return 0.5 * (mu * mu + torch.exp(lv) - lv - 1)

    @classmethod
    def _lik(cls, likelihood, x, t, ls):
        if likelihood == "bernoulli":
            return F.binary_cross_entropy_with_logits(x, t, reduction="none")
        if likelihood == "continuous_bernoulli":
            return -torch.distributions.ContinuousBernoulli(logits=x, validate_args=False).log_prob(t)
        if likelihood == "mse":
            return F.mse_loss(x, t, reduction="none")
        ls = cls._ls(ls, x)
        if likelihood == "gaussian":
            return 0.5 * ((t - x) * torch.exp(-ls)) ** 2 + ls + 0.5 * R.LOG_2PI
        return (t - x).abs() * torch.exp(-ls) + ls + R.LOG_2

    @classmethod
    def reparameterize(cls, mu, lv, eps):
        return mu + torch.exp(0.5 * lv) * eps

    @classmethod
    def gaussian_kl(cls, mu, lv, *, reduction):
        return cls._red(cls._kl(mu, lv), reduction)

    @classmethod
    def reparameterize_kl(cls, mu, lv, eps, *, reduction):
        return cls.reparameterize(mu, lv, eps), cls.gaussian_kl(mu, lv, reduction=reduction)

    @classmethod
    def bernoulli_nll(cls, x, t, *, reduction):
        return cls._red(cls._lik("bernoulli", x, t, 0.0), reduction)

    @classmethod
    def gaussian_nll(cls, x, t, *, reduction, log_scale=0.0):
        return cls._red(cls._lik("gaussian", x, t, log_scale), reduction)

    @classmethod
    def mse(cls, x, t, *, reduction):
        return cls._red(cls._lik("mse", x, t, 0.0), reduction)

    @classmethod
    def laplace_nll(cls, x, t, *, reduction, log_scale=0.0):
        return cls._red(cls._lik("laplace", x, t, log_scale), reduction)

    @classmethod
    def continuous_bernoulli_nll(cls, x, t, *, reduction):
        return cls._red(cls._lik("continuous_bernoulli", x, t, 0.0), reduction)

    @classmethod
    def beta_vae_loss(cls, recon, target, mu, lv, *, reduction, beta=1.0, likelihood="bernoulli",
                      log_scale=0.0, capacity=None):
        d = cls._rows(cls._lik(likelihood, recon, target, log_scale))
        r = cls._rows(cls._kl(mu, lv))
        if capacity is None:
            if reduction == "none":
                loss = d + beta * r
            else:
                loss = cls._red(d, reduction) + beta * cls._red(r, reduction)
        elif reduction == "none":
            loss = d + beta * (r - capacity).abs()
        else:
            pen = beta * (r.mean() - capacity).abs()
            loss = d.mean() + pen if reduction == "mean" else d.sum() + d.shape[0] * pen
        return loss, cls._red(d, reduction), cls._red(r, reduction)


def magnitudes(case, t64, kw64, weights):
    """(value magnitudes per output, gradient magnitude per differentiable input name)."""
    red = case.reduction
    t = {k: v.detach() for k, v in t64.items()}
    kw = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in kw64.items()}
    gm = {}
    if case.op in ("reparameterize", "gaussian_kl", "reparameterize_kl"):
        mu, lv = t["mu"], t["logvar"]
        vals = []
        if case.op != "gaussian_kl":
            s = torch.exp(0.5 * lv)
            wz = weights[0]  # elementwise |grad_z|
            vals.append(mu.abs() + s * t["eps"].abs())
            gm["mu"] = wz
            gm["logvar"] = 0.5 * s * t["eps"].abs() * wz
        if case.op != "reparameterize":
            vk, gk = kl_mags(mu, lv)
            vals.append(reduce_mag(vk, red))
            w = bcast(weights[-1], mu)
            gm["mu"] = gm.get("mu", 0) + gk["mu"] * w
            gm["logvar"] = gm.get("logvar", 0) + gk["logvar"] * w
        return vals, gm
    likelihood = case.likelihood
    name = next(iter(t))
    x, tg = t[name], t["target"]
    ls = kw.get("log_scale", 0.0)
    ls_t = ls if torch.is_tensor(ls) else torch.tensor(float(ls), dtype=F64)
    vl, gl = lik_mags(likelihood, x, tg, ls_t)
    if case.op != "beta_vae_loss":
        w = bcast(weights[0], x)
        gm[name] = gl["x"] * w
        gm["target"] = gl["target"] * w
        if torch.is_tensor(ls):
            gm["log_scale"] = sum_to(gl["log_scale"] * w, ls)
        return [reduce_mag(vl, red)], gm
    mu, lv = t["mu"], t["logvar"]
    vk, gk = kl_mags(mu, lv)
    beta = kw["beta"]
    abs_beta = abs(float(beta))
    cap = kw.get("capacity")
    abs_cap = 0.0 if cap is None else abs(float(cap))
    d_mag = R.rows(vl)
    r_mag = R.rows(vk)
    n = len(r_mag)
    if red == "none":
        loss_mag = d_mag + abs_beta * (r_mag + abs_cap)
        beta_mag = ((r_mag + abs_cap) * weights[0]).sum()
    else:
        g_abs = weights[0].sum() if red == "mean" else weights[0][0]
        rate_mag = R.reduce(r_mag, red) + abs_cap * (n if red == "sum" else 1)
        loss_mag = R.reduce(d_mag, red) + abs_beta * rate_mag
        beta_mag = rate_mag * g_abs
    vals = [loss_mag, R.reduce(d_mag, red), R.reduce(r_mag, red)]
    w_d = bcast(weights[0] + weights[1], x)
    w_r = bcast(abs_beta * weights[0] + weights[2], mu)
    gm["recon"] = gl["x"] * w_d
    gm["target"] = gl["target"] * w_d
    if torch.is_tensor(ls):
        gm["log_scale"] = sum_to(gl["log_scale"] * w_d, ls)
    gm["mu"] = gk["mu"] * w_r
    gm["logvar"] = gk["logvar"] * w_r
    if torch.is_tensor(beta):
        gm["beta"] = beta_mag
    return vals, gm


def run_case(case, gen, backend):
    dev = backend.device
    batch = next(iter(case.tensors.values())).shape[0]
    loss_dtype = F64 if case.dtype == F64 else torch.float32

    outs = case.call(fv)
    # dtypes, shapes and devices of the outputs
    for k, out in enumerate(outs):
        is_z = case.op in ("reparameterize", "reparameterize_kl") and k == 0
        expected_dtype = case.dtype if is_z else loss_dtype
        assert out.dtype == expected_dtype, f"output {k}: dtype {out.dtype}, expected {expected_dtype}"
        assert out.device.type == torch.device(dev).type
        if is_z:
            assert out.shape == case.tensors["mu"].shape
        else:
            assert out.shape == ((batch,) if case.reduction == "none" else ())

    # grad_outputs: random, never 1; per-sample for 'none'
    gouts = [grad_output(gen, o.shape, o.dtype, dev) for o in outs]
    diff_names = [k for k, v in {**case.tensors, **case.kwargs}.items() if torch.is_tensor(v) and v.requires_grad]
    diff = [{**case.tensors, **case.kwargs}[k] for k in diff_names]
    grads = torch.autograd.grad(outs, diff, gouts)

    # float64 reference, gradients by autograd
    t64, kw64 = _f64_inputs(case)
    refs = case.call(R, t64, kw64)
    diff64 = [{**t64, **kw64}[k] for k in diff_names]
    ref_grads = torch.autograd.grad(refs, diff64, [g.cpu().to(F64) for g in gouts])

    # torch's eager formula in the inputs' dtype (float16/bfloat16 baseline)
    base_vals, base_grads = [None] * len(outs), [None] * len(diff)
    if case.dtype in HALF:
        te, kwe = _eager_inputs(case)
        base_vals = case.call(Eager, te, kwe)
        diffe = [{**te, **kwe}[k] for k in diff_names]
        base_grads = torch.autograd.grad(base_vals, diffe, [g.cpu().to(b.dtype) for g, b in zip(gouts, base_vals)])

    # magnitudes, then compare
    weights = []
    for k, g in enumerate(gouts):
        is_z = case.op in ("reparameterize", "reparameterize_kl") and k == 0
        weights.append(g.detach().to("cpu", F64).abs() if is_z else per_sample_weight(g, case.reduction, batch))
    vmags, gmags = magnitudes(case, t64, kw64, weights)
    for k, (o, r, m, b) in enumerate(zip(outs, refs, vmags, base_vals)):
        compare(f"{case.op} output {k}", o, r, m, in_dtype=case.dtype, baseline=b, interpreted=backend.slow)
    for name, g, rg, b in zip(diff_names, grads, ref_grads, base_grads):
        assert g.dtype == {**case.tensors, **case.kwargs}[name].dtype, f"grad of {name}: dtype {g.dtype}"
        compare(f"{case.op} grad of {name}", g, rg, gmags[name], in_dtype=case.dtype, baseline=b,
                interpreted=backend.slow)


@pytest.mark.parametrize("op", OPS)
def test_values_and_gradients(op, backend):
    """Values and gradients of every op on every backend against the float64 reference."""

    @backend.settings()
    @given(data=st.data())
    def check(data):
        case, gen = data.draw(cases(op, backend))
        run_case(case, gen, backend)

    check()


@pytest.mark.parametrize("op", ["gaussian_kl", "bernoulli_nll", "beta_vae_loss", "reparameterize_kl"])
def test_float32_extremes_stay_finite(op, backend):
    """float32 with logvar at +-80 and logits at +-1e4 everywhere in a row: no inf, no NaN."""
    gen = torch.Generator().manual_seed(1234)
    dev = backend.device
    lv = torch.tensor([[-80.0, 80.0, -79.5, 79.5, 0.0, -1.0], [80.0] * 6, [-80.0] * 6], device=dev)
    mu = torch.randn(lv.shape, generator=gen).to(dev)
    logits = torch.tensor([[1e4, -1e4, 1e4, -1e4, 3.0], [1e4] * 5, [-1e4] * 5], device=dev)
    target = torch.rand(logits.shape, generator=gen).to(dev)
    eps = torch.randn(lv.shape, generator=gen).to(dev)
    for reduction in R.REDUCTIONS:
        ins = [t.clone().requires_grad_() for t in (mu, lv, logits, target)]
        if op == "gaussian_kl":
            outs = (fv.gaussian_kl(ins[0], ins[1], reduction=reduction),)
            ref = R.gaussian_kl(mu, lv, reduction=reduction)
        elif op == "bernoulli_nll":
            outs = (fv.bernoulli_nll(ins[2], ins[3], reduction=reduction),)
            ref = R.bernoulli_nll(logits, target, reduction=reduction)
        elif op == "reparameterize_kl":
            outs = fv.reparameterize_kl(ins[0], ins[1], eps, reduction=reduction)
            ref = R.gaussian_kl(mu, lv, reduction=reduction)
        else:
            outs = (fv.beta_vae_loss(ins[2], ins[3], ins[0], ins[1], beta=2.0, reduction=reduction).loss,)
            ref = R.beta_vae_loss(logits, target, mu, lv, beta=2.0, reduction=reduction).loss
        for o in outs:
            assert torch.isfinite(o).all(), f"{op} {reduction}: {o}"
        torch.testing.assert_close(outs[-1].double().cpu(), ref.cpu(), rtol=2e-5, atol=0)
        torch.autograd.backward([o.sum() for o in outs])
        for t in ins:
            if t.grad is not None:
                assert torch.isfinite(t.grad).all(), f"{op} {reduction}: non-finite gradient {t.grad}"


OP_CALLS = {
    "reparameterize": lambda mu, lv, x, t: fv.reparameterize(mu, lv, torch.randn_like(mu)),
    "gaussian_kl": lambda mu, lv, x, t: fv.gaussian_kl(mu, lv),
    "reparameterize_kl": lambda mu, lv, x, t: sum(o.sum() for o in fv.reparameterize_kl(mu, lv, torch.randn_like(mu))),
    "bernoulli_nll": lambda mu, lv, x, t: fv.bernoulli_nll(x, t),
    "gaussian_nll": lambda mu, lv, x, t: fv.gaussian_nll(x, t, log_scale=0.5),
    "mse": lambda mu, lv, x, t: fv.mse(x, t),
    "laplace_nll": lambda mu, lv, x, t: fv.laplace_nll(x, t),
    "continuous_bernoulli_nll": lambda mu, lv, x, t: fv.continuous_bernoulli_nll(x, t),
    "beta_vae_loss": lambda mu, lv, x, t: fv.beta_vae_loss(x, t, mu, lv, beta=2.0).loss,
}


@pytest.mark.parametrize("op", OPS)
def test_backend_selection_runs_the_right_code(op, cpu_backend, kernel_launches):
    """FASTVAE_BACKEND=triton launches Triton kernels (forward and backward); torch launches none."""
    mu, lv = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    x, t = torch.randn(3, 7, requires_grad=True), torch.rand(3, 7)
    out = OP_CALLS[op](mu, lv, x, t)
    forward_launches = len(kernel_launches)
    out.sum().backward()
    backward_launches = len(kernel_launches) - forward_launches
    if cpu_backend.name == "torch":
        assert kernel_launches == [], f"torch backend launched Triton kernels: {kernel_launches}"
    else:
        assert forward_launches > 0, f"{op}: no Triton kernel ran in forward"
        assert backward_launches > 0, f"{op}: no Triton kernel ran in backward"


def test_float16_gradient_is_rounded_once(backend):
    """A fixed case of the float16 criterion above, where torch's eager formula is almost exact.

    d/d loc of |t - loc| / b + log 2b is -1/b: with b = exp(-0.05) and grad_output 1.15 the exact
    gradient is -1.20896176..., whose float16 rounding is -1.208984375 (torch's eager result).
    Rounding an intermediate gradient to float16 before scaling it by grad_output gives
    -1.2099609375 instead: one ulp off, 50 times torch's error.
    """
    loc = torch.tensor([[0.1]], dtype=torch.float16, device=backend.device, requires_grad=True)
    target = torch.tensor([[0.3]], dtype=torch.float16, device=backend.device)
    fv.laplace_nll(loc, target, log_scale=-0.05, reduction="sum").backward(torch.tensor(1.15, device=backend.device))
    exact = -math.exp(0.05) * 1.15
    eager = loc.detach().cpu().clone().requires_grad_()
    ((target.cpu() - eager).abs() * torch.exp(-torch.tensor(-0.05, dtype=torch.float16))).sum().backward(
        torch.tensor(1.15, dtype=torch.float16))
    ulp = 2.0 ** (math.floor(math.log2(abs(exact))) - 10)
    op_err, eager_err = abs(loc.grad.item() - exact), abs(eager.grad.item() - exact)
    assert op_err <= 2 * eager_err + HALF_ULPS_SLACK * 0.5 * ulp, (
        f"float16 grad {loc.grad.item()!r}, exact {exact!r}, torch eager {eager.grad.item()!r}")


def test_continuous_bernoulli_is_smooth_through_zero_and_finite_at_the_extremes(backend):
    """Value and gradient of the continuous Bernoulli are continuous through logit 0 and across the point
    where the kernels switch from the series to the closed form (|x| = 1/2 in float32), and finite at +-1e4."""
    dev = backend.device
    step = 2.0 ** -12
    grid = torch.cat([torch.arange(-64, 65) * step, 0.5 + torch.arange(-8, 9) * 2.0 ** -20,
                      -0.5 + torch.arange(-8, 9) * 2.0 ** -20]).to(torch.float32)
    t = torch.full_like(grid, 0.3)
    x = grid.clone().to(dev).requires_grad_()
    out = fv.continuous_bernoulli_nll(x[:, None], t[:, None].to(dev), reduction="none")
    out.sum().backward()
    ref_x = grid.double().requires_grad_()
    ref = R.continuous_bernoulli_nll_elements(ref_x, t.double())
    ref.sum().backward()
    torch.testing.assert_close(out.double().cpu(), ref.detach(), rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(x.grad.double().cpu(), ref_x.grad, rtol=2e-6, atol=2e-6)
    big = torch.tensor([[1e4, -1e4, 3e3, -3e3]], device=dev, requires_grad=True)
    v = fv.continuous_bernoulli_nll(big, torch.tensor([[0.0, 1.0, 0.5, 0.2]], device=dev))
    v.backward()
    assert torch.isfinite(v).all() and torch.isfinite(big.grad).all(), (v, big.grad)
    torch.testing.assert_close(v.double().cpu(), R.continuous_bernoulli_nll(big.detach().double().cpu(),
                               torch.tensor([[0.0, 1.0, 0.5, 0.2]], dtype=F64)), rtol=1e-5, atol=1e-3)
