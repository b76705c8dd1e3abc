"""The training loop (:class:`Trainer`): steps, readings, epochs (with the held-out evaluation),
checkpoints, stops, and the final evaluation, ``metrics.json``, the CSV logs and plots."""
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
from .checkpoint import BEST_NAME, CHECKPOINT_NAME, checkpoint_state, keep_copy, save_checkpoint
from .console import banner, eta_text, format_entry, format_short, progress_bar, stop_note
from .distributed import Dist, broadcast_object, mean_over_ranks, sum_over_ranks
from .errors import TrainError
from .logs import RunLogs
from .metrics import METRICS_FORMAT, METRICS_NAME, evaluate, finite, validate
from .objective import Objective
from .optim import lr_at
from .parts import Parts
from .plan import RunPlan
from .seeding import IndexStream, noise_seed
from .signals import StopFlag

__all__ = ["Trainer"]

#: Seconds between plain log lines (without a progress bar).
_PRINT_EVERY_S = 5.0
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class _Diverged(Exception):
    """The loss of a reading is not finite."""


def _step_module(parts: Parts, plan: RunPlan, d: Dist):
    """The module that is differentiated: the objective, DDP-wrapped and/or compiled."""
    c = plan.config
    objective = Objective(parts.model, likelihood=c.likelihood, log_scale=c.log_scale, backend=c.loss_backend,
                          world_size=d.world_size, objective=c.objective, dataset_size=plan.n_train, k=c.iwae_k,
                          alpha=c.tc_alpha, gamma=c.tc_gamma, estimator=c.tc_estimator, free_bits=c.free_bits,
                          free_bits_mode=c.free_bits_mode)
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [plan.device.index] if plan.device.type == "cuda" else None
        objective = DDP(objective, device_ids=ids)
    return torch.compile(objective) if c.compile else objective


class _Progress:
    """Where readings go on rank 0: a tqdm bar, or plain log lines at most every few seconds (and at
    the end and at a stop), each with the time left."""

    def __init__(self, use_bar: bool, d: Dist, log: Callable[[str], None], total: int, initial: int):
        self.bar = progress_bar(total, initial) if d.main and use_bar else None
        self.main = d.main
        self.log = log
        self.total = total
        self.last_print = -math.inf

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def reading(self, entry: dict, step: int, force: bool, left: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(format_short(entry), refresh=False)
        elif self.main and (force or time.perf_counter() - self.last_print >= _PRINT_EVERY_S):
            self.log(f"step {step}/{self.total} | {format_entry(entry)}" + (f" | {left}" if left else ""))
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
        # The step of the checkpoint on disk (what a failure leaves), None before the first.
        self.saved_step = self.resumed_at
        self.d = d
        self.out = out
        self.log = log
        self.progress = progress
        self.stop = stop
        self.step_module = _step_module(parts, plan, d)
        self.stream = IndexStream(len(plan.dataset), self.config.seed, self.device, subset=plan.train_indices)
        self.noise_generator = torch.Generator(device=self.device)
        self.beta_buffer = torch.zeros((), dtype=torch.float32, device=self.device)
        self.capacity_buffer = torch.zeros((), dtype=torch.float32, device=self.device)
        self.best = self._best_so_far()
        self.logs = RunLogs(out, tensorboard=self.config.tensorboard, start_step=self.step, log=log) \
            if d.main else None

    def _best_so_far(self) -> Optional[float]:
        values = [e["val_loss"] for e in self.meter.epochs if finite(e.get("val_loss", math.nan))]
        return min(values) if values else None

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
        amp = _AMP_DTYPES.get(c.amp)
        with torch.autocast(self.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss, value, distortion, rate, extras = self.step_module(x, self.noise_generator, d.rank * batch, beta,
                                                                     capacity)
        optimizer, scaler = self.parts.optimizer, self.parts.scaler
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if c.lr_warmup or c.lr_schedule != "constant":
            # A function of the step, so resuming needs no scheduler state.
            lr = lr_at(c, step, self.plan.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
        if c.grad_clip:
            if scaler is not None:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.parts.model.parameters(), c.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if self.parts.ema is not None:
            self.parts.ema.update()
        self.meter.add(value, distortion, rate, extras)
        self._advance_schedules(rate)
        self.step += 1

    # -- readings, epochs, checkpoints -------------------------------------------------------------

    def _beta_now(self) -> float:
        if self.config.objective == "iwae":
            return 1.0  # the IWAE bound has no beta (the schedule is not used)
        value = self.parts.beta_schedule.value
        return float(value.item()) if isinstance(value, Tensor) else float(value)

    def _extras(self) -> dict:
        """What a reading records besides the sums: the learning rate (when it decays) and the learned
        decoder scale."""
        extras = {}
        if self.config.lr_schedule != "constant":
            extras["lr"] = self.parts.optimizer.param_groups[0]["lr"]
        log_scale = getattr(self.parts.model, "log_scale", None)
        if log_scale is not None:
            extras["sigma"] = float(log_scale.detach().exp().item())
        return extras

    def _reading(self, stop_vote: float) -> tuple:
        """Record one history entry; returns (entry, stop) where stop is the ranks' agreed vote.
        The vote travels in the same collective as the sums."""
        vote = torch.tensor([stop_vote], dtype=torch.float64, device=self.device)
        sums = sum_over_ranks(torch.cat([self.meter.interval.sums, vote]), self.d.world_size).tolist()
        now = self.meter.timer.now()
        means = self.meter.means(sums[:-1], self.meter.interval)
        if not finite(*means):
            self.diverged_at = (self.step, means[0])
            raise _Diverged()
        capacity = self.parts.capacity_schedule
        entry = self.meter.close_interval(
            means, now, step=self.step, epoch=self.step / self.config.steps_per_epoch, beta=self._beta_now(),
            batch_size=self.config.batch_size, capacity=None if capacity is None else float(capacity.value))
        entry.update(self._extras())
        if self.logs is not None:
            self.logs.reading(entry)
        return entry, sums[-1] > 0

    def _validate(self) -> Optional[dict]:
        """The held-out numbers (rank 0), sent to every rank; None without held-out data."""
        if not self.plan.n_val:
            return None
        values = None
        if self.d.main:
            c, capacity = self.config, self.parts.capacity_schedule
            values = validate(self.parts.eval_model, self.plan.dataset, self.plan.val_indices,
                              likelihood=c.likelihood, log_scale=c.log_scale, beta=self._beta_now(),
                              capacity=None if capacity is None else float(capacity.value), seed=c.seed)
            if c.objective != "beta-vae" or c.free_bits is not None:
                # the held-out -ELBO (val_loss) is what compares; the training objective is not distortion +
                # beta * rate here
                values.pop("val_objective")
        return broadcast_object(self.d, values)

    def _epoch_end(self) -> dict:
        sums = sum_over_ranks(self.meter.epoch.sums, self.d.world_size).tolist()
        self.meter.timer.stop()  # the held-out evaluation is not training time
        try:
            held_out = self._validate()
        finally:
            self.meter.timer.start()
        entry = self.meter.close_epoch(sums, self.meter.timer.now(), step=self.step, beta=self._beta_now(),
                                       batch_size=self.config.batch_size)
        if held_out is not None:
            entry.update(held_out)
            if self.logs is not None:
                self.logs.epoch(entry)
        return entry

    def _is_best(self, entry: Optional[dict]) -> bool:
        """Whether the epoch that just ended has the lowest held-out loss so far (it is recorded)."""
        if entry is None or not self.config.keep_best or not finite(entry.get("val_loss", math.nan)):
            return False
        if self.best is not None and entry["val_loss"] >= self.best:
            return False
        self.best = entry["val_loss"]
        return True

    def _write(self, what: str, path: str, write: Callable[[], None]) -> Optional[str]:
        try:
            write()
        except OSError as exc:
            kept = (f"the last good checkpoint (step {self.saved_step}) is kept in {self.out}"
                    if self.saved_step is not None else "no checkpoint has been written yet")
            return (f"cannot write the {what} {path} ({exc.strerror or type(exc).__name__}); {kept}; free some space "
                    f"or fix the folder, then resume with: fastvae train --resume {self.out}")
        return None

    def _checkpoint(self, *, regular: bool = True, best: bool = False) -> None:
        """Save at the current step (``checkpoint.pt`` when ``regular``, ``best.pt`` when ``best``).  Every
        rank gets here at the same step (a checkpoint step, the last one, a stop agreed at a reading, or
        an epoch with a new best held-out loss), so the partial metric sums can be summed over the ranks;
        rank 0 writes its replica of everything else.  A write that fails leaves the file that was there
        and is a :class:`TrainError` on every rank."""
        meter, world = self.meter, self.d.world_size
        meter.timer.stop()
        interval = sum_over_ranks(meter.interval.sums, world).tolist()
        epoch = sum_over_ranks(meter.epoch.sums, world).tolist()
        metrics = meter.state(interval, epoch)
        error = None
        if self.d.main:
            p, c = self.parts, self.config
            state = checkpoint_state(
                config=c.to_dict(), data_info=self.plan.data_info, step=self.step,
                total_steps=self.plan.total_steps, model=p.model, optimizer=p.optimizer,
                beta_schedule=p.beta_schedule, capacity_schedule=p.capacity_schedule, metrics=metrics,
                world_size=world, ema=p.ema, scaler=p.scaler)
            if regular:
                error = self._write("checkpoint", os.path.join(self.out, CHECKPOINT_NAME),
                                    lambda: save_checkpoint(self.out, state))
                if error is None:
                    self.saved_step = self.step
                    error = self._write("checkpoint copy", self.out,
                                        lambda: keep_copy(self.out, self.step, c.keep_checkpoints))
            if best and error is None:
                error = self._write("best checkpoint", os.path.join(self.out, BEST_NAME),
                                    lambda: save_checkpoint(self.out, state, BEST_NAME))
            if error is None:
                running = self.metrics("running")
                error = self._write("metrics", os.path.join(self.out, METRICS_NAME),
                                    lambda: write_json(os.path.join(self.out, METRICS_NAME), running))
            if error is None:
                error = self._write("CSV logs", self.out, lambda: self.logs.write(running))
        error = broadcast_object(self.d, error)
        if error:
            raise TrainError(error)
        meter.timer.start()

    # -- the loop -----------------------------------------------------------------------------------

    def banner(self) -> str:
        parameters = sum(p.numel() for p in self.parts.model.parameters())
        return banner(self.config, kind=self.parts.kind, parameters=parameters,
                      data_info=self.plan.data_info, total_steps=self.plan.total_steps,
                      local_batch=self.plan.local_batch, world_size=self.d.world_size, device=self.device,
                      out=self.out, resumed_at=self.resumed_at, notes=self.plan.notes,
                      history=self.meter.history)

    def _stop_status(self, over_time: bool) -> str:
        if self.stop.signum is not None:
            return self.stop.status
        return "time limit" if over_time else "stopped"  # "stopped": another rank was signalled

    def _time_left(self, entry: dict) -> str:
        return eta_text(self.step, self.plan.total_steps, entry.get("samples_per_s"), self.config.batch_size,
                        time_limit=self.config.time_limit, session=self.meter.timer.now())

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
            over_time = bool(c.time_limit) and self.meter.timer.now() >= c.time_limit
            entry, stop_now = self._reading(1.0 if (d.main and over_time) or local_stop else 0.0)
            progress.reading(entry, self.step, force=end or stop_now, left=self._time_left(entry))
        best = False
        if self.step % c.steps_per_epoch == 0:
            epoch = self._epoch_end()
            progress.epoch(epoch, self.step)
            best = self._is_best(epoch)
        if stop_now and not end:
            status = self._stop_status(over_time)
            self._checkpoint(best=best)
            return status
        regular = end or self.step % c.checkpoint_every == 0
        if regular or best:
            self._checkpoint(regular=regular, best=best)
        return None

    def loop(self) -> str:
        """Train to the end of the budget, or to a stop; returns the status.  A loss that is no longer
        finite ends the run: ``metrics.json`` is written (status ``diverged``) and a :class:`TrainError`
        says what happened and what is kept."""
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
        except _Diverged:
            status = "diverged"
        finally:
            timer.stop()
            progress.close(self.step, self.meter.history)
        if status == "diverged":
            self._diverged()
        note = stop_note(status, step=self.step, total_steps=total, time_limit=self.config.time_limit, out=self.out,
                         history=self.meter.history, batch_size=self.config.batch_size)
        if note:
            self.log(note)
        return status

    def _diverged(self):
        step, loss = self.diverged_at
        if self.d.main:
            metrics = self.metrics("diverged")
            metrics["diverged_at"] = {"step": step, "loss": loss}
            self._write("metrics", os.path.join(self.out, METRICS_NAME),
                        lambda: write_json(os.path.join(self.out, METRICS_NAME), metrics))
            self._write("CSV logs", self.out, lambda: self.logs.write(metrics))
            self.logs.close()
        if self.saved_step is not None:
            kept = (f"the last checkpoint, at step {self.saved_step}, is kept in {self.out} (resuming from it "
                    "repeats the same steps: change the settings and start again)")
        else:
            kept = f"no checkpoint was written (the first was due at step {self.config.checkpoint_every})"
        lr = self.config.lr
        raise TrainError(f"training diverged: the loss is {loss} at step {step}; {kept}; metrics.json has the "
                         f"readings up to it. Try a lower --lr (now {lr:g}), --grad-clip 100"
                         + (" or --amp none" if self.config.amp != "none" else ""))

    # -- the end ------------------------------------------------------------------------------------

    def metrics(self, status: str) -> dict:
        """The contents of ``metrics.json``."""
        c = self.config
        metrics = {
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
            "objective": c.objective,
            "device": str(self.device),
            "device_name": device_name(self.device),
            "world_size": self.d.world_size,
            "versions": versions(),
            "epochs": self.meter.epochs,
            "history": self.meter.history,
        }
        log_scale = getattr(self.parts.model, "log_scale", None)
        if log_scale is not None:
            value = float(log_scale.detach().item())
            metrics["learned_scale"] = {"log_scale": value, "sigma": math.exp(value)}
        if self.best is not None:
            metrics["best"] = min((e for e in self.meter.epochs if "val_loss" in e), key=lambda e: e["val_loss"])
        return metrics

    def finish(self, status: str) -> dict:
        """The final metrics (with the evaluation) and the plots, written by rank 0."""
        if not self.d.main:
            return self.metrics(status)
        model = self.parts.eval_model
        evaluation = evaluate(model, self.plan.dataset, self.config.seed, self.device, self.plan.val_indices)
        metrics = self.metrics(status)
        metrics["evaluation"] = evaluation
        if self.config.plots:
            from .report import write_report

            try:
                paths = write_report(self.out, model, self.plan.dataset, metrics, seed=self.config.seed,
                                     log=self.log, indices=self.plan.val_indices)
            except OSError as exc:
                raise TrainError(f"cannot write the plots into {self.out} ({exc.strerror or exc}); the checkpoint "
                                 f"(step {self.saved_step}) and metrics.json are written") from None
            metrics["plots"] = [os.path.basename(p) for p in paths]
        path = os.path.join(self.out, METRICS_NAME)
        error = self._write("metrics", path, lambda: write_json(path, metrics))
        error = error or self._write("CSV logs", self.out, lambda: self.logs.write(metrics))
        self.logs.close()
        if error:
            raise TrainError(error)
        self.log(f"wrote {path}" + (f" and {len(metrics['plots'])} plots" if metrics.get("plots") else ""))
        return metrics
