"""The command lines of fastvae eval, fastvae sweep and fastvae bench --suite objectives on tiny settings:
what they write and print, their clear errors (no tracebacks), and a sweep run twice that keeps its runs."""
from __future__ import annotations

import json
import os

import pytest

from fastvae.cli import main

TINY = ["--steps", "8", "--batch-size", "16", "--threads", "1", "--warmup-steps", "2", "--checkpoint-every", "8",
        "--no-plots", "--progress", "plain", "--seed", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    return out


def test_eval_command_writes_eval_json_and_prints_the_table(run_dir, capsys):
    assert main(["eval", run_dir, "--k", "4", "--n", "32", "--ll-n", "8", "--device", "cpu", "--progress",
                 "plain"]) == 0
    printed = capsys.readouterr().out
    e = json.load(open(os.path.join(run_dir, "eval.json")))
    assert e["log_likelihood_k"] == 4 and e["samples"] == 32 and e["log_likelihood_samples"] == 8
    assert e["mig"] is not None  # shapes has ground-truth factors
    for word in ("rate", "distortion", "ELBO", "log p(x)", "active", "MIG"):
        assert word in printed, (word, printed)
    assert os.path.getsize(os.path.join(run_dir, "kl_per_dim.png")) > 1000
    # without the optional parts
    assert main(["eval", run_dir, "--n", "16", "--no-mig", "--no-log-likelihood", "--progress", "plain"]) == 0
    e = json.load(open(os.path.join(run_dir, "eval.json")))
    assert e["mig"] is None and e.get("log_likelihood") is None


@pytest.mark.parametrize("argv, phrase", [
    (["eval", "MISSING"], "no such run folder"),
    (["eval", "FOREIGN"], "not a fastvae run folder"),
    (["sweep", "--betas", "1,-2"], "beta"),
    (["sweep", "--beta", "2"], "--betas"),
    (["sweep", "--resume"], "run the same command again"),
    (["sweep", "--target-rate", "5"], "--target-rate"),
    (["bench", "--suite", "objectives", "--device", "tpu"], "--device must be"),
    (["bench", "--suite", "objectives", "--memory-budget", "0"], "--memory-budget must be > 0"),
], ids=["missing", "foreign", "negative-beta", "beta", "resume", "target-rate", "device", "budget"])
def test_clear_errors(tmp_path, capsys, argv, phrase):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    argv = [str(tmp_path / "missing") if a == "MISSING" else str(tmp_path / "foreign") if a == "FOREIGN" else a
            for a in argv]
    if argv[0] == "sweep":
        argv += [*TINY, "--out", str(tmp_path / "sweep")]
    if argv[0] == "bench":
        argv += ["--out", str(tmp_path / "bench")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fastvae {argv[0]}: error: ") and phrase in err and "Traceback" not in err, err
    assert not (tmp_path / "bench").exists()


def test_bad_betas_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["sweep", "--betas", "one,two"])
    assert exc.value.code == 2 and "comma-separated numbers" in capsys.readouterr().err


def test_sweep_command_writes_the_curve_and_a_second_call_keeps_the_runs(tmp_path, capsys):
    out = str(tmp_path / "sweep")
    argv = ["sweep", "--betas", "0.5,2", "--eval-n", "32", *TINY, "--out", out]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.load(open(os.path.join(out, "sweep.json")))
    assert [r["beta"] for r in report["runs"]] == [0.5, 2.0]
    assert all(r["step"] == 8 for r in report["runs"]) and report["config"]["steps"] == 8
    assert "[1/2] beta 0.5: training into" in printed and "[2/2] beta 2: training into" in printed
    assert os.path.getsize(os.path.join(out, "rate_distortion.png")) > 1000
    for name in ("beta-0.5", "beta-2"):
        assert os.path.exists(os.path.join(out, name, "checkpoint.pt"))
    assert main(argv) == 0  # again: both runs finished before, kept; the report is the same
    printed = capsys.readouterr().out
    assert printed.count("finished before, kept") == 2 and "training into" not in printed
    again = json.load(open(os.path.join(out, "sweep.json")))
    assert [(r["rate"], r["distortion"]) for r in again["runs"]] == [(r["rate"], r["distortion"])
                                                                      for r in report["runs"]]


def test_bench_objectives_suite_writes_its_json(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--suite", "objectives", "--device", "cpu", "--objectives", "tc_decomposition,iwae_loss",
                 "--tc-batches", "32", "--iwae-loss-ks", "2", "--rep-ms", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (path,) = out.glob("*-objectives.json")
    report = json.loads(path.read_text())
    assert report["schema"] == "fastvae-bench-objectives/1" and report["config"]["threads"] == 1
    got = {(c["op"], c["provider"], c["batch"], c.get("k")) for c in report["cases"]}
    assert got == {("tc_decomposition", p, 32, None) for p in ("fastvae", "eager")} | {
        ("iwae_loss", p, 16, 2) for p in ("fastvae", "eager")}
    assert all(c["median_s"] > 0 for c in report["cases"])
    assert "| tc_decomposition | 32 |" in printed and "CPU threads: 1 (pinned by default" in printed
