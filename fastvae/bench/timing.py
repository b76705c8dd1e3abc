"""Timing: the median of many calls of a case (:func:`time_calls`), of several cases in turn
(:func:`time_interleaved`), and the copy bandwidth the achieved bandwidths are compared with.

On CUDA, CUDA events around every call (median of many calls after a warm-up); on CPU,
``time.perf_counter`` around every call (median).
"""
from __future__ import annotations

import math
import random
import statistics
import time
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch

from .device import cache_bytes

if TYPE_CHECKING:
    from .inputs import Prepared

__all__ = ["sync", "time_calls", "time_interleaved", "copy_bandwidth"]


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _summary(times: list) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "min_s": min(times), "q25_s": q[0], "q75_s": q[2],
            "reps": len(times)}


class _Calls:
    """Calls cycled over the input sets; with ``setups``, each call's untimed setup runs right
    after the previous call on its set (see :func:`time_calls`)."""

    def __init__(self, calls: Sequence[Callable], setups: Optional[Sequence[Callable]]):
        self.calls = calls
        self.setups = setups
        self.states = [None] * len(calls) if setups is None else [setup() for setup in setups]

    def __call__(self, i: int, before=None, after=None) -> None:
        j = i % len(self.calls)
        if before is not None:
            before()
        if self.setups is None:
            self.calls[j]()
        else:
            state, self.states[j] = self.states[j], None
            self.calls[j](state)
            del state
        if after is not None:
            after()
        if self.setups is not None:
            self.states[j] = self.setups[j]()


def _time_cuda(timed: _Calls, device, rep_ms: Optional[float], warmup_ms: Optional[float]) -> list:
    rep_ms = 100.0 if rep_ms is None else rep_ms
    warmup_ms = 25.0 if warmup_ms is None else warmup_ms
    n = len(timed.calls)

    def event_timed(count):
        """Milliseconds of ``count`` calls, each between its own pair of CUDA events."""
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(count)]
        sync(device)
        for i, (a, b) in enumerate(events):
            timed(i, a.record, b.record)
        sync(device)
        return [a.elapsed_time(b) for a, b in events]

    for i in range(n):
        timed(i)
    est_ms = max(statistics.median(event_timed(max(3, n))), 1e-3)
    for i in range(max(n, math.ceil(warmup_ms / est_ms))):
        timed(i)
    reps = int(min(2000, max(20, math.ceil(rep_ms / est_ms))))
    return [ms * 1e-3 for ms in event_timed(reps)]


def _time_cpu(timed: _Calls, rep_ms: Optional[float], warmup_ms: Optional[float]) -> list:
    rep_s = (200.0 if rep_ms is None else rep_ms) * 1e-3
    warmup_s = (0.0 if warmup_ms is None else warmup_ms) * 1e-3
    t0 = time.perf_counter()
    i = 0
    while i < 1 or time.perf_counter() - t0 < warmup_s:
        timed(i)
        i += 1
    times = []
    stamp = [0.0]

    def start():
        stamp[0] = time.perf_counter()

    def stop():
        times.append(time.perf_counter() - stamp[0])

    t0 = time.perf_counter()
    i = 0
    while len(times) < 200 and (len(times) < 5 or time.perf_counter() - t0 < rep_s):
        timed(i, start, stop)
        i += 1
    return times


def time_calls(calls: Sequence[Callable], device, rep_ms: Optional[float] = None,
               warmup_ms: Optional[float] = None, setups: Optional[Sequence[Callable]] = None) -> dict:
    """Median time of one call, cycling through ``calls`` (one per input set).

    With ``setups`` (``bwd``: the forward that builds a graph), call ``i`` is timed as
    ``calls[i](state)`` where ``state = setups[i]()`` was made, untimed, right after the previous
    call on set ``i``; so the other sets' traffic passes between a set's setup and its timed call,
    and the setup does not leave that set's inputs in cache.
    CUDA: a CUDA event pair around every call; ``warmup_ms`` of calls first (default 25 ms), then
    about ``rep_ms`` of timed calls (default 100 ms; at least 20 and at most 2000 calls).
    CPU: ``time.perf_counter`` around every call; ``warmup_ms`` of calls first (default 0: one
    call), then calls until at least 5 were timed and ``rep_ms`` (default 200 ms) passed, at most
    200 calls.
    Returns ``{"median_s", "min_s", "q25_s", "q75_s", "reps"}``.
    """
    device = torch.device(device)
    timed = _Calls(calls, setups)
    if device.type == "cuda":
        times = _time_cuda(timed, device, rep_ms, warmup_ms)
    else:
        times = _time_cpu(timed, rep_ms, warmup_ms)
    timed.states.clear()
    return _summary(times)


def round_orders(k: int, seed: int = 0):
    """An endless stream of orders of ``range(k)``, one per round: each a seeded random permutation, turned
    one place on when it would start with the case the previous round ended with (no case follows
    itself, which would favour it with warm caches).  Over many rounds each case directly follows each
    other in about ``1 / (k - 1)`` of its calls."""
    rng = random.Random(seed)
    order = list(range(k))
    last = None
    while True:
        rng.shuffle(order)
        if k > 1 and order[0] == last:
            order = order[1:] + order[:1]
        last = order[-1] if order else None
        yield tuple(order)


def time_interleaved(prepared: Sequence["Prepared"], device, rep_ms: Optional[float] = None,
                     warmup_ms: Optional[float] = None) -> list[dict]:
    """Median time of one call of each prepared case, the cases timed in turn call by call (one call of
    each per round), so a drift of the machine (clock, load, cache) falls on all of them alike.  Each
    round takes the cases in a fresh random order (:func:`round_orders`), so that every case follows
    every other about equally often: on the CPU a call is slower right after a torch.compile'd one (by
    ~10% at batch 16, bench/NOTES.md), and a fixed order, or a fixed order started one case further on
    each round (which keeps each case's predecessor in all but one place of a round), would charge
    that to one provider.

    Each call is timed whole: on CUDA a pair of CUDA events around it, so that host-bound gaps count
    (``median_s``), and ``perf_counter`` around it for the host time (``host_median_s``); on CPU the
    two are the same clock.  Rounds: ``warmup_ms`` (default 25 ms CUDA, 100 ms CPU) untimed, then
    until ``rep_ms`` (default 200 ms CUDA, 1000 ms CPU) passed and at least 20 rounds, at most 2000.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    rep_s = (200.0 if cuda else 1000.0) * 1e-3 if rep_ms is None else rep_ms * 1e-3
    warm_s = (25.0 if cuda else 100.0) * 1e-3 if warmup_ms is None else warmup_ms * 1e-3
    k = len(prepared)
    host = [[] for _ in range(k)]
    events = [[] for _ in range(k)]

    orders = round_orders(k)

    def one_round(i, timed):
        for j in next(orders):
            p = prepared[j]
            call = p.calls[i % len(p.calls)]
            if timed and cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
            t0 = time.perf_counter()
            call()
            t1 = time.perf_counter()
            if timed:
                host[j].append(t1 - t0)
                if cuda:
                    b.record()
                    events[j].append((a, b))

    t0, i = time.perf_counter(), 0
    while i < 2 or time.perf_counter() - t0 < warm_s:
        one_round(i, False)
        i += 1
    sync(device)
    t0, rounds = time.perf_counter(), 0
    while rounds < 2000 and (rounds < 20 or time.perf_counter() - t0 < rep_s):
        one_round(i, True)
        i += 1
        rounds += 1
    sync(device)
    out = []
    for j in range(k):
        times = [a.elapsed_time(b) * 1e-3 for a, b in events[j]] if cuda else host[j]
        out.append(dict(_summary(times), host_median_s=statistics.median(host[j])))
    return out


def _time_copy(nbytes: int, device: torch.device, rep_ms: Optional[float]) -> dict:
    """The timing of ``dst.copy_(src)`` for ``nbytes`` tensors (freed on return)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    return time_calls([lambda: dst.copy_(src)], device, rep_ms=rep_ms)


def copy_bandwidth(device, nbytes: Optional[int] = None, rep_ms: Optional[float] = None) -> dict:
    """Device-to-device copy bandwidth, ``2 * nbytes / median time`` of ``dst.copy_(src)``, timed
    like the cases. Default size: 1 GiB on CUDA, 8x the last-level cache (at least 64 MiB) on CPU."""
    device = torch.device(device)
    if nbytes is None:
        if device.type == "cuda":
            nbytes = 2**30
        else:
            nbytes = max(64 * 2**20, 8 * (cache_bytes(device) or 0))
    timing = _time_copy(nbytes, device, rep_ms)
    return {"bytes": int(nbytes), "median_s": timing["median_s"], "reps": timing["reps"],
            "gbps": 2 * nbytes / timing["median_s"] / 1e9}
