"""pytest-benchmark suite: the cases of ``fastvae bench`` (op x mode x provider x dtype x size).

Every test times one case with ``benchmark.pedantic``, cycling through the case's input sets (enough
of them to exceed twice the cache, as in ``fastvae bench``); for ``bwd`` the forward is pedantic's
untimed ``setup``. On CUDA the timed function ends with
``torch.cuda.synchronize()`` so that pytest-benchmark's wall-clock rounds cover the GPU work, and the
CUDA-event median of ``fastvae.bench.time_calls`` is recorded in ``extra_info`` as well (that is the
number to compare with the ``fastvae bench`` report). ``extra_info`` also holds the byte floor, the
achieved GB/s and its fraction of the copy bandwidth.
"""
from __future__ import annotations

import itertools
import time

import torch

from fastvae import bench as fb


def _rounds(run_once, budget_s: float) -> int:
    start = time.perf_counter()
    run_once()
    est = max(time.perf_counter() - start, 1e-6)
    return int(min(200, max(5, budget_s / est)))


def test_case(benchmark, bench_case: fb.Case, bench_settings: fb.BenchConfig, copy_gbps: float):
    device = torch.device(bench_settings.device)
    prepared = fb.prepare(bench_case, device, rotate=bench_settings.rotate, seed=bench_settings.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
    index = itertools.cycle(range(len(prepared.calls)))
    try:
        if prepared.setups is None:
            setup = None

            def target():
                prepared.calls[next(index)]()
                sync(device)
        else:
            # bwd: pytest-benchmark runs `setup` (the forward) outside the timed round
            def setup():
                i = next(index)
                graph = prepared.setups[i]()
                sync(device)
                return (i, graph), {}

            def target(i, graph):
                prepared.calls[i](graph)
                sync(device)

        def run_once():
            if setup is None:
                target()
            else:
                args, _ = setup()
                target(*args)

        benchmark.group = (f"{bench_case.op} {bench_case.mode} {bench_case.dtype} "
                           f"{bench_case.batch}x{bench_case.sample_size}")
        benchmark.extra_info.update(
            op=bench_case.op, mode=bench_case.mode, provider=bench_case.provider, dtype=bench_case.dtype,
            shape=bench_case.shape, numel=bench_case.numel, min_bytes=bench_case.min_bytes,
            input_sets=len(prepared.calls), copy_gbps=copy_gbps,
        )
        if device.type == "cuda":
            timing = fb.time_calls(prepared.calls, device, setups=prepared.setups)
            gbps = bench_case.min_bytes / timing["median_s"] / 1e9
            benchmark.extra_info.update(cuda_event_median_ms=timing["median_s"] * 1e3, cuda_event_gbps=gbps,
                                        cuda_event_frac_copy_bw=gbps / copy_gbps)
        run_once()   # warm-up outside pytest-benchmark (e.g. torch.compile's backward compiles here)
        rounds = _rounds(run_once, budget_s=0.2)
        benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=1, iterations=1)
        stats = getattr(benchmark, "stats", None)
        if stats is not None:   # None when benchmarking is disabled (plain `pytest bench/`)
            gbps = bench_case.min_bytes / stats.stats.median / 1e9
            benchmark.extra_info.update(gbps=gbps, frac_copy_bw=gbps / copy_gbps)
    finally:
        prepared.release()
