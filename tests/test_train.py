"""Tests of ``fastvae train`` (fastvae/train/, fastvae/cli.py; the plots of fastvae/train/report.py).

Runs are tiny (an MLP with a few dozen hidden units, batches of 8, a handful of steps) and mostly
in-process through ``fastvae.cli.main``; a subprocess is used where the test needs one (a run
killed with SIGKILL, ``python -m fastvae``).  The torch path of the ops is used throughout
(FASTVAE_BACKEND=torch); the Triton kernels have their own tests.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fastvae import cli
from fastvae.train import CHECKPOINT_NAME, DEFAULT_TIME_LIMIT, METRICS_NAME, TrainConfig, load_checkpoint, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNGS = ("curves.png", "reconstructions.png", "traversals.png", "samples.png", "kl_per_dim.png")
# A tiny model and batch: a step takes milliseconds on one CPU thread.
TINY = ["--model", "mlp", "--hidden", "32", "--latent-dim", "4", "--batch-size", "8", "--lr", "3e-3"]


pytestmark = pytest.mark.usefixtures("single_process_torch")


def run_cli(*args) -> int:
    return cli.main(["train", *map(str, args)])


def params(out) -> dict:
    return load_checkpoint(str(out))["model"]


def assert_same_params(a: dict, b: dict, exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), f"{key} differs by {(a[key] - b[key]).abs().max().item():.3g}"
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def metrics(out) -> dict:
    with open(os.path.join(out, METRICS_NAME)) as f:
        return json.load(f)


def without_timings(entries):
    return [{k: v for k, v in e.items() if k not in ("samples_per_s", "time_s")} for e in entries]


def binary_images(n=40, side=32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = np.zeros((n, side, side), dtype=np.uint8)
    for i in range(n):  # a filled rectangle per image
        r, c = rng.integers(0, side - 8, size=2)
        images[i, r:r + rng.integers(3, 8), c:c + rng.integers(3, 8)] = 255
    return images


# ----------------------------------------------------------------------------- runs


@pytest.mark.slow
def test_mlp_on_shapes_writes_metrics_checkpoint_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(*TINY, "--steps", 6, "--steps-per-epoch", 3, "--log-every", 2, "--checkpoint-every", 3,
                   "--out", out) == 0
    printed = capsys.readouterr().out
    # stdout is not a terminal here: plain log lines rather than a progress bar
    assert "step 6/6 | loss" in printed and "samples/s" in printed and "epoch 2 (step 6)" in printed

    m = metrics(out)
    assert m["status"] == "finished" and m["step"] == 6 and m["total_steps"] == 6
    assert m["config"]["model"] == "mlp" and m["config"]["batch_size"] == 8 and m["config"]["data"] == "shapes"
    assert set(m["versions"]) >= {"torch", "triton", "fastvae", "python"}
    assert m["versions"]["torch"] == str(torch.__version__)
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    for entry in m["epochs"] + m["history"]:
        for key in ("loss", "distortion", "rate", "beta", "samples_per_s"):
            assert np.isfinite(entry[key]), (key, entry)
        assert entry["samples_per_s"] > 0
    assert [h["step"] for h in m["history"]] == [2, 4, 6]
    assert m["history"][0]["beta"] < m["history"][-1]["beta"]  # the default warm-up
    assert len(m["evaluation"]["kl_per_dim"]) == 4
    assert sorted(m["plots"]) == sorted(PNGS)
    for name in PNGS:
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    ckpt = load_checkpoint(str(out))
    assert ckpt["step"] == 6 and ckpt["config"] == m["config"]
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]  # no leftovers of the atomic writes


def test_conv_on_npy_with_eager_torch_loss(tmp_path):
    data = tmp_path / "rects.npy"
    np.save(data, binary_images())
    out = tmp_path / "run"
    assert run_cli("--data", data, "--loss-backend", "torch", "--batch-size", 4, "--steps", 2, "--latent-dim", 3,
                   "--no-plots", "--out", out) == 0
    m = metrics(out)
    assert m["config"]["model"] == "conv"  # auto: (1, 32, 32) images fit the conv VAE
    assert m["config"]["loss_backend"] == "torch"
    assert m["data"]["sample_shape"] == [1, 32, 32] and m["data"]["len"] == 40
    assert (m["data"]["train"], m["data"]["val"]) == (38, 2)  # 5% held out
    assert m["steps_per_epoch"] == 9  # training samples // batch
    assert "plots" not in m


def test_conv_on_shapes_default_model(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--batch-size", 2, "--steps", 1, "--latent-dim", 2, "--no-plots", "--out", out) == 0
    m = metrics(out)
    assert m["config"]["model"] == "conv" and m["data"]["sample_shape"] == [1, 64, 64]
    assert m["config"]["likelihood"] == "bernoulli" and m["config"]["beta"] == 4.0


def test_conv_trains_in_channels_last_on_cpu(tmp_path):
    """On the CPU the trainer lays the conv VAE's 4-D weights out channels-last (the faster oneDNN path);
    the checkpoint loads back into a model of the usual layout that computes the same function."""
    from fastvae import load_model

    config = TrainConfig(batch_size=2, steps=2, latent_dim=2, plots=False, device="cpu")
    result = train(config, out=str(tmp_path / "run"), log=lambda *_: None)
    convs = [p for p in result.model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert sum(not p.is_contiguous() for p in convs) >= 6  # all but the one-channel first and last layers
    loaded = load_model(result.out)
    assert all(p.is_contiguous() for p in loaded.parameters())
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(5)).round()
    result.model.eval()
    with torch.no_grad():
        codes = loaded.encode(x)
        torch.testing.assert_close(codes, result.model.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded.decode(codes[0]), result.model.decode(codes[0]), rtol=1e-5, atol=1e-4)


def test_loss_backends_train_alike(tmp_path):
    """--loss-backend torch is the same training with the eager loss: same data, same noise."""
    outs = {}
    for backend in ("fastvae", "torch"):
        outs[backend] = tmp_path / backend
        assert run_cli(*TINY, "--steps", 4, "--no-plots", "--loss-backend", backend, "--out", outs[backend]) == 0
    assert_same_params(params(outs["fastvae"]), params(outs["torch"]), exact=False)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """--compile traces the whole objective (noise generator and row offset included) and trains
    the same model as the eager run."""
    outs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        outs[name] = tmp_path / name
        assert run_cli(*TINY, "--steps", 3, "--no-plots", *extra, "--out", outs[name]) == 0
    assert metrics(outs["compiled"])["config"]["compile"] is True
    assert_same_params(params(outs["eager"]), params(outs["compiled"]), exact=False)


def test_bf16_autocast_runs(tmp_path):
    out = tmp_path / "run"
    assert run_cli(*TINY, "--steps", 2, "--amp", "bf16", "--no-plots", "--out", out) == 0
    assert all(np.isfinite(h["loss"]) for h in metrics(out)["history"])


def test_vectors_gaussian_digits_like(tmp_path):
    """Flat float data with a Gaussian decoder: the mlp model, reconstructions drawn as curves."""
    data = tmp_path / "vectors.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(32, 12)).astype(np.float32))
    out = tmp_path / "run"
    assert run_cli("--data", f"{data}:x", "--likelihood", "gaussian", "--learn-scale", "--hidden", 16,
                   "--latent-dim", 2, "--batch-size", 8, "--steps", 3, "--out", out) == 0
    m = metrics(out)
    assert m["config"]["model"] == "mlp" and m["plots"] == ["curves.png", "reconstructions.png", "kl_per_dim.png"]


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize("objective", [
    [],                                                                     # warm-up beta (default)
    ["--target-rate", 3, "--beta-lr", 0.05],                                # constrained beta, state on device
    ["--capacity", 5, "--capacity-steps", 4, "--beta-schedule", "cyclical", "--cycle-steps", 3],
], ids=["warmup", "constrained", "capacity+cyclical"])
def test_resume_matches_uninterrupted_run(tmp_path, objective):
    common = [*TINY, *objective, "--log-every", 2, "--checkpoint-every", 3, "--steps-per-epoch", 4, "--no-plots"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(*common, "--steps", 8, "--out", full) == 0
    assert run_cli(*common, "--steps", 3, "--out", part) == 0
    assert load_checkpoint(str(part))["step"] == 3
    assert run_cli("--resume", "--out", part, "--steps", 8) == 0
    assert_same_params(params(full), params(part))
    a, b = load_checkpoint(str(full)), load_checkpoint(str(part))
    assert a["beta_schedule"] == b["beta_schedule"]
    assert a["capacity_schedule"] == b["capacity_schedule"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    ma, mb = metrics(full), metrics(part)
    assert without_timings(ma["epochs"]) == without_timings(mb["epochs"])
    # The 3-step run ended with a reading at step 3, so the resumed run's reading at step 4 covers one
    # step; the others cover the same steps as the uninterrupted run's.
    assert [h["step"] for h in mb["history"]] == [2, 3, 4, 6, 8]
    same = [h for h in mb["history"] if h["step"] not in (3, 4)]
    assert without_timings(ma["history"][:1] + ma["history"][2:]) == without_timings(same)
    assert ma["config"] == mb["config"]


def test_time_limit_stops_with_checkpoint_and_resume_finishes(tmp_path, capsys):
    common = [*TINY, "--log-every", 2, "--checkpoint-every", 100, "--no-plots"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(*common, "--steps", 6, "--out", full) == 0
    assert run_cli(*common, "--steps", 6, "--time-limit", 1e-9, "--out", part) == 0
    assert "time limit" in capsys.readouterr().out
    m = metrics(part)
    assert m["status"] == "time limit" and m["step"] == 2  # stops at the first reading, with a checkpoint
    assert load_checkpoint(str(part))["step"] == 2
    # A resumed run keeps the time limit it was started with (per session) ...
    capsys.readouterr()
    assert run_cli("--resume", part) == 0  # a run folder; the config comes from its checkpoint
    assert metrics(part)["status"] == "time limit" and metrics(part)["step"] == 4
    printed = capsys.readouterr().out
    assert "1e-09 s of training per session" in printed and "steps to go" in printed
    assert "--time-limit 0" in printed
    # ... and --time-limit 0 lifts it.
    assert run_cli("--resume", part, "--time-limit", 0) == 0
    assert metrics(part)["status"] == "finished" and metrics(part)["config"]["time_limit"] == 0
    assert_same_params(params(full), params(part))


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    """A run killed at an arbitrary moment after a checkpoint exists resumes from it exactly."""
    out, ref = tmp_path / "killed", tmp_path / "reference"
    args = [*TINY, "--hidden", 16, "--batch-size", 4, "--steps", 100000, "--checkpoint-every", 2,
            "--log-every", 2, "--no-plots", "--threads", 1, "--out", out]
    env = dict(os.environ, FASTVAE_BACKEND="torch", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "fastvae", "train", *map(str, args)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (out / CHECKPOINT_NAME).exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
        time.sleep(0.3)  # let it run on: the kill lands mid-step or mid-checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(str(out))["step"]  # readable: writes are atomic
    assert killed_at >= 2 and killed_at % 2 == 0
    target = killed_at + 3
    assert run_cli("--resume", "--out", out, "--steps", target) == 0
    ref_args = [a for a in args if a not in ("--out", out)]
    ref_args[ref_args.index("--steps") + 1] = target
    assert run_cli(*ref_args, "--out", ref) == 0
    assert_same_params(params(ref), params(out))
    assert without_timings(metrics(ref)["history"]) == without_timings(metrics(out)["history"])


@pytest.mark.slow
def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path):
    """SIGTERM (a preempted job) stops after the current step, writes a checkpoint there and exits
    128 + 15; the run then resumes exactly."""
    out, ref = tmp_path / "stopped", tmp_path / "reference"
    args = [*TINY, "--hidden", 16, "--batch-size", 4, "--steps", 100000, "--checkpoint-every", 1000,
            "--log-every", 1000, "--no-plots", "--threads", 1]
    env = dict(os.environ, FASTVAE_BACKEND="torch", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "fastvae", "train", *map(str, args), "--out", str(out)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not out.exists():  # the folder appears once training is about to start
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped at step" in stdout and "SIGTERM" in stdout and "--resume" in stdout
    m = metrics(out)
    stopped_at = m["step"]
    assert m["status"] == "signal SIGTERM" and load_checkpoint(str(out))["step"] == stopped_at >= 1
    assert run_cli("--resume", out, "--steps", stopped_at + 2) == 0
    ref_args = list(args)
    ref_args[ref_args.index("--steps") + 1] = stopped_at + 2
    assert run_cli(*ref_args, "--out", ref) == 0
    assert_same_params(params(ref), params(out))


def test_resume_of_a_finished_run_trains_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(*TINY, "--steps", 2, "--no-plots", "--out", out) == 0
    before = params(out)
    assert run_cli("--resume", out) == 0
    assert "nothing to train" in capsys.readouterr().out
    assert_same_params(before, params(out))


def test_python_api_train(tmp_path):
    config = TrainConfig(model="mlp", hidden=(16,), latent_dim=2, batch_size=4, steps=2, plots=False)
    result = train(config, out=str(tmp_path / "run"), log=lambda *_: None)
    assert result.status == "finished" and result.step == 2 and result.exit_code == 0
    assert result.metrics["step"] == 2 and isinstance(result.model, torch.nn.Module)
    assert os.path.exists(os.path.join(result.out, CHECKPOINT_NAME))


def test_the_named_datasets_are_fastvae_datas():
    from fastvae.data import DATASET_NAMES
    from fastvae.train.config import NAMED_DATASETS

    assert NAMED_DATASETS == DATASET_NAMES


def test_train_leaves_the_callers_config_and_process_as_it_found_them(tmp_path, monkeypatch):
    """train() works on a copy of the config (the run's resolved copy is in the result), and puts
    back the thread count and the CPU generator it changes."""
    import dataclasses

    import fastvae.train.plan

    monkeypatch.setattr(fastvae.train.plan, "DEFAULT_STEPS", 2)  # the default budget, but short
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "images.npy", binary_images(n=16, side=12))
    config = TrainConfig(data="images.npy", hidden=(16,), latent_dim=2, batch_size=8, threads=2, plots=False,
                         device="cpu")
    before = dataclasses.replace(config)
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    result = train(config, out="run", log=lambda *_: None)
    assert result.status == "finished" and result.step == 2
    assert config == before and config.model == "auto" and config.steps is None and config.time_limit is None
    assert config.data == "images.npy" and config.steps_per_epoch is None
    assert torch.get_num_threads() == threads == 1
    assert torch.equal(torch.get_rng_state(), rng)
    # the run's own config: resolved, and what metrics.json records
    used = result.config
    assert (used.model, used.steps, used.steps_per_epoch, used.time_limit) == ("mlp", 2, 2, DEFAULT_TIME_LIMIT)
    assert used.data == str(tmp_path / "images.npy")
    assert metrics(tmp_path / "run")["config"] == used.to_dict()
    # the same on resume
    more = TrainConfig(steps=3)
    result = train(more, resume="run", explicit={"steps"}, log=lambda *_: None)
    assert result.step == 3 and more == TrainConfig(steps=3)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == 1


# ----------------------------------------------------------------------------- bad input


def snapshot(folder) -> dict:
    """{name: (bytes, mtime)} of the files of a folder."""
    return {name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns) for name in os.listdir(folder)}


def assert_error(capsys, status, *phrases):
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("fastvae train: error: "), err
    for phrase in phrases:
        assert phrase in err, err
    return err


@pytest.mark.parametrize("make, phrases", [
    (lambda p: None, ["file not found"]),
    (lambda p: p.write_bytes(b"definitely not numpy"), ["malformed .npy"]),
    (lambda p: np.save(p, np.array(["a", "b"])), ["expected a real numeric array", "<U1"]),
    (lambda p: np.save(p, np.zeros(5, dtype=np.float32)), ["at least 2 dimensions"]),
    (lambda p: np.save(p, np.full((4, 3), 2.0, dtype=np.float32)), ["bernoulli needs values in [0, 1]"]),
    (lambda p: np.save(p, np.array([[0.0, np.nan]], dtype=np.float32)), ["finite"]),
], ids=["missing", "malformed", "strings", "1d", "range", "nan"])
def test_bad_data_file_exits_non_zero_and_writes_nothing(tmp_path, capsys, make, phrases):
    data = tmp_path / "data.npy"
    make(data)
    out = tmp_path / "run"
    status = run_cli("--data", data, "--model", "mlp", "--steps", 1, "--out", out)
    assert_error(capsys, status, str(data), *phrases)
    assert not out.exists()


def test_conv_model_on_wrong_shape(tmp_path, capsys):
    data = tmp_path / "vectors.npy"
    np.save(data, np.zeros((8, 10), dtype=np.float32))
    status = run_cli("--data", data, "--model", "conv", "--batch-size", 4, "--steps", 1, "--out", tmp_path / "run")
    assert_error(capsys, status, "--model conv takes images of shape", "(10,)", "--model mlp")
    assert not (tmp_path / "run").exists()


def test_unknown_dataset_name(tmp_path, capsys):
    status = run_cli("--data", "mnist", "--steps", 1, "--out", tmp_path / "run")
    assert_error(capsys, status, "mnist", "unknown dataset")


def test_existing_output_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(*TINY, "--steps", 2, "--no-plots", "--out", out) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    before = snapshot(out)
    status = run_cli(*TINY, "--steps", 2, "--no-plots", "--out", out)
    assert_error(capsys, status, "not empty", "--resume", "--overwrite")
    assert snapshot(out) == before
    # nor by a run resumed from another folder's checkpoint
    other = tmp_path / "other"
    assert run_cli(*TINY, "--steps", 1, "--no-plots", "--out", other) == 0
    capsys.readouterr()
    status = run_cli("--resume", other, "--out", out, "--steps", 2)
    assert_error(capsys, status, "not empty")
    assert snapshot(out) == before
    # --overwrite replaces fastvae's files and leaves the others
    assert run_cli(*TINY, "--steps", 3, "--no-plots", "--out", out, "--overwrite") == 0
    assert load_checkpoint(str(out))["step"] == 3 and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("change, phrase", [
    (["--model", "conv"], "model: checkpoint has 'mlp', got 'conv'"),
    (["--latent-dim", "5"], "latent_dim: checkpoint has 4, got 5"),
    (["--beta", "2"], "beta: checkpoint has 4.0, got 2.0"),
    (["--batch-size", "16"], "batch_size: checkpoint has 8, got 16"),
    (["--data", "digits"], "data: checkpoint has 'shapes', got 'digits'"),
])
def test_resume_refuses_a_different_config(tmp_path, capsys, change, phrase):
    out = tmp_path / "run"
    assert run_cli(*TINY, "--steps", 2, "--checkpoint-every", 1, "--no-plots", "--out", out) == 0
    capsys.readouterr()
    before = snapshot(out)
    status = run_cli("--resume", "--out", out, "--steps", 4, *change)
    assert_error(capsys, status, "different run", phrase)
    assert snapshot(out) == before


def test_resume_refuses_a_model_that_does_not_fit(tmp_path, capsys):
    """A checkpoint whose stored config was edited: the weights do not fit the model it describes."""
    out = tmp_path / "run"
    assert run_cli(*TINY, "--steps", 1, "--no-plots", "--out", out) == 0
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    ckpt["config"]["hidden"] = [64]
    torch.save(ckpt, out / CHECKPOINT_NAME)
    capsys.readouterr()
    status = run_cli("--resume", out, "--steps", 2)
    assert_error(capsys, status, "does not fit this model")


@pytest.mark.parametrize("content, phrase", [
    (b"garbage", "not a readable fastvae checkpoint"),
    (None, "not a fastvae train checkpoint"),
])
def test_resume_from_a_bad_checkpoint(tmp_path, capsys, content, phrase):
    path = tmp_path / "checkpoint.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    status = run_cli("--resume", path, "--steps", 2)
    assert_error(capsys, status, str(path), phrase)


def test_resume_without_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    status = run_cli("--resume", "--out", tmp_path / "empty")
    assert_error(capsys, status, "no checkpoint.pt in")


@pytest.mark.parametrize("args, phrase", [
    (["--target-rate", "5", "--beta-schedule", "warmup"], "--target-rate drives the 'constrained'"),
    (["--beta-schedule", "constrained"], "needs --target-rate"),
    (["--likelihood", "bernoulli", "--learn-scale"], "apply to the gaussian and laplace"),
    (["--device", "tpu"], "--device must be"),
    (["--lr", "-1"], "--lr must be > 0"),
])
def test_bad_options(tmp_path, capsys, args, phrase):
    status = run_cli(*TINY, "--steps", 1, "--out", tmp_path / "run", *args)
    assert_error(capsys, status, phrase)
    assert not (tmp_path / "run").exists()


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli("--steps", 2, "--epochs", 1)
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_cli("--batch-size", 0)
    assert exc.value.code == 2


# ----------------------------------------------------------------------------- the command


def test_help_and_bench_delegation(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--beta-schedule", "--target-rate", "--capacity-steps", "--loss-backend", "--amp",
                   "--compile", "--resume", "--checkpoint-every", "--log-every", "torchrun"):
        assert option in text
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    assert "fastvae bench" in capsys.readouterr().out
    assert cli.main([]) == 2  # no command: help, non-zero


@pytest.mark.parametrize("argv, orig_argv, policy", [
    (["/venv/bin/fastvae", "train", "--steps", "5"], None, "PASSIVE"),
    (["-m"], ["python", "-X", "dev", "-m", "fastvae", "train", "--device=cpu"], "PASSIVE"),
    (["/venv/bin/fastvae", "train", "--device", "cuda:1"], None, None),
    (["/venv/bin/fastvae", "train", "--help"], None, None),
    (["/venv/bin/fastvae", "bench"], None, "PASSIVE"),
    (["/venv/bin/fastvae", "bench", "--device", "cuda"], None, None),
    (["/venv/bin/fastvae", "sweep", "--betas", "1,2"], None, "PASSIVE"),
    (["-m"], ["python", "-m", "pytest", "tests"], None),
    (["script.py"], ["python", "script.py", "-m", "fastvae", "train"], None),
], ids=["script", "python-m", "cuda", "help", "bench", "bench-cuda", "sweep", "other-module", "script-argument"])
def test_the_train_command_waits_passively_in_openmp(monkeypatch, argv, orig_argv, policy):
    """fastvae/__init__.py sets OMP_WAIT_POLICY=PASSIVE before torch loads, for the CPU `fastvae` commands only."""
    from fastvae import _openmp

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as when fastvae/__init__.py runs, before torch is imported
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig_argv or ["python", *argv])
    _openmp.set_for_the_command()
    assert os.environ.get("OMP_WAIT_POLICY") == policy
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a policy the user set is kept
    _openmp.set_for_the_command()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_python_m_fastvae(tmp_path):
    env = dict(os.environ, FASTVAE_BACKEND="torch", PYTHONPATH=REPO)
    data = tmp_path / "missing.npz"
    proc = subprocess.run([sys.executable, "-m", "fastvae", "train", "--data", str(data), "--out", str(tmp_path / "r")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "fastvae train: error:" in proc.stderr and "file not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_api_trains_on_a_torch_dataset(tmp_path):
    """train(config, dataset=...) takes any map-style torch Dataset, recorded as <ClassName>."""
    images = torch.rand(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    dataset = torch.utils.data.TensorDataset(images)
    config = TrainConfig(model="mlp", hidden=(16,), latent_dim=2, batch_size=8, steps=3, plots=False,
                         device="cpu")
    out = tmp_path / "run"
    train(config, out=str(out), dataset=dataset, progress=False, log=lambda *_: None)
    m = metrics(out)
    assert m["config"]["data"] == "<TensorDataset>"
    assert all(np.isfinite(h["loss"]) for h in m["history"])
    assert params(out)  # a checkpoint with the model's parameters
