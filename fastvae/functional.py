"""The functional API, in the style of ``torch.nn.functional``.

Batch is dim 0.  A per-sample value sums over every other dim.  ``reduction`` is ``'mean'``
(the mean over the batch of the per-sample values, the default), ``'sum'`` or ``'none'``
(shape ``(B,)``).  Loss values are float32 (float64 for float64 inputs); ``z`` and gradients
have their input's dtype.  CUDA tensors run fused Triton kernels, CPU tensors the PyTorch
implementation of the same math (see ``FASTVAE_BACKEND``).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from .ops import small
from .ops.free_bits import MODES as FREE_BITS_MODES
from .ops.latent import draw_seed, latent, small_sample_kl
from .ops.likelihoods import KINDS, SCALED_LIKELIHOODS
from .ops.objective import loss as _loss
from .ops.reduction import NONE, REDUCTIONS

__all__ = [
    "VAELoss", "reparameterize", "gaussian_kl", "reparameterize_kl", "bernoulli_nll",
    "gaussian_nll", "mse", "laplace_nll", "continuous_bernoulli_nll", "beta_vae_loss", "TCTerms", "TCVAELoss",
    "tc_decomposition", "beta_tcvae_loss", "ImportanceSamples", "IWAELoss", "reparameterize_log_weights",
    "iwae_bound", "iwae_loss",
]

LIKELIHOODS = tuple(KINDS)
Scalar = Union[float, Tensor]


class VAELoss(NamedTuple):
    """``loss = distortion + beta * rate`` (or ``beta * |rate - capacity|``), each reduced alike."""

    loss: Tensor
    distortion: Tensor
    rate: Tensor


# ----------------------------------------------------------------------------- argument checks


def _check_tensor(name: str, value) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if value.dim() < 1:
        raise ValueError(f"{name} must have at least 1 dim (the batch), got a 0-dim tensor")
    return value


def _check_like(name: str, value, ref_name: str, ref: Tensor) -> Tensor:
    _check_tensor(name, value)
    if value.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name}: expected {tuple(ref.shape)}, got {tuple(value.shape)}"
        )
    if value.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name}: expected {ref.device}, got {value.device}")
    return value


def _check_reduction(reduction) -> int:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return REDUCTIONS[reduction]


def _check_scalar(name: str, value, device: torch.device) -> Scalar:
    if type(value) is float:  # the common case first: an isinstance against numbers.Real costs a microsecond
        return value
    if isinstance(value, Tensor):
        if value.dim() != 0:
            if value.numel() != 1:
                raise ValueError(f"{name} must be a float or a one-element tensor, got a tensor of shape "
                                 f"{tuple(value.shape)}")
            value = value.reshape(())  # a (1,) capacity or beta, as other libraries keep them: a view
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        if value.device != device and value.device.type != "cpu":
            raise ValueError(f"{name} must be on {device} (or the CPU), got {value.device}")
        # A CPU 0-dim tensor enters device arithmetic as a scalar: no copy, no sync.
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(value).__name__}")
    return float(value)


def _check_log_scale(log_scale, target: Tensor, what: str = "the target's") -> tuple[Optional[Tensor], float]:
    """(tensor or None, float value) for the op; a float log_scale travels as the value."""
    if type(log_scale) is float:
        return None, log_scale
    if isinstance(log_scale, Tensor):
        if not log_scale.is_floating_point():
            raise TypeError(f"log_scale must be a floating-point tensor, got dtype {log_scale.dtype}")
        if log_scale.dim() != 0 and log_scale.shape != target.shape:
            raise ValueError(
                f"log_scale must be a float, a 0-dim tensor, or a tensor of {what} shape "
                f"{tuple(target.shape)}, got a tensor of shape {tuple(log_scale.shape)}"
            )
        if log_scale.device != target.device:
            raise ValueError(f"log_scale must be on the same device as {what[:-2]}: expected {target.device}, "
                             f"got {log_scale.device}")
        return log_scale, 0.0
    if isinstance(log_scale, bool) or not isinstance(log_scale, numbers.Real):
        raise TypeError(f"log_scale must be a float or a tensor, got {type(log_scale).__name__}")
    return None, float(log_scale)


def _check_log_scale_applies(likelihood: str, log_scale) -> None:
    if likelihood not in SCALED_LIKELIHOODS and (isinstance(log_scale, Tensor) or log_scale != 0.0):
        raise ValueError(f"log_scale applies to the {' and '.join(map(repr, SCALED_LIKELIHOODS))} likelihoods, "
                         f"not {likelihood!r}")


def _check_generator(generator: Optional[torch.Generator], device: torch.device) -> None:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != device.type:
            raise ValueError(f"generator must be a generator for {device.type} tensors, got one for {generator.device}")


def _check_row_offset(row_offset) -> int:
    if type(row_offset) is int and row_offset >= 0:
        return row_offset
    if isinstance(row_offset, bool) or not isinstance(row_offset, numbers.Integral):
        raise TypeError(f"row_offset must be an int, got {type(row_offset).__name__}")
    if row_offset < 0:
        raise ValueError(f"row_offset must be >= 0, got {row_offset}")
    return int(row_offset)


def _check_latent(mu, logvar) -> None:
    _check_tensor("mu", mu)
    _check_like("logvar", logvar, "mu", mu)


# ----------------------------------------------------------------------------- latent ops


def reparameterize(mu: Tensor, logvar: Tensor, eps: Optional[Tensor] = None, *,
                   generator: Optional[torch.Generator] = None, row_offset: int = 0) -> Tensor:
    r"""Sample :math:`z = \mu + e^{\text{logvar}/2} \odot \epsilon`, differentiably.

    Without ``eps`` the standard normal noise is generated inside the kernel from a seed drawn
    from ``generator`` (default: torch's generator for ``mu``'s device), never written to memory
    and regenerated in backward; ``torch.manual_seed`` reproduces ``z``.

    Args:
        mu, logvar: ``(B, *)`` mean and log-variance of the diagonal Gaussian posterior.
        eps: optional ``(B, *)`` noise to use instead.
        generator: the ``torch.Generator`` the seed is drawn from.
        row_offset: index of row 0 in a larger batch. The noise of row ``r`` is that of row
            ``row_offset + r`` of the larger batch for the same seed, so the shards of a
            data-parallel job (same generator state on every rank, ``row_offset = rank * B``)
            draw exactly the noise of one process on the whole batch.
    Returns:
        ``z`` with ``mu``'s shape and dtype.
    """
    _check_latent(mu, logvar)
    if eps is not None:
        _check_like("eps", eps, "mu", mu)
    _check_generator(generator, mu.device)
    row_offset = _check_row_offset(row_offset)
    seed = draw_seed(mu.device, generator) if eps is None else None
    return latent(mu, logvar, eps, seed, True, False, row_offset)


def _check_free_bits(free_bits, free_bits_mode) -> Optional[float]:
    if free_bits is None and free_bits_mode == "dim":  # the default, first: every loss call passes here
        return None
    if free_bits_mode not in FREE_BITS_MODES:
        raise ValueError(f"free_bits_mode must be one of {', '.join(map(repr, FREE_BITS_MODES))}, "
                         f"got {free_bits_mode!r}")
    if free_bits is None:
        return None
    if isinstance(free_bits, bool) or not isinstance(free_bits, numbers.Real):
        raise TypeError(f"free_bits must be a float (nats) or None, got {type(free_bits).__name__}")
    if not free_bits >= 0:
        raise ValueError(f"free_bits must be >= 0 nats, got {free_bits}")
    return float(free_bits)


def _reduce_rows(rows: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.mean()


def _free_bits_rows(rows: Tensor, mu, logvar, floor: float, mode: str) -> Tensor:
    from .ops.free_bits import per_sample

    return per_sample(rows, mu, logvar, floor, mode)


def gaussian_kl(mu: Tensor, logvar: Tensor, *, reduction: str = "mean", free_bits: Optional[float] = None,
                free_bits_mode: str = "dim") -> Tensor:
    r"""KL divergence of :math:`\mathcal N(\mu, e^{\text{logvar}})` from :math:`\mathcal N(0, I)`.

    Per sample, :math:`\tfrac12 \sum_j \mu_j^2 + e^{\text{logvar}_j} - \text{logvar}_j - 1`,
    computed in logvar space (``exp(logvar) - 1 - logvar`` without cancellation near 0).

    ``free_bits`` (nats; Kingma et al. 2016, Li et al. 2019) puts a floor under it and returns the free-bits
    objective instead: ``free_bits_mode='dim'`` floors each latent dimension's batch-mean KL m_j,
    ``sum_j max(free_bits, m_j)``; ``'sample'`` each sample's KL, ``max(free_bits, KL_b)``.  With
    ``reduction='none'`` the per-sample values are those whose batch mean is the ``'mean'`` result ('dim':
    sample b gets ``sum_j KL_bj`` over the dimensions with ``m_j >= free_bits`` plus ``free_bits`` for each
    other one); what is under the floor gets no gradient.
    """
    _check_latent(mu, logvar)
    red = _check_reduction(reduction)
    floor = _check_free_bits(free_bits, free_bits_mode)
    if floor is None:
        return latent(mu, logvar, None, None, False, True, 0, red)
    rows = latent(mu, logvar, None, None, False, True, 0, NONE) if free_bits_mode == "sample" else None
    return _reduce_rows(_free_bits_rows(rows, mu, logvar, floor, free_bits_mode), reduction)


def reparameterize_kl(mu: Tensor, logvar: Tensor, eps: Optional[Tensor] = None, *,
                      generator: Optional[torch.Generator] = None, reduction: str = "mean",
                      row_offset: int = 0, free_bits: Optional[float] = None,
                      free_bits_mode: str = "dim") -> tuple[Tensor, Tensor]:
    """``(reparameterize(mu, logvar, eps), gaussian_kl(mu, logvar))`` in one pass over mu and logvar:
    one kernel forward, one kernel backward.  ``generator`` and ``row_offset`` as in
    :func:`reparameterize`.

    With ``reduction='none'`` the KL is the per-sample rate ``(B,)`` that
    ``beta_vae_loss(recon, target, rate=rate)`` takes, so the training step computes it once::

        z, rate = fastvae.reparameterize_kl(mu, logvar, reduction="none")
        loss, distortion, rate = fastvae.beta_vae_loss(decoder(z), x, rate=rate, beta=4.0)

    ``free_bits`` and ``free_bits_mode`` as in :func:`gaussian_kl`: the KL returned is then the free-bits
    objective.
    """
    if (eps is None and free_bits is None and free_bits_mode == "dim" and type(row_offset) is int and row_offset >= 0
            and reduction in REDUCTIONS and small.direct_latent(mu, logvar)):
        if generator is not None:
            _check_generator(generator, mu.device)
        return small_sample_kl(mu, logvar, generator, row_offset, REDUCTIONS[reduction])
    _check_latent(mu, logvar)
    if eps is not None:
        _check_like("eps", eps, "mu", mu)
    red = _check_reduction(reduction)
    floor = _check_free_bits(free_bits, free_bits_mode)
    _check_generator(generator, mu.device)
    row_offset = _check_row_offset(row_offset)
    seed = draw_seed(mu.device, generator) if eps is None else None
    if floor is None:
        return latent(mu, logvar, eps, seed, True, True, row_offset, red)
    z, rows = latent(mu, logvar, eps, seed, True, True, row_offset, NONE)
    return z, _reduce_rows(_free_bits_rows(rows, mu, logvar, floor, free_bits_mode), reduction)


# ----------------------------------------------------------------------------- likelihoods


def _broadcast_lead(target, input_name: str, input: Tensor) -> Optional[tuple[int, ...]]:
    """None when target has input's shape; the leading sample dims of input when target is broadcast
    over them (input (k, B, ...), target (B, ...)); a clear error otherwise."""
    _check_tensor("target", target)
    if target.device != input.device:
        raise ValueError(f"target must be on the same device as {input_name}: expected {input.device}, "
                         f"got {target.device}")
    if target.shape == input.shape:
        return None
    n = input.dim() - target.dim()
    if n > 0 and input.shape[n:] == target.shape:
        return tuple(input.shape[:n])
    raise ValueError(
        f"target must have the shape of {input_name} {tuple(input.shape)}, or its trailing dims (a target "
        f"broadcast over leading sample dims, e.g. {input_name} (k, B, ...) and target (B, ...)), "
        f"got {tuple(target.shape)}"
    )


def _nll(kind: str, input_name: str, input: Tensor, target: Tensor, log_scale, reduction: str) -> Tensor:
    _check_tensor(input_name, input)
    lead = _broadcast_lead(target, input_name, input)
    red = _check_reduction(reduction)
    if lead is None:
        ls_tensor, ls_value = _check_log_scale(log_scale, target)
        return _loss(input, target, ls_tensor, ls_value, KINDS[kind], red)
    # Broadcast: x's leading dims flattened into its rows (a view), the target read in place by row modulo.
    ls_tensor, ls_value = _check_log_scale(log_scale, input, what=f"{input_name}'s")
    rows = input.reshape((-1,) + tuple(target.shape[1:]))
    if ls_tensor is not None and ls_tensor.dim():
        ls_tensor = ls_tensor.reshape(rows.shape)
    out = _loss(rows, target, ls_tensor, ls_value, KINDS[kind], red)
    return out.reshape(lead + (target.shape[0],)) if red == NONE else out


def bernoulli_nll(logits: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Bernoulli NLL from **logits** (not probabilities): binary cross-entropy summed per sample,
    ``'mean'`` the batch mean of those per-sample sums.

    Per element :math:`\max(x, 0) - x t + \log(1 + e^{-|x|})`, stable for any logit;
    targets anywhere in [0, 1].  Equals
    ``F.binary_cross_entropy_with_logits(logits, target, reduction='none').flatten(1).sum(1)``
    reduced over the batch.  A decoder that ends in ``sigmoid`` must drop it: passing
    probabilities as logits computes a different, wrong loss.
    """
    return _nll("bernoulli", "logits", logits, target, 0.0, reduction)


def gaussian_nll(mean: Tensor, target: Tensor, *, log_scale: Scalar = 0.0, reduction: str = "mean") -> Tensor:
    r"""Gaussian NLL of the target under the decoder's **mean** (not a sample), summed per sample,
    ``'mean'`` the batch mean of those per-sample sums.

    Per element :math:`\tfrac12 ((x - \mu)/\sigma)^2 + \log\sigma + \tfrac12\log 2\pi`,
    :math:`\sigma = e^{\text{log\_scale}}`.  ``log_scale`` is a float, a 0-dim tensor (one
    learned sigma) or a tensor of the target's shape (sigma per element); tensors get gradients.
    """
    return _nll("gaussian", "mean", mean, target, log_scale, reduction)


def mse(recon: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    """Squared error summed per sample (not averaged per pixel), ``'mean'`` the batch mean of those
    per-sample sums: ``F.mse_loss(recon, target, reduction='none').flatten(1).sum(1)`` reduced over the
    batch."""
    return _nll("mse", "recon", recon, target, 0.0, reduction)


def laplace_nll(loc: Tensor, target: Tensor, *, log_scale: Scalar = 0.0, reduction: str = "mean") -> Tensor:
    r"""Laplace NLL of the target under the decoder's **location**, summed per sample, ``'mean'`` the
    batch mean of those per-sample sums: :math:`|x - \mu|/b + \log 2b`, :math:`b = e^{\text{log\_scale}}`.

    ``log_scale`` takes the same forms as in :func:`gaussian_nll`.
    """
    return _nll("laplace", "loc", loc, target, log_scale, reduction)


def continuous_bernoulli_nll(logits: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""Continuous Bernoulli NLL (Loaiza-Ganem & Cunningham 2019) from **logits**, summed per sample,
    ``'mean'`` the batch mean of those per-sample sums: the likelihood for data in [0, 1] that is not binary.

    Per element the Bernoulli NLL minus the log of the normalizing constant,
    :math:`\max(x, 0) - x t + \log(1 + e^{-|x|}) - \log C(x)`, :math:`C(x) = x / \tanh(x/2)` (2 at
    :math:`x = 0`), computed in logit space with no clamp of the probability: value and gradient are
    smooth through :math:`x = 0` and finite for logits of any size.  Equals
    ``-torch.distributions.ContinuousBernoulli(logits=logits).log_prob(target)`` summed per sample.
    """
    return _nll("continuous_bernoulli", "logits", logits, target, 0.0, reduction)


#: ``VAELoss(*t)`` without the NamedTuple's Python ``__new__`` (t is a 3-tuple).
_new_tuple = tuple.__new__
#: The likelihoods of beta_vae_loss's small-input shortcut, by name: kind number.
_SMALL_KINDS = {name: kind for name, kind in KINDS.items() if kind in small.KINDS}
_NLL_INPUT_NAMES = {"bernoulli": "logits", "gaussian": "mean", "mse": "recon", "laplace": "loc",
                    "continuous_bernoulli": "logits"}


def _check_rate(rate, recon: Tensor) -> Tensor:
    _check_tensor("rate", rate)
    if rate.dim() != 1 or rate.shape[0] != recon.shape[0]:
        raise ValueError(
            f"rate must be the per-sample KL of shape (B,) = ({recon.shape[0]},), as reparameterize_kl(..., "
            f"reduction='none') returns it; got shape {tuple(rate.shape)}"
        )
    if rate.device != recon.device:
        raise ValueError(f"rate must be on the same device as recon: expected {recon.device}, got {rate.device}")
    return rate


def beta_vae_loss(recon: Tensor, target: Tensor, mu: Optional[Tensor] = None, logvar: Optional[Tensor] = None, *,
                  rate: Optional[Tensor] = None, beta: Scalar = 1.0, likelihood: str = "bernoulli",
                  log_scale: Scalar = 0.0, capacity: Optional[Scalar] = None, reduction: str = "mean",
                  free_bits: Optional[float] = None, free_bits_mode: str = "dim") -> VAELoss:
    r"""The beta-VAE objective: ``VAELoss(loss, distortion, rate)``.

    distortion is the reconstruction NLL of ``likelihood`` ('bernoulli' from logits, 'gaussian',
    'mse' or 'laplace'), rate the KL of the posterior from N(0, I), and
    ``loss = distortion + beta * rate``.  With a ``capacity`` C (Burgess et al. 2018) the
    penalty is ``beta * |rate - C|``: for 'mean' on the batch-mean rate, for 'sum' B times that,
    for 'none' per sample.  ``beta`` and ``capacity`` are floats or one-element tensors.

    The rate comes either from ``mu`` and ``logvar`` (the KL is computed here) or as ``rate``, the
    per-sample KL ``(B,)`` that ``reparameterize_kl(mu, logvar, reduction='none')`` returned with z:
    then it is not computed again, and its gradient flows back through that op.  Give one or the
    other.  Both forms give the same numbers; the second reads mu and logvar once instead of twice.

    ``free_bits`` (see :func:`gaussian_kl`): ``loss`` takes the free-bits objective in place of the rate while
    ``VAELoss.rate`` stays the true KL, so curves show the real rate.  ``free_bits_mode='dim'`` needs the
    per-dimension KL, so mu and logvar; ``'sample'`` works with either form.  It does not combine with a
    capacity (two ways of keeping the rate up: give one).
    """
    if (rate is not None and mu is None and logvar is None and free_bits is None and free_bits_mode == "dim"
            and type(log_scale) is float and likelihood in _SMALL_KINDS and small.direct_loss(recon, target, rate)
            and (log_scale == 0.0 or likelihood in SCALED_LIKELIHOODS) and reduction in REDUCTIONS):
        # small float32 CPU tensors (fastvae.ops.small): the checks that remain, then torch's ops
        if type(beta) is not float:
            beta = _check_scalar("beta", beta, recon.device)
        if capacity is not None:
            capacity = _check_scalar("capacity", capacity, recon.device)
        return _new_tuple(VAELoss, small.loss(recon, target, log_scale, _SMALL_KINDS[likelihood],
                                              REDUCTIONS[reduction], rate, beta, capacity))
    if likelihood not in KINDS:
        raise ValueError(f"likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}, got {likelihood!r}")
    _check_tensor("recon", recon)
    if rate is not None:
        if mu is not None or logvar is not None:
            given = " and ".join(n for n, v in (("mu", mu), ("logvar", logvar)) if v is not None)
            raise ValueError(f"beta_vae_loss takes either mu and logvar or rate, not both: got rate and {given}")
        _check_rate(rate, recon)
    elif mu is None or logvar is None:
        if mu is None and logvar is None:
            raise ValueError("beta_vae_loss needs the rate: give mu and logvar, or rate (the per-sample KL of "
                             "reparameterize_kl(mu, logvar, reduction='none'))")
        raise ValueError(f"beta_vae_loss needs both mu and logvar: {'logvar' if logvar is None else 'mu'} is missing")
    else:
        _check_latent(mu, logvar)
        if mu.shape[0] != recon.shape[0]:
            raise ValueError(f"mu must have recon's batch size: expected {recon.shape[0]}, got {mu.shape[0]}")
        if mu.device != recon.device:
            raise ValueError(f"mu must be on the same device as recon: expected {recon.device}, got {mu.device}")
    red = _check_reduction(reduction)
    beta = _check_scalar("beta", beta, recon.device)
    if capacity is not None:
        capacity = _check_scalar("capacity", capacity, recon.device)
    _check_log_scale_applies(likelihood, log_scale)
    _check_like("target", target, "recon", recon)
    ls_tensor, ls_value = _check_log_scale(log_scale, target)
    floor = _check_free_bits(free_bits, free_bits_mode)
    if floor is not None:
        if capacity is not None:
            raise ValueError("beta_vae_loss takes free_bits or capacity, not both")
        if rate is not None and free_bits_mode == "dim":
            raise ValueError("free_bits_mode='dim' needs the per-dimension KL: give mu and logvar (not rate), or "
                             "use free_bits_mode='sample'")
    if rate is None:
        rate = latent(mu, logvar, None, None, False, True, 0, NONE)
    if floor is None:
        return VAELoss(*_loss(recon, target, ls_tensor, ls_value, KINDS[likelihood], red, rate=rate, beta=beta,
                              capacity=capacity))
    penalized = _free_bits_rows(rate, mu, logvar, floor, free_bits_mode)
    loss, distortion, _ = _loss(recon, target, ls_tensor, ls_value, KINDS[likelihood], red, rate=penalized,
                                beta=beta)
    return VAELoss(loss, distortion, _reduce_rows(rate, reduction))


# ----------------------------------------------------------------------------- beta-TCVAE


class TCTerms(NamedTuple):
    """The decomposition of the KL of beta-TCVAE (Chen et al. 2018): ``mi + tc + dwkl = log q(z|x) - log p(z)``.

    mi: index-code mutual information ``log q(z|x) - log q(z)``; tc: total correlation
    ``log q(z) - log prod_k q(z_k)``; dwkl: dimension-wise KL ``log prod_k q(z_k) - log p(z)``."""

    mi: Tensor
    tc: Tensor
    dwkl: Tensor


class TCVAELoss(NamedTuple):
    """``loss = distortion + alpha * mi + beta * tc + gamma * dwkl``; ``rate`` the analytic KL, for reporting."""

    loss: Tensor
    distortion: Tensor
    rate: Tensor
    mi: Tensor
    tc: Tensor
    dwkl: Tensor


def _check_tc_inputs(z, mu, logvar, dataset_size, estimator, process_group) -> tuple[int, int, int]:
    """(global batch, this process's first row, world size) after checking the arguments."""
    from .ops.tc import ESTIMATORS

    _check_tensor("z", z)
    if z.dim() != 2:
        raise ValueError(f"z must be (B, J), the latent sample of each row, got shape {tuple(z.shape)}")
    _check_like("mu", mu, "z", z)
    _check_like("logvar", logvar, "z", z)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(map(repr, ESTIMATORS))}, got {estimator!r}")
    world, rank = 1, 0
    if process_group is not None:
        import torch.distributed as dist

        world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    batch = z.shape[0] * world
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, numbers.Integral):
        raise TypeError(f"dataset_size must be an int (the number of training examples), got "
                        f"{type(dataset_size).__name__}")
    if dataset_size < max(batch, 1):
        raise ValueError(f"dataset_size must be at least the (global) batch size {batch}, got {dataset_size}")
    if estimator == "mss" and batch < 2:
        raise ValueError(f"estimator 'mss' needs a batch of at least 2 rows, got {batch}; use 'mws'")
    return batch, rank * z.shape[0], world


def tc_decomposition(z: Tensor, mu: Tensor, logvar: Tensor, *, dataset_size: int, estimator: str = "mss",
                     reduction: str = "mean", process_group=None) -> TCTerms:
    r"""The beta-TCVAE decomposition of the rate, ``TCTerms(mi, tc, dwkl)``, with the minibatch estimators of
    Chen et al. (2018), streamed: memory O(B J) for any batch, no (B, B, J) tensor.

    ``z`` (B, J) is drawn from the posteriors ``N(mu, exp(logvar))`` (for instance by
    :func:`reparameterize_kl`); q is the aggregate posterior of the batch,

    .. math:: \log q(z_i) \approx \mathrm{logsumexp}_j [\log q(z_i|x_j) + \log w_{ij}],\qquad
              \log \textstyle\prod_k q(z_{ik}) \approx \sum_k \mathrm{logsumexp}_j [\log q(z_{ik}|x_{jk}) + \log w_{ij}]

    with ``estimator='mws'`` (minibatch weighted sampling, w = 1/(N B)) or ``'mss'`` (minibatch stratified
    sampling, M = B - 1: w_ii = 1/N, w_i,(i+1) mod B = (N - M)/(N M), 1/M for the others), N the
    ``dataset_size``.  With a ``process_group`` the sums over j run over the global batch (the posteriors
    all-gathered, gradients flowing back to every rank's rows), so N processes of B rows give what one
    process of N B rows gives; every rank must pass the same number of rows.  Gradients flow into z, mu and logvar.
    """
    import math as _math

    from .ops.tc import log_densities

    batch, row0, world = _check_tc_inputs(z, mu, logvar, dataset_size, estimator, process_group)
    red = _check_reduction(reduction)
    mu_all, lv_all = mu, logvar
    if world > 1:  # one collective for both: (B, 2J) rows gathered, then split
        from .ops.tc import gather_rows

        wide = torch.promote_types(mu.dtype, logvar.dtype)  # both halves exact whatever their dtypes
        both = gather_rows(torch.cat([mu.to(wide), logvar.to(wide)], 1), process_group)
        mu_all, lv_all = both[:, :mu.shape[1]].to(mu.dtype), both[:, mu.shape[1]:].to(logvar.dtype)
    log_qz, log_prod = log_densities(z, mu_all, lv_all, row0=row0, dataset_size=dataset_size, estimator=estimator)
    half_log_2pi = 0.5 * _math.log(2.0 * _math.pi)
    zc = z.to(log_qz.dtype)
    d = zc - mu.to(log_qz.dtype)
    lv = logvar.to(log_qz.dtype)
    log_qzx = (-0.5 * (d * d * torch.exp(-lv) + lv) - half_log_2pi).sum(1)
    log_pz = (-0.5 * zc * zc - half_log_2pi).sum(1)
    terms = (log_qzx - log_qz, log_qz - log_prod, log_prod - log_pz)
    if red == NONE:
        return TCTerms(*terms)
    return TCTerms(*(t.sum() if reduction == "sum" else t.mean() for t in terms))


def beta_tcvae_loss(recon: Tensor, target: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, *, dataset_size: int,
                    alpha: Scalar = 1.0, beta: Scalar = 6.0, gamma: Scalar = 1.0, likelihood: str = "bernoulli",
                    log_scale: Scalar = 0.0, estimator: str = "mss", reduction: str = "mean",
                    process_group=None) -> TCVAELoss:
    """The beta-TCVAE objective (Chen et al. 2018): ``distortion + alpha * mi + beta * tc + gamma * dwkl``
    (see :func:`tc_decomposition`), ``TCVAELoss(loss, distortion, rate, mi, tc, dwkl)`` with ``rate`` the
    analytic KL of the posteriors (reported; not part of the loss).  ``likelihood`` and ``log_scale`` as in
    :func:`beta_vae_loss`; alpha = beta = gamma = 1 is the plain ELBO's rate estimated from the batch."""
    if likelihood not in KINDS:
        raise ValueError(f"likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}, got {likelihood!r}")
    _check_tensor("recon", recon)
    _check_like("target", target, "recon", recon)
    if z.dim() >= 1 and z.shape[0] != recon.shape[0]:
        raise ValueError(f"z must have recon's batch size: expected {recon.shape[0]}, got {z.shape[0]}")
    weights = [_check_scalar(name, value, recon.device) for name, value in (("alpha", alpha), ("beta", beta),
                                                                             ("gamma", gamma))]
    distortion = _nll(likelihood, _NLL_INPUT_NAMES[likelihood], recon, target, log_scale, reduction)
    terms = tc_decomposition(z, mu, logvar, dataset_size=dataset_size, estimator=estimator, reduction=reduction,
                             process_group=process_group)
    rate = gaussian_kl(mu, logvar, reduction=reduction)
    loss = distortion + weights[0] * terms.mi + weights[1] * terms.tc + weights[2] * terms.dwkl
    return TCVAELoss(loss, distortion, rate, *terms)


# ----------------------------------------------------------------------------- importance sampling (IWAE)


class ImportanceSamples(NamedTuple):
    """``z`` ``(k, B, *)``: k samples of each posterior; ``log_ratio`` ``(k, B)``: log p(z) - log q(z | x)."""

    z: Tensor
    log_ratio: Tensor


class IWAELoss(NamedTuple):
    """``loss`` the negative IWAE bound; ``distortion`` and ``rate`` its two parts averaged over the k samples
    (the sampled NLL and log q(z|x) - log p(z)): with k = 1, ``loss = distortion + rate``, the sampled ELBO."""

    loss: Tensor
    distortion: Tensor
    rate: Tensor


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int (the number of importance samples), got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1 (the number of importance samples), got {k}")
    return int(k)


def reparameterize_log_weights(mu: Tensor, logvar: Tensor, k: int, *,
                               generator: Optional[torch.Generator] = None) -> ImportanceSamples:
    r"""k reparameterized samples of each posterior N(mu, exp(logvar)) and their log importance ratios.

    ``z[s] = mu + exp(logvar / 2) * eps[s]`` with noise generated in the kernel (never stored, regenerated in
    backward), and in the same pass ``log_ratio[s, b] = log N(z[s, b]; 0, I) - log N(z[s, b]; mu_b,
    exp(logvar_b))`` = :math:`\tfrac12 \sum_j (\epsilon^2 - z^2 + \text{logvar})`.  With the decoder's
    log-likelihood of each sample, ``log_ratio - nll`` are the IWAE log weights (:func:`iwae_bound`,
    :func:`iwae_loss`).  The noise of sample s, row b is ``reparameterize``'s for row ``s * B + b`` of a
    ``(k B, *)`` input and the same seed.

    Returns:
        ``ImportanceSamples(z, log_ratio)``: z ``(k, *mu.shape)`` in mu's dtype, log_ratio ``(k, B)`` in
        float32 (float64 for float64 inputs).  Gradients flow to mu and logvar through both.
    """
    _check_latent(mu, logvar)
    k = _check_k(k)
    _check_generator(generator, mu.device)
    from .ops.iwae import log_weights

    return ImportanceSamples(*log_weights(mu, logvar, draw_seed(mu.device, generator), k))


def iwae_bound(log_weights: Tensor, *, reduction: str = "mean") -> Tensor:
    r"""The importance-weighted bound of Burda et al. 2016 from ``(k, B)`` log weights
    :math:`\log w_{s,b} = \log p(x_b, z_{s,b}) - \log q(z_{s,b} | x_b)`:

    .. math:: \mathcal{L}_k(x_b) = \log \frac1k \sum_s w_{s,b} = \operatorname{logsumexp}_s \log w_{s,b} - \log k

    stable for weights of any size; k = 1 is the sampled ELBO.  Its gradient weights each sample by its
    normalized weight (softmax over s), as autograd of the log-sum-exp gives it: nothing to detach.
    ``reduction`` over the batch: ``'mean'``, ``'sum'`` or ``'none'`` (shape ``(B,)``).  A lower bound of
    log p(x) (to maximize; the loss is its negative).
    """
    _check_tensor("log_weights", log_weights)
    if log_weights.dim() != 2:
        raise ValueError(f"log_weights must be (k, B): k samples of each of B data points, got shape "
                         f"{tuple(log_weights.shape)}")
    if log_weights.shape[0] == 0:
        raise ValueError("log_weights must hold at least one sample (k >= 1), got k = 0")
    red = _check_reduction(reduction)
    bound = torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])
    return bound if red == NONE else _reduce_rows(bound, reduction)


def iwae_loss(recon: Tensor, target: Tensor, log_ratio: Tensor, *, likelihood: str = "bernoulli",
              log_scale: Scalar = 0.0, reduction: str = "mean") -> IWAELoss:
    """The IWAE objective to minimize, ``-iwae_bound(log_ratio - nll)``: ``recon`` the decoder's output for
    the ``(k, B, *)`` samples of :func:`reparameterize_log_weights` (``(k, B, *target.shape[1:])``),
    ``target`` ``(B, *)`` read in place for every sample, ``log_ratio`` ``(k, B)``.  ``likelihood`` and
    ``log_scale`` as in :func:`beta_vae_loss`.  The two lines it stands for::

        nll = fastvae.bernoulli_nll(recon, x, reduction='none')          # (k, B)
        loss = -fastvae.iwae_bound(log_ratio - nll)
    """
    if likelihood not in KINDS:
        raise ValueError(f"likelihood must be one of {', '.join(map(repr, LIKELIHOODS))}, got {likelihood!r}")
    _check_tensor("recon", recon)
    _check_tensor("log_ratio", log_ratio)
    if log_ratio.dim() != 2 or recon.dim() < 2 or tuple(log_ratio.shape) != tuple(recon.shape[:2]):
        raise ValueError(f"log_ratio must be (k, B) = recon.shape[:2] = {tuple(recon.shape[:2])}, got shape "
                         f"{tuple(log_ratio.shape)}")
    _check_log_scale_applies(likelihood, log_scale)
    if target.dim() != recon.dim() - 1:
        raise ValueError(f"target must be (B, *) = recon.shape[1:] = {tuple(recon.shape[1:])} (one target for the "
                         f"k samples), got shape {tuple(target.shape)}")
    nll = _nll(likelihood, _NLL_INPUT_NAMES[likelihood], recon, target, log_scale, "none")
    bound = iwae_bound(log_ratio.to(nll.dtype) - nll, reduction=reduction)
    return IWAELoss(-bound, _reduce_rows(nll.mean(0), reduction), _reduce_rows(-log_ratio.mean(0), reduction))
