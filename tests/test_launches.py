"""How many device kernels fastvae's ops launch: pinned, so that a later change cannot quietly add a pass.

The training pattern of the README,

    z, rate = reparameterize_kl(mu, logvar, reduction='none')
    recon = decoder(z)
    loss, distortion, rate = beta_vae_loss(recon, x, rate=rate, beta=b)
    loss.backward()        # z's gradient flows back through the decoder

launches at most 3 device kernels in forward besides the seed draw and at most 3 in backward, counting
what fastvae's calls and their backward nodes launch (Triton kernels and ATen kernels together), not the
decoder's own.  Triton launches are counted in the interpreter; ATen kernels with a dispatch mode that
leaves out what moves no data (views, allocations) and what the interpreter does inside a launch.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastvae as fv

# ATen ops that launch no device kernel: views, metadata and uninitialised allocations.
NO_KERNEL = {
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "view", "_unsafe_view", "as_strided",
    "expand", "select", "slice", "t", "transpose", "unsqueeze", "squeeze", "alias", "detach", "permute", "reshape",
    "_reshape_alias", "unbind", "split", "split_with_sizes", "chunk", "narrow", "lift_fresh",
}


class _Counter(TorchDispatchMode):
    """Records ATen ops that launch a kernel, outside Triton launches and outside ``excluded`` autograd nodes."""

    def __init__(self, excluded=()):
        super().__init__()
        self.ops: list[str] = []
        self.paused = False
        self.excluded = set(excluded)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        node = torch._C._current_autograd_node()
        if not self.paused and name not in NO_KERNEL and (node is None or node not in self.excluded):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@pytest.fixture
def counted(triton_backend, monkeypatch):
    """(counter factory, list of Triton launches) for the Triton kernels in the interpreter."""
    from triton.runtime import interpreter

    launches: list[str] = []
    counters: list[_Counter] = []
    original = interpreter.GridExecutor.__call__

    def counting(self, *args, **kwargs):
        launches.append(getattr(self.fn, "__name__", repr(self.fn)))
        for c in counters:
            c.paused = True
        try:
            return original(self, *args, **kwargs)
        finally:
            for c in counters:
                c.paused = False

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", counting)

    def make(excluded=()):
        c = _Counter(excluded)
        counters.append(c)
        return c

    return make, launches


def _nodes_between(out: torch.Tensor, stop: torch.Tensor) -> set:
    """The autograd nodes from ``out`` back to (not including) ``stop``'s: the decoder's."""
    stop_node = stop.grad_fn
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node is stop_node or node in seen:
            continue
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return seen


def _training_step(counted, reduction, capacity, beta, likelihood="bernoulli", batch=6, latent=3, pixels=10):
    make, launches = counted
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(batch, latent, generator=g).requires_grad_()
    logvar = (0.3 * torch.randn(batch, latent, generator=g)).requires_grad_()
    weight = torch.randn(latent, pixels, generator=g)
    x = torch.rand(batch, pixels, generator=g)
    seed_gen = torch.Generator().manual_seed(1)

    forward = make()
    with forward:
        z, rate = fv.reparameterize_kl(mu, logvar, reduction="none", generator=seed_gen)
    recon = z @ weight  # the decoder, outside the count
    with forward:
        out = fv.beta_vae_loss(recon, x, rate=rate, beta=beta, capacity=capacity, likelihood=likelihood,
                               reduction=reduction)
    forward_launches = list(launches)
    forward_ops = [op for op in forward.ops if op != "randint"]  # the seed draw
    grad = torch.rand(out.loss.shape, generator=g) + 0.5
    backward = make(_nodes_between(recon, z))
    with backward:
        out.loss.backward(grad)
    backward_launches = launches[len(forward_launches):]
    assert mu.grad is not None and logvar.grad is not None
    return forward_launches, forward_ops, backward_launches, backward.ops


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("capacity", [None, 2.0])
@pytest.mark.parametrize("beta_kind", ["float", "tensor"])
def test_training_pattern_launches_at_most_three_kernels_each_way(counted, reduction, capacity, beta_kind):
    beta = 4.0 if beta_kind == "float" else torch.tensor(4.0)
    f_launch, f_ops, b_launch, b_ops = _training_step(counted, reduction, capacity, beta)
    assert len(f_launch) + len(f_ops) <= 3, f"forward: Triton {f_launch}, ATen {f_ops}"
    assert len(b_launch) + len(b_ops) <= 3, f"backward: Triton {b_launch}, ATen {b_ops}"
    # the fused path: one latent kernel and one likelihood kernel each way, no second KL
    assert f_launch.count("latent_forward_kernel") == 1 and b_launch.count("latent_backward_kernel") == 1
    assert f_launch.count("nll_forward_kernel") == 1 and b_launch.count("nll_backward_kernel") == 1


@pytest.mark.parametrize("likelihood", ["gaussian", "mse", "laplace"])
def test_other_likelihoods_keep_the_same_budget(counted, likelihood):
    f_launch, f_ops, b_launch, b_ops = _training_step(counted, "mean", None, 1.0, likelihood=likelihood)
    assert len(f_launch) + len(f_ops) <= 3, f"forward: Triton {f_launch}, ATen {f_ops}"
    assert len(b_launch) + len(b_ops) <= 3, f"backward: Triton {b_launch}, ATen {b_ops}"


def test_a_likelihood_alone_is_two_launches_forward_and_one_backward(counted):
    make, launches = counted
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, 9, generator=g).requires_grad_()
    t = torch.rand(5, 9, generator=g)
    forward = make()
    with forward:
        loss = fv.bernoulli_nll(x, t)
    assert len(launches) + len(forward.ops) <= 2, (launches, forward.ops)
    n = len(launches)
    backward = make()
    with backward:
        loss.backward(torch.tensor(0.7))
    assert len(launches) - n + len(backward.ops) <= 1, (launches[n:], backward.ops)


def test_the_counter_sees_kernels(counted):
    """The count is not vacuous: the eager formula of the same step launches many ATen kernels."""
    make, _ = counted
    mu = torch.randn(4, 3, requires_grad=True)
    c = make()
    with c:
        z = mu + torch.randn_like(mu) * 2.0
        (z.sum() * 3).backward()
    assert len(c.ops) >= 5, c.ops


def test_the_small_tiles_switch_reaches_every_kernel_path():
    """What the 'tiles' test backend relies on: several column splits of two blocks each (a column loop),
    tiles that start past column 0 (Philox counters from an offset) and a persistent grid shorter than
    the tile count."""
    from fastvae.ops import _backend

    cpu = torch.device("cpu")
    with _backend.small_tiles():
        t = _backend.tiling(5, 37, cpu)
        assert t.n_split >= 2 and t.split_cols == 2 * t.block_d and t.block_d % 4 == 0
        assert t.grid[0] >= 2 and t.programs < t.n_tiles
        assert _backend.finish_block(5) < 5
    t = _backend.tiling(5, 37, cpu)
    assert t.n_split == 1 and t.programs == t.n_tiles
