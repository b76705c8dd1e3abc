"""What a run prints: the banner, the reading and epoch lines, the progress bar and the notes
on why it stopped."""
from __future__ import annotations

from ..schedules import KINDS

__all__ = ["banner", "format_entry", "format_short", "progress_bar", "stop_note"]


def banner(config, *, kind: str, parameters: int, data_info: dict, total_steps: int, local_batch: int,
           world_size: int, device, out: str, resumed_at) -> str:
    """The lines a run starts with: model, objective, optimization, hardware and output folder."""
    c = config
    budget = f"{total_steps} steps"
    if c.time_limit:
        budget += f" or {c.time_limit:g} s"
    beta = KINDS[kind].banner(c.to_dict())
    capacity = f", capacity {c.capacity:g} nats over {c.capacity_steps} steps" if c.capacity is not None else ""
    processes = f" ({world_size} processes x {local_batch})" if world_size > 1 else ""
    lr_warmup = f" (warm-up {c.lr_warmup} steps)" if c.lr_warmup else ""
    extras = ((", bf16 autocast" if c.amp == "bf16" else "") + (", compiled" if c.compile else "")
              + (", eager torch loss" if c.loss_backend == "torch" else ""))
    return "\n".join([
        f"fastvae train: {c.model} VAE ({parameters / 1e6:.2f}M parameters, latent {c.latent_dim}, "
        f"{c.likelihood}) on {data_info['name']} {tuple(data_info['sample_shape'])}",
        f"  beta {beta}{capacity}",
        f"  batch {c.batch_size}{processes}, Adam lr {c.lr:g}{lr_warmup}, {budget}, {c.steps_per_epoch} steps/epoch, "
        f"device {device}{extras}",
        f"  output {out}" + (f" (resuming at step {resumed_at})" if resumed_at is not None else ""),
    ])


def format_entry(entry: dict) -> str:
    """A reading or an epoch as a log line."""
    return (f"loss {entry['loss']:.2f} | distortion {entry['distortion']:.2f} | rate {entry['rate']:.2f} | "
            f"beta {entry['beta']:.3g} | {entry['samples_per_s']:,.0f} samples/s")


def format_short(entry: dict) -> str:
    """A reading as the progress bar's postfix."""
    return (f"loss={entry['loss']:.4g} dist={entry['distortion']:.4g} rate={entry['rate']:.3g} "
            f"beta={entry['beta']:.3g} {entry['samples_per_s']:,.0f} samples/s")


def progress_bar(total: int, initial: int):
    """A tqdm bar over the steps (tqdm is a dependency of the ``train`` extra)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")


def stop_note(status: str, *, step: int, total_steps: int, time_limit, out: str):
    """What to tell the user when the run stopped before its end (None when it finished)."""
    if status == "time limit":
        return (f"stopped at step {step} of {total_steps}: time limit of {time_limit:g} s reached; "
                f"continue with: fastvae train --resume {out}")
    if status.startswith("signal"):
        return (f"stopped at step {step} by {status.split()[-1]}; checkpoint written; continue with: "
                f"fastvae train --resume {out}")
    return None
