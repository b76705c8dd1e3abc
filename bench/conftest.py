"""pytest-benchmark suite options; the cases themselves come from :mod:`fastvae.bench`.

    pytest bench/ --benchmark-only -q                      # CPU: small sizes (up to 2**18 elements)
    pytest bench/ --benchmark-only -q --fastvae-max-elements 134217728   # CUDA: the full sweep
    pytest bench/ --benchmark-only -q --fastvae-ops mse --fastvae-providers fastvae,eager

The repository's pytest configuration passes --benchmark-disable (so that the unit tests never
time anything); --benchmark-only given on the command line re-enables benchmarking here.
"""
from __future__ import annotations

import os

# Passive OpenMP waits, before torch loads (as `fastvae bench` sets them): a torch.compile'd provider's
# spinning threads would otherwise slow down the provider timed after it (see fastvae/_openmp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch

from fastvae import bench as fb
from fastvae.environment import auto_device

SUITE_MAX_ELEMENTS = {"cuda": 2**24, "cpu": 2**18}


def pytest_addoption(parser):
    group = parser.getgroup("fastvae-bench", "fastvae benchmark cases (bench/)")
    group.addoption("--fastvae-device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    group.addoption("--fastvae-ops", default=",".join(fb.OPS), help="comma-separated ops")
    group.addoption("--fastvae-modes", default=",".join(fb.MODES), help="comma-separated modes")
    group.addoption("--fastvae-providers", default=",".join(fb.PROVIDERS), help="comma-separated providers")
    group.addoption("--fastvae-dtypes", default=",".join(fb.DTYPES), help="comma-separated dtypes")
    group.addoption("--fastvae-max-elements", type=int, default=None,
                    help=f"largest swept tensor (default {SUITE_MAX_ELEMENTS['cuda']} on CUDA, "
                         f"{SUITE_MAX_ELEMENTS['cpu']} on CPU)")
    group.addoption("--fastvae-min-batch", type=int, default=fb.DEFAULT_MIN_BATCH)


def pytest_configure(config):
    # addopts carries --benchmark-disable for the unit tests; an explicit --benchmark-only wins.
    if config.getoption("benchmark_only", False) and config.getoption("benchmark_disable", False):
        config.option.benchmark_enable = True


def _split(text: str, choices) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in choices]
    if bad:
        raise pytest.UsageError(f"unknown value(s) {bad}; expected a subset of {list(choices)}")
    return items


def bench_config(config) -> fb.BenchConfig:
    device = auto_device(config.getoption("fastvae_device"))
    device_type = torch.device(device).type
    return fb.BenchConfig(
        device=device,
        ops=_split(config.getoption("fastvae_ops"), fb.OPS),
        modes=_split(config.getoption("fastvae_modes"), fb.MODES),
        providers=_split(config.getoption("fastvae_providers"), fb.PROVIDERS),
        dtypes=_split(config.getoption("fastvae_dtypes"), fb.DTYPES + ("float16", "float64")),
        max_elements=config.getoption("fastvae_max_elements") or SUITE_MAX_ELEMENTS.get(device_type, 2**18),
        min_batch=config.getoption("fastvae_min_batch"),
    )


def pytest_generate_tests(metafunc):
    if "bench_case" in metafunc.fixturenames:
        cases = list(fb.iter_cases(bench_config(metafunc.config)))
        metafunc.parametrize("bench_case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def bench_settings(pytestconfig) -> fb.BenchConfig:
    return bench_config(pytestconfig)


@pytest.fixture(scope="session")
def copy_gbps(bench_settings) -> float:
    """Copy bandwidth of this device, measured once per session like in `fastvae bench`."""
    return fb.copy_bandwidth(bench_settings.device)["gbps"]


@pytest.fixture(autouse=True)
def _dynamo_limits():
    # Static-shape torch.compile recompiles per case; keep dynamo from falling back to eager.
    with torch._dynamo.config.patch(**fb.dynamo_limits()):
        yield
