"""fastvae eval and fastvae sweep (fastvae.train.evaluate, fastvae.train.sweep) on tiny runs: the numbers and
files they write, their errors, and a sweep interrupted in its second run that continues where it stopped."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from fastvae.train import TrainConfig, TrainError
from fastvae.train.evaluate import ACTIVE_THRESHOLD, evaluate_run, plot_kl_per_dim
from fastvae.train.run import train
from fastvae.train.sweep import RD_PNG, SWEEP_NAME, run_name, sweep


def _config(**kw):
    base = dict(steps=16, batch_size=16, threads=1, warmup_steps=4, checkpoint_every=8, plots=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval") / "run")
    train(_config(), out=out, progress=False, log=lambda s: None)
    return out


def test_eval_writes_the_numbers_of_a_run(run_dir):
    e = evaluate_run(run_dir, k=8, n=64, ll_n=16, progress=False, log=lambda s: None)
    saved = json.load(open(os.path.join(run_dir, "eval.json")))
    assert saved["rate"] == pytest.approx(e["rate"]) and saved["samples"] == 64 == e["samples"]
    assert e["samples_are"] == "held-out"
    assert e["elbo"] == pytest.approx(-(e["distortion"] + e["rate"]))
    assert len(e["kl_per_dim"]) == 10 and sum(e["kl_per_dim"]) == pytest.approx(e["rate"], rel=1e-4)
    assert e["active_dims"] == sum(v > ACTIVE_THRESHOLD for v in e["kl_per_dim"])
    assert e["log_likelihood_k"] == 8 and e["log_likelihood_samples"] == 16
    # the IS bound at k = 8 sits above the ELBO on average (a loose check on 16 samples: the same model)
    assert e["log_likelihood"] > e["elbo"] - 5.0
    assert e["mig"] is not None and 0.0 <= e["mig"]["score"] <= 1.0
    assert set(e["mig"]["per_factor"]) == {"shape", "scale", "orientation", "posX", "posY"}
    assert os.path.getsize(os.path.join(run_dir, "kl_per_dim.png")) > 1000


def test_eval_errors(tmp_path, run_dir):
    with pytest.raises(TrainError, match="no such run folder"):
        evaluate_run(str(tmp_path / "missing"))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(TrainError, match="not a fastvae run folder"):
        evaluate_run(str(tmp_path / "foreign"))
    with pytest.raises(TrainError, match="--k: expected a positive integer"):
        evaluate_run(run_dir, k=0)


def test_kl_chart(tmp_path):
    path = plot_kl_per_dim([0.5, 0.001, 2.0], str(tmp_path / "kl.png"), title="t")
    assert path and os.path.getsize(path) > 1000


def test_an_interrupted_sweep_continues_where_it_stopped(tmp_path):
    out = str(tmp_path / "sweep")
    c = _config(steps=16, log_every=2)
    lines, sent = [], []

    def interrupt_second_run(line):
        lines.append(line)
        # the second run's first progress line: a SIGTERM now stops it after its next step, with a checkpoint
        if any(seen.startswith("[2/2]") for seen in lines) and line.startswith("step ") and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    first = sweep([0.5, 4.0], c, out=out, explicit={"steps"}, n=48, progress=False, log=interrupt_second_run)
    assert first["status"].startswith("signal") and len(first["runs"]) == 1
    assert not os.path.exists(os.path.join(out, SWEEP_NAME))
    stopped = json.load(open(os.path.join(out, run_name(4.0), "metrics.json")))
    assert stopped["step"] < 16
    lines.clear()
    report = sweep([0.5, 4.0], c, out=out, explicit={"steps"}, n=48, progress=False, log=lines.append)
    assert any("finished before, kept" in line for line in lines)
    assert any(line.startswith("[2/2] beta 4: resuming") for line in lines)
    assert [r["beta"] for r in report["runs"]] == [0.5, 4.0]
    assert all(r["step"] == 16 for r in report["runs"])
    saved = json.load(open(os.path.join(out, SWEEP_NAME)))
    assert saved["runs"][1]["rate"] == pytest.approx(report["runs"][1]["rate"])
    assert all(r["mig"] is not None for r in saved["runs"])
    assert os.path.getsize(os.path.join(out, RD_PNG)) > 1000
    # the same seed: both runs started from the same weights and saw the same data
    a = torch.load(os.path.join(out, run_name(0.5), "checkpoint.pt"), weights_only=False)
    b = torch.load(os.path.join(out, run_name(4.0), "checkpoint.pt"), weights_only=False)
    assert a["config"]["seed"] == b["config"]["seed"] and a["config"]["beta"] != b["config"]["beta"]


def test_sweep_errors(tmp_path):
    with pytest.raises(TrainError, match="--betas: expected at least one beta"):
        sweep([], _config(), out=str(tmp_path))
    with pytest.raises(TrainError, match="given twice"):
        sweep([1.0, 1.0], _config(), out=str(tmp_path))
    with pytest.raises(TrainError, match="expected finite numbers >= 0"):
        sweep([-1.0], _config(), out=str(tmp_path))
    with pytest.raises(TrainError, match="--target-rate"):
        sweep([1.0], _config(target_rate=5.0), out=str(tmp_path))
