"""beta-TCVAE under data parallelism: two gloo processes with B rows each give what one process gives with
2B rows (values per sample, and the gradients of the summed terms, the other rank's share included through
the all-gather's backward)."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fastvae as fv

pytestmark = pytest.mark.slow
F64 = torch.float64
ROWS, DIM, N = 5, 3, 400


def _batch():
    g = torch.Generator().manual_seed(11)
    mu = torch.randn(2 * ROWS, DIM, generator=g, dtype=F64)
    lv = torch.randn(2 * ROWS, DIM, generator=g, dtype=F64) * 0.5
    z = mu + torch.exp(0.5 * lv) * torch.randn(2 * ROWS, DIM, generator=g, dtype=F64)
    return z, mu, lv


def _terms(z, mu, lv, estimator, group):
    leaves = [t.clone().requires_grad_() for t in (z, mu, lv)]
    terms = fv.tc_decomposition(*leaves, dataset_size=N, estimator=estimator, reduction="none", process_group=group)
    (terms.mi.sum() + 2.0 * terms.tc.sum() - 0.5 * terms.dwkl.sum()).backward()
    return [t.detach() for t in terms], [t.grad for t in leaves]


def _rank(rank, world, store, out, estimator):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        with fv.set_backend("torch"):
            z, mu, lv = (t[rank * ROWS:(rank + 1) * ROWS] for t in _batch())
            terms, grads = _terms(z, mu, lv, estimator, dist.group.WORLD)
        torch.save({"terms": terms, "grads": grads}, os.path.join(out, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears its connections down while the other is still in the last collective
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_two_processes_equal_one(tmp_path, estimator):
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path), estimator), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    with fv.set_backend("torch"):
        terms, grads = _terms(*_batch(), estimator, None)
    for k in range(3):
        torch.testing.assert_close(torch.cat([p["terms"][k] for p in parts]), terms[k], rtol=1e-12, atol=1e-12)
    for k in range(3):
        torch.testing.assert_close(torch.cat([p["grads"][k] for p in parts]), grads[k], rtol=1e-12, atol=1e-12)
