"""fastvae train with the other objectives: beta-TCVAE (mi, tc and dwkl recorded), the IWAE bound (k samples),
free bits (per dimension and per sample; the rate reported stays the true KL) and the continuous Bernoulli
likelihood; the relations each objective's recorded numbers must satisfy, exact resume, and the errors."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fastvae.cli import main
from fastvae.train import TrainConfig, TrainError, train

TINY = dict(model="mlp", hidden=(32,), latent_dim=4, batch_size=16, steps=6, log_every=2, steps_per_epoch=3,
            checkpoint_every=6, threads=1, plots=False, beta_schedule="constant", seed=2)


def _run(tmp_path, name="run", **kw):
    out = str(tmp_path / name)
    result = train(TrainConfig(**{**TINY, **kw}), out=out, progress=False, log=lambda s: None)
    assert result.status == "finished"
    return result.metrics, out


def test_tcvae_records_its_terms_and_the_loss_is_their_weighted_sum(tmp_path):
    m, _ = _run(tmp_path, objective="tcvae", beta=3.0, tc_alpha=0.5, tc_gamma=2.0)
    assert m["objective"] == "tcvae" and len(m["history"]) == 3
    for h in m["history"] + m["epochs"]:
        assert {"mi", "tc", "dwkl"} <= set(h)
        expected = h["distortion"] + 0.5 * h["mi"] + 3.0 * h["tc"] + 2.0 * h["dwkl"]
        assert h["loss"] == pytest.approx(expected, rel=1e-5, abs=1e-4), h
    # the held-out numbers are the ELBO's (no beta-VAE objective is claimed for them)
    assert "val_loss" in m["epochs"][-1] and "val_objective" not in m["epochs"][-1]


def test_tcvae_resumes_exactly(tmp_path):
    full, full_out = _run(tmp_path, "full", objective="tcvae", beta=6.0)
    part_out = str(tmp_path / "part")
    train(TrainConfig(**{**TINY, "objective": "tcvae", "beta": 6.0, "steps": 3, "checkpoint_every": 3}), out=part_out,
          progress=False, log=lambda s: None)
    resumed = train(TrainConfig(**{**TINY, "objective": "tcvae", "beta": 6.0}), resume=part_out, explicit={"steps"},
                    progress=False, log=lambda s: None)
    a = torch.load(os.path.join(full_out, "checkpoint.pt"), weights_only=False)["model"]
    b = torch.load(os.path.join(part_out, "checkpoint.pt"), weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    # the readings whose intervals the stop at step 3 did not split
    by_step = {h["step"]: h for h in resumed.metrics["history"]}
    for h in full["history"]:
        if h["step"] in (2, 6):
            assert by_step[h["step"]]["tc"] == pytest.approx(h["tc"], rel=1e-6), h


@pytest.mark.parametrize("k", [1, 4])
def test_iwae_loss_is_the_bound(tmp_path, k):
    m, _ = _run(tmp_path, objective="iwae", iwae_k=k, beta=4.0)
    for h in m["history"]:
        assert h["beta"] == 1.0  # the bound has no beta
        if k == 1:  # one sample: the sampled ELBO
            assert h["loss"] == pytest.approx(h["distortion"] + h["rate"], rel=1e-5)
        else:  # log mean exp >= mean log: the k-sample bound is tighter than the ELBO of the same samples
            assert h["loss"] < h["distortion"] + h["rate"]


def test_free_bits_floor_the_loss_not_the_reported_rate(tmp_path):
    # at the start the KL of every dimension is far below 5 nats: the floor is the whole penalty
    m, _ = _run(tmp_path, "dim", free_bits=5.0, beta=2.0, steps=2, log_every=1)
    first = m["history"][0]
    assert first["rate"] < 1.0  # the true KL
    assert first["loss"] - first["distortion"] == pytest.approx(2.0 * 4 * 5.0, rel=1e-4)
    m, _ = _run(tmp_path, "sample", free_bits=3.0, free_bits_mode="sample", beta=2.0, steps=2, log_every=1)
    first = m["history"][0]
    assert first["rate"] < 1.0 and first["loss"] - first["distortion"] == pytest.approx(2.0 * 3.0, rel=1e-4)
    # a zero floor is the plain beta-VAE
    plain, _ = _run(tmp_path, "plain", beta=2.0, steps=2, log_every=1)
    zero, _ = _run(tmp_path, "zero", free_bits=0.0, beta=2.0, steps=2, log_every=1)
    for a, b in zip(plain["history"], zero["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["rate"] == pytest.approx(b["rate"], rel=1e-4)


def test_continuous_bernoulli_trains_and_checks_the_data(tmp_path, capsys):
    m, out = _run(tmp_path, likelihood="continuous_bernoulli", plots=True)
    assert m["config"]["likelihood"] == "continuous_bernoulli"
    assert all(np.isfinite(h["loss"]) for h in m["history"])
    for png in ("reconstructions", "samples", "curves", "kl_per_dim"):
        assert os.path.getsize(os.path.join(out, f"{png}.png")) > 1000, png
    data = tmp_path / "signed.npy"
    np.save(data, np.random.default_rng(0).uniform(-1, 1, (40, 1, 8, 8)).astype(np.float32))
    with pytest.raises(TrainError, match=r"--likelihood continuous_bernoulli needs values in \[0, 1\]"):
        train(TrainConfig(**{**TINY, "data": str(data), "likelihood": "continuous_bernoulli"}),
              out=str(tmp_path / "bad"), progress=False, log=lambda s: None)


def test_the_banner_names_the_objective(tmp_path, capsys):
    argv = ["train", "--model", "mlp", "--hidden", "16", "--steps", "2", "--batch-size", "8", "--threads", "1",
            "--no-plots", "--progress", "plain"]
    assert main([*argv, "--objective", "tcvae", "--beta", "6", "--out", str(tmp_path / "a")]) == 0
    assert "objective: beta-TCVAE, distortion + 1 MI + beta TC + 1 dim-wise KL (mss estimator)" in \
        capsys.readouterr().out
    assert main([*argv, "--objective", "iwae", "--k", "3", "--out", str(tmp_path / "b")]) == 0
    assert "IWAE bound with k = 3" in capsys.readouterr().out
    assert main([*argv, "--free-bits", "0.5", "--out", str(tmp_path / "c")]) == 0
    assert "free bits 0.5 nats per latent dimension" in capsys.readouterr().out
    m = json.load(open(tmp_path / "a" / "metrics.json"))
    assert m["config"]["objective"] == "tcvae" and "tc" in m["history"][-1]


@pytest.mark.parametrize("argv, phrase", [
    (["--objective", "iwae", "--loss-backend", "torch"], "--objective iwae runs on fastvae's ops"),
    (["--objective", "tcvae", "--free-bits", "1"], "--free-bits applies to the beta-vae objective"),
    (["--objective", "tcvae", "--capacity", "5"], "--capacity belongs to the beta-vae objective"),
    (["--objective", "iwae", "--target-rate", "5"], "--target-rate (constrained beta) belongs to the beta-vae"),
    (["--free-bits", "1", "--capacity", "5"], "--free-bits and --capacity"),
    (["--free-bits", "-1"], "--free-bits must be >= 0"),
    (["--objective", "tcvae", "--alpha", "-1"], "--alpha must be >= 0"),
    (["--objective", "iwae", "--k", "0"], "expected"),
], ids=["iwae-torch", "tc-free-bits", "tc-capacity", "iwae-target", "fb-capacity", "fb-negative", "alpha", "k"])
def test_objective_errors(tmp_path, capsys, argv, phrase):
    try:
        code = main(["train", *argv, "--steps", "1", "--out", str(tmp_path / "x")])
    except SystemExit as exc:  # what the parser refuses itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert phrase in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()
