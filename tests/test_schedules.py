"""Tests of fastvae.schedules: values, checkpointing, validation, and the rate constraint."""

import json
import math

import pytest
import torch
from torch import nn

import fastvae
from fastvae.schedules import (
    BETA_SCHEDULE_KINDS,
    CapacityRamp,
    ConstantBeta,
    ConstrainedBeta,
    CyclicalBeta,
    LinearWarmup,
    make_beta_schedule,
    make_capacity_schedule,
)

# ----------------------------------------------------------------------------- helpers


def _run(sched, n, rates=None):
    """Values seen over n iterations (value, then step)."""
    out = []
    for i in range(n):
        v = sched.value
        out.append(v.item() if isinstance(v, torch.Tensor) else v)
        if rates is None:
            sched.step()
        else:
            sched.step(rates[i])
    return out


def _plain(obj):
    """True if obj is made of python numbers / strings / None (and dicts of them)."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    return obj is None or isinstance(obj, (int, float, str))


# ----------------------------------------------------------------------------- open-loop values


def test_constant():
    s = ConstantBeta(4.0)
    assert _run(s, 5) == [4.0] * 5
    assert s.t == 5 and s() == 4.0 and s.value_at(10**9) == 4.0


def test_linear_warmup_values():
    s = LinearWarmup(beta=2.0, warmup_steps=10)
    assert [s.value_at(t) for t in (0, 1, 5, 9, 10, 11, 1000)] == pytest.approx([0, 0.2, 1.0, 1.8, 2, 2, 2])
    assert _run(s, 12) == [s.value_at(t) for t in range(12)]
    assert s.value == 2.0
    s = LinearWarmup(beta=4.0, warmup_steps=4, start=1.0)
    assert [s.value_at(t) for t in range(6)] == pytest.approx([1.0, 1.75, 2.5, 3.25, 4.0, 4.0])
    assert LinearWarmup(beta=3.0, warmup_steps=0).value == 3.0


def test_cyclical_values():
    # Fu et al. 2019: tau = (t mod T) / T; beta * tau / R while tau < R, then beta.
    s = CyclicalBeta(beta=2.0, cycle_steps=10, ratio=0.5)
    got = [s.value_at(t) for t in (0, 1, 4, 5, 9, 10, 12, 15, 19, 20, 1003)]
    assert got == pytest.approx([0.0, 0.4, 1.6, 2.0, 2.0, 0.0, 0.8, 2.0, 2.0, 0.0, 1.2])
    s = CyclicalBeta(beta=1.0, cycle_steps=4, ratio=1.0, n_cycles=2)
    assert [s.value_at(t) for t in range(11)] == pytest.approx(
        [0, 0.25, 0.5, 0.75, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    )
    s = CyclicalBeta(beta=3.0, cycle_steps=5, ratio=0.3)  # ramp of 1.5 steps
    assert [s.value_at(t) for t in range(6)] == pytest.approx([0, 2.0, 3, 3, 3, 0])
    assert _run(s, 7) == [s.value_at(t) for t in range(7)]


def test_capacity_ramp_values():
    s = CapacityRamp(max_capacity=25.0, ramp_steps=100)
    assert [s.value_at(t) for t in (0, 1, 50, 99, 100, 10**6)] == pytest.approx([0, 0.25, 12.5, 24.75, 25, 25])
    s = CapacityRamp(max_capacity=10.0, ramp_steps=4, start=2.0)
    assert _run(s, 6) == pytest.approx([2, 4, 6, 8, 10, 10])
    assert CapacityRamp(max_capacity=5.0).value == 5.0


def test_step_returns_new_value_and_value_at_is_pure():
    s = LinearWarmup(beta=1.0, warmup_steps=4)
    assert s.value_at(2) == 0.5 and s.t == 0
    assert s.step() == 0.25 and s.step(rate=123.0) == 0.5 and s.t == 2


# ----------------------------------------------------------------------------- checkpointing


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConstantBeta(2.0),
        lambda: LinearWarmup(beta=4.0, warmup_steps=13, start=0.5),
        lambda: CyclicalBeta(beta=1.0, cycle_steps=7, ratio=0.6, n_cycles=3),
        lambda: CapacityRamp(max_capacity=20.0, ramp_steps=17, start=1.0),
    ],
)
def test_open_loop_state_dict_round_trip(make):
    ref = make()
    full = _run(ref, 30)
    a = make()
    head = _run(a, 11)
    sd = a.state_dict()
    assert _plain(sd) and json.loads(json.dumps(sd)) == sd
    b = type(a)() if not isinstance(a, ConstantBeta) else ConstantBeta(99.0)  # other config
    b.load_state_dict(json.loads(json.dumps(sd)))
    assert b.t == 11 and repr(b) == repr(a)
    assert head + _run(b, 19) == full


def test_load_state_dict_checks_kind():
    with pytest.raises(ValueError, match="schedule"):
        LinearWarmup().load_state_dict(CyclicalBeta().state_dict())
    with pytest.raises(ValueError, match="schedule"):
        ConstrainedBeta(target_rate=1.0).load_state_dict(ConstantBeta().state_dict())


# ----------------------------------------------------------------------------- ConstrainedBeta


def _reference_dual_ascent(rates, delta, init_beta, lr, alpha, beta_min, beta_max):
    """Float64 reference of the update; returns beta after each update."""
    log_beta, ema, out = math.log(init_beta), None, []
    for r in rates:
        c = r - delta
        ema = c if ema is None else alpha * ema + (1 - alpha) * c
        log_beta = min(max(log_beta + lr * ema, math.log(beta_min)), math.log(beta_max))
        out.append(math.exp(log_beta))
    return out


RATES = [12.0, 9.5, 8.0, 30.0, 7.25, 5.0, 4.0, 4.5, 6.0, 5.5, 5.0, 4.9]


@pytest.mark.parametrize("alpha", [0.0, 0.9])
def test_constrained_float_update_matches_formula(alpha):
    kw = dict(init_beta=2.0, lr=0.05, alpha=alpha, beta_min=0.5, beta_max=8.0)
    s = ConstrainedBeta(target_rate=5.0, **kw)
    assert s.value == 2.0 and s() == 2.0
    got = [s.update(r) for r in RATES]
    assert all(isinstance(v, float) for v in got)
    assert got == pytest.approx(_reference_dual_ascent(RATES, 5.0, **kw), rel=1e-12)
    assert s.t == len(RATES)


def test_constrained_log_ratio_bounded_step_and_warmup_match_formula():
    """error='log_ratio', max_step and warmup_steps (what fastvae train --target-rate uses), float64
    reference; the tensor path gives the same numbers."""
    kw = dict(target_rate=5.0, init_beta=2.0, lr=0.1, alpha=0.5, error="log_ratio", max_step=0.03, warmup_steps=3)
    rates = [40.0, 30.0, 12.0] + RATES + [0.0]
    log_beta, ema, want = math.log(2.0), None, [0.0]
    for t, r in enumerate(rates, start=1):
        c = math.log(max(r, 1e-3 * 5.0) / 5.0)
        ema = c if ema is None else 0.5 * ema + 0.5 * c
        if t <= 3:
            want.append(2.0 * t / 3)  # the warm-up: beta ramps, the multiplier waits
            continue
        log_beta += max(-0.03, min(0.03, 0.1 * ema))
        want.append(math.exp(log_beta))
    f = ConstrainedBeta(**kw)
    got = [f.value] + [f.update(r) for r in rates]
    assert got == pytest.approx(want, rel=1e-12)
    t = ConstrainedBeta(**kw, device="cpu")
    got_t = [t.value.item()] + [t.update(torch.tensor(r)).item() for r in rates]
    assert got_t == pytest.approx(want, rel=1e-5)
    # the state holds the new options, and a round trip continues bit for bit
    sd = f.state_dict()
    assert (sd["error"], sd["max_step"], sd["warmup_steps"]) == ("log_ratio", 0.03, 3)
    g = ConstrainedBeta(target_rate=1.0)
    g.load_state_dict(json.loads(json.dumps(sd)))
    assert g.update(7.0) == f.update(7.0)


def test_constrained_state_of_the_first_version_loads_as_it_was():
    """A state without the options added later (a checkpoint of the first trainer) takes the update of
    that version, and a default schedule's state has the same entries as then."""
    s = ConstrainedBeta(target_rate=3.0, lr=0.05)
    sd = s.state_dict()
    assert set(sd) == {"schedule", "t", "target_rate", "init_beta", "lr", "alpha", "beta_min", "beta_max",
                       "log_beta", "beta", "constraint_ema", "dtype"}
    t = ConstrainedBeta(target_rate=1.0, error="log_ratio", warmup_steps=10)
    t.load_state_dict(sd)
    assert (t.error, t.max_step, t.warmup_steps) == ("nats", None, 0)
    assert t.update(5.0) == pytest.approx(math.exp(0.05 * 2.0))


def test_constrained_direction_and_clamp():
    s = ConstrainedBeta(target_rate=5.0, lr=0.1, beta_min=0.1, beta_max=10.0)
    assert s.update(6.0) > 1.0  # rate above delta: more pressure on the KL
    s = ConstrainedBeta(target_rate=5.0, lr=0.1, beta_min=0.1, beta_max=10.0)
    assert s.update(4.0) < 1.0
    for _ in range(100):
        s.update(1000.0)
    assert s.value == pytest.approx(10.0)
    s.update(torch.tensor(-1000.0))
    assert s.value.item() == pytest.approx(0.1)


@pytest.mark.parametrize("alpha", [0.0, 0.9])
def test_constrained_tensor_update_matches_float_path(alpha):
    kw = dict(target_rate=5.0, init_beta=2.0, lr=0.05, alpha=alpha, beta_min=0.5, beta_max=8.0)
    f, t = ConstrainedBeta(**kw), ConstrainedBeta(**kw)
    w = torch.ones((), requires_grad=True)
    for r in RATES:
        vf = f.update(r)
        vt = t.update(torch.tensor(r) * w)  # a rate that carries gradients: detached
        assert isinstance(vt, torch.Tensor) and vt.dim() == 0 and vt.dtype == torch.float32
        assert not vt.requires_grad
        assert vt.item() == pytest.approx(vf, rel=1e-5)
    assert t.value is vt and isinstance(t.log_beta, torch.Tensor)
    # float64 rates keep float64 state
    d = ConstrainedBeta(**kw)
    for r in RATES:
        vd = d.update(torch.tensor(r, dtype=torch.float64))
    assert vd.dtype == torch.float64 and vd.item() == pytest.approx(vf, rel=1e-12)


def test_constrained_tensor_update_does_not_read_values_on_host(monkeypatch):
    """CPU proxy for 'no host sync': the update must not turn a tensor into a python value."""
    s = ConstrainedBeta(target_rate=3.0, lr=0.1, alpha=0.5)
    s.update(torch.tensor(4.0))  # first update (state becomes tensors) outside the patch

    def forbidden(*args, **kwargs):
        raise AssertionError("tensor read on the host")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for r in (5.0, 1.0, 2.0):
        beta = s.update(torch.tensor(r))
        _ = s.value * torch.tensor(2.0)  # usable as a tensor factor
    monkeypatch.undo()
    assert isinstance(beta, torch.Tensor)
    t = ConstrainedBeta(target_rate=3.0, lr=0.1, alpha=0.5)
    for r in (4.0, 5.0, 1.0, 2.0):
        t.update(r)
    assert beta.item() == pytest.approx(t.value, rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_constrained_cuda_update_without_sync():
    s = ConstrainedBeta(target_rate=3.0, lr=0.1, alpha=0.9, device="cuda")
    rates = torch.rand(20, device="cuda") * 6
    mu = torch.randn(8, 4, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for r in rates:
            beta = s.update(r)
            loss = mu.pow(2).sum() * s.value
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert beta.device.type == "cuda" and loss.device.type == "cuda"
    f = ConstrainedBeta(target_rate=3.0, lr=0.1, alpha=0.9)
    for r in rates.tolist():
        f.update(r)
    assert beta.item() == pytest.approx(f.value, rel=1e-5)


@pytest.mark.parametrize("mode", ["float", "tensor", "float64"])
def test_constrained_state_dict_round_trip(mode):
    kw = dict(target_rate=4.0, init_beta=0.7, lr=0.03, alpha=0.8, beta_min=0.01, beta_max=50.0)
    conv = {
        "float": float,
        "tensor": lambda r: torch.tensor(r),
        "float64": lambda r: torch.tensor(r, dtype=torch.float64),
    }[mode]
    rates = [conv(r) for r in RATES * 2]
    ref = ConstrainedBeta(**kw)
    full = _run(ref, len(rates), rates)
    a = ConstrainedBeta(**kw)
    head = _run(a, 9, rates)
    sd = a.state_dict()
    assert _plain(sd) and json.loads(json.dumps(sd)) == sd
    b = ConstrainedBeta(target_rate=1.0)  # other config: restored from the state
    b.load_state_dict(json.loads(json.dumps(sd)))
    assert b.t == 9 and repr(b) == repr(a)
    assert b.state_dict() == sd
    assert head + _run(b, len(rates) - 9, rates[9:]) == full  # bit for bit
    if mode != "float":
        # restored straight onto a device when the object already lives on one
        c = ConstrainedBeta(target_rate=1.0, device="cpu")
        c.load_state_dict(sd)
        assert isinstance(c.value, torch.Tensor)
        assert head + _run(c, len(rates) - 9, rates[9:]) == full


def test_constrained_device_argument_gives_tensor_value():
    s = ConstrainedBeta(target_rate=2.0, init_beta=3.0, device="cpu")
    assert isinstance(s.value, torch.Tensor) and s.value.item() == pytest.approx(3.0)
    assert isinstance(s.update(1.0), torch.Tensor)  # float updates keep the state on the device


def test_constrained_step_needs_rate():
    s = ConstrainedBeta(target_rate=2.0)
    with pytest.raises(ValueError, match="rate"):
        s.step()
    assert s.step(3.0) == s.value and s.t == 1
    with pytest.raises(ValueError, match="rate"):
        s.update(torch.ones(3))
    with pytest.raises(TypeError, match="rate"):
        s.update(torch.tensor(3))


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "ctor, kwargs, name",
    [
        (ConstantBeta, dict(beta=-1.0), "beta"),
        (ConstantBeta, dict(beta=float("nan")), "beta"),
        (ConstantBeta, dict(beta="1"), "beta"),
        (LinearWarmup, dict(beta=1.0, warmup_steps=-5), "warmup_steps"),
        (LinearWarmup, dict(beta=1.0, warmup_steps=2.5), "warmup_steps"),
        (LinearWarmup, dict(beta=1.0, warmup_steps=10, start=-0.1), "start"),
        (CyclicalBeta, dict(beta=1.0, cycle_steps=0), "cycle_steps"),
        (CyclicalBeta, dict(beta=1.0, cycle_steps=10, ratio=0.0), "ratio"),
        (CyclicalBeta, dict(beta=1.0, cycle_steps=10, ratio=1.5), "ratio"),
        (CyclicalBeta, dict(beta=1.0, cycle_steps=10, n_cycles=0), "n_cycles"),
        (CyclicalBeta, dict(beta=-2.0, cycle_steps=10), "beta"),
        (CapacityRamp, dict(max_capacity=-1.0), "max_capacity"),
        (CapacityRamp, dict(max_capacity=10.0, ramp_steps=-1), "ramp_steps"),
        (CapacityRamp, dict(max_capacity=10.0, start=20.0), "start"),
        (ConstrainedBeta, dict(target_rate=-1.0), "target_rate"),
        (ConstrainedBeta, dict(target_rate=1.0, lr=0.0), "lr"),
        (ConstrainedBeta, dict(target_rate=1.0, alpha=1.0), "alpha"),
        (ConstrainedBeta, dict(target_rate=1.0, init_beta=0.0), "init_beta"),
        (ConstrainedBeta, dict(target_rate=1.0, beta_min=0.0), "beta_min"),
        (ConstrainedBeta, dict(target_rate=1.0, beta_min=2.0, beta_max=1.0), "beta_min"),
        (ConstrainedBeta, dict(target_rate=1.0, init_beta=100.0, beta_max=10.0), "init_beta"),
    ],
)
def test_bad_arguments(ctor, kwargs, name):
    with pytest.raises(ValueError, match=name):
        ctor(**kwargs)


def test_value_at_rejects_negative_step():
    with pytest.raises(ValueError, match="t"):
        LinearWarmup(beta=1.0, warmup_steps=3).value_at(-1)


# ----------------------------------------------------------------------------- factories


def test_make_beta_schedule():
    assert BETA_SCHEDULE_KINDS == ("constant", "warmup", "cyclical", "constrained")
    s = make_beta_schedule("constant", beta=3.0)
    assert isinstance(s, ConstantBeta) and s.value == 3.0
    s = make_beta_schedule("Warmup", beta=2.0, warmup_steps=4, ratio=None)  # None = not given
    assert isinstance(s, LinearWarmup) and s.value_at(2) == 1.0
    s = make_beta_schedule("cyclical", beta=1.0, cycle_steps=10, ratio=0.25, n_cycles=2)
    assert isinstance(s, CyclicalBeta) and (s.ratio, s.n_cycles) == (0.25, 2)
    s = make_beta_schedule("constrained", delta=5.0, beta=2.0, lr=0.1)
    assert isinstance(s, ConstrainedBeta) and (s.target_rate, s.value, s.lr) == (5.0, 2.0, 0.1)
    assert make_beta_schedule("constrained", target_rate=1.0).value == 1.0
    assert isinstance(make_beta_schedule(), ConstantBeta)


@pytest.mark.parametrize(
    "kind, kwargs, name",
    [
        ("linear-ish", {}, "kind"),
        ("constant", dict(beta=1.0, warmup_steps=10), "warmup_steps"),
        ("warmup", dict(beta=1.0, warmup_steps=-1), "warmup_steps"),
        ("cyclical", dict(beta=1.0, cycle_steps=10, ratio=2.0), "ratio"),
        ("constrained", dict(beta=1.0), "target_rate"),
        ("constrained", dict(delta=-3.0), "target_rate"),
        ("constrained", dict(delta=1.0, target_rate=1.0), "target_rate"),
        ("constrained", dict(delta=1.0, cycle_steps=5), "cycle_steps"),
    ],
)
def test_make_beta_schedule_errors(kind, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_beta_schedule(kind, **kwargs)


def test_make_capacity_schedule():
    assert make_capacity_schedule() is None
    assert make_capacity_schedule(None) is None
    c = make_capacity_schedule(25.0, ramp_steps=100)
    assert isinstance(c, CapacityRamp) and c.value_at(50) == 12.5
    assert make_capacity_schedule(5.0).value == 5.0
    with pytest.raises(ValueError, match="max_capacity"):
        make_capacity_schedule(None, ramp_steps=10)
    with pytest.raises(ValueError, match="ramp_steps"):
        make_capacity_schedule(5.0, ramp_steps=-10)


# ----------------------------------------------------------------------------- behaviour


def _train_tiny_vae(beta_of, update, steps=300, seed=0):
    """Train a small MLP VAE on 16-dim data from a 4-dim linear-Gaussian source with
    loss = squared error + beta * KL (fastvae.beta_vae_loss); returns the per-step rates."""
    g = torch.Generator().manual_seed(1234)
    n, d, k, latent = 2048, 16, 4, 8
    X = torch.randn(n, k, generator=g) @ (1.5 * torch.randn(d, k, generator=g)).T
    X = X + 0.1 * torch.randn(n, d, generator=g)
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, 2 * latent))
    dec = nn.Sequential(nn.Linear(latent, 32), nn.Tanh(), nn.Linear(32, d))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2)
    rates = []
    for _ in range(steps):
        x = X[torch.randint(0, n, (256,))]
        mu, logvar = enc(x).chunk(2, dim=-1)
        z = fastvae.reparameterize(mu, logvar)
        # rate = closed-form KL per sample, distortion = per-sample squared error (batch means);
        # beta is a python float or (ConstrainedBeta after tensor updates) a 0-dim tensor
        loss, _, rate = fastvae.beta_vae_loss(dec(z), x, mu, logvar, beta=beta_of(), likelihood="mse")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update(rate.detach())
        rates.append(rate.detach())
    return torch.stack(rates)


@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is fastest and does not fight over shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_constrained_beta_rate_converges_to_target(one_thread):
    with torch.random.fork_rng():
        free = _train_tiny_vae(lambda: 1.0, lambda r: None)[-100:].mean().item()
        # one delta below the unconstrained (beta = 1) rate, one above it
        for delta in (3.0, 15.0):
            sched = ConstrainedBeta(target_rate=delta, lr=0.02)
            rates = _train_tiny_vae(sched, sched.update)
            final = rates[-100:].mean().item()
            assert final == pytest.approx(delta, rel=0.1), (delta, final, sched.value)
            if delta < free:
                assert free > 2 * delta and sched.value.item() > 2.0  # the constraint is active
            else:
                assert free < 0.7 * delta and sched.value.item() < 0.5


def test_constrained_beta_value_feeds_beta_vae_loss():
    """The tensor value is accepted as beta= and gives the same loss as the python float."""
    g = torch.Generator().manual_seed(0)
    x, recon = torch.rand(5, 7, generator=g), torch.randn(5, 7, generator=g)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    s = ConstrainedBeta(target_rate=1.0, lr=0.1)
    beta = s.update(torch.tensor(3.0))
    out = fastvae.beta_vae_loss(recon, x, mu, logvar, beta=beta, likelihood="mse")
    ref = fastvae.beta_vae_loss(recon, x, mu, logvar, beta=beta.item(), likelihood="mse")
    assert out.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((out.distortion + beta * out.rate).item(), rel=1e-6)


# ----------------------------------------------------------------------------- the table of kinds


def test_every_schedule_has_the_schedule_interface():
    from fastvae.schedules import KINDS, OpenLoopSchedule, Schedule

    for kind in KINDS.values():
        assert issubclass(kind.schedule, Schedule), kind.name
    assert issubclass(CapacityRamp, OpenLoopSchedule) and issubclass(ConstrainedBeta, Schedule)
    assert not issubclass(ConstrainedBeta, OpenLoopSchedule)
    assert tuple(KINDS) == BETA_SCHEDULE_KINDS


def test_the_table_builds_each_kind_from_train_options():
    from fastvae.schedules import KINDS
    from fastvae.train import TrainConfig

    config = TrainConfig(target_rate=5.0).to_dict()
    for name, kind in KINDS.items():
        args = kind.options(config)
        assert set(args) <= set(kind.arguments), name
        assert isinstance(make_beta_schedule(name, **args), kind.schedule)
        assert kind.banner(config) and kind.title(config)
