"""Measuring a trained VAE: the importance-sampled log-likelihood.

:func:`log_likelihood` estimates log p(x) per data point with the bound of Burda et al. 2016,

    log p(x) >= L_k(x) = log (1/k) sum_s p(x | z_s) p(z_s) / q(z_s | x),   z_s ~ q(z | x),

which rises to log p(x) as k grows.  Each batch is encoded once; the k samples are drawn in chunks
(:func:`fastvae.reparameterize_log_weights`: noise and log ratios in one pass) and decoded chunk by chunk,
their log weights folded into a running log-sum-exp, so memory holds one chunk whatever k is, and nothing
is read back to the host until the end.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional, Union

import torch
from torch import Tensor, nn

from . import functional as F_

__all__ = ["default_chunk", "log_likelihood", "log_weights"]

#: Elements of decoder output per chunk when ``chunk`` is not given (64 MiB of float32).
CHUNK_ELEMENTS = 1 << 24



def default_chunk(k: int, batch: int, sample_numel: int) -> int:
    """Samples per chunk so that a chunk's decoder output (chunk x batch x sample_numel) stays under
    ``CHUNK_ELEMENTS`` elements (at least one sample)."""
    return max(1, min(k, CHUNK_ELEMENTS // max(1, batch * sample_numel)))


def _check_model(model) -> None:
    if not isinstance(model, nn.Module) or not all(hasattr(model, a) for a in ("encode", "decode", "likelihood")):
        raise TypeError("model must be a fastvae VAE (an nn.Module with encode, decode and likelihood), got "
                        f"{type(model).__name__}")


def _log_scale(model):
    ls = getattr(model, "log_scale", None)
    return ls if ls is not None and model.likelihood in F_.SCALED_LIKELIHOODS else 0.0


def log_weights(model, x: Tensor, k: int, *, generator: Optional[torch.Generator] = None) -> Tensor:
    """The ``(k, B)`` IWAE log weights log p(x | z) + log p(z) - log q(z | x) of a batch ``x`` for ``model``
    (differentiable: ``-fastvae.iwae_bound(log_weights(model, x, k))`` is the IWAE loss)."""
    _check_model(model)
    mu, logvar = model.encode(x)
    return _chunk_weights(model, x, mu, logvar, F_._check_k(k), generator)


def _chunk_weights(model, x, mu, logvar, k, generator):
    z, log_ratio = F_.reparameterize_log_weights(mu, logvar, k, generator=generator)
    recon = model.decode(z.reshape(k * x.shape[0], -1))
    recon = recon.reshape((k,) + tuple(x.shape))
    nll = F_._nll(model.likelihood, F_._NLL_INPUT_NAMES[model.likelihood], recon, x, _log_scale(model), "none")
    return log_ratio.to(nll.dtype) - nll


def _batches(data, batch_size: int, device) -> tuple[Iterable[Tensor], Optional[int]]:
    if isinstance(data, Tensor):
        if data.dim() < 2:
            raise ValueError(f"data must be a (N, ...) tensor of samples, got shape {tuple(data.shape)}")
        n = data.shape[0]
        return (data[i:i + batch_size] for i in range(0, n, batch_size)), -(-n // batch_size)

    def first(batch):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(f"data must yield tensors (or tuples whose first item is one), got {type(x).__name__}")
        return x

    try:
        total = len(data)
    except TypeError:
        total = None
    return (first(b) for b in data), total


def log_likelihood(model, data: Union[Tensor, Iterable], *, k: int = 1000, chunk: Optional[int] = None,
                   batch_size: int = 256, generator: Optional[torch.Generator] = None,
                   progress: Optional[bool] = None) -> Tensor:
    """Per-sample importance-sampled estimates of log p(x) (nats) for a fastvae ``VAE``, shape ``(N,)``.

    Args:
        model: a :class:`fastvae.models.VAE` (any encoder/decoder, Gaussian posterior); put in eval mode for
            the call and restored after.  Gradients are off.
        data: an ``(N, ...)`` tensor (batched by ``batch_size``) or an iterable of batches (tensors, or tuples
            whose first item is the batch, as a ``DataLoader`` yields them).  Batches are moved to the
            model's device.
        k: importance samples per data point (k = 1 is the sampled ELBO).
        chunk: samples decoded at once; default: as many as keep a chunk's decoder output under
            ``CHUNK_ELEMENTS`` elements.  Memory is one chunk's, whatever k is.
        generator: the ``torch.Generator`` the noise seeds are drawn from (one per chunk).
        progress: a tqdm bar over the batches (None: when tqdm is installed and stderr is a terminal).
    """
    _check_model(model)
    k = F_._check_k(k)
    if chunk is not None:
        chunk = F_._check_k(chunk)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    batches, total = _batches(data, batch_size, device)
    bar = _progress(progress, total)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for x in batches:
                x = x.to(device, non_blocking=True)
                out.append(_estimate(model, x, k, chunk, generator))
                if bar is not None:
                    bar.update(1)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    if not out:
        return torch.empty((0,), device=device)
    return torch.cat(out)


def _estimate(model, x: Tensor, k: int, chunk: Optional[int], generator) -> Tensor:
    """log (1/k) sum_s w_s for one batch, over chunks of samples with a running log-sum-exp (m, s):
    m the largest log weight so far, s = sum_s exp(log w_s - m)."""
    mu, logvar = model.encode(x)
    B = x.shape[0]
    step = chunk or default_chunk(k, B, x[0].numel() if B else 1)
    m = s = None
    for start in range(0, k, step):
        lw = _chunk_weights(model, x, mu, logvar, min(step, k - start), generator)
        top = lw.max(0).values
        new = top if m is None else torch.maximum(m, top)
        new = torch.where(torch.isfinite(new), new, torch.zeros_like(new))  # all weights 0 so far: no shift
        terms = torch.exp(lw - new).sum(0)
        s = terms if m is None else torch.addcmul(terms, s, torch.exp(m - new))
        m = new
    return m + torch.log(s) - math.log(k)


def _progress(progress: Optional[bool], total: Optional[int]):
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("progress=True needs tqdm: pip install 'fastvae[train]'") from None
        return None
    if progress is None:
        import sys

        if not sys.stderr.isatty():
            return None
    return tqdm(total=total, unit="batch", desc="log p(x)", dynamic_ncols=True)
