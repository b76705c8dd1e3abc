"""The command line of ``fastvae bench`` (:func:`main`).

The measuring is this package's; the plots, the markdown tables and the rewriting of
bench/README.md are the repository's ``bench/report.py``, which ``fastvae bench`` runs when it is
there (a checkout) and which can be run by hand on a JSON report (``python bench/report.py
bench/results/<device>.json``).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..environment import auto_device
from . import cases as C
from .results import default_json_path, load_json, merge_reports, write_json
from .runner import run_benchmarks

__all__ = ["add_arguments", "run", "main", "report_module"]


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
                        help="torch.set_num_threads for the run (CPU intra-op threads; default: unchanged)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="JSON report path (default bench/results/<device slug>.json)")
    parser.add_argument("--readme", default=None,
                        help="markdown file whose summary block is (re)written (default bench/README.md "
                             "when it exists); 'none' to skip")
    parser.add_argument("--merge", action="store_true",
                        help="merge into an existing JSON report at the output path: its cases not re-run "
                             "here are kept (so a long sweep can be split over several runs)")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--plot-only", metavar="JSON", default=None,
                        help="run nothing: write the plots and the README table from a JSON report")
    parser.add_argument("--quiet", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``fastvae bench`` with parsed ``args``; returns the exit status."""
    if args.readme is None:
        readme = "bench/README.md" if Path("bench/README.md").exists() else None
    else:
        readme = None if str(args.readme).lower() == "none" else args.readme
    if args.plot_only:
        if report_module() is None:
            print("fastvae bench: error: --plot-only needs bench/report.py, which is in a fastvae checkout",
                  file=sys.stderr)
            return 2
        report_outputs(args.plot_only, readme, make_plots=not args.no_plot, quiet=args.quiet)
        return 0
    config = C.BenchConfig(
        device=auto_device(args.device), ops=args.ops, modes=args.modes, providers=args.providers,
        dtypes=args.dtypes, max_elements=args.max_elements, min_batch=args.min_batch,
        sample_size=args.sample_size, latent_dim=args.latent_dim,
        objective_latent_dim=args.objective_latent_dim, rep_ms=args.rep_ms, warmup_ms=args.warmup_ms,
        rotate=not args.no_rotate, copy_bytes=args.copy_bytes, threads=args.threads, seed=args.seed, quiet=args.quiet)
    earlier: dict = {}  # with --merge: the report at the output path before this run, read once

    def save(report: dict, partial: bool) -> Path:
        path = Path(args.out or default_json_path(report))
        if args.merge and "report" not in earlier:
            earlier["report"] = load_json(path) if path.exists() else None
        if earlier.get("report") is not None:
            report = merge_reports(earlier["report"], report)
        report = dict(report, partial=True) if partial else {k: v for k, v in report.items() if k != "partial"}
        return write_json(report, path)

    # The JSON is rewritten after each group of cases: a long sweep that is interrupted keeps its
    # finished cases (marked "partial": true), and --merge on the next run carries on from them.
    report = run_benchmarks(config, on_progress=lambda partial: save(partial, True))
    path = save(report, False)
    if not args.quiet:
        print(f"wrote {path}")
    report_outputs(path, readme, make_plots=not args.no_plot, quiet=args.quiet)
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
