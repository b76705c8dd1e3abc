"""Plots and tables of ``fastvae bench`` reports: one PNG per op, the summary block of
bench/README.md for the report's device.

``fastvae bench`` runs this file when it is run from a checkout (and ``fastvae bench --plot-only
JSON`` runs only this); by hand::

    python bench/report.py bench/results/<device>.json                # PNGs and the bench/README.md block
    python bench/report.py bench/results/<device>.json --readme none  # PNGs only
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Iterable, Optional, Sequence

from fastvae.bench import BETA, DTYPES, MODES, OPS, PROVIDERS, fmt_bytes, load_json

README_BEGIN = "<!-- fastvae-bench:{slug}:begin -->"
README_END = "<!-- fastvae-bench:{slug}:end -->"

_COLORS = {"fastvae": "tab:red", "eager": "tab:blue", "compile": "tab:green"}
_STYLES = {"float32": "-", "bfloat16": "--", "float16": ":", "float64": "-."}


def _plot_mode(ax_t, ax_bw, cases: list, op: str, mode: str, copy_gbps: Optional[float]) -> None:
    """One column of an op's figure: time and bandwidth against size, a line per provider and dtype."""
    for provider in PROVIDERS:
        for dtype in _STYLES:
            pts = sorted((c["numel"], c["median_ms"], c["gbps"]) for c in cases
                         if c["op"] == op and c["mode"] == mode and c["provider"] == provider
                         and c["dtype"] == dtype)
            if not pts:
                continue
            x = [p[0] for p in pts]
            style = dict(color=_COLORS.get(provider), linestyle=_STYLES[dtype], marker="o",
                         markersize=3, label=f"{provider} {dtype}")
            ax_t.plot(x, [p[1] for p in pts], **style)
            ax_bw.plot(x, [p[2] for p in pts], **style)
    if copy_gbps:
        ax_bw.axhline(copy_gbps, color="gray", linestyle=":", label=f"copy {copy_gbps:.0f} GB/s")
    for ax in (ax_t, ax_bw):
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_yscale("log")
    ax_t.set_title(f"{op} {mode}")
    ax_t.set_ylabel("median time (ms)")
    ax_bw.set_ylabel("GB/s (min bytes / time)")
    ax_bw.set_xlabel("elements (batch x per-sample)")
    ax_bw.set_yscale("log")   # providers can differ by orders of magnitude (e.g. CPU RNG)


def plot(json_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """One PNG per op, ``<json stem>-<op>.png`` in ``out_dir`` (default: the JSON's folder).

    Each figure has a row of median time and a row of achieved bandwidth (min bytes / time), both on
    log scales, against the swept tensor's element count, one column per mode; colour = provider,
    line style = dtype. The copy bandwidth of the run is the dotted line in the bandwidth row.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    json_path = Path(json_path)
    report = load_json(json_path)
    out_dir = Path(out_dir) if out_dir is not None else json_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [c for c in report["cases"] if c.get("median_ms") is not None]
    copy_gbps = report.get("copy_bandwidth", {}).get("gbps")
    ops = [op for op in OPS if any(c["op"] == op for c in report["cases"])]
    modes = [m for m in MODES if any(c["mode"] == m for c in report["cases"])]
    dev = report["device"]
    paths = []
    for op in ops:
        fig, axes = plt.subplots(2, len(modes), figsize=(5.2 * len(modes), 7.5), squeeze=False)
        for j, mode in enumerate(modes):
            _plot_mode(axes[0, j], axes[1, j], cases, op, mode, copy_gbps)
        handles, labels = axes[1, 0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7), fontsize=8)
        fig.suptitle(f"fastvae bench: {op} on {dev['name']} ({dev['type']}), torch {report['versions']['torch']}, "
                     f"{report['date'][:10]}", fontsize=11)
        fig.tight_layout(rect=(0, 0.05, 1, 0.96))
        path = out_dir / f"{json_path.stem}-{op}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def _largest(cases: list[dict], op: str, dtype: str) -> Optional[int]:
    sizes = [c["numel"] for c in cases if c["op"] == op and c["dtype"] == dtype]
    return max(sizes) if sizes else None


def _find(cases, **key) -> Optional[dict]:
    for c in cases:
        if all(c.get(k) == v for k, v in key.items()):
            return c
    return None


def _ms(c: Optional[dict]) -> str:
    return "n/a" if c is None or c.get("median_ms") is None else f"{c['median_ms']:.3f}"


def _speedup(fast: Optional[dict], other: Optional[dict]) -> str:
    if not fast or not other or fast.get("median_ms") is None or other.get("median_ms") is None:
        return "n/a"
    return f"{other['median_ms'] / fast['median_ms']:.2f}x"


def _header(report: dict) -> list:
    dev, ver = report["device"], report["versions"]
    copy = report.get("copy_bandwidth") or {}
    return [
        f"### {dev['name']} ({dev['type']})",
        "",
        f"{report['date'][:10]}; torch {ver.get('torch')}, triton {ver.get('triton') or 'none'}, "
        f"CUDA {ver.get('cuda') or 'none'}; fastvae backend `{report.get('fastvae_backend')}`; "
        + (f"{dev['threads']} CPU thread(s); " if dev.get("threads") else "") +
        f"timer {report.get('timer')}; copy bandwidth {copy.get('gbps', float('nan')):.1f} GB/s "
        f"({fmt_bytes(copy.get('bytes'))} `copy_`).",
        "",
    ]


def _beta_vae_loss_table(cases: list, dtypes: list) -> list:
    op = "beta_vae_loss"
    if not any(c["op"] == op for c in cases):
        return []
    lines = [f"**{op} fwd+bwd at the largest size** (bernoulli likelihood, beta={BETA:g})", "",
             "| dtype | recon, latent | fastvae ms | eager ms | compile ms | speedup vs eager | speedup vs compile |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for dtype in dtypes:
        numel = _largest(cases, op, dtype)
        if numel is None:
            continue
        key = dict(op=op, mode="fwd+bwd", dtype=dtype, numel=numel)
        fast, eager, comp = (_find(cases, provider=p, **key) for p in PROVIDERS)
        ref = fast or eager or comp
        if ref is None:
            continue
        shape = (f"{ref['batch']}x{ref['sample_size']}, {ref['batch']}x{ref['latent_dim']}")
        lines.append(f"| {dtype} | {shape} | {_ms(fast)} | {_ms(eager)} | {_ms(comp)} | "
                     f"{_speedup(fast, eager)} | {_speedup(fast, comp)} |")
    return lines + [""]


def _training_table(cases: list, dtypes: list, cuda: bool) -> list:
    op = "training_step"
    if not any(c["op"] == op for c in cases):
        return []
    lines = ["**The training pattern, fwd+bwd** (`reparameterize_kl` + `beta_vae_loss(rate=...)`, bernoulli, "
             f"beta={BETA:g}; the providers timed in turn, call by call; "
             + ("CUDA events around each whole call, host time beside it" if cuda else "host time") + ")", "",
             "| dtype | batch x pixels, latent | fastvae ms | eager ms | compile ms | vs eager | vs compile |"
             + (" fastvae host ms |" if cuda else ""),
             "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if cuda else "")]
    sizes = sorted({(c["batch"], c["sample_size"], c["latent_dim"]) for c in cases if c["op"] == op})
    for dtype in dtypes:
        for batch, pixels, latent in sizes:
            key = dict(op=op, dtype=dtype, batch=batch, sample_size=pixels, latent_dim=latent)
            fast, eager, comp = (_find(cases, provider=p, **key) for p in PROVIDERS)
            if fast is None and eager is None:
                continue
            host = f" {fast['host_ms']:.3f} |" if cuda and fast and fast.get("host_ms") is not None else \
                (" n/a |" if cuda else "")
            lines.append(f"| {dtype} | {batch}x{pixels}, {latent} | {_ms(fast)} | {_ms(eager)} | {_ms(comp)} | "
                         f"{_speedup(fast, eager)} | {_speedup(fast, comp)} |" + host)
    return lines + [""]


def _bandwidth_cell(c: Optional[dict]) -> str:
    if c is None or c.get("gbps") is None:
        return "n/a" if c is None or not c.get("error") else "error"
    frac = c.get("frac_copy_bw")
    return f"{c['gbps']:.1f}" + ("" if frac is None else f" ({frac:.0%})")


def _bandwidth_table(cases: list, dtypes: list) -> list:
    providers = [p for p in PROVIDERS if any(c["provider"] == p for c in cases)]
    header = "| op | mode | size | " + " | ".join(f"{p} {d}" for d in dtypes for p in providers) + " |"
    lines = ["**Achieved bandwidth at the largest size**: GB/s = min bytes / median time "
             "(fraction of copy bandwidth)", "", header,
             "|---|---|---|" + "---:|" * (len(dtypes) * len(providers))]
    for op in OPS:
        if op == "training_step":
            continue
        for mode in MODES:
            if not any(c["op"] == op and c["mode"] == mode for c in cases):
                continue
            cells, size = [], ""
            for dtype in dtypes:
                numel = _largest(cases, op, dtype)
                for p in providers:
                    c = _find(cases, op=op, mode=mode, dtype=dtype, provider=p, numel=numel)
                    if c is not None and not size:
                        size = f"{c['batch']}x{c['sample_size']}"
                    cells.append(_bandwidth_cell(c))
            lines.append(f"| {op} | {mode} | {size} | " + " | ".join(cells) + " |")
    return lines + [""]


def summary_markdown(report: dict, plot_links: Iterable[str] = ()) -> str:
    """The README summary of one report (markdown, without the markers); ``plot_links`` are the
    plots' paths as the README should link them."""
    cases = report["cases"]
    dtypes = [d for d in DTYPES if any(c["dtype"] == d for c in cases)] + sorted(
        {c["dtype"] for c in cases} - set(DTYPES))
    lines = (_header(report) + _beta_vae_loss_table(cases, dtypes)
             + _training_table(cases, dtypes, report["device"]["type"] == "cuda") + _bandwidth_table(cases, dtypes))
    plot_links = list(plot_links)
    if plot_links:
        lines.append("Plots: " + ", ".join(f"[{_plot_label(link)}]({link})" for link in plot_links))
        lines.append("")
    return "\n".join(lines)


def _plot_label(link: str) -> str:
    stem = Path(link).stem
    return next((op for op in OPS if stem.endswith("-" + op)), stem)


def update_readme(readme_path: str | Path, report: dict, plots: Iterable[str | Path] = ()) -> Path:
    """Replace (or append) the block between this device's markers in ``readme_path``; ``plots``
    (PNG paths) are linked relative to the README."""
    readme_path = Path(readme_path)
    slug = report["device"]["slug"]
    begin, end = README_BEGIN.format(slug=slug), README_END.format(slug=slug)
    links = [Path(os.path.relpath(Path(p).resolve(), readme_path.resolve().parent)).as_posix() for p in plots]
    block = f"{begin}\n{summary_markdown(report, links)}\n{end}"
    text = readme_path.read_text() if readme_path.exists() else "# fastvae benchmarks\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme_path.parent.mkdir(parents=True, exist_ok=True)
    readme_path.write_text(text)
    return readme_path


def report_outputs(json_path: str | Path, readme: str | Path | None, make_plots: bool = True,
                   quiet: bool = False) -> dict:
    """Plots and README table from a JSON report (what ``--plot-only`` does)."""
    report = load_json(json_path)
    if make_plots:
        pngs = plot(json_path)
    else:   # keep linking the plots already there
        json_path = Path(json_path)
        pngs = [p for p in (json_path.parent / f"{json_path.stem}-{op}.png" for op in OPS) if p.exists()]
    out = {"json": Path(json_path), "plots": pngs, "readme": None}
    if readme is not None:
        out["readme"] = update_readme(readme, report, pngs)
    if not quiet:
        for p in pngs if make_plots else ():
            print(f"wrote {p}")
        if out["readme"]:
            print(f"updated {out['readme']}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/report.py",
                                     description="Plots and the README table of a fastvae bench JSON report.")
    parser.add_argument("json", help="the report (bench/results/<device>.json)")
    parser.add_argument("--readme", default=None,
                        help="markdown file whose summary block is (re)written (default bench/README.md next to "
                             "this script); 'none' to skip")
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.readme is None:
        readme = Path(__file__).resolve().parent / "README.md"
    else:
        readme = None if str(args.readme).lower() == "none" else args.readme
    report_outputs(args.json, readme, make_plots=not args.no_plot, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
