"""The JSON report of ``fastvae bench``: where it goes, writing and reading it, and merging two runs
of the same device."""
from __future__ import annotations

import json
from pathlib import Path

from ..files import write_json as _write_json
from .cases import DTYPES, MODES, OPS, PROVIDERS

__all__ = ["SCHEMA", "default_json_path", "write_json", "load_json", "merge_reports", "case_key"]

SCHEMA = "fastvae-bench/1"


def default_json_path(report_or_slug, results_dir: str | Path = "bench/results") -> Path:
    slug = report_or_slug["device"]["slug"] if isinstance(report_or_slug, dict) else str(report_or_slug)
    return Path(results_dir) / f"{slug}.json"


def write_json(report: dict, path: str | Path) -> Path:
    """Write ``report`` to ``path`` atomically (a reader, or a run killed mid-write, never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, report)
    return path


def case_key(c: dict) -> tuple:
    return (c["op"], c["mode"], c["provider"], c["dtype"], c["batch"], c["sample_size"], c.get("latent_dim"))


def merge_reports(old: dict, new: dict) -> dict:
    """``new`` plus the cases of ``old`` that ``new`` did not run (same device required).

    The kept cases' ``frac_copy_bw`` is recomputed against ``new``'s copy bandwidth, and every run's
    date, config and copy bandwidth is listed under ``runs``.
    """
    if old["device"].get("slug") != new["device"].get("slug"):
        raise ValueError(f"cannot merge reports of different devices: {old['device'].get('name')!r} "
                         f"and {new['device'].get('name')!r}")
    done = {case_key(c) for c in new["cases"]}
    copy_gbps = new["copy_bandwidth"]["gbps"]
    kept = []
    for c in old["cases"]:
        if case_key(c) in done:
            continue
        c = dict(c)
        if c.get("gbps") is not None and copy_gbps:
            c["frac_copy_bw"] = c["gbps"] / copy_gbps
        kept.append(c)
    order = {key: i for i, key in enumerate(
        (op, dtype) for op in OPS for dtype in DTYPES + ("float16", "float64"))}
    merged = dict(new)
    merged["cases"] = sorted(kept + new["cases"], key=lambda c: (
        order.get((c["op"], c["dtype"]), len(order)), c["batch"], PROVIDERS.index(c["provider"]),
        MODES.index(c["mode"])))
    merged["runs"] = old.get("runs", [_run_entry(old)]) + [_run_entry(new)]
    return merged


def _run_entry(report: dict) -> dict:
    return {"date": report.get("date"), "config": report.get("config"),
            "copy_bandwidth": report.get("copy_bandwidth"), "wall_s": report.get("wall_s")}


def load_json(path: str | Path) -> dict:
    report = json.loads(Path(path).read_text())
    if report.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a fastvae bench report (schema {report.get('schema')!r}, "
                         f"expected {SCHEMA!r})")
    return report
