"""The objectives benchmark (fastvae.bench.objectives): its eager baselines compute what fastvae computes, and a
tiny sweep records time and peak memory for both providers, skipping an eager case predicted over the budget."""
from __future__ import annotations

import math

import torch

import fastvae as fv
from fastvae.bench import objectives as O

import reference as R


def test_the_eager_tc_baseline_is_the_reference():
    g = torch.Generator().manual_seed(0)
    z, mu, lv = (torch.randn(9, 3, generator=g, dtype=torch.float64) * s for s in (1.0, 0.5, 0.3))
    eager = O.eager_tc_terms(z, mu, lv, 1000)
    ref = R.tc_terms(z, mu, lv, dataset_size=1000, estimator="mss")
    fused = fv.tc_decomposition(z, mu, lv, dataset_size=1000)
    for a, b, c in zip(eager, ref, fused):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(c, b)


def test_the_eager_iwae_baseline_estimates_what_fastvae_does():
    # with the exact posterior of a model whose decoder ignores z, every weight is p(x): both give log p(x)
    torch.manual_seed(0)
    decoder = torch.nn.Linear(2, 5).double()
    with torch.no_grad():
        decoder.weight.zero_()
    x = (torch.rand(4, 5, dtype=torch.float64) > 0.5).double()
    mu = torch.zeros(4, 2, dtype=torch.float64)
    lv = torch.zeros(4, 2, dtype=torch.float64)
    eager = O.eager_iwae_log_likelihood(x, mu, lv, 7, decoder)
    log_px = -R.bernoulli_nll(decoder.bias.detach().expand(4, 5), x, reduction="none")
    torch.testing.assert_close(eager.detach(), log_px)
    fused = fv.eval.log_likelihood(O._FixedPosterior(decoder, mu, lv), x, k=7, progress=False)
    torch.testing.assert_close(fused, log_px)


def test_a_tiny_sweep_records_both_providers_and_skips_over_budget():
    cfg = O.ObjectiveConfig(tc_batches=(16, 64), tc_latent_dim=4, iwae_ks=(1, 8), iwae_batch=4, iwae_sample_size=12,
                            iwae_latent_dim=3, iwae_loss_ks=(2,), rep_ms=1.0, quiet=True,
                            memory_budget=O._tc_eager_bytes(16, 4) + 1)
    report = O.run_objectives(cfg)
    assert report["schema"] == O.SCHEMA
    cases = report["cases"]
    tc = [c for c in cases if c["op"] == "tc_decomposition"]
    assert {(c["provider"], c["batch"]) for c in tc} == {("fastvae", 16), ("eager", 16), ("fastvae", 64),
                                                          ("eager", 64)}
    skipped = [c for c in tc if "skipped" in c]
    assert [(c["provider"], c["batch"]) for c in skipped] == [("eager", 64)]
    for c in cases:
        if "skipped" not in c:
            assert c["median_s"] > 0 and math.isfinite(c["median_s"])
    ops = {c["op"] for c in cases}
    assert ops == set(O.OBJECTIVE_OPS)
    assert any(r["op"] == "tc_decomposition" and r["batch"] == 64 and r.get("eager") == "skipped"
               for r in report["ratios"])
