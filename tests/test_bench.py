"""Smoke test of `fastvae bench` (fastvae.bench) on a tiny CPU sweep: report schema, byte floors,
and the plots and README table of bench/report.py."""
from __future__ import annotations

import json
import math

import pytest
import torch

from fastvae import bench as fb
from fastvae.bench import runner

br = fb.report_module()   # bench/report.py of this checkout: plots and README tables

CASE_FIELDS = {
    "op", "mode", "provider", "dtype", "batch", "sample_size", "latent_dim", "shape", "numel",
    "min_bytes", "input_sets", "median_ms", "min_ms", "q25_ms", "q75_ms", "reps", "gbps",
    "frac_copy_bw", "peak_mem_bytes", "error", "host_ms", "timer",
}

TINY = dict(max_elements=512, min_batch=8, sample_size=64, latent_dim=32, objective_latent_dim=8,
            rep_ms=1.0, copy_bytes=2**22, rotate=False, quiet=True, training_sizes=((4, 64, 8), (8, 64, 8)))


@pytest.fixture(scope="module")
def report_path(tmp_path_factory):
    """A tiny sweep of every op, mode and dtype (fastvae and eager), plus one torch.compile case."""
    out = tmp_path_factory.mktemp("bench")
    report = fb.run_benchmarks(fb.BenchConfig(device="cpu", providers=("fastvae", "eager"), **TINY))
    compiled = fb.run_benchmarks(fb.BenchConfig(device="cpu", ops=("mse",), modes=("fwd+bwd",),
                                                providers=("compile",), dtypes=("float32",), **TINY))
    for c in compiled["cases"]:   # one report, one copy bandwidth
        assert c["error"] is None, c["error"]
        c["frac_copy_bw"] = c["gbps"] / report["copy_bandwidth"]["gbps"]
    report["cases"] += compiled["cases"]
    return fb.write_json(report, out / "cpu-test.json")


@pytest.mark.slow
def test_report_schema(report_path):
    report = json.loads(report_path.read_text())
    assert report["schema"] == fb.SCHEMA
    for key in ("date", "device", "versions", "config", "timer", "copy_bandwidth", "peak_memory_method",
                "fastvae_backend", "cases"):
        assert key in report, key
    assert report["device"]["type"] == "cpu" and report["device"]["slug"].startswith("cpu-")
    assert report["versions"]["torch"] == torch.__version__
    assert report["fastvae_backend"] == "torch"
    assert report["timer"] == "perf_counter"
    assert report["copy_bandwidth"]["gbps"] > 0

    cases = report["cases"]
    expected = {(op, mode, p, d) for op in fb.OPS if op != "training_step" for mode in fb.MODES
                for p in ("fastvae", "eager") for d in fb.DTYPES} | {("mse", "fwd+bwd", "compile", "float32")}
    expected |= {("training_step", "fwd+bwd", p, d) for p in ("fastvae", "eager") for d in fb.DTYPES}
    assert {(c["op"], c["mode"], c["provider"], c["dtype"]) for c in cases} == expected
    for c in cases:
        assert set(c) == CASE_FIELDS, c["op"]
        assert c["error"] is None, c
        assert c["median_ms"] > 0 and c["reps"] >= 5 and c["input_sets"] >= 1
        assert c["min_ms"] <= c["median_ms"]
        assert c["numel"] == c["batch"] * c["sample_size"]
        assert math.isclose(c["gbps"], c["min_bytes"] / (c["median_ms"] * 1e-3) / 1e9, rel_tol=1e-9)
        assert math.isclose(c["frac_copy_bw"], c["gbps"] / report["copy_bandwidth"]["gbps"], rel_tol=1e-9)
        assert c["peak_mem_bytes"] is None or c["peak_mem_bytes"] >= 0
    # the sweep: batches 8 (and the cap) for the 64-wide likelihoods, 8 and 16 for the 32-wide latent
    assert sorted({c["batch"] for c in cases if c["op"] == "mse"}) == [8]
    assert sorted({c["batch"] for c in cases if c["op"] == "reparameterize_kl"}) == [8, 16]
    # the training pattern: the given sizes under the cap, its providers timed interleaved, host time kept
    training = [c for c in cases if c["op"] == "training_step"]
    assert sorted({(c["batch"], c["sample_size"], c["latent_dim"]) for c in training}) == [(4, 64, 8), (8, 64, 8)]
    assert all(c["timer"] == "interleaved" and c["host_ms"] > 0 and c["reps"] >= 20 for c in training)
    assert all(c["timer"] == "per-case" for c in cases if c["op"] != "training_step")


def test_min_bytes_by_hand():
    # bernoulli fwd+bwd reads logits and target and writes grad_logits (3 elements) + loss and grad_loss scalars
    case = fb.Case("bernoulli_nll", "fwd+bwd", "fastvae", "float32", batch=8, sample_size=64)
    assert case.min_bytes == 3 * 8 * 64 * 4 + 2 * 4 == 6152
    assert fb.min_bytes("bernoulli_nll", "fwd", 8, 64, 0, "bfloat16") == 2 * 8 * 64 * 2 + 4
    # reparameterize_kl: fwd reads mu, logvar, writes z (+kl); bwd reads grad_z, mu, logvar, writes two grads
    assert fb.min_bytes("reparameterize_kl", "fwd+bwd", 8, 32, 0, "bfloat16") == (3 + 5) * 8 * 32 * 2 + 2 * 4
    # beta_vae_loss bwd: grad of recon (image) plus grads of mu and logvar (latent)
    assert fb.min_bytes("beta_vae_loss", "bwd", 4, 64, 8, "float32") == (3 * 4 * 64 + 4 * 4 * 8) * 4 + 4


def test_input_rotation():
    # enough sets to exceed twice the cache, capped; one set when rotation is off or a set is larger
    cache = fb.cache_bytes("cpu")
    if cache:
        assert fb.n_input_sets(cache // 4, "cpu") == 8
        assert fb.n_input_sets(4 * cache, "cpu") == 1
        assert fb.n_input_sets(16, "cpu") == 64
    assert fb.n_input_sets(16, "cpu", rotate=False) == 1
    case = fb.Case("mse", "bwd", "eager", "float32", batch=4, sample_size=16)
    prepared = fb.prepare(case, "cpu", rotate=True)
    assert len(prepared.calls) == len(prepared.setups) == fb.n_input_sets(prepared.sets[0].nbytes, "cpu")
    timing = fb.time_calls(prepared.calls, "cpu", rep_ms=1.0, setups=prepared.setups)
    assert timing["reps"] >= 5 and 0 < timing["min_s"] <= timing["median_s"]
    (grad,) = prepared.run(1)
    assert grad.shape == (4, 16)


def test_interleaved_timing_gives_every_case_every_predecessor_alike():
    # A call right after a torch.compile'd one is slower on the CPU: the rounds' orders must not keep one
    # case behind another (a fixed order started one case further on each round puts case j after
    # case j - 1 in two thirds of its calls for three cases).
    from fastvae.bench.timing import round_orders, time_interleaved

    seen = []

    class Fake:
        def __init__(self, j):
            self.calls = [lambda j=j: seen.append(j)]

    out = time_interleaved([Fake(j) for j in range(3)], "cpu", rep_ms=0.0, warmup_ms=0.0)
    assert len(out) == 3 and all(o["median_s"] >= 0 for o in out)
    assert sorted(seen[:3]) == [0, 1, 2]      # each round calls every case once
    orders = round_orders(3)
    calls = [j for _ in range(3000) for j in next(orders)]
    pairs = {}
    for a, b in zip(calls, calls[1:]):
        pairs[a, b] = pairs.get((a, b), 0) + 1
    assert all(pairs.get((j, j), 0) == 0 for j in range(3))    # never after itself
    for b in range(3):
        before = [pairs[a, b] for a in range(3) if a != b]
        assert abs(before[0] - before[1]) < 0.1 * sum(before), (b, before)


def test_batch_sweep():
    assert fb.batch_sweep(4096, 2**27) == [256, 1024, 4096, 16384, 32768]
    assert fb.batch_sweep(256, 2**27) == [256, 1024, 4096, 16384, 65536, 262144, 524288]
    assert fb.batch_sweep(4096, 2**22) == [256, 1024]
    assert fb.batch_sweep(4096, 2**18) == [64]   # cap below the smallest batch: the cap wins


def test_eager_baselines_match_fastvae():
    # The providers must compute the same objective, else the timings compare different work.
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 64, generator=gen), torch.rand(4, 64, generator=gen)
    mu, logvar = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    for op in ("bernoulli_nll", "gaussian_nll", "mse", "laplace_nll"):
        eager, fast = fb.provider_fn(op, "eager"), fb.provider_fn(op, "fastvae")
        torch.testing.assert_close(fast(x, t), eager(x, t), rtol=1e-5, atol=1e-5, msg=op)
    _, kl = fb.provider_fn("reparameterize_kl", "fastvae")(mu, logvar)
    torch.testing.assert_close(kl, fb.eager_reparameterize_kl(mu, logvar)[1], rtol=1e-5, atol=1e-5)
    fast = fb.provider_fn("beta_vae_loss", "fastvae")(x, t, mu, logvar)
    for got, want in zip(fast, fb.eager_beta_vae_loss(x, t, mu, logvar)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # continuous Bernoulli: torch.distributions is the baseline (float64, logits away from its Taylor band)
    logits = (3 * x).double()
    cb = [fb.provider_fn("continuous_bernoulli_nll", p)(logits, t.double()) for p in ("fastvae", "eager")]
    torch.testing.assert_close(cb[0], cb[1], rtol=1e-10, atol=1e-9)
    # free bits: some dimensions above the floor, some below it
    mu2 = mu * torch.linspace(0.0, 2.0, 8)
    kl = 0.5 * (mu2**2 + logvar.exp() - 1 - logvar).mean(0)
    assert (kl < fb.FREE_BITS).any() and (kl > fb.FREE_BITS).any()
    fast, eager = (fb.provider_fn("free_bits_kl", p)(mu2, logvar) for p in ("fastvae", "eager"))
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_plot_and_readme(report_path, tmp_path):
    pngs = br.plot(report_path, tmp_path)
    assert [p.name for p in pngs] == [f"cpu-test-{op}.png" for op in fb.OPS]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nhand-written text\n")
    report = fb.load_json(report_path)
    br.update_readme(readme, report, pngs)
    br.update_readme(readme, report, pngs)   # regenerating replaces the block, never duplicates it
    text = readme.read_text()
    slug = report["device"]["slug"]
    assert text.startswith("# Benchmarks\n\nhand-written text\n")
    assert text.count(br.README_BEGIN.format(slug=slug)) == 1 and text.count(br.README_END.format(slug=slug)) == 1
    assert "beta_vae_loss fwd+bwd at the largest size" in text
    beta_rows = [line for line in text.splitlines() if line.startswith("| float32 | 8x64, 8x8 |")]
    assert len(beta_rows) == 1 and beta_rows[0].endswith("x | n/a |")   # vs eager; no compile case here
    assert "[mse](cpu-test-mse.png)" in text
    assert "| mse | fwd+bwd | 8x64 |" in text


@pytest.mark.slow
def test_cli_plot_only(report_path, tmp_path):
    report = json.loads(report_path.read_text())
    report["cases"] = [c for c in report["cases"] if c["op"] == "mse"]   # one figure is enough here
    target = tmp_path / "r.json"
    target.write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    assert fb.main(["--plot-only", str(target), "--readme", str(readme), "--quiet"]) == 0
    assert [p.name for p in tmp_path.glob("*.png")] == ["r-mse.png"]
    assert br.README_BEGIN.format(slug=fb.load_json(target)["device"]["slug"]) in readme.read_text()


@pytest.mark.slow
def test_merge_reports(report_path):
    report = fb.load_json(report_path)
    old = dict(report, cases=[c for c in report["cases"] if c["op"] != "mse" or c["dtype"] == "float32"])
    new = dict(report, cases=[c for c in report["cases"] if c["op"] == "mse"],
               copy_bandwidth=dict(report["copy_bandwidth"], gbps=2 * report["copy_bandwidth"]["gbps"]))
    merged = fb.merge_reports(old, new)
    assert sorted(map(fb.case_key, merged["cases"])) == sorted(map(fb.case_key, report["cases"]))
    assert len(merged["runs"]) == 2
    kept = next(c for c in merged["cases"] if c["op"] == "bernoulli_nll")
    assert math.isclose(kept["frac_copy_bw"], kept["gbps"] / new["copy_bandwidth"]["gbps"])
    other = dict(report, device=dict(report["device"], slug="cuda-other", name="other"))
    with pytest.raises(ValueError, match="different devices"):
        fb.merge_reports(old, other)


def test_cli_run(tmp_path):
    out = tmp_path / "run.json"
    argv = ["--device", "cpu", "--ops", "mse", "--modes", "fwd", "--providers", "fastvae,eager",
            "--dtypes", "float32", "--max-elements", "256", "--min-batch", "4", "--sample-size", "64",
            "--rep-ms", "1", "--copy-bytes", str(2**22), "--out", str(out), "--readme", "none", "--no-plot",
            "--quiet"]
    assert fb.main(argv) == 0
    report = fb.load_json(out)
    assert [(c["provider"], c["batch"]) for c in report["cases"]] == [("fastvae", 4), ("eager", 4)]


def test_interrupted_run_keeps_finished_groups_and_merge_carries_on(tmp_path, monkeypatch):
    """The JSON is rewritten after each (op, dtype, size) group: a run stopped in its second group
    leaves the first on disk marked partial, and a --merge run of the rest completes the report."""
    out = tmp_path / "run.json"
    base = ["--device", "cpu", "--modes", "fwd", "--providers", "fastvae", "--dtypes", "float32",
            "--max-elements", "256", "--min-batch", "4", "--sample-size", "64", "--rep-ms", "1",
            "--copy-bytes", str(2**22), "--out", str(out), "--readme", "none", "--no-plot", "--quiet"]
    measure = runner.measure
    calls = []

    def stop_in_second_group(case, *args, **kwargs):
        calls.append(case.op)
        if case.op == "laplace_nll":
            raise KeyboardInterrupt
        return measure(case, *args, **kwargs)

    monkeypatch.setattr(runner, "measure", stop_in_second_group)
    with pytest.raises(KeyboardInterrupt):
        fb.main(base + ["--ops", "mse,laplace_nll"])
    partial = fb.load_json(out)
    assert partial["partial"] is True
    assert [c["op"] for c in partial["cases"]] == ["mse"]
    assert not list(tmp_path.glob("*.tmp"))

    monkeypatch.setattr(runner, "measure", measure)
    assert fb.main(base + ["--ops", "laplace_nll", "--merge"]) == 0
    merged = fb.load_json(out)
    assert "partial" not in merged
    assert sorted(c["op"] for c in merged["cases"]) == ["laplace_nll", "mse"]
    assert len(merged["runs"]) == 2


def test_cuda_event_timing_path_without_a_gpu(monkeypatch):
    """The CUDA branch of time_calls (probe, warm-up, timed calls between event pairs) with CUDA
    events and synchronize stood in for by host clocks, so it runs where no GPU is."""
    import time as _time

    class HostEvent:
        def __init__(self, enable_timing=False):
            self.t = None

        def record(self):
            self.t = _time.perf_counter()

        def elapsed_time(self, end):
            return (end.t - self.t) * 1e3

    monkeypatch.setattr(torch.cuda, "Event", HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    calls = []

    def call(i):
        calls.append(i)
        _time.sleep(0.001)

    result = fb.time_calls([lambda: call(0), lambda: call(1)], "cuda", rep_ms=30.0, warmup_ms=5.0)
    assert 20 <= result["reps"] <= 40
    assert 0.0009 <= result["min_s"] <= result["q25_s"] <= result["median_s"] <= result["q75_s"]
    assert result["median_s"] < 0.05
    assert set(calls) == {0, 1}


# ----------------------------------------------------------------------------- where it writes, what it refuses

TINY_ARGV = ["--device", "cpu", "--ops", "mse", "--modes", "fwd", "--providers", "fastvae", "--dtypes", "float32",
             "--max-elements", "256", "--min-batch", "4", "--sample-size", "64", "--rep-ms", "1",
             "--copy-bytes", str(2**22), "--no-plot"]


def _committed():
    """{path: bytes} of the repository's committed results and bench/README.md."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "bench"
    return {p: p.read_bytes() for p in [root / "README.md", *sorted((root / "results").iterdir())]}


def test_default_output_is_a_new_folder_here_and_the_committed_results_stay(tmp_path, monkeypatch, capsys):
    before = _committed()
    monkeypatch.chdir(tmp_path)
    assert fb.main(TINY_ARGV) == 0
    printed = capsys.readouterr().out
    (folder,) = (tmp_path / "bench-results").iterdir()
    slug = fb.load_json(next(folder.glob("*.json")))["device"]["slug"]
    assert folder.name.startswith(slug + "-") and sorted(p.name for p in folder.iterdir()) == ["README.md",
                                                                                                f"{slug}.json"]
    assert br.README_BEGIN.format(slug=slug) in (folder / "README.md").read_text()
    assert "CPU threads: 1 (pinned by default" in printed
    report = fb.load_json(folder / f"{slug}.json")
    assert report["config"]["threads"] == 1 and report["device"]["threads"] == 1
    assert fb.main(TINY_ARGV) == 0  # a second run: another new folder
    assert len(list((tmp_path / "bench-results").iterdir())) == 2
    assert _committed() == before


def test_out_folder_and_update_results(tmp_path, monkeypatch):
    from fastvae.bench import cli as bench_cli

    assert fb.main(TINY_ARGV + ["--out", str(tmp_path / "mine"), "--threads", "2"]) == 0
    (json_path,) = (tmp_path / "mine").glob("*.json")
    assert fb.load_json(json_path)["config"]["threads"] == 2
    # --update-results writes the checkout's bench/results and bench/README.md (here a stand-in checkout)
    (tmp_path / "repo" / "bench").mkdir(parents=True)
    monkeypatch.setattr(bench_cli, "checkout_root", lambda: tmp_path / "repo")
    assert fb.main(TINY_ARGV + ["--update-results"]) == 0
    assert [p.name for p in (tmp_path / "repo" / "bench" / "results").iterdir()] == [json_path.name]
    assert (tmp_path / "repo" / "bench" / "README.md").exists()


@pytest.mark.parametrize("argv, phrase", [
    (["--device", "cuda"], "CUDA is not available here"),
    (["--device", "tpu"], "--device must be"),
    (["--plot-only", "MISSING"], "file not found"),
    (["--plot-only", "BAD"], "not a readable fastvae bench report"),
], ids=["cuda", "tpu", "missing", "malformed"])
def test_clear_errors(tmp_path, capsys, argv, phrase):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    (tmp_path / "bad.json").write_text('{"schema": "something else"}')
    argv = [str(tmp_path / "missing.json") if a == "MISSING" else str(tmp_path / "bad.json") if a == "BAD" else a
            for a in argv]
    assert fb.main(argv + ["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastvae bench: error: ") and phrase in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
