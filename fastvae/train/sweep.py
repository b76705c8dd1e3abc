"""``fastvae sweep --betas ...``: one training run per beta, then the rate-distortion picture (:func:`sweep`).

Every run is an ordinary ``fastvae train`` run folder, ``OUT/beta-<beta>``, with the same config but beta:
the same seed, so the same initial weights, data order and noise.  A run folder that finished is kept, one
that was interrupted is resumed from its checkpoint, and a missing one is started, so an interrupted sweep
run again with the same options continues where it stopped.  Each finished run is evaluated on its held-out
data (:func:`fastvae.train.evaluate.evaluate_run`: rate, distortion, per-dimension KL, MIG where the data
has factors; its ``eval.json``), and the sweep writes ``sweep.json`` and ``rate_distortion.png``: distortion
against rate, one point per beta, with the lines D + R = const of equal ELBO, and MIG per beta beside it.

On a CPU the runs are short by default (:data:`CPU_STEPS` steps each, beta warmed up over at most the first
half; stated in the output); ``--steps`` sets them, and on a GPU the default run length applies.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Callable, Optional, Sequence

import torch

from ..files import write_json
from .errors import TrainError

__all__ = ["CPU_STEPS", "DEFAULT_BETAS", "SWEEP_NAME", "RD_PNG", "run_name", "sweep", "plot_rate_distortion"]

DEFAULT_BETAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
#: Steps per run of a CPU sweep when ``--steps``/``--epochs`` are not given (seven runs in about ten minutes
#: on two cores).
CPU_STEPS = 600
SWEEP_NAME = "sweep.json"
RD_PNG = "rate_distortion.png"
_SWEEP_FORMAT = "fastvae-sweep/1"


def run_name(beta: float) -> str:
    """The run folder of one beta: ``beta-0.25``, ``beta-4``."""
    return f"beta-{beta:g}"


def _check_betas(betas: Sequence[float]) -> list:
    if not betas:
        raise TrainError("--betas: expected at least one beta, e.g. --betas 0.25,0.5,1,2,4,8,16")
    out = []
    for b in betas:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= 0 or b != b or b == float("inf"):
            raise TrainError(f"--betas: expected finite numbers >= 0, got {b!r}")
        out.append(float(b))
    if len(set(run_name(b) for b in out)) != len(out):
        raise TrainError(f"--betas: a beta is given twice ({', '.join(f'{b:g}' for b in out)})")
    return out


def _finished(folder: str, steps: Optional[int]) -> bool:
    """The run in ``folder`` trained to its end (and, when the sweep names a step count, to that one)."""
    from .metrics import METRICS_NAME

    try:
        with open(os.path.join(folder, METRICS_NAME)) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    done = m.get("status") == "finished" and m.get("step", 0) >= m.get("total_steps", 1)
    return done and (steps is None or m.get("total_steps") == steps)


def _sweep_config(config, explicit: set, device_type: str, log):
    """The per-run config: a constrained or capacity run has no single beta to sweep; on a CPU the runs are
    short unless their length was given."""
    if config.target_rate is not None:
        raise TrainError("fastvae sweep sweeps beta: --target-rate (constrained beta) sets beta itself; leave it out")
    c = dataclasses.replace(config)
    note = None
    if device_type == "cpu" and not ({"steps", "epochs"} & explicit):
        c = dataclasses.replace(c, steps=CPU_STEPS, time_limit=0.0)
        if "warmup_steps" not in explicit:
            c = dataclasses.replace(c, warmup_steps=min(c.warmup_steps, CPU_STEPS // 2))
        note = (f"each run trains {CPU_STEPS} steps (the CPU default of fastvae sweep; beta warmed up over "
                f"{c.warmup_steps}); pass --steps for longer runs")
    elif "time_limit" not in explicit:
        c = dataclasses.replace(c, time_limit=0.0)   # runs end at their step budget, not a clock: they compare
    if note:
        log(note)
    return c, note


def sweep(betas: Sequence[float], config, *, out: str, explicit: Optional[set] = None, n: int = 2000,
          progress: Optional[bool] = None, log: Callable[[str], None] = print, mig: bool = True) -> dict:
    """Train (or resume, or keep) one run per beta under ``out`` and write ``sweep.json`` and
    ``rate_distortion.png`` there; returns what ``sweep.json`` holds.

    Args:
        betas: the betas (>= 0).
        config: the :class:`~fastvae.train.TrainConfig` of every run (its ``beta`` replaced).
        out: the sweep's folder.
        explicit: the config entries the user gave (a CPU sweep shortens the runs unless steps were given).
        n: held-out samples each run is evaluated on (rate, distortion, KL per dimension, MIG).
        progress: tqdm bars (None: when stdout is a terminal).
    """
    from .evaluate import evaluate_run
    from .plan import device_for

    betas = _check_betas(betas)
    explicit = set(explicit or ())
    d = _check_out_and_processes(out)
    device = device_for(config.device, d)
    run_config, note = _sweep_config(config, explicit, device.type, log)
    os.makedirs(out, exist_ok=True)
    started = time.time()
    runs = []
    for i, beta in enumerate(betas):
        folder = os.path.join(out, run_name(beta))
        status = _train_one(f"[{i + 1}/{len(betas)}] beta {beta:g}", folder, dataclasses.replace(run_config, beta=beta),
                            explicit, progress, log)
        if status != "finished":
            return _stopped(out, betas, runs, status, log)
        e = evaluate_run(folder, n=n, log_likelihood=False, mig=mig, device=device, progress=progress, log=log)
        runs.append({"beta": beta, "out": folder, "step": e["step"], "rate": e["rate"], "distortion": e["distortion"],
                     "elbo": e["elbo"], "active_dims": e["active_dims"], "kl_per_dim": e["kl_per_dim"],
                     "mig": e["mig"]["score"] if e["mig"] else None})
    report = {"format": _SWEEP_FORMAT, "betas": betas, "runs": runs, "note": note, "samples": n,
              "config": {k: (list(v) if isinstance(v, tuple) else v)
                         for k, v in dataclasses.asdict(run_config).items() if k != "beta"},
              "seconds": round(time.time() - started, 1)}
    write_json(os.path.join(out, SWEEP_NAME), report)
    png = plot_rate_distortion(runs, os.path.join(out, RD_PNG), note=note)
    log(_table(runs))
    log(f"wrote {os.path.join(out, SWEEP_NAME)}" + (f" and {png}" if png else ""))
    return report


def _check_out_and_processes(out):
    """The sweep's folder can be used and no torchrun is around; returns the (single-process) Dist."""
    from .distributed import dist_from_env

    if out is None:
        raise TrainError("fastvae sweep needs --out, the folder of its runs")
    if os.path.exists(out) and not os.path.isdir(out):
        raise TrainError(f"--out {out}: exists and is not a folder")
    d = dist_from_env()
    if d.enabled:
        raise TrainError("fastvae sweep runs its trainings one after another in one process: run it without "
                         "torchrun (each run may still use --device cuda)")
    return d


def _train_one(label: str, folder: str, c, explicit: set, progress, log) -> str:
    """Keep, resume or start the run of one beta in ``folder``; returns its status ('finished' to go on)."""
    from .run import train

    has_checkpoint = os.path.exists(os.path.join(folder, "checkpoint.pt"))
    if has_checkpoint and _finished(folder, c.steps):
        log(f"{label}: {folder} finished before, kept")
        return "finished"
    if has_checkpoint:
        log(f"{label}: resuming {folder}")
        # the sweep's own length and no clock; the rest of the run's config is its checkpoint's
        return train(c, resume=folder, explicit={"time_limit"} | (explicit & {"steps", "epochs"}), progress=progress,
                     log=log).status
    log(f"{label}: training into {folder}")
    return train(c, out=folder, overwrite=os.path.isdir(folder), progress=progress, log=log).status


def _stopped(out, betas, runs, status, log) -> dict:
    log(f"the sweep stopped ({status}) after {len(runs)} of {len(betas)} runs; run the same command again to "
        "continue where it stopped")
    return {"format": _SWEEP_FORMAT, "betas": list(betas), "runs": runs, "status": status, "out": out}


def _table(runs) -> str:
    lines = ["  beta      rate  distortion      ELBO  active   MIG"]
    for r in runs:
        mig = f"{r['mig']:.3f}" if r["mig"] is not None else "    -"
        lines.append(f"  {r['beta']:<6g} {r['rate']:8.2f} {r['distortion']:11.2f} {r['elbo']:9.2f} "
                     f"{r['active_dims']:7d}  {mig}")
    return "\n".join(lines)


def plot_rate_distortion(runs, path: str, *, note: Optional[str] = None) -> Optional[str]:
    """Distortion against rate, one labelled point per beta, the lines D + R = const of equal ELBO through
    the points, and MIG per beta in a second panel where known; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if not runs:
        return None
    has_mig = any(r.get("mig") is not None for r in runs)
    fig = Figure(figsize=(10.5 if has_mig else 6.0, 4.4))
    axes = fig.subplots(1, 2 if has_mig else 1)
    ax = axes[0] if has_mig else axes
    rates = [r["rate"] for r in runs]
    dists = [r["distortion"] for r in runs]
    lo_r, hi_r = min(rates), max(rates)
    span = max(hi_r - lo_r, 1.0)
    xs = torch.linspace(max(0.0, lo_r - 0.1 * span), hi_r + 0.1 * span, 2).tolist()
    for r in runs:  # equal-ELBO lines: D = (D_i + R_i) - R
        total = r["distortion"] + r["rate"]
        ax.plot(xs, [total - x for x in xs], color="0.85", linewidth=0.8, zorder=0)
    ax.plot(rates, dists, "-o", color="tab:blue", zorder=2)
    for r in runs:
        ax.annotate(f"beta {r['beta']:g}", (r["rate"], r["distortion"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
    ax.set_xlabel("rate: KL(q(z|x) || p(z)), nats")
    ax.set_ylabel("distortion: -E log p(x|z), nats")
    d_lo, d_hi = min(dists), max(dists)
    pad = max(d_hi - d_lo, 1.0) * 0.1
    ax.set_ylim(d_lo - pad, d_hi + pad)
    ax.set_xlim(xs[0], xs[1])
    ax.set_title("Rate-distortion (grey: lines of equal ELBO, D + R = const)", fontsize=9)
    if has_mig:
        bx = axes[1]
        labels = [f"{r['beta']:g}" for r in runs]
        bx.bar(range(len(runs)), [r["mig"] if r["mig"] is not None else 0.0 for r in runs], color="tab:green")
        bx.set_xticks(range(len(runs)))
        bx.set_xticklabels(labels)
        bx.set_xlabel("beta")
        bx.set_ylabel("MIG")
        bx.set_title("Mutual information gap per beta", fontsize=9)
    if note:
        fig.suptitle(note, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
