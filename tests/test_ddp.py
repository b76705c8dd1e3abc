"""Data parallelism: 2 processes x batch B train exactly like 1 process x batch 2B.

``fastvae train`` under ``torchrun`` (gloo on the CPU, a free port on 127.0.0.1) with a tiny MLP;
``--batch-size`` is the global batch, so both runs are given the same one.  Each rank takes its
slice of the global batch and of its noise, the loss is a per-rank mean and DDP averages the
gradients, so the parameters agree up to float rounding.  The capacity objective is used because
it is the non-linear case: ``|rate - C|`` must be taken on the global batch-mean rate, and C is set
near this model's early rate (~0.04 nats) so that the two ranks' own rates fall on different sides
of it (with per-rank ``|rate - C|`` this test fails).  A run checkpointed by 2 processes also
resumes on 1 and ends where the single-process run does.
"""
import os
import socket
import subprocess
import sys

import pytest
import torch

from fastvae import cli
from fastvae.train import load_checkpoint

pytestmark = pytest.mark.slow  # two processes under torchrun, then the same run in one

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--model", "mlp", "--hidden", "16", "--latent-dim", "3", "--batch-size", "8", "--steps", "4", "--lr", "1e-2",
        "--capacity", "0.04", "--beta", "20", "--log-every", "2", "--steps-per-epoch", "2", "--no-plots",
        "--device", "cpu"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, *args):
    env = dict(os.environ, FASTVAE_BACKEND="torch", OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "fastvae", "train", *args]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.usefixtures("single_process_torch")  # this process's own run (torchrun's get their env from _torchrun)
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path):
    ddp_out, single_out, half_out = tmp_path / "ddp", tmp_path / "single", tmp_path / "half"
    proc = _torchrun(tmp_path, *ARGS, "--out", str(ddp_out))
    assert "2 processes x 4" in proc.stdout  # the banner: global batch 8 split in two
    assert proc.stdout.count("fastvae train:") == 1  # only rank 0 logs
    # only rank 0 writes (best.pt: the held-out images of shapes are evaluated on rank 0)
    assert sorted(os.listdir(ddp_out)) == ["best.pt", "checkpoint.pt", "epochs.csv", "metrics.csv", "metrics.json"]
    # Part of the run on 2 processes, the rest resumed on one: the checkpoint (written mid-epoch)
    # holds the whole state, metric sums included.
    _torchrun(tmp_path, *ARGS, "--steps", "3", "--checkpoint-every", "3", "--out", str(half_out))

    assert cli.main(["train", *ARGS, "--out", str(single_out)]) == 0
    assert cli.main(["train", "--resume", str(half_out), "--steps", "4"]) == 0
    ddp, single = load_checkpoint(str(ddp_out)), load_checkpoint(str(single_out))
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["step"] == single["step"] == 4
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(ddp["metrics"]["history"], single["metrics"]["history"]):
        for key in ("loss", "distortion", "rate"):
            assert abs(a[key] - b[key]) <= 1e-4 * abs(b[key]) + 1e-5, (key, a, b)

    resumed = load_checkpoint(str(half_out))
    assert resumed["world_size"] == 1 and resumed["step"] == 4
    for key, value in single["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    resumed_steps = [e["step"] for e in resumed["metrics"]["epochs"]]
    assert resumed_steps == [e["step"] for e in single["metrics"]["epochs"]] == [2, 4]
    for a, b in zip(resumed["metrics"]["epochs"], single["metrics"]["epochs"]):
        for key in ("loss", "distortion", "rate"):
            assert abs(a[key] - b[key]) <= 1e-4 * abs(b[key]) + 1e-5, (key, a, b)


# The objectives that need the global batch: free bits per dimension (the floor is applied to the global
# per-dimension means; lambda sits near this model's early per-dimension KL so that the ranks' own means fall
# on different sides of it) and beta-TCVAE (the log-sum-exps run over the global batch).
OBJECTIVE_ARGS = ["--model", "mlp", "--hidden", "16", "--latent-dim", "3", "--batch-size", "8", "--steps", "4",
                  "--lr", "1e-2", "--log-every", "2", "--steps-per-epoch", "2", "--no-plots", "--device", "cpu",
                  "--beta-schedule", "constant"]


@pytest.mark.parametrize("extra, keys", [
    (["--free-bits", "0.013", "--beta", "20"], ("loss", "distortion", "rate")),
    (["--objective", "tcvae", "--beta", "6", "--alpha", "0.5", "--gamma", "2"],
     ("loss", "distortion", "rate", "mi", "tc", "dwkl")),
], ids=["free-bits-dim", "tcvae"])
@pytest.mark.usefixtures("single_process_torch")
def test_objectives_on_two_processes_match_one_process(tmp_path, extra, keys):
    ddp_out, single_out = tmp_path / "ddp", tmp_path / "single"
    _torchrun(tmp_path, *OBJECTIVE_ARGS, *extra, "--out", str(ddp_out))
    assert cli.main(["train", *OBJECTIVE_ARGS, *extra, "--out", str(single_out)]) == 0
    ddp, single = load_checkpoint(str(ddp_out)), load_checkpoint(str(single_out))
    assert ddp["world_size"] == 2 and ddp["step"] == single["step"] == 4
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(ddp["metrics"]["history"], single["metrics"]["history"], strict=True):
        for key in keys:
            assert abs(a[key] - b[key]) <= 1e-4 * abs(b[key]) + 1e-5, (key, a, b)
