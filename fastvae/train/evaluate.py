"""``fastvae eval RUN``: what a trained run learned, measured on its held-out data (:func:`evaluate_run`).

The numbers, per sample and in nats, on the run's held-out samples (a fixed draw of the data when it held
none out):

* rate (the KL of the posterior from the prior), distortion (the reconstruction NLL at z ~ q(z|x)) and the
  ELBO = -(distortion + rate), with the fused ops and the run's likelihood;
* the importance-sampled log-likelihood log p(x) >= L_k (:func:`fastvae.eval.log_likelihood`) with its k,
  on the first ``ll_n`` of those samples, and its standard error over them;
* the KL of each latent dimension (batch mean) and the active dimensions: those above
  :data:`ACTIVE_THRESHOLD` nats (Burda et al. 2016 count a dimension active by the variance of its
  posterior mean; a KL above 0.01 nats is the usual reading of that);
* MIG (:func:`fastvae.metrics.mig_for_model`) where the data has ground-truth factors (``shapes``).

It writes ``eval.json`` and ``kl_per_dim.png`` into the run folder and returns the numbers.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..files import write_json
from .errors import TrainError
from .metrics import ACTIVE_KL

__all__ = ["ACTIVE_THRESHOLD", "EVAL_NAME", "KL_PNG", "evaluate_run", "format_table", "plot_kl_per_dim"]

#: KL (nats, batch mean) above which a latent dimension counts as active (the trainer's constant).
ACTIVE_THRESHOLD = ACTIVE_KL
#: Decoder passes the log-likelihood estimate makes by default on a CPU (``ll_n`` = this // k samples).
CPU_DECODES = 50_000
EVAL_NAME = "eval.json"
KL_PNG = "kl_per_dim.png"
_BATCH = 256


def _check_run(run: Union[str, os.PathLike]) -> str:
    from .checkpoint import CHECKPOINT_NAME

    run = os.fspath(run)
    if not os.path.exists(run):
        raise TrainError(f"{run}: no such run folder")
    if not os.path.isdir(run):
        raise TrainError(f"{run}: not a folder (fastvae eval takes the folder a fastvae train run wrote)")
    if not os.path.exists(os.path.join(run, CHECKPOINT_NAME)):
        raise TrainError(f"{run}: not a fastvae run folder (it has no {CHECKPOINT_NAME}); pass the --out folder "
                         "of a fastvae train run")
    return run


def _samples(config, dataset, n: int, device) -> tuple[Tensor, str]:
    """(indices, what they are): the run's held-out samples, or a fixed draw of the data."""
    from .plan import _val_count
    from .seeding import eval_indices, split_indices

    is_stream = getattr(dataset, "name", None) == "shapes"
    n_val = _val_count(config, len(dataset), is_stream)
    if n_val > 0:
        _, val = split_indices(len(dataset), n_val, config.seed)
        return val[:n].to(device), "held-out"
    return eval_indices(len(dataset), n, config.seed, device), "fixed draw of the training data"


@torch.no_grad()
def _rate_distortion(model, dataset, indices, likelihood: str, log_scale, seed: int) -> dict:
    import fastvae as fv

    from .seeding import val_noise_seed

    n = len(indices)
    generator = torch.Generator(device=indices.device).manual_seed(val_noise_seed(seed))
    sums = torch.zeros(2, dtype=torch.float64, device=indices.device)
    kl_sums = None
    for start in range(0, n, _BATCH):
        x = dataset.batch(indices[start:start + _BATCH])
        mu, logvar = model.encode(x)
        z, rate = fv.reparameterize_kl(mu, logvar, generator=generator, reduction="none", row_offset=start)
        recon = model.decode(z).reshape(x.shape)
        _, distortion, rate = fv.beta_vae_loss(recon, x, rate=rate, beta=1.0, likelihood=likelihood,
                                               log_scale=log_scale, reduction="sum")
        sums += torch.stack([distortion, rate]).double()
        # KL per dimension, summed over the samples: gaussian_kl of the transposed batch
        per_dim = fv.gaussian_kl(mu.t().contiguous(), logvar.t().contiguous(), reduction="none").double()
        kl_sums = per_dim if kl_sums is None else kl_sums + per_dim
    distortion, rate = (sums / max(1, n)).tolist()
    kl = (kl_sums / max(1, n)).tolist() if kl_sums is not None else []
    return {"distortion": distortion, "rate": rate, "elbo": -(distortion + rate), "kl_per_dim": kl}


def evaluate_run(run: Union[str, os.PathLike], *, k: int = 1000, n: int = 10000, ll_n: Optional[int] = None,
                 device: Union[str, torch.device, None] = None, chunk: Optional[int] = None, mig: bool = True,
                 log_likelihood: bool = True, progress: Optional[bool] = None, write: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Evaluate a ``fastvae train`` run folder (see the module docstring); returns what ``eval.json`` holds.

    Args:
        run: the run folder (its ``checkpoint.pt``; the moving-average weights when the run kept them).
        k: importance samples of the log-likelihood estimate.
        n: samples for the rate, distortion, per-dimension KL and MIG (at most the held-out samples).
        ll_n: samples for the log-likelihood estimate (its cost is ``ll_n * k`` decoder passes); default
            all ``n`` on a GPU, ``CPU_DECODES // k`` (at least 16) on a CPU.
        device: where to evaluate (default: the run's device if available, else the CPU).
        chunk: importance samples decoded at once (see :func:`fastvae.eval.log_likelihood`).
        mig: compute MIG when the data has factors.
        log_likelihood: estimate log p(x) (``fastvae sweep`` leaves it out: it needs only rate, distortion
            and MIG).
        progress: tqdm bars (None: when stderr is a terminal).
        write: write ``eval.json`` and ``kl_per_dim.png`` into the run folder.
    Raises:
        TrainError: a missing or foreign run folder, an unreadable checkpoint, or bad arguments.
    """

    from ..data import get_dataset
    from .load import load_run

    run = _check_run(run)
    for name, value in (("k", k), ("n", n)) + ((("ll_n", ll_n),) if ll_n is not None else ()):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainError(f"--{name.replace('_', '-')}: expected a positive integer, got {value!r}")
    started = time.time()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    loaded = load_run(run, device=device)
    model, config = loaded.model, loaded.config
    data = config.data
    if isinstance(data, str) and data.startswith("<"):
        raise TrainError(f"{run}: the run trained on a dataset passed in Python ({data}); evaluate it with "
                         "fastvae.eval.log_likelihood(model, data) and fastvae.metrics.mig_for_model")
    try:
        dataset = get_dataset(data, device=device, seed=config.seed, layout=config.data_layout)
    except (OSError, ValueError) as exc:
        raise TrainError(f"{run}: cannot open the run's data {data!r} ({exc})") from None
    indices, which = _samples(config, dataset, n, device)
    likelihood = model.likelihood
    log_scale = model.log_scale if getattr(model, "log_scale", None) is not None else float(config.log_scale)
    out = {"run": os.path.abspath(run), "step": loaded.step, "weights": loaded.weights, "data": str(data),
           "samples": len(indices), "samples_are": which, "likelihood": likelihood, "device": str(device)}
    out.update(_rate_distortion(model, dataset, indices, likelihood, log_scale, config.seed))
    out["active_threshold"] = ACTIVE_THRESHOLD
    out["active_dims"] = sum(v > ACTIVE_THRESHOLD for v in out["kl_per_dim"])
    out.update(_log_likelihood(model, dataset, indices, k=k, ll_n=ll_n, chunk=chunk, seed=config.seed,
                               progress=progress) if log_likelihood else {"log_likelihood": None})
    out["mig"] = _mig(model, dataset, n, config.seed) if mig else None
    out["seconds"] = round(time.time() - started, 2)
    log(format_table(out))
    if write:
        png = plot_kl_per_dim(out["kl_per_dim"], os.path.join(run, KL_PNG),
                              title=f"KL per latent dimension, {out['samples']} {which} samples "
                                    f"(step {loaded.step}); {out['active_dims']} active")
        write_json(os.path.join(run, EVAL_NAME), out)
        log(f"wrote {os.path.join(run, EVAL_NAME)}" + (f" and {png}" if png else ""))
    return out


def _log_likelihood(model, dataset, indices, *, k: int, ll_n: Optional[int], chunk: Optional[int], seed: int,
                    progress) -> dict:
    """The importance-sampled log p(x) on the first ``ll_n`` of ``indices`` (see :func:`evaluate_run`)."""
    import fastvae as fv

    device = indices.device
    if ll_n is None:
        ll_n = len(indices) if device.type == "cuda" else min(len(indices), max(16, CPU_DECODES // k))
    ll_idx = indices[:ll_n]
    batches = (dataset.batch(ll_idx[i:i + _BATCH]) for i in range(0, len(ll_idx), _BATCH))
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    est = fv.eval.log_likelihood(model, _Sized(batches, -(-len(ll_idx) // _BATCH)), k=k, chunk=chunk,
                                 generator=gen, progress=progress).double()
    sem = (est.std().item() / math.sqrt(len(est))) if len(est) > 1 else float("nan")
    return {"log_likelihood": est.mean().item(), "log_likelihood_sem": sem, "log_likelihood_k": k,
            "log_likelihood_samples": len(est)}


def _mig(model, dataset, n: int, seed: int) -> Optional[dict]:
    """MIG of the posterior means on ``n`` samples, where the data has ground-truth factors (else None)."""
    if getattr(dataset, "factors", None) is None:
        return None
    from .. import metrics

    result = metrics.mig_for_model(model, dataset, n=n, generator=seed)
    per = result.per_factor.tolist()
    names = getattr(dataset.factors, "names", None)
    return {"score": result.score, "per_factor": dict(zip(names, per)) if names else per, "samples": n}


class _Sized:
    """An iterable of batches with a length (for the progress bar)."""

    def __init__(self, it, n):
        self.it, self.n = it, n

    def __iter__(self):
        return iter(self.it)

    def __len__(self):
        return self.n


def format_table(e: dict) -> str:
    """The table ``fastvae eval`` prints."""
    rows = [
        ("samples", f"{e['samples']} ({e['samples_are']})"),
        ("rate (KL)", f"{e['rate']:.3f} nats"),
        ("distortion", f"{e['distortion']:.3f} nats"),
        ("ELBO", f"{e['elbo']:.3f} nats"),
    ]
    if e.get("log_likelihood") is not None:
        rows.append((f"log p(x), IS k={e['log_likelihood_k']}",
                     f"{e['log_likelihood']:.3f} +- {e['log_likelihood_sem']:.3f} nats "
                     f"({e['log_likelihood_samples']} samples)"))
    rows += [
        (f"active dims (KL > {e['active_threshold']:g})", f"{e['active_dims']} of {len(e['kl_per_dim'])}"),
        ("KL per dim", " ".join(f"{v:.2f}" for v in e["kl_per_dim"])),
    ]
    if e.get("mig") is not None:
        per = e["mig"]["per_factor"]
        detail = ", ".join(f"{k} {v:.2f}" for k, v in per.items()) if isinstance(per, dict) else \
            ", ".join(f"{v:.2f}" for v in per)
        rows.append(("MIG", f"{e['mig']['score']:.3f} ({detail})"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def plot_kl_per_dim(kl, path: str, *, threshold: float = ACTIVE_THRESHOLD, title: str = "") -> Optional[str]:
    """A bar chart of the KL of each latent dimension, the active threshold drawn; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    kl = [float(v) for v in kl]
    fig = Figure(figsize=(max(4.0, 0.35 * len(kl) + 1.5), 3.2))
    ax = fig.subplots()
    colors = ["tab:blue" if v > threshold else "tab:gray" for v in kl]
    ax.bar(range(len(kl)), kl, color=colors)
    ax.axhline(threshold, color="tab:red", linewidth=0.8, linestyle="--", label=f"active: KL > {threshold:g} nats")
    ax.set_xlabel("latent dimension")
    ax.set_ylabel("KL (nats)")
    ax.set_xticks(range(len(kl)))
    if kl and max(kl) > 0:
        ax.set_ylim(0, max(kl) * 1.15)
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
