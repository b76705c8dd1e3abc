"""The training loop (:class:`Trainer`): steps, readings, epochs, checkpoints, stops, and the
final evaluation, ``metrics.json`` and plots."""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Optional

import torch
from torch import Tensor

from ..environment import device_name, versions
from ..files import write_json
from .checkpoint import checkpoint_state, save_checkpoint
from .console import banner, format_entry, format_short, progress_bar, stop_note
from .distributed import Dist, mean_over_ranks, sum_over_ranks
from .errors import TrainError
from .metrics import METRICS_FORMAT, METRICS_NAME, evaluate, finite
from .objective import Objective
from .parts import Parts
from .plan import RunPlan
from .seeding import IndexStream, noise_seed
from .signals import StopFlag

__all__ = ["Trainer"]

#: Seconds between plain log lines (without a progress bar).
_PRINT_EVERY_S = 5.0


def _step_module(parts: Parts, plan: RunPlan, d: Dist):
    """The module that is differentiated: the objective, DDP-wrapped and/or compiled."""
    c = plan.config
    objective = Objective(parts.model, likelihood=c.likelihood, log_scale=c.log_scale, backend=c.loss_backend,
                          world_size=d.world_size)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [plan.device.index] if plan.device.type == "cuda" else None
        objective = DDP(objective, device_ids=ids)
    return torch.compile(objective) if c.compile else objective


class _Progress:
    """Where readings go on rank 0: a tqdm bar, or plain log lines at most every few seconds (and at
    the end and at a stop)."""

    def __init__(self, use_bar: bool, d: Dist, log: Callable[[str], None], total: int, initial: int):
        self.bar = progress_bar(total, initial) if d.main and use_bar else None
        self.main = d.main
        self.log = log
        self.total = total
        self.last_print = -math.inf

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def reading(self, entry: dict, step: int, force: bool) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(format_short(entry), refresh=False)
        elif self.main and (force or time.perf_counter() - self.last_print >= _PRINT_EVERY_S):
            self.log(f"step {step}/{self.total} | {format_entry(entry)}")
            self.last_print = time.perf_counter()

    def epoch(self, entry: dict, step: int) -> None:
        if self.bar is None:
            self.log(f"epoch {entry['epoch']} (step {step}) | {format_entry(entry)}")

    def close(self, step: int, history: list) -> None:
        if self.bar is None:
            return
        self.bar.close()
        if history:
            self.log(f"step {step}/{self.total} | {format_entry(history[-1])}")


class Trainer:
    """One run's loop over its steps, from the run's plan and parts, into the folder ``out``."""

    def __init__(self, plan: RunPlan, parts: Parts, d: Dist, *, out: str, log: Callable[[str], None],
                 progress: Optional[bool], stop: StopFlag):
        self.plan = plan
        self.config = plan.config
        self.device = plan.device
        self.parts = parts
        self.meter = parts.meter
        self.step = parts.step
        self.resumed_at = parts.step if parts.resumed else None
        self.d = d
        self.out = out
        self.log = log
        self.progress = progress
        self.stop = stop
        self.step_module = _step_module(parts, plan, d)
        self.stream = IndexStream(len(plan.dataset), self.config.seed, self.device)
        self.noise_generator = torch.Generator(device=self.device)
        self.beta_buffer = torch.zeros((), dtype=torch.float32, device=self.device)
        self.capacity_buffer = torch.zeros((), dtype=torch.float32, device=self.device)

    # -- one step -----------------------------------------------------------------------------------

    def _beta_value(self):
        value = self.parts.beta_schedule.value
        if isinstance(value, Tensor):
            return value
        self.beta_buffer.fill_(value)
        return self.beta_buffer

    def _capacity_value(self):
        if self.parts.capacity_schedule is None:
            return None
        self.capacity_buffer.fill_(self.parts.capacity_schedule.value)
        return self.capacity_buffer

    def _advance_schedules(self, rate: Tensor) -> None:
        if self.parts.kind == "constrained":
            # The dual ascent on the global batch-mean rate, on the device (no host sync).
            self.parts.beta_schedule.step(rate=mean_over_ranks(rate.float(), self.d.world_size))
        else:
            self.parts.beta_schedule.step()
        if self.parts.capacity_schedule is not None:
            self.parts.capacity_schedule.step()

    def _train_step(self) -> None:
        c, d, step, batch = self.config, self.d, self.step, self.plan.local_batch
        x = self.plan.dataset.batch(self.stream.take(step * c.batch_size + d.rank * batch, batch))
        self.noise_generator.manual_seed(noise_seed(c.seed, step))
        beta, capacity = self._beta_value(), self._capacity_value()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=c.amp == "bf16"):
            loss, value, distortion, rate = self.step_module(x, self.noise_generator, d.rank * batch, beta, capacity)
        optimizer = self.parts.optimizer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.lr_warmup:
            # A function of the step, so resuming needs no scheduler state.
            for group in optimizer.param_groups:
                group["lr"] = c.lr * min(1.0, (step + 1) / c.lr_warmup)
        optimizer.step()
        self.meter.add(value, distortion, rate)
        self._advance_schedules(rate)
        self.step += 1

    # -- readings, epochs, checkpoints -------------------------------------------------------------

    def _beta_now(self) -> float:
        value = self.parts.beta_schedule.value
        return float(value.item()) if isinstance(value, Tensor) else float(value)

    def _reading(self, stop_vote: float) -> tuple:
        """Record one history entry; returns (entry, stop) where stop is the ranks' agreed vote.
        The vote travels in the same collective as the sums."""
        vote = torch.tensor([stop_vote], dtype=torch.float64, device=self.device)
        sums = sum_over_ranks(torch.cat([self.meter.interval.sums, vote]), self.d.world_size).tolist()
        now = self.meter.timer.now()
        means = self.meter.means(sums[:3], self.meter.interval)
        if not finite(*means):
            raise TrainError(f"training diverged: the loss is {means[0]} at step {self.step} (the last checkpoint is "
                             f"kept); try a lower --lr (now {self.config.lr:g}) or --amp none")
        capacity = self.parts.capacity_schedule
        entry = self.meter.close_interval(
            means, now, step=self.step, epoch=self.step / self.config.steps_per_epoch, beta=self._beta_now(),
            batch_size=self.config.batch_size, capacity=None if capacity is None else float(capacity.value))
        return entry, sums[3] > 0

    def _epoch_end(self) -> dict:
        sums = sum_over_ranks(self.meter.epoch.sums, self.d.world_size).tolist()
        return self.meter.close_epoch(sums, self.meter.timer.now(), step=self.step, beta=self._beta_now(),
                                      batch_size=self.config.batch_size)

    def _checkpoint(self) -> None:
        """Save at the current step.  Every rank gets here at the same step (a checkpoint step, the last
        one, or a stop agreed at a reading), so the partial metric sums can be summed over the ranks;
        rank 0 writes its replica of everything else."""
        meter, world = self.meter, self.d.world_size
        meter.timer.stop()
        interval = sum_over_ranks(meter.interval.sums, world).tolist()
        epoch = sum_over_ranks(meter.epoch.sums, world).tolist()
        metrics = meter.state(interval, epoch)
        if self.d.main:
            p = self.parts
            state = checkpoint_state(
                config=self.config.to_dict(), data_info=self.plan.data_info, step=self.step,
                total_steps=self.plan.total_steps, model=p.model, optimizer=p.optimizer,
                beta_schedule=p.beta_schedule, capacity_schedule=p.capacity_schedule, metrics=metrics,
                world_size=world)
            save_checkpoint(self.out, state)
            write_json(os.path.join(self.out, METRICS_NAME), self.metrics("running"))
        meter.timer.start()

    # -- the loop -----------------------------------------------------------------------------------

    def banner(self) -> str:
        parameters = sum(p.numel() for p in self.parts.model.parameters())
        return banner(self.config, kind=self.parts.kind, parameters=parameters,
                      data_info=self.plan.data_info, total_steps=self.plan.total_steps,
                      local_batch=self.plan.local_batch, world_size=self.d.world_size, device=self.device,
                      out=self.out, resumed_at=self.resumed_at)

    def _stop_status(self, over_time: bool) -> str:
        if self.stop.signum is not None:
            return self.stop.status
        return "time limit" if over_time else "stopped"  # "stopped": another rank was signalled

    def _after_step(self, progress: _Progress) -> Optional[str]:
        """Readings, epoch ends and checkpoints after a step; the status when the run stops here."""
        c, d, total = self.config, self.d, self.plan.total_steps
        end = self.step >= total
        local_stop = self.stop.signum is not None
        # Without DDP a signal is seen at once; with DDP the ranks agree at the readings.
        boundary = (end or self.meter.interval.steps >= c.log_every or self.step % c.log_every == 0
                    or (not d.enabled and local_stop))
        stop_now = over_time = False
        if boundary:
            over_time = c.time_limit is not None and self.meter.timer.now() >= c.time_limit
            entry, stop_now = self._reading(1.0 if (d.main and over_time) or local_stop else 0.0)
            progress.reading(entry, self.step, force=end or stop_now)
        if self.step % c.steps_per_epoch == 0:
            progress.epoch(self._epoch_end(), self.step)
        if stop_now and not end:
            status = self._stop_status(over_time)
            self._checkpoint()
            return status
        if end or self.step % c.checkpoint_every == 0:
            self._checkpoint()
        return None

    def loop(self) -> str:
        """Train to the end of the budget, or to a stop; returns the status."""
        total = self.plan.total_steps
        use_bar = self.progress if self.progress is not None else sys.stdout.isatty()
        progress = _Progress(use_bar, self.d, self.log, total, self.step)
        timer = self.meter.timer
        timer.start()
        status = "finished"
        try:
            while self.step < total:
                self._train_step()
                progress.step()
                stopped = self._after_step(progress)
                if stopped is not None:
                    status = stopped
                    break
        finally:
            timer.stop()
            progress.close(self.step, self.meter.history)
        note = stop_note(status, step=self.step, total_steps=total, time_limit=self.config.time_limit, out=self.out)
        if note:
            self.log(note)
        return status

    # -- the end ------------------------------------------------------------------------------------

    def metrics(self, status: str) -> dict:
        """The contents of ``metrics.json``."""
        c = self.config
        return {
            "format": METRICS_FORMAT,
            "status": status,
            "step": self.step,
            "total_steps": self.plan.total_steps,
            "steps_per_epoch": c.steps_per_epoch,
            "samples_seen": self.step * c.batch_size,
            "train_time_s": self.meter.train_time,
            "config": c.to_dict(),
            "model": {"kind": c.model, "parameters": sum(p.numel() for p in self.parts.model.parameters())},
            "data": self.plan.data_info,
            "beta_schedule": self.parts.kind,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "world_size": self.d.world_size,
            "versions": versions(),
            "epochs": self.meter.epochs,
            "history": self.meter.history,
        }

    def finish(self, status: str) -> dict:
        """The final metrics (with the evaluation) and the plots, written by rank 0."""
        if not self.d.main:
            return self.metrics(status)
        evaluation = evaluate(self.parts.model, self.plan.dataset, self.config.seed, self.device)
        metrics = self.metrics(status)
        metrics["evaluation"] = evaluation
        if self.config.plots:
            from .report import write_report

            paths = write_report(self.out, self.parts.model, self.plan.dataset, metrics, seed=self.config.seed,
                                 log=self.log)
            metrics["plots"] = [os.path.basename(p) for p in paths]
        path = os.path.join(self.out, METRICS_NAME)
        write_json(path, metrics)
        self.log(f"wrote {path}" + (f" and {len(metrics['plots'])} plots" if metrics.get("plots") else ""))
        return metrics
