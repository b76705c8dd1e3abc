"""The usual training controls of ``fastvae train`` and what a run leaves to use afterwards: the
held-out split and its numbers per epoch, gradient clipping, the learning-rate schedules, the
moving average of the weights, fp16 with a GradScaler, the CSV and TensorBoard logs, the kept and
the best checkpoints, ``fastvae.load_model`` and ``fastvae sample``.

Tiny runs on the torch path, in-process (see tests/test_train.py)."""
import csv
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

import fastvae
from fastvae import cli
from fastvae.train import METRICS_NAME, TrainConfig, load_checkpoint
from fastvae.train.optim import lr_at

TINY = ["--model", "mlp", "--hidden", "32", "--latent-dim", "4", "--batch-size", "8", "--lr", "3e-3"]
# Epochs of 2 steps, readings every 2 steps: every control shows within a handful of steps.
SHORT = [*TINY, "--steps-per-epoch", "2", "--log-every", "2", "--no-plots"]


pytestmark = pytest.mark.usefixtures("single_process_torch")


def run_cli(*args) -> int:
    return cli.main(["train", *map(str, args)])


def metrics(out) -> dict:
    with open(os.path.join(out, METRICS_NAME)) as f:
        return json.load(f)


def params(path) -> dict:
    return load_checkpoint(str(path))["model"]


def without_timings(entries):
    return [{k: v for k, v in e.items() if k not in ("samples_per_s", "time_s")} for e in entries]


# ----------------------------------------------------------------------------- held out


def test_held_out_numbers_per_epoch_csv_logs_and_best_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*SHORT, "--steps", 6, "--out", out) == 0
    m = metrics(out)
    assert m["data"]["val"] == 1024 and m["data"]["train"] == m["data"]["len"] - 1024  # shapes: held-out images
    assert len(m["epochs"]) == 3
    for e in m["epochs"]:
        assert e["val_loss"] == pytest.approx(e["val_distortion"] + e["val_rate"])
        assert e["val_elbo"] == pytest.approx(-e["val_loss"])
        assert np.isfinite(e["val_objective"])
    best = min(m["epochs"], key=lambda e: e["val_loss"])
    assert m["best"]["step"] == best["step"]
    assert load_checkpoint(str(out / "best.pt"))["step"] == best["step"]
    with open(out / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4, 6] and float(rows[0]["val_loss"]) == m["epochs"][0]["val_loss"]
    with open(out / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [h["step"] for h in m["history"]]


def test_the_split_of_a_file_holds_out_five_percent_and_never_trains_on_it(tmp_path, monkeypatch):
    from fastvae.train import trainer

    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).random((100, 6, 6)).astype(np.float32))
    seen = []
    take = trainer.IndexStream.take

    def record(self, start, size):
        seen.append(take(self, start, size))
        return seen[-1]

    monkeypatch.setattr(trainer.IndexStream, "take", record)
    out = tmp_path / "run"
    assert run_cli("--data", data, *SHORT, "--steps", 30, "--out", out) == 0
    m = metrics(out)
    assert (m["data"]["train"], m["data"]["val"]) == (95, 5)
    from fastvae.train.seeding import split_indices

    train_idx, val_idx = split_indices(100, 5, 0)
    trained = set(torch.cat(seen).tolist())
    assert trained == set(train_idx.tolist()) and not trained & set(val_idx.tolist())
    assert run_cli("--data", data, *SHORT, "--steps", 2, "--val-fraction", 0, "--out", tmp_path / "all") == 0
    assert metrics(tmp_path / "all")["data"]["val"] == 0 and "best" not in metrics(tmp_path / "all")


# ----------------------------------------------------------------------------- optimization


def test_learning_rate_schedules():
    c = TrainConfig(lr=1e-2, lr_warmup=10, lr_schedule="cosine", lr_min=1e-3)
    assert lr_at(c, 0, 111) == pytest.approx(1e-3)      # warm-up: (0 + 1) / 10 of the rate
    assert lr_at(c, 9, 111) == pytest.approx(1e-2)
    assert lr_at(c, 60, 111) == pytest.approx(5.5e-3)   # half way: the mean of the two ends
    assert lr_at(c, 110, 111) == pytest.approx(1e-3)    # the last step
    c = TrainConfig(lr=1e-2, lr_warmup=0, lr_schedule="step", lr_decay_every=5, lr_gamma=0.1)
    assert [lr_at(c, s, 100) for s in (0, 4, 5, 12)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])
    assert lr_at(TrainConfig(lr=1e-2, lr_warmup=0, lr_schedule="constant"), 50, 100) == 1e-2
    # the default: a cosine to lr / 15 at the last step
    c = TrainConfig(lr=1.5e-3, lr_warmup=0)
    assert (lr_at(c, 0, 100), lr_at(c, 99, 100)) == pytest.approx((1.5e-3, 1e-4))


def test_controls_resume_exactly(tmp_path):
    """Clipping, a cosine schedule, the moving average and the held-out split together: a run
    stopped and resumed ends where the uninterrupted one does, moving average and best included."""
    common = [*SHORT, "--grad-clip", 5, "--lr-warmup", 0, "--lr-schedule", "cosine", "--lr-min", 1e-4,
              "--ema-decay", 0.9, "--checkpoint-every", 3]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(*common, "--steps", 8, "--out", full) == 0
    assert run_cli(*common, "--steps", 8, "--time-limit", 1e-9, "--out", part) == 0
    assert load_checkpoint(str(part))["step"] == 2
    assert run_cli("--resume", part, "--time-limit", 0) == 0
    a, b = load_checkpoint(str(full)), load_checkpoint(str(part))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key
        assert not torch.equal(a["model"][key], a["ema"][key]) or a["model"][key].numel() == 0
    ma, mb = metrics(full), metrics(part)
    assert without_timings(ma["epochs"]) == without_timings(mb["epochs"])
    lrs = [h["lr"] for h in ma["history"]]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(1e-4)


def test_gradient_clipping_bounds_the_update(tmp_path, monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        norm = clip(parameters, max_norm, *args, **kwargs)
        norms.append((float(norm), max_norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    assert run_cli(*SHORT, "--steps", 3, "--grad-clip", 1e-3, "--out", tmp_path / "run") == 0
    assert len(norms) == 3 and all(max_norm == 1e-3 and norm > 1e-3 for norm, max_norm in norms)


def test_fp16_needs_cuda(tmp_path, capsys):
    status = run_cli(*SHORT, "--steps", 1, "--amp", "fp16", "--device", "cpu", "--out", tmp_path / "run")
    assert status == 2 and "--amp fp16 needs a CUDA device" in capsys.readouterr().err


def test_fp16_runs_with_a_grad_scaler_and_resumes(tmp_path, monkeypatch):
    """The fp16 path (autocast to float16, the GradScaler, its state in the checkpoint), on the CPU
    where torch allows it, standing in for CUDA."""
    from fastvae.train import plan

    monkeypatch.setattr(plan, "FP16_DEVICES", ("cuda", "cpu"))
    out = tmp_path / "run"
    assert run_cli(*SHORT, "--steps", 2, "--amp", "fp16", "--grad-clip", 10, "--out", out) == 0
    ckpt = load_checkpoint(str(out))
    assert "scale" in ckpt["scaler"]
    assert run_cli("--resume", out, "--steps", 4) == 0
    assert all(np.isfinite(h["loss"]) for h in metrics(out)["history"])


def test_bf16_on_the_cpu_says_it_is_slow(tmp_path, capsys):
    assert run_cli(*SHORT, "--steps", 1, "--amp", "bf16", "--device", "cpu", "--out", tmp_path / "run") == 0
    assert "note: --amp bf16 on the CPU runs several times slower" in capsys.readouterr().out


def test_learned_scale_is_reported(tmp_path, capsys):
    data = tmp_path / "v.npy"
    np.save(data, np.random.default_rng(0).normal(size=(64, 12)).astype(np.float32))
    out = tmp_path / "run"
    assert run_cli("--data", data, *SHORT, "--likelihood", "gaussian", "--learn-scale", "--steps", 2, "--out",
                   out) == 0
    m = metrics(out)
    assert "sigma" in m["history"][-1] and m["learned_scale"]["sigma"] == pytest.approx(
        np.exp(m["learned_scale"]["log_scale"]))
    assert "| sigma " in capsys.readouterr().out


# ----------------------------------------------------------------------------- checkpoints and logs


def test_keep_the_last_checkpoints(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*SHORT, "--steps", 8, "--checkpoint-every", 2, "--keep-checkpoints", 2, "--out", out) == 0
    kept = sorted(p for p in os.listdir(out) if p.startswith("checkpoint-"))
    assert kept == ["checkpoint-0000006.pt", "checkpoint-0000008.pt"]
    assert load_checkpoint(str(out / kept[0]))["step"] == 6
    assert load_checkpoint(str(out / "checkpoint.pt"))["step"] == 8
    # a kept checkpoint resumes (into its own folder)
    assert run_cli("--resume", out / kept[0], "--steps", 8) == 0
    assert load_checkpoint(str(out))["step"] == 8


def test_tensorboard_logs_when_installed(tmp_path, monkeypatch):
    """A stand-in for tensorboard's SummaryWriter (the package is an optional extra)."""
    events = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            events.append(("open", os.path.relpath(log_dir, tmp_path), purge_step))

        def add_scalar(self, tag, value, step):
            events.append((tag, step))

        def flush(self):
            pass

        def close(self):
            events.append(("close",))

    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    monkeypatch.setitem(sys.modules, "tensorboard", types.ModuleType("tensorboard"))
    assert run_cli(*SHORT, "--steps", 4, "--out", tmp_path / "run") == 0  # auto: on when installed
    assert events[0] == ("open", os.path.join("run", "tensorboard"), None)
    assert ("train/loss", 2) in events and ("train/rate", 4) in events and ("val/loss", 4) in events
    assert events[-1] == ("close",)
    events.clear()
    assert run_cli(*SHORT, "--steps", 4, "--no-tensorboard", "--out", tmp_path / "off") == 0
    assert events == []


# ----------------------------------------------------------------------------- using the model


def test_load_model_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(*SHORT, "--steps", 4, "--ema-decay", 0.5, "--out", out) == 0
    model, config = fastvae.load_model(out, with_config=True)
    ckpt = load_checkpoint(str(out))
    assert not model.training and config.latent_dim == 4 and config.model == "mlp"
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["ema"][key])  # the moving average, by default
    trained = fastvae.load_model(out, weights="trained")
    for key, value in trained.state_dict().items():
        assert torch.equal(value, ckpt["model"][key])
    x = torch.rand(3, 1, 64, 64)
    assert trained.reconstruct(x).shape == (3, 1, 64, 64) and trained.sample(5).shape == (5, 1, 64, 64)
    best = fastvae.load_model(out, best=True, weights="trained")
    assert all(torch.equal(v, load_checkpoint(str(out / "best.pt"))["model"][k]) for k, v in best.state_dict().items())

    capsys.readouterr()
    assert cli.main(["sample", str(out), "--n", "9"]) == 0
    png = out / "samples-9-seed0.png"
    assert f"wrote {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["sample", str(out), "--n", "3", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (3, 1, 64, 64)


def test_sample_errors(tmp_path, capsys):
    assert cli.main(["sample", str(tmp_path)]) == 2
    assert "fastvae sample: error:" in capsys.readouterr().err
    data = tmp_path / "v.npy"
    np.save(data, np.random.default_rng(0).random((40, 12)).astype(np.float32))
    out = tmp_path / "run"
    assert run_cli("--data", data, *SHORT, "--steps", 2, "--out", out) == 0
    capsys.readouterr()
    assert cli.main(["sample", str(out)]) == 2
    assert "not images" in capsys.readouterr().err and ".npy" in capsys.readouterr().err + ".npy"
    assert cli.main(["sample", str(out), "--out", str(tmp_path / "v-samples.npy")]) == 0
