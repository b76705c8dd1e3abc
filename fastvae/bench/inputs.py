"""The inputs of a case and the callables that are timed (:class:`Prepared`).

Input sets are cycled so that together they exceed twice the cache (:func:`n_input_sets`): the
L2 of a CUDA device, the last-level cache of a CPU, so that inputs come from memory.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .cases import MODES, SPECS, Case
from .device import cache_bytes
from .providers import PROVIDERS

__all__ = ["make_inputs", "make_input_sets", "n_input_sets", "provider_fn", "Prepared", "prepare"]


@dataclass
class _InputSet:
    args: tuple            # positional arguments of the op
    wrt: tuple             # the arguments that require grad
    upstream: tuple        # upstream gradients of the non-scalar differentiated outputs (z), else ()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.args, *self.upstream))


def make_inputs(case: Case, device, generator: Optional[torch.Generator] = None) -> _InputSet:
    dtype = getattr(torch, case.dtype)
    kw = dict(device=device, dtype=dtype, generator=generator)
    B, P = case.batch, case.sample_size

    def leaf(t):
        return t.requires_grad_(True)

    if case.op == "reparameterize_kl":
        mu = leaf(torch.randn(B, P, **kw))
        logvar = leaf(torch.randn(B, P, **kw).mul_(0.5))
        grad_z = torch.randn(B, P, **kw)
        return _InputSet((mu, logvar), (mu, logvar), (grad_z,))
    if case.op == "free_bits_kl":  # a scalar loss: no upstream gradient to feed
        mu = leaf(torch.randn(B, P, **kw))
        logvar = leaf(torch.randn(B, P, **kw).mul_(0.5))
        return _InputSet((mu, logvar), (mu, logvar), ())
    x = leaf(torch.randn(B, P, **kw))
    if case.op in ("bernoulli_nll", "beta_vae_loss", "continuous_bernoulli_nll"):
        target = torch.rand(B, P, **kw)          # pixel intensities in [0, 1)
    else:
        target = torch.randn(B, P, **kw)
    if case.op == "beta_vae_loss":
        L = case.latent_dim
        mu = leaf(torch.randn(B, L, **kw))
        logvar = leaf(torch.randn(B, L, **kw).mul_(0.5))
        return _InputSet((x, target, mu, logvar), (x, mu, logvar), ())
    if case.op == "training_step":
        L = case.latent_dim
        mu = leaf(torch.randn(B, L, **kw))
        logvar = leaf(torch.randn(B, L, **kw).mul_(0.5))
        grad_z = torch.randn(B, L, **kw)   # what the decoder would send back
        return _InputSet((mu, logvar, x, target), (x, mu, logvar), (grad_z,))
    return _InputSet((x, target), (x,), ())


_COMPILED: dict = {}


def _compiled(op: str) -> Callable:
    # One compiled wrapper per op, so dynamo's cache serves every mode of a shape.
    fn = _COMPILED.get(op)
    if fn is None:
        fn = _COMPILED[op] = torch.compile(SPECS[op].eager, dynamic=False)
    return fn


def provider_fn(op: str, provider: str) -> Callable:
    spec = SPECS[op]
    if provider == "fastvae":
        return spec.fastvae
    if provider == "eager":
        return spec.eager
    if provider == "compile":
        return _compiled(op)
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class Prepared:
    """The callables of one case on each input set ``i``.

    ``fwd`` and ``fwd+bwd``: ``calls[i]()`` runs the case and ``setups`` is None. ``bwd``:
    ``setups[i]()`` runs the forward (never timed) and ``calls[i](graph)`` runs the backward of that
    fresh graph once, as a training step does (a retained graph backpropagated again can take a
    different path, e.g. fastvae recomputes gradient buffers it scaled in place).

    Building it runs one untimed forward, which compiles the compile provider and JIT-builds
    fastvae's kernels before any timing.
    """

    def __init__(self, case: Case, sets: list[_InputSet]):
        self.case = case
        self.sets = sets
        fn = provider_fn(case.op, case.provider)
        n_diff = SPECS[case.op].n_diff
        self.calls: list[Callable] = []
        self.setups: Optional[list[Callable[[], tuple]]] = [] if case.mode == "bwd" else None
        if case.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {case.mode!r}")
        first = _as_tuple(fn(*sets[0].args))[:n_diff]
        # (dtype, device) of each scalar output; None for a tensor output (z), whose upstream gradient is given
        scalars = [(o.dtype, o.device) if o.dim() == 0 else None for o in first]
        del first
        for s in sets:
            upstream = iter(s.upstream)
            grads = tuple(torch.ones((), dtype=sc[0], device=sc[1]) if sc else next(upstream) for sc in scalars)
            if case.mode == "fwd":
                self.calls.append(lambda s=s: fn(*s.args))
            elif case.mode == "bwd":
                self.setups.append(lambda s=s: _as_tuple(fn(*s.args))[:n_diff])
                self.calls.append(lambda outs, s=s, grads=grads: torch.autograd.grad(outs, s.wrt, grads))
            else:
                self.calls.append(lambda s=s, grads=grads:
                                  torch.autograd.grad(_as_tuple(fn(*s.args))[:n_diff], s.wrt, grads))

    def run(self, i: int = 0):
        """Run the case once on input set ``i`` (its setup included)."""
        if self.setups is None:
            return self.calls[i]()
        return self.calls[i](self.setups[i]())

    def release(self) -> None:
        self.calls.clear()
        if self.setups:
            self.setups.clear()


def n_input_sets(set_bytes: int, device, rotate: bool = True, max_sets: int = 64) -> int:
    """Enough input sets that together they exceed twice the cache (1 when one set already does)."""
    if not rotate or set_bytes <= 0:
        return 1
    cache = cache_bytes(device)
    if not cache:
        return 1
    return max(1, min(max_sets, math.ceil(2 * cache / set_bytes)))


def prepare(case: Case, device, rotate: bool = True, seed: int = 0,
            sets: Optional[list[_InputSet]] = None) -> Prepared:
    """Allocate the input sets of ``case`` (unless given) and build its callables."""
    if sets is None:
        sets = make_input_sets(case, device, rotate=rotate, seed=seed)
    return Prepared(case, sets)


def make_input_sets(case: Case, device, rotate: bool = True, seed: int = 0) -> list[_InputSet]:
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    first = make_inputs(case, device, gen)
    sets = [first]
    for _ in range(n_input_sets(first.nbytes, device, rotate) - 1):
        sets.append(make_inputs(case, device, gen))
    return sets
