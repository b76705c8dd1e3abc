"""The command line of ``fastvae bench`` (:func:`main`).

Where it writes: the folder ``--out`` names, by default a new ``bench-results/<device>-<date-time>/``
under the current directory: ``<device>.json``, one PNG per op and ``README.md`` with the summary
tables.  The repository's committed results (``bench/results/`` and the block of ``bench/README.md``)
are written only with ``--update-results``.  ``--suite objectives`` runs
:mod:`fastvae.bench.objectives` instead and writes ``<device>-objectives.json`` the same way.

On the CPU the run pins torch's thread count (:data:`DEFAULT_CPU_THREADS` unless ``--threads``):
with the default count on a machine that is busy with other work the timings snap to the OS
scheduler's time slices.

The measuring is this package's; the plots, the markdown tables and the rewriting of a README block
are the repository's ``bench/report.py``, which ``fastvae bench`` runs when it is there (a checkout)
and which can be run by hand on a JSON report (``python bench/report.py results.json``).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import functools
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

from .._argparse import comma_separated
from ..environment import resolve_device
from . import cases as C
from .objectives import OBJECTIVE_OPS, ObjectiveConfig, run_objectives
from .results import load_json, merge_reports, write_json
from .runner import run_benchmarks

__all__ = ["add_arguments", "run", "main", "report_module", "checkout_root", "objectives_table", "DEFAULT_CPU_THREADS",
           "SUITES"]

#: torch's thread count for a CPU run without --threads.
DEFAULT_CPU_THREADS = 1
#: ``--suite``: the op sweep, or the objectives against their eager big-intermediate forms.
SUITES = ("ops", "objectives")


class BenchError(Exception):
    """A bad option, device or file: printed as ``fastvae bench: error: ...``, status 2."""


def checkout_root() -> Optional[Path]:
    """The fastvae checkout this package was imported from (the folder holding ``bench/report.py``)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "bench" / "report.py").is_file() else None


@functools.lru_cache(maxsize=None)
def report_module():
    """``bench/report.py`` of the fastvae checkout this package was imported from (or of the
    current folder), loaded as a module; None when there is none (an installed package)."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = root / "bench" / "report.py"
        if path.is_file():
            spec = importlib.util.spec_from_file_location("fastvae_bench_report", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    return None


def report_outputs(json_path, readme, make_plots: bool = True, quiet: bool = False) -> Optional[dict]:
    """Plots and the README table of a JSON report, by bench/report.py (None without a checkout)."""
    if not make_plots and readme is None:
        return None
    module = report_module()
    if module is None:
        if not quiet:
            print("note: no bench/report.py (a fastvae checkout) here, so no plots or README table were made",
                  file=sys.stderr)
        return None
    return module.report_outputs(json_path, readme, make_plots=make_plots, quiet=quiet)


def _csv(choices: Sequence[str]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(choices)}, got {text!r}")
        return items
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``fastvae bench``."""
    # Long on purpose: a flat list of declarations, one per option, in the order ``-h`` shows them.
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda, cuda:N or auto (CUDA when available; default)")
    parser.add_argument("--ops", type=_csv(C.OPS), default=list(C.OPS),
                        help=f"comma-separated subset of {','.join(C.OPS)}")
    parser.add_argument("--modes", type=_csv(C.MODES), default=list(C.MODES),
                        help="comma-separated subset of fwd,bwd,fwd+bwd")
    parser.add_argument("--providers", type=_csv(C.PROVIDERS), default=list(C.PROVIDERS),
                        help="comma-separated subset of fastvae,eager,compile")
    parser.add_argument("--dtypes", type=_csv(C.DTYPES + ("float16", "float64")), default=list(C.DTYPES),
                        help="comma-separated dtypes (default float32,bfloat16)")
    parser.add_argument("--max-elements", type=int, default=None,
                        help=f"largest swept tensor, in elements (default {C.DEFAULT_MAX_ELEMENTS['cuda']} on CUDA "
                             f"and CPU; on a small CPU the full sweep takes most of an hour, and 2097152 "
                             f"a few minutes)")
    parser.add_argument("--min-batch", type=int, default=C.DEFAULT_MIN_BATCH,
                        help="smallest batch of the sweep (default 256)")
    parser.add_argument("--sample-size", type=int, default=C.DEFAULT_SAMPLE_SIZE,
                        help="per-sample elements of the likelihood and beta_vae_loss cases (default 4096)")
    parser.add_argument("--latent-dim", type=int, default=C.DEFAULT_LATENT_DIM,
                        help="latent width of the reparameterize_kl case (default 256)")
    parser.add_argument("--objective-latent-dim", type=int, default=C.DEFAULT_OBJECTIVE_LATENT_DIM,
                        help="latent width of the beta_vae_loss case (default 64)")
    parser.add_argument("--rep-ms", type=float, default=None,
                        help="timed calls per case, in milliseconds (default 100 on CUDA, 200 on CPU)")
    parser.add_argument("--warmup-ms", type=float, default=None, help="warm-up per case in milliseconds")
    parser.add_argument("--no-rotate", action="store_true", help="time one input set (inputs may stay in cache)")
    parser.add_argument("--copy-bytes", type=int, default=None,
                        help="size of the copy_ that measures the copy bandwidth (default 1 GiB on CUDA, "
                             "8x the last-level cache and at least 64 MiB on CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch.set_num_threads for the run (default on the CPU: {DEFAULT_CPU_THREADS}, pinned so "
                             "that timings on a busy machine stay stable; on CUDA: unchanged)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, metavar="FOLDER",
                        help="output folder for <device>.json, the PNGs and README.md (default: a new "
                             "bench-results/<device>-<date-time> under the current directory); a path ending in "
                             ".json names the report itself")
    parser.add_argument("--update-results", action="store_true",
                        help="write the repository's committed results instead: bench/results/<device>.json, its "
                             "PNGs and the block of bench/README.md (in a fastvae checkout)")
    parser.add_argument("--readme", default=None,
                        help="markdown file whose summary block is (re)written (default: README.md in the output "
                             "folder; bench/README.md with --update-results); 'none' to skip")
    parser.add_argument("--merge", action="store_true",
                        help="merge into an existing JSON report at the output path: its cases not re-run "
                             "here are kept (so a long sweep can be split over several runs)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--plot-only", metavar="JSON", default=None,
                        help="run nothing: write the plots and the README table from a JSON report")
    parser.add_argument("--quiet", action="store_true")
    obj = parser.add_argument_group(
        "--suite objectives: tc_decomposition and the IWAE log-likelihood and loss against their eager forms "
        "(time and peak memory; eager cases over --memory-budget are skipped with their predicted size)")
    obj.add_argument("--suite", choices=SUITES, default="ops",
                     help="ops: the fused ops against eager and torch.compile (default); objectives: the streaming "
                          "objectives against the eager big-intermediate form, written to <device>-objectives.json")
    obj.add_argument("--objectives", type=_csv(OBJECTIVE_OPS), default=list(OBJECTIVE_OPS),
                     help=f"comma-separated subset of {','.join(OBJECTIVE_OPS)}")
    obj.add_argument("--tc-batches", type=_ints, default=None, metavar="B,B,...",
                     help=f"batch sizes of tc_decomposition (default {_join(ObjectiveConfig.tc_batches)})")
    obj.add_argument("--iwae-ks", type=_ints, default=None, metavar="K,K,...",
                     help=f"k of the IWAE log-likelihood (default {_join(ObjectiveConfig.iwae_ks)})")
    obj.add_argument("--iwae-loss-ks", type=_ints, default=None, metavar="K,K,...",
                     help=f"k of the IWAE loss (default {_join(ObjectiveConfig.iwae_loss_ks)})")
    obj.add_argument("--memory-budget", type=float, default=ObjectiveConfig.memory_budget / 2**30, metavar="GIB",
                     help="eager cases predicted to need more than this many GiB are skipped (default %(default)g)")
    return parser


def _ints(text: str) -> list[int]:
    return comma_separated(text, int, "positive integers", lambda v: v >= 1)


def _join(values) -> str:
    return ",".join(str(v) for v in values)


def _json_path(args: argparse.Namespace, slug: str) -> Path:
    """Where the report goes (see the module docstring)."""
    if args.update_results:
        root = checkout_root()
        if root is None:
            raise BenchError("--update-results writes the repository's bench/results/, which only a fastvae "
                             "checkout has; use --out FOLDER")
        return root / "bench" / "results" / f"{slug}.json"
    if args.out and str(args.out).lower().endswith(".json"):
        return Path(args.out)
    if args.out:
        return Path(args.out) / f"{slug}.json"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, k = Path("bench-results") / f"{slug}-{stamp}", 2
    while folder.exists():
        folder, k = Path("bench-results") / f"{slug}-{stamp}-{k}", k + 1
    return folder / f"{slug}.json"


def _readme(args: argparse.Namespace, json_path: Path) -> Optional[Path]:
    if args.readme is not None:
        return None if str(args.readme).lower() == "none" else Path(args.readme)
    if args.update_results:
        return json_path.parent.parent / "README.md"  # bench/README.md
    return json_path.parent / "README.md"


def _check_output(path: Path) -> None:
    """The report's folder exists or can be made, and takes files."""
    import os
    import tempfile

    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fastvae-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BenchError(f"--out {folder}: cannot write into it ({exc.strerror or exc})") from None


def _device(text: str):
    try:
        return resolve_device(text)
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def _plot_only(args: argparse.Namespace) -> int:
    path = Path(args.plot_only)
    if not path.is_file():
        raise BenchError(f"--plot-only {path}: file not found (expected a JSON report written by fastvae bench)")
    try:
        load_json(path)
    except (ValueError, OSError) as exc:
        raise BenchError(f"--plot-only {path}: not a readable fastvae bench report ({exc})") from None
    if report_module() is None:
        raise BenchError("--plot-only needs bench/report.py, which is in a fastvae checkout")
    readme = None
    if args.readme is not None and str(args.readme).lower() != "none":
        readme = args.readme
    elif args.update_results:
        root = checkout_root()
        readme = root / "bench" / "README.md" if root else None
    report_outputs(path, readme, make_plots=not args.no_plot, quiet=args.quiet)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``fastvae bench`` with parsed ``args``; returns the exit status."""
    try:
        return _run(args)
    except BenchError as exc:
        print(f"fastvae bench: error: {exc}", file=sys.stderr)
        return 2


def _threads(args: argparse.Namespace, device) -> Optional[int]:
    threads = args.threads
    if threads is None and device.type == "cpu":
        threads = DEFAULT_CPU_THREADS
    if threads is not None and threads < 1:
        raise BenchError(f"--threads must be >= 1, got {threads}")
    return threads


def _announce(args: argparse.Namespace, path: Path, device, threads: Optional[int]) -> None:
    if not args.quiet:
        pinned = (f"; CPU threads: {threads}" + (" (pinned by default; --threads N to change)"
                                                 if args.threads is None else "")) if device.type == "cpu" else ""
        print(f"fastvae bench: writing {path}{pinned}")


def _run_objectives(args: argparse.Namespace) -> int:
    """``--suite objectives``: :func:`fastvae.bench.objectives.run_objectives`, its JSON and a ratio table."""
    import torch

    from .device import device_info

    device = _device(args.device)
    threads = _threads(args, device)
    if not args.memory_budget > 0:
        raise BenchError(f"--memory-budget must be > 0 GiB, got {args.memory_budget:g}")
    sizes = {name: getattr(args, name) for name in ("tc_batches", "iwae_ks", "iwae_loss_ks")
             if getattr(args, name) is not None}
    cfg = ObjectiveConfig(device=str(device), ops=args.objectives, memory_budget=int(args.memory_budget * 2**30),
                          rep_ms=args.rep_ms, seed=args.seed, quiet=args.quiet, **sizes)
    slug = device_info(device)["slug"]
    path = _json_path(args, slug + "-objectives")
    _check_output(path)
    _announce(args, path, device, threads)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        report = run_objectives(cfg)
    finally:
        torch.set_num_threads(previous)
    report["config"]["threads"] = threads
    write_json(report, path)
    if not args.quiet:
        print(objectives_table(report))
        print(f"wrote {path}")
    return 0


def objectives_table(report: dict) -> str:
    """A markdown table of an objectives report: eager / fastvae time and peak memory per size."""
    lines = ["| op | batch | k | eager / fastvae time | eager / fastvae peak memory |", "|---|---:|---:|---:|---:|"]
    for r in report["ratios"]:
        k = "" if r.get("k") is None else str(r["k"])
        if r.get("eager") == "skipped":
            lines.append(f"| {r['op']} | {r['batch']} | {k} | eager skipped (over the memory budget) | |")
            continue
        mem = f"{r['memory_ratio']:.2f}x" if "memory_ratio" in r else "-"
        lines.append(f"| {r['op']} | {r['batch']} | {k} | {r['speedup']:.2f}x | {mem} |")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    if args.plot_only:
        return _plot_only(args)
    if args.suite == "objectives":
        return _run_objectives(args)
    device = _device(args.device)
    threads = _threads(args, device)
    config = C.BenchConfig(
        device=str(device), ops=args.ops, modes=args.modes, providers=args.providers,
        dtypes=args.dtypes, max_elements=args.max_elements, min_batch=args.min_batch,
        sample_size=args.sample_size, latent_dim=args.latent_dim,
        objective_latent_dim=args.objective_latent_dim, rep_ms=args.rep_ms, warmup_ms=args.warmup_ms,
        rotate=not args.no_rotate, copy_bytes=args.copy_bytes, threads=threads, seed=args.seed, quiet=args.quiet)
    from .device import device_info

    slug = device_info(device)["slug"]
    path = _json_path(args, slug)
    _check_output(path)
    _announce(args, path, device, threads)
    earlier: dict = {}  # with --merge: the report at the output path before this run, read once

    def save(report: dict, partial: bool) -> Path:
        if args.merge and "report" not in earlier:
            earlier["report"] = load_json(path) if path.exists() else None
        if earlier.get("report") is not None:
            report = merge_reports(earlier["report"], report)
        report = dict(report, partial=True) if partial else {k: v for k, v in report.items() if k != "partial"}
        return write_json(report, path)

    # The JSON is rewritten after each group of cases: a long sweep that is interrupted keeps its
    # finished cases (marked "partial": true), and --merge on the next run carries on from them.
    report = run_benchmarks(config, on_progress=lambda partial: save(partial, True))
    save(report, False)
    if not args.quiet:
        print(f"wrote {path}")
    report_outputs(path, _readme(args, path), make_plots=not args.no_plot, quiet=args.quiet)
    failed = sum(1 for c in report["cases"] if c["error"])
    if failed and not args.quiet:
        print(f"{failed} case(s) failed; see their 'error' field", file=sys.stderr)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastvae bench",
        description="Time fastvae's ops against eager PyTorch and torch.compile (forward, backward, both; "
                    "float32 and bfloat16; a sweep of sizes) and write a JSON report, plots and a README table.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
