"""``fastvae bench``: time fastvae's ops against eager PyTorch and ``torch.compile``.

The cases are defined here once; the pytest-benchmark suites under the repository's ``bench/``
import them.  One file per job:

===============  ==============================================================================
``cases.py``     the ops, modes, dtypes and sizes; a case and its byte floor; the sweeps
``providers.py`` what is timed: fastvae's op, the eager PyTorch baseline, its torch.compile
``inputs.py``    a case's input sets (cycled past the cache) and its timed callables
``timing.py``    medians of many calls (CUDA events or perf_counter); interleaved; copy bandwidth
``memory.py``    the peak memory of one call (CUDA allocator, or the CPU profiler's allocations)
``device.py``    the device's name, slug and cache size; the fastvae backend its tensors get
``runner.py``    every case of a config, measured, into one report
``results.py``   the JSON report: writing, reading, merging runs
``cli.py``       the command line
===============  ==============================================================================

Plots, markdown tables and the bench/README.md block are made by the repository's
``bench/report.py`` (which ``fastvae bench`` runs in a checkout).
"""
from .cases import (
    DEFAULT_LATENT_DIM,
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MIN_BATCH,
    DEFAULT_OBJECTIVE_LATENT_DIM,
    DEFAULT_SAMPLE_SIZE,
    DTYPES,
    MODES,
    OPS,
    SPECS,
    TRAINING_SIZES,
    BenchConfig,
    Case,
    batch_sweep,
    iter_cases,
    min_bytes,
    training_cases,
)
from .cli import add_arguments, main, report_module, run
from .device import cache_bytes, cpu_name, device_info, fastvae_backend
from .inputs import Prepared, make_input_sets, make_inputs, n_input_sets, prepare, provider_fn
from .memory import PEAK_MEMORY_METHOD, peak_memory
from .providers import (
    BETA,
    FREE_BITS,
    PROVIDERS,
    eager_bernoulli_nll,
    eager_beta_vae_loss,
    eager_continuous_bernoulli_nll,
    eager_free_bits_kl,
    eager_gaussian_nll,
    eager_laplace_nll,
    eager_mse,
    eager_reparameterize_kl,
    eager_training_step,
)
from .results import SCHEMA, case_key, default_json_path, load_json, merge_reports, write_json
from .runner import dynamo_limits, fmt_bytes, measure, run_benchmarks
from .timing import copy_bandwidth, time_calls, time_interleaved

__all__ = [
    "OPS", "MODES", "PROVIDERS", "DTYPES", "SPECS", "TRAINING_SIZES", "BETA", "SCHEMA", "Case", "BenchConfig",
    "Prepared", "iter_cases", "training_cases", "batch_sweep", "min_bytes", "make_inputs", "make_input_sets",
    "n_input_sets", "prepare", "provider_fn", "cache_bytes", "cpu_name", "device_info", "fastvae_backend",
    "time_calls", "time_interleaved", "copy_bandwidth", "peak_memory", "PEAK_MEMORY_METHOD", "dynamo_limits",
    "measure", "run_benchmarks", "fmt_bytes", "write_json", "load_json", "merge_reports", "case_key",
    "default_json_path", "add_arguments", "run", "main", "report_module",
    "eager_reparameterize_kl", "eager_bernoulli_nll", "eager_gaussian_nll", "eager_mse", "eager_laplace_nll",
    "eager_beta_vae_loss", "eager_training_step", "eager_continuous_bernoulli_nll", "eager_free_bits_kl", "FREE_BITS",
    "DEFAULT_MAX_ELEMENTS", "DEFAULT_MIN_BATCH", "DEFAULT_SAMPLE_SIZE", "DEFAULT_LATENT_DIM",
    "DEFAULT_OBJECTIVE_LATENT_DIM",
]
