"""``fastvae train`` fails early and tells the truth: the output folder is checked before the first
step (a folder root cannot write into, a full disk), a write that fails later keeps the last good
checkpoint, channels-last images are recognised, a batch larger than the data is refused, a
diverged run says what is kept and writes metrics.json, checkpoint errors say what is wrong.

Tiny runs on the torch path, in-process (see tests/test_train.py)."""
import errno
import json
import os
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import torch

from fastvae import cli
from fastvae.train import CHECKPOINT_NAME, METRICS_NAME, load_checkpoint
from fastvae.train.console import duration, number

TINY = ["--model", "mlp", "--hidden", "32", "--latent-dim", "4", "--batch-size", "8", "--lr", "3e-3", "--no-plots"]


pytestmark = pytest.mark.usefixtures("single_process_torch")


def run_cli(*args) -> int:
    return cli.main(["train", *map(str, args)])


def assert_error(capsys, status, *phrases):
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("fastvae train: error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in err, err
    return err


def metrics(out) -> dict:
    with open(os.path.join(out, METRICS_NAME)) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- the output folder


def test_an_output_folder_under_a_file_is_refused_before_training(tmp_path, capsys):
    """The parent of --out is a regular file: no one, root included, can make the folder."""
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    out = blocker / "run"
    status = run_cli(*TINY, "--steps", 2, "--out", out)
    assert_error(capsys, status, f"--out {out}", "cannot create the output folder")
    assert blocker.read_text() == "in the way"


@pytest.fixture
def read_only_folder(tmp_path):
    """An empty folder that root cannot write into: a read-only bind mount of it (or, where mounts are
    not allowed, the immutable attribute); skipped where neither works."""
    folder = tmp_path / f"ro-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    undo = None
    if shutil.which("mount") and subprocess.run(["mount", "--bind", str(folder), str(folder)],
                                                capture_output=True).returncode == 0:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode == 0:
            undo = ["umount", str(folder)]
        else:
            subprocess.run(["umount", str(folder)], capture_output=True)
    if undo is None and shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)],
                                                                  capture_output=True).returncode == 0:
        undo = ["chattr", "-i", str(folder)]
    if undo is None:
        pytest.skip("cannot make a folder read-only for root here (no bind mount, no chattr)")
    try:
        probe = folder / "probe"
        try:
            probe.write_text("x")
        except OSError:
            pass
        else:
            probe.unlink()
            pytest.skip("the read-only folder is writable after all")
        yield folder
    finally:
        subprocess.run(undo, capture_output=True)


def test_a_read_only_output_folder_is_refused_before_training(read_only_folder, capsys):
    status = run_cli(*TINY, "--steps", 2, "--out", read_only_folder)
    err = assert_error(capsys, status, f"--out {read_only_folder}", "cannot write into the output folder")
    assert "Read-only file system" in err or "Operation not permitted" in err
    assert os.listdir(read_only_folder) == []


def test_too_little_free_space_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import fastvae.train.output as output

    real = shutil.disk_usage

    def nearly_full(path):
        return real(path)._replace(free=3_000_000)

    monkeypatch.setattr(output.shutil, "disk_usage", nearly_full)
    out = tmp_path / "run"
    status = run_cli(*TINY, "--steps", 2, "--out", out)
    assert_error(capsys, status, f"--out {out}", "3 MB free", "checkpoint files of about")
    assert not out.exists()  # the folder this run made is removed again


def test_a_failed_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch, capsys):
    """The disk fills up during the run: the checkpoint write fails with a clear error, and the
    checkpoint of the step before is still there and loads."""
    import fastvae.train.trainer as trainer

    save = trainer.save_checkpoint
    calls = []

    def save_until_full(out, state, name=CHECKPOINT_NAME):
        calls.append(state["step"])
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(out, state, name)

    monkeypatch.setattr(trainer, "save_checkpoint", save_until_full)
    out = tmp_path / "run"
    status = run_cli(*TINY, "--steps", 6, "--checkpoint-every", 2, "--val-fraction", 0, "--out", out)
    assert_error(capsys, status, "cannot write the checkpoint", "No space left on device",
                 "the last good checkpoint (step 2) is kept", "--resume")
    assert calls == [2, 4]
    assert load_checkpoint(str(out))["step"] == 2
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


# ----------------------------------------------------------------------------- data


def test_channels_last_images_are_recognised(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "rgb.npy"
    np.save(data, rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8))
    out = tmp_path / "run"
    assert run_cli("--data", data, "--likelihood", "gaussian", "--batch-size", 4, "--steps", 1, "--latent-dim", 2,
                   "--out", out, "--no-plots") == 0
    printed = capsys.readouterr().out
    assert "read as channels-last images" in printed and "(3, 32, 32)" in printed
    m = metrics(out)
    assert m["data"]["sample_shape"] == [3, 32, 32] and m["config"]["model"] == "conv"
    # kept as it is when asked
    out2 = tmp_path / "run2"
    assert run_cli("--data", data, "--data-layout", "channels-first", *TINY, "--likelihood", "gaussian",
                   "--batch-size", 4, "--steps", 1, "--out", out2) == 0
    assert metrics(out2)["data"]["sample_shape"] == [32, 32, 3]


def test_a_batch_larger_than_the_data_is_refused(tmp_path, capsys):
    data = tmp_path / "small.npy"
    np.save(data, np.zeros((20, 6, 6), dtype=np.float32))
    status = run_cli("--data", data, *TINY, "--batch-size", 32, "--steps", 1, "--out", tmp_path / "run")
    assert_error(capsys, status, "--batch-size 32 is larger than the 19 training samples", "1 more are held out",
                 "--batch-size 19 or less")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- divergence


@pytest.mark.parametrize("checkpoint_every", [2, 100])
def test_divergence_tells_what_is_kept_and_writes_metrics(tmp_path, monkeypatch, capsys, checkpoint_every):
    from fastvae.train import metrics as train_metrics

    add = train_metrics.Meter.add
    count = []

    def nan_from_step_5(self, value, distortion, rate, extras=None):
        count.append(1)
        if len(count) >= 5:
            value = value * float("nan")
        return add(self, value, distortion, rate, extras)

    monkeypatch.setattr(train_metrics.Meter, "add", nan_from_step_5)
    out = tmp_path / "run"
    status = run_cli(*TINY, "--steps", 10, "--log-every", 2, "--checkpoint-every", checkpoint_every, "--out", out)
    if checkpoint_every == 2:
        assert_error(capsys, status, "training diverged", "at step 6", "the last checkpoint, at step 4, is kept")
        assert load_checkpoint(str(out))["step"] == 4
    else:
        err = assert_error(capsys, status, "training diverged", "no checkpoint was written")
        assert "is kept" not in err
        assert not (out / CHECKPOINT_NAME).exists()
    m = metrics(out)
    assert m["status"] == "diverged" and m["diverged_at"]["step"] == 6
    assert [h["step"] for h in m["history"]] == [2, 4]


# ----------------------------------------------------------------------------- messages


@pytest.mark.parametrize("content, phrase", [
    (b"", "the file is empty"),
    (None, "truncated"),
    ("pickle", "holds Python objects"),
], ids=["empty", "truncated", "objects"])
def test_unreadable_checkpoints_say_why(tmp_path, capsys, content, phrase):
    path = tmp_path / "checkpoint.pt"
    if content is None:
        torch.save({"format": "x", "weights": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif content == "pickle":
        torch.save({"weights": uuid.uuid4()}, path)
    else:
        path.write_bytes(content)
    status = run_cli("--resume", path, "--steps", 2)
    err = assert_error(capsys, status, str(path), phrase)
    assert "weights_only" not in err and "EOFError: )" not in err


def test_numbers_and_durations_for_log_lines():
    assert number(123.456) == "123.46"
    assert number(1.2345e28) == "1.23e+28" and number(-4e9) == "-4e+09"
    assert number(float("nan")) == "nan"
    assert duration(42) == "42 s" and duration(600) == "10 min" and duration(7500) == "2 h 05 min"
