"""The runner of ``fastvae bench``: every case of a :class:`~fastvae.bench.cases.BenchConfig`
prepared, timed and measured, into one report (:func:`run_benchmarks`).

Each case records its median time, its byte floor, the achieved bandwidth ``min_bytes / time``
and that bandwidth as a fraction of the device-to-device copy bandwidth measured in the same run
(``2 * bytes / time`` of a large ``Tensor.copy_``), and its peak memory.
"""
from __future__ import annotations

import datetime as _dt
import os
import time
from typing import Callable, Optional

import torch

from ..environment import versions
from .cases import BenchConfig, Case, iter_cases, training_cases
from .device import device_info, fastvae_backend
from .inputs import Prepared, make_input_sets, prepare
from .memory import PEAK_MEMORY_METHOD, peak_memory
from .results import SCHEMA
from .timing import copy_bandwidth, time_calls, time_interleaved

__all__ = ["dynamo_limits", "measure", "run_benchmarks", "fmt_bytes"]

_NOTES = [
    "median_ms: median over timed calls after warm-up; compile time is never timed.",
    "gbps = min_bytes / median time; frac_copy_bw = gbps / copy_bandwidth.gbps.",
    "fwd runs with inputs that require grad (a training forward); bwd times only the backward "
    "of a fresh graph (its forward untimed); fwd+bwd runs both.",
    "peak_mem_bytes: peak allocated during one call minus allocated before it (inputs and, for "
    "bwd, the forward's saved state excluded).",
]


def dynamo_limits() -> dict:
    # Static shapes recompile per (dtype, batch); the default limit (8 per function) would make
    # dynamo fall back to eager silently, so raise it for the run and fail loudly if it is hit.
    cfg = torch._dynamo.config
    patch = {}
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            patch[name] = max(getattr(cfg, name), 4096)
    if hasattr(cfg, "fail_on_recompile_limit_hit"):
        patch["fail_on_recompile_limit_hit"] = True
    return patch


def _log(config: BenchConfig, msg: str) -> None:
    if not config.quiet:
        print(msg, flush=True)


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _record(case: Case) -> dict:
    """A case's JSON record with its measurements still empty."""
    return {
        "op": case.op, "mode": case.mode, "provider": case.provider, "dtype": case.dtype,
        "batch": case.batch, "sample_size": case.sample_size, "latent_dim": case.latent_dim or None,
        "shape": case.shape, "numel": case.numel, "min_bytes": case.min_bytes, "input_sets": None,
        "median_ms": None, "min_ms": None, "q25_ms": None, "q75_ms": None, "reps": None,
        "gbps": None, "frac_copy_bw": None, "peak_mem_bytes": None, "error": None,
        "host_ms": None, "timer": "per-case",
    }


def _store_timing(record: dict, case: Case, timing: dict, copy_gbps: Optional[float]) -> None:
    t = timing["median_s"]
    record.update(median_ms=t * 1e3, min_ms=timing["min_s"] * 1e3, q25_ms=timing["q25_s"] * 1e3,
                  q75_ms=timing["q75_s"] * 1e3, reps=timing["reps"], gbps=case.min_bytes / t / 1e9)
    if copy_gbps:
        record["frac_copy_bw"] = record["gbps"] / copy_gbps


def measure(case: Case, prepared: Prepared, device, config: BenchConfig, copy_gbps: Optional[float]) -> dict:
    """Time one prepared case and return its JSON record."""
    record = _record(case)
    record["input_sets"] = len(prepared.sets)
    timing = time_calls(prepared.calls, device, rep_ms=config.rep_ms, warmup_ms=config.warmup_ms,
                        setups=prepared.setups)
    _store_timing(record, case, timing, copy_gbps)
    if prepared.setups is None:
        record["peak_mem_bytes"], _ = peak_memory(prepared.calls[0], device)
    else:
        graph = prepared.setups[0]()
        record["peak_mem_bytes"], _ = peak_memory(lambda: prepared.calls[0](graph), device)
        del graph
    return record


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {str(err)[:400]}"


def _measure_training(group: list[Case], device, config: BenchConfig, copy_gbps: Optional[float]) -> list[dict]:
    records = [_record(c) for c in group]
    prepared = []
    try:
        sets = make_input_sets(group[0], device, rotate=config.rotate, seed=config.seed)
        prepared = [prepare(c, device, sets=sets) for c in group]
        timings = time_interleaved(prepared, device, rep_ms=config.rep_ms, warmup_ms=config.warmup_ms)
        for case, p, record, timing in zip(group, prepared, records, timings):
            _store_timing(record, case, timing, copy_gbps)
            record.update(input_sets=len(sets), host_ms=timing["host_median_s"] * 1e3, timer="interleaved")
            record["peak_mem_bytes"], _ = peak_memory(p.calls[0], device)
    except Exception as err:   # record the failure (e.g. out of memory) and go on
        for record in records:
            record["error"] = _error(err)
    finally:
        for p in prepared:
            p.release()
    return records


def _new_report(config: BenchConfig, device: torch.device, info: dict, copy: dict) -> dict:
    return {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": info,
        "versions": versions(),
        "fastvae_backend": fastvae_backend(device),
        "config": config.as_dict(),
        "timer": "cuda-events" if device.type == "cuda" else "perf_counter",
        "copy_bandwidth": copy,
        "peak_memory_method": PEAK_MEMORY_METHOD["cuda" if device.type == "cuda" else "cpu"],
        "notes": list(_NOTES),
        "cases": [],
    }


def _log_record(config: BenchConfig, case: Case, record: dict) -> None:
    if record["error"]:
        _log(config, f"{case.id:<58} ERROR {record['error'][:120]}")
    elif record["timer"] == "interleaved":
        _log(config, f"{case.id:<58} {record['median_ms']:9.4f} ms (host {record['host_ms']:.4f} ms, interleaved)")
    else:
        frac = record["frac_copy_bw"]
        _log(config, f"{case.id:<58} {record['median_ms']:9.4f} ms {record['gbps']:8.1f} GB/s "
                     f"{'' if frac is None else f'{frac:6.1%}'} of copy  peak {fmt_bytes(record['peak_mem_bytes'])}")


class _Groups:
    """One input allocation per (op, dtype, batch) group of cases, made when the group starts; at
    each new group the report so far goes to ``on_progress``."""

    def __init__(self, config: BenchConfig, device: torch.device, report: dict, on_progress):
        self.config, self.device, self.report, self.on_progress = config, device, report, on_progress
        self.key = None
        self.sets = None   # the group's input sets, or the error that allocating them raised

    def start(self, key) -> None:
        if self.on_progress is not None and self.report["cases"]:
            self.on_progress(self.report)
        self.sets = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.key = key

    def enter(self, case: Case) -> None:
        key = (case.op, case.dtype, case.batch)
        if key == self.key:
            return
        self.start(key)
        try:
            self.sets = make_input_sets(case, self.device, rotate=self.config.rotate, seed=self.config.seed)
        except Exception as err:  # e.g. out of memory for the largest size
            self.sets = err


def _run_case(case: Case, sets, device, config: BenchConfig, copy_gbps: float) -> dict:
    prepared = None
    try:
        if isinstance(sets, Exception):
            raise sets
        prepared = prepare(case, device, sets=sets)
        record = measure(case, prepared, device, config, copy_gbps)
    except Exception as err:   # record the failure (e.g. out of memory) and go on
        record = _record(case)
        record["error"] = _error(err)
    finally:
        if prepared is not None:
            prepared.release()
        del prepared
        if device.type == "cuda" and record["error"]:
            torch.cuda.empty_cache()
    return record


def run_benchmarks(config: BenchConfig, on_progress: Optional[Callable[[dict], None]] = None) -> dict:
    """Run every case of ``config`` and return the report (see :func:`fastvae.bench.results.write_json`).

    ``on_progress(report)``, when given, is called with the report so far after each group of cases
    (one op, dtype and size), so that a run cut short keeps what it measured."""
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _run_benchmarks(config, device, started, on_progress)
    finally:
        torch.set_num_threads(threads_before)


def _run_benchmarks(config: BenchConfig, device: torch.device, started: float,
                    on_progress: Optional[Callable[[dict], None]]) -> dict:
    info = device_info(device)
    _log(config, f"fastvae bench on {info['name']} ({device}), max elements {config.resolved_max_elements}")
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        _log(config, "warning: TRITON_INTERPRET is set; the fastvae provider may run the interpreter")
    copy = copy_bandwidth(device, nbytes=config.copy_bytes, rep_ms=config.rep_ms)
    _log(config, f"copy bandwidth: {copy['gbps']:.1f} GB/s ({fmt_bytes(copy['bytes'])} copy_)")
    report = _new_report(config, device, info, copy)
    groups = _Groups(config, device, report, on_progress)
    with torch._dynamo.config.patch(**dynamo_limits()):
        for case in iter_cases(config):
            groups.enter(case)
            record = _run_case(case, groups.sets, device, config, copy["gbps"])
            report["cases"].append(record)
            _log_record(config, case, record)
        for group in training_cases(config):
            groups.start(None)
            for case, record in zip(group, _measure_training(group, device, config, copy["gbps"])):
                report["cases"].append(record)
                _log_record(config, case, record)
    groups.sets = None
    report["wall_s"] = time.perf_counter() - started
    _log(config, f"done: {len(report['cases'])} cases in {report['wall_s']:.0f} s")
    return report
