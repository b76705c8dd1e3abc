"""What a run prints: the banner, the reading and epoch lines, the progress bar, the time left and
the notes on why it stopped."""
from __future__ import annotations

import math
from typing import Optional

from ..schedules import KINDS
from .config import final_lr

__all__ = ["banner", "format_entry", "format_short", "progress_bar", "stop_note", "number", "duration",
           "eta_text", "speed_of"]


def number(value: float, digits: int = 2) -> str:
    """A loss or a rate for a log line: fixed point while it is readable, else 3 significant digits
    with an exponent (``1.23e+28``, not a 29-digit number)."""
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 10 ** -digits):
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 05 min``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def speed_of(history: list, batch_size: int) -> Optional[float]:
    """Steps per second of the last readings (the median of up to ten), or None."""
    speeds = sorted(h["samples_per_s"] / batch_size for h in history[-10:] if h.get("samples_per_s"))
    return speeds[len(speeds) // 2] if speeds else None


def eta_text(step: int, total: int, samples_per_s: Optional[float], batch_size: int, *, time_limit,
             session: float) -> str:
    """``about 1 min left`` (to the end of the budget, or to the time limit when that comes first)."""
    if not samples_per_s or step >= total:
        return ""
    left = (total - step) * batch_size / samples_per_s
    if time_limit and session + left > time_limit:
        return f"time limit in {duration(time_limit - session)}"
    return f"about {duration(left)} left"


def _budget_line(c, total_steps: int, history: list, resumed_at) -> str:
    budget = f"{total_steps} steps"
    if c.time_limit:
        budget += f" or {c.time_limit:g} s of training per session, whichever comes first"
    if resumed_at is None:
        return budget
    speed = speed_of(history, c.batch_size)
    left = total_steps - resumed_at
    if speed and left > 0:
        budget += f"; {left} steps to go, about {duration(left / speed)} at the last session's {speed:.3g} steps/s"
        if c.time_limit and left / speed > c.time_limit:
            budget += f" (the time limit stops this session after about {int(speed * c.time_limit)} of them)"
    return budget


def _hints(c, device) -> list:
    """Options that are slow where they run."""
    hints = []
    if getattr(device, "type", str(device)) == "cpu":
        if c.amp == "bf16":
            hints.append("note: --amp bf16 on the CPU runs several times slower than float32 (it is meant for "
                         "GPUs); --amp none is faster here")
        if c.compile:
            hints.append("note: --compile on the CPU spends tens of seconds compiling and gains little at these "
                         "sizes; it pays off on a GPU")
    return hints


def banner(config, *, kind: str, parameters: int, data_info: dict, total_steps: int, local_batch: int,
           world_size: int, device, out: str, resumed_at, notes=(), history=()) -> str:
    """The lines a run starts with: model, objective, optimization, hardware and output folder."""
    c = config
    beta = KINDS[kind].banner(c.to_dict())
    capacity = f", capacity {c.capacity:g} nats over {c.capacity_steps} steps" if c.capacity is not None else ""
    processes = f" ({world_size} processes x {local_batch})" if world_size > 1 else ""
    lr = f"Adam lr {c.lr:g}"
    if c.lr_warmup:
        lr += f" (warm-up {c.lr_warmup} steps)"
    if c.lr_schedule == "cosine":
        lr += f", cosine to {final_lr(c):g}"
    elif c.lr_schedule == "step":
        lr += f", x{c.lr_gamma:g} every {c.lr_decay_every} steps"
    if c.grad_clip:
        lr += f", gradient norm clipped at {c.grad_clip:g}"
    if c.ema_decay:
        lr += f", weight average {c.ema_decay:g}"
    extras = ((f", {c.amp} autocast" if c.amp != "none" else "") + (", compiled" if c.compile else "")
              + (", eager torch loss" if c.loss_backend == "torch" else ""))
    held = data_info.get("val") or 0
    split = f" ({data_info.get('train')} train, {held} held out)" if held else ""
    lines = [
        f"fastvae train: {c.model} VAE ({parameters / 1e6:.2f}M parameters, latent {c.latent_dim}, "
        f"{c.likelihood}) on {data_info['name']} {tuple(data_info['sample_shape'])}{split}",
        f"  {_objective_line(c, beta, capacity)}",
        f"  batch {c.batch_size}{processes}, {lr}, {c.steps_per_epoch} steps/epoch, device {device}{extras}",
        f"  budget {_budget_line(c, total_steps, list(history), resumed_at)}",
        f"  output {out}" + (f" (resuming at step {resumed_at})" if resumed_at is not None else ""),
    ]
    lines += [f"note: {n}" for n in notes] + _hints(c, device)
    return "\n".join(lines)


def _objective_line(c, beta: str, capacity: str) -> str:
    """The banner's objective line."""
    if c.objective == "iwae":
        return f"objective: IWAE bound with k = {c.iwae_k} importance samples per input (no beta)"
    if c.objective == "tcvae":
        return (f"objective: beta-TCVAE, distortion + {c.tc_alpha:g} MI + beta TC + {c.tc_gamma:g} dim-wise KL "
                f"({c.tc_estimator} estimator); beta {beta}")
    free_bits = ""
    if c.free_bits is not None:
        per = "latent dimension (batch mean)" if c.free_bits_mode == "dim" else "sample"
        free_bits = f", free bits {c.free_bits:g} nats per {per}"
    return f"beta {beta}{capacity}{free_bits}"


def _sigma(entry: dict) -> str:
    return f" | sigma {entry['sigma']:.4g}" if "sigma" in entry else ""


def _held_out(entry: dict) -> str:
    if "val_loss" not in entry:
        return ""
    return (f" | held-out -ELBO {number(entry['val_loss'])} (distortion {number(entry['val_distortion'])}, "
            f"rate {number(entry['val_rate'])})")


def _tc_terms(entry: dict) -> str:
    """The beta-TCVAE decomposition of the rate, when the run measures it."""
    if "tc" not in entry:
        return ""
    return f" (mi {number(entry['mi'])}, tc {number(entry['tc'])}, dwkl {number(entry['dwkl'])})"


def format_entry(entry: dict) -> str:
    """A reading or an epoch as a log line."""
    return (f"loss {number(entry['loss'])} | distortion {number(entry['distortion'])} | rate {number(entry['rate'])}"
            f"{_tc_terms(entry)} | beta {entry['beta']:.3g}{_sigma(entry)} | {entry['samples_per_s']:,.0f} samples/s"
            f"{_held_out(entry)}")


def format_short(entry: dict) -> str:
    """A reading as the progress bar's postfix."""
    return (f"loss={entry['loss']:.4g} dist={entry['distortion']:.4g} rate={entry['rate']:.3g} "
            + (f"tc={entry['tc']:.3g} " if "tc" in entry else "") + f"beta={entry['beta']:.3g}"
            + (f" sigma={entry['sigma']:.3g}" if "sigma" in entry else "")
            + f" {entry['samples_per_s']:,.0f} samples/s")


def progress_bar(total: int, initial: int):
    """A tqdm bar over the steps (tqdm is a dependency of the ``train`` extra)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")


def stop_note(status: str, *, step: int, total_steps: int, time_limit, out: str, history=(), batch_size=1):
    """What to tell the user when the run stopped before its end (None when it finished): how far it
    got, how long the rest takes at the speed measured, and the command that continues it."""
    left = total_steps - step
    speed = speed_of(list(history), batch_size)
    rest = f"{left} steps to go" + (f", about {duration(left / speed)} at {speed:.3g} steps/s" if speed else "")
    if status == "time limit":
        sessions = math.ceil(left / (speed * time_limit)) if speed else None
        count = f"{sessions} more session{'s' if sessions != 1 else ''}" if sessions and sessions <= 1000 else \
            "more sessions"
        more = f" ({count} of {time_limit:g} s; add --time-limit 0 to finish in one)"
        return (f"stopped at step {step} of {total_steps}: time limit of {time_limit:g} s reached; {rest}; "
                f"continue with: fastvae train --resume {out}{more}")
    if status.startswith("signal"):
        return (f"stopped at step {step} of {total_steps} by {status.split()[-1]}; checkpoint written; {rest}; "
                f"continue with: fastvae train --resume {out}")
    return None
