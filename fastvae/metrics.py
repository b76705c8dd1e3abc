"""Disentanglement metrics: the mutual information gap (MIG) of Chen et al. (2018).

:func:`mig` scores given codes against given ground-truth factors; :func:`mig_for_model` samples a
dataset with factors (:class:`fastvae.data.Shapes`), encodes it with a model's posterior means and
scores those.

The estimator is disentanglement_lib's ``discrete_mig`` (Locatello et al. 2019): every code dimension
is discretized into ``bins`` equal-width bins over its range on the sample (their
``_histogram_discretize``: ``np.digitize(x, np.histogram(x, bins)[1][:-1])``), the factors are taken
as discrete, and

    MIG = mean over factors k of (I(c_(1); v_k) - I(c_(2); v_k)) / H(v_k)

where ``c_(1)`` and ``c_(2)`` are the code dimensions with the largest and second-largest mutual
information with factor ``v_k``. Two known problems of other implementations are avoided:

* the mutual information is computed here from the contingency table, in natural log, exactly as
  the definition (and scikit-learn's ``mutual_info_score``) has it, not by calling scikit-learn,
  whose result on histogram-discretized codes has moved between versions (disentanglement_lib
  issue #33); no scikit-learn is needed;
* the matrix is ``(L, K)``, code dimensions by factors, and the sort runs over the code
  dimensions of each factor; disentangling-vae (issue #64) reshaped where a transpose was due,
  which mixed factors and codes (0.0008 where 0.50 was right).

Everything runs in torch on the codes' device and is deterministic: integer counts, then a fixed
reduction in float64 (float32 on MPS, which has no float64).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor

__all__ = ["MIGResult", "mig", "mig_for_model", "mutual_information", "discretize"]


class MIGResult(NamedTuple):
    """What :func:`mig` returns.

    Attributes:
        score: the MIG, a Python float in [0, 1]: the mean of ``per_factor`` over the factors with
            more than one value (NaN when no factor has more than one value).
        per_factor: ``(K,)`` the normalized gap ``(top-1 - top-2 MI) / H(factor)`` of each factor;
            NaN for a factor with a single value (``H = 0``), which the score leaves out.
        mutual_information: ``(L, K)`` the mutual information, in nats, between each discretized
            code dimension (rows) and each factor (columns).
    """

    score: float
    per_factor: Tensor
    mutual_information: Tensor


# ---------------------------------------------------------------------------------------- checks
def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _check_bins(bins: Any) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise ValueError(f"bins: expected a positive int, got {bins!r}")
    if bins < 1:
        raise ValueError(f"bins: expected a positive int, got {bins}")
    return bins


def _as_matrix(value: Any, name: str, values: str, columns: str, one: str) -> Tensor:
    """``value`` as a real (N, columns) tensor, else a ValueError naming ``name``; ``values`` says what it
    holds and ``one`` what one column is (for the hint on a 1-d input)."""
    value = torch.as_tensor(value)
    if value.dtype.is_complex:
        raise ValueError(f"{name}: expected {values}, got dtype {value.dtype}")
    if value.dim() != 2:
        hint = f" (one {one}: {name}.reshape(-1, 1))" if value.dim() == 1 else ""
        raise ValueError(f"{name}: expected shape (N, {columns}), got {tuple(value.shape)}{hint}")
    return value


def _check_codes(codes: Any) -> Tensor:
    codes = _as_matrix(codes, "codes", "real values", "L", "code dimension")
    if codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"codes: expected at least one sample and one code dimension, got shape {tuple(codes.shape)}")
    codes = codes.to(_float_dtype(codes.device))
    if not bool(torch.isfinite(codes).all()):
        raise ValueError("codes: contains NaN or infinite values")
    return codes


def _check_factors(factors: Any, n: int, device: torch.device) -> Tensor:
    factors = _as_matrix(factors, "factors", "real discrete values", "K", "factor")
    if factors.shape[1] == 0:
        raise ValueError(f"factors: expected at least one factor, got shape {tuple(factors.shape)}")
    if factors.shape[0] != n:
        raise ValueError(f"factors: expected {n} rows like codes (N, L), got shape {tuple(factors.shape)}")
    factors = factors.to(device)
    if factors.dtype == torch.bool:
        factors = factors.long()
    if factors.dtype.is_floating_point and not bool(torch.isfinite(factors).all()):
        raise ValueError("factors: contains NaN or infinite values")
    return factors


# -------------------------------------------------------------------------------- the estimator
def discretize(codes: Tensor, bins: int = 20) -> Tensor:
    """Bin indices ``(N, L)`` (int64, in ``[0, bins)``) of codes ``(N, L)``: per code dimension,
    ``bins`` equal-width bins over ``[min, max]`` of that dimension.

    As ``np.digitize(x, np.histogram(x, bins)[1][:-1]) - 1``: the edges are
    ``min + i * ((max - min) / bins)`` (computed in float64, like numpy's for float64 input), a
    value on an inner edge goes to the bin above it, and the maximum to the last bin. A constant
    dimension has all its samples in bin 0.
    """
    return _discretize(_check_codes(codes), _check_bins(bins))


def _discretize(codes: Tensor, bins: int) -> Tensor:
    lo = codes.amin(dim=0)
    hi = codes.amax(dim=0)
    step = (hi - lo) / bins  # (L,)
    inner = torch.arange(1, bins, dtype=codes.dtype, device=codes.device)
    edges = (inner[None, :] * step[:, None] + lo[:, None]).contiguous()  # the inner edges (L, bins-1)
    # #{inner edges <= x}: searchsorted(right=True), row by row of the (L, N) columns
    out = torch.searchsorted(edges, codes.t().contiguous(), right=True).t().contiguous()
    # A constant dimension has every edge equal to its value, so all its samples land in the last
    # bin; put them in bin 0 (any single bin gives the same mutual information: 0).
    out[:, hi == lo] = 0
    return out


def _labels(column: Tensor) -> tuple[Tensor, int]:
    """Contiguous ids ``0 .. V-1`` of the distinct values of a 1-D tensor, and ``V``."""
    values, ids = torch.unique(column, sorted=True, return_inverse=True)
    return ids.reshape(-1), int(values.numel())


def _mutual_information(binned: Tensor, ids: Tensor, values: int, bins: int, dtype: torch.dtype) -> Tensor:
    """MI ``(L,)`` in nats between each column of ``binned`` ``(N, L)`` (ids in ``[0, bins)``) and
    one discrete variable ``ids`` ``(N,)`` (ids in ``[0, values)``)."""
    n, dims = binned.shape
    # the contingency tables of all code dimensions at once: counts (L, bins, values)
    offsets = torch.arange(dims, device=binned.device) * (bins * values)
    flat = (binned * values + ids[:, None] + offsets).reshape(-1)
    counts = torch.bincount(flat, minlength=dims * bins * values).reshape(dims, bins, values)
    rows = counts.sum(dim=2, keepdim=True)  # (L, bins, 1) code-bin counts a_i
    cols = counts.sum(dim=1, keepdim=True)  # (L, 1, values) factor counts b_j
    # sum_ij (n_ij / N) * log(N n_ij / (a_i b_j)) over the cells with n_ij > 0. The products are formed
    # in int64 (exact for N < 3e9), so a cell of independent counts (N n_ij == a_i b_j, e.g. every cell
    # of a constant code dimension or of a constant factor) contributes exactly 0.
    nonzero = counts > 0
    log_ratio = torch.log((counts * n).to(dtype)) - torch.log((rows * cols).to(dtype))
    terms = torch.where(nonzero, counts.to(dtype) * log_ratio, 0.0)
    mi = terms.sum(dim=(1, 2)) / n
    return mi.clamp_min(0.0)  # rounding can leave -1e-17 for independent variables


def _entropy(ids: Tensor, values: int, dtype: torch.dtype) -> Tensor:
    """Entropy (nats) of a discrete variable given as ids ``(N,)`` in ``[0, values)``: 0-d tensor."""
    p = torch.bincount(ids, minlength=values).to(dtype) / ids.numel()
    p = p[p > 0]
    return (-(p * torch.log(p)).sum()).clamp_min(0.0)


def mutual_information(codes: Tensor, factors: Tensor, *, bins: int = 20) -> Tensor:
    """The ``(L, K)`` matrix of :attr:`MIGResult.mutual_information`, in nats: the mutual information
    between each code dimension of ``codes`` ``(N, L)``, discretized by :func:`discretize`, and each
    discrete factor of ``factors`` ``(N, K)``. See :func:`mig` for the arguments."""
    bins = _check_bins(bins)
    codes = _check_codes(codes)
    factors = _check_factors(factors, codes.shape[0], codes.device)
    return _mi_matrix(_discretize(codes, bins), factors, bins, codes.dtype)[0]


def _mi_matrix(binned: Tensor, factors: Tensor, bins: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(MI (L, K), H (K,))``."""
    mi, entropy = [], []
    for k in range(factors.shape[1]):
        ids, values = _labels(factors[:, k])
        mi.append(_mutual_information(binned, ids, values, bins, dtype))
        entropy.append(_entropy(ids, values, dtype))
    return torch.stack(mi, dim=1), torch.stack(entropy)


def mig(codes: Tensor, factors: Tensor, *, bins: int = 20) -> MIGResult:
    """The mutual information gap (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs")
    with disentanglement_lib's histogram discretization.

    Each code dimension is cut into ``bins`` equal-width bins over its range (:func:`discretize`);
    each factor is discrete (its distinct values are its classes). With ``I`` the ``(L, K)`` mutual
    information between discretized code dimensions and factors (natural log, from the contingency
    table: ``sum_ij p_ij log(p_ij / (p_i p_j))``, as scikit-learn's ``mutual_info_score``) and
    ``H(v_k)`` the entropy of factor ``k``, the gap of factor ``k`` is
    ``(top-1 - top-2 of I[:, k]) / H(v_k)`` and the MIG is the mean gap over the factors.

    Edge cases:

    * a factor with a single value has ``H = 0`` and no gap: its ``per_factor`` entry is NaN and the
      score is the mean over the other factors (NaN if every factor has a single value);
    * a constant code dimension falls in one bin: its mutual information with every factor is 0;
    * with one code dimension (``L = 1``) the second-largest mutual information is taken as 0, so the
      gap of a factor is ``I[0, k] / H(v_k)``.

    Args:
        codes: ``(N, L)`` real codes, e.g. posterior means (discretized in float64).
        factors: ``(N, K)`` ground-truth factors: integers, or any values that take few distinct
            values (floats are compared exactly); moved to the codes' device.
        bins: bins per code dimension (disentanglement_lib's default: 20).

    Returns:
        :class:`MIGResult` ``(score, per_factor, mutual_information)``; the tensors are float64
        (float32 on MPS) on the codes' device.

    Raises:
        ValueError: ``codes`` not ``(N, L)`` with N, L >= 1, or not finite; ``factors`` not ``(N, K)``
            with the same N and K >= 1; ``bins`` not a positive int.
    """
    bins = _check_bins(bins)
    codes = _check_codes(codes)
    factors = _check_factors(factors, codes.shape[0], codes.device)
    mi, entropy = _mi_matrix(_discretize(codes, bins), factors, bins, codes.dtype)
    if mi.shape[0] >= 2:
        top = torch.topk(mi, 2, dim=0).values  # (2, K)
        gap = top[0] - top[1]
    else:
        gap = mi[0]
    valid = entropy > 0
    per_factor = torch.where(valid, gap / torch.where(valid, entropy, 1.0), math.nan)
    n_valid = int(valid.sum())
    score = float(per_factor[valid].sum() / n_valid) if n_valid else math.nan
    return MIGResult(score, per_factor, mi)


# ------------------------------------------------------------------------------------ on a model
def _model_device(model: Any) -> Optional[torch.device]:
    for tensor in model.parameters() if hasattr(model, "parameters") else ():
        return tensor.device
    return None


def _as_generator(generator: Any) -> torch.Generator:
    if generator is None:
        return torch.Generator().manual_seed(0)
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator().manual_seed(generator)
    raise TypeError(f"generator: expected a torch.Generator, an int seed or None, got {type(generator).__name__}")


def _check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def mig_for_model(
    model: Any,
    dataset: Any,
    *,
    n: int = 10000,
    generator: torch.Generator | int | None = None,
    batch_size: int = 500,
    bins: int = 20,
) -> MIGResult:
    """The :func:`mig` of a model's posterior means on ``n`` samples of a dataset with ground-truth
    factors (e.g. :class:`fastvae.data.Shapes`).

    ``n`` flat indices are drawn uniformly with replacement (as disentanglement_lib samples factors)
    by ``torch.randint`` on ``generator``; the images are rendered by ``dataset.batch(indices)`` on
    the dataset's device (use ``dataset.to(device)`` to render elsewhere) and moved to the model's
    device, encoded there in batches of ``batch_size`` under ``torch.no_grad()`` with the model in
    eval mode (each module's training flag is restored afterwards), and the means ``mu`` of
    ``model.encode(x) -> (mu, logvar)`` are scored against the factor indices of the same samples
    (``dataset.index_to_factors(indices)``). The codes and factors are on the model's device, so the
    result is too.

    Args:
        model: a VAE (anything with ``encode(x) -> (mu, logvar)``, e.g. :class:`fastvae.models.ConvVAE`).
        dataset: a dataset with ground-truth factors: ``dataset.factors`` not None, ``len``,
            ``index_to_factors(indices)`` and ``batch(indices)``.
        n: samples to score.
        generator: a torch.Generator (any device), an int seed, or None for seed 0; the same
            generator state gives the same samples, hence the same result.
        batch_size: samples encoded at a time.
        bins: see :func:`mig`.

    Raises:
        ValueError: a dataset without ground-truth factors (``dataset.factors`` is None, e.g.
            ``digits`` or an array), or bad ``n``, ``batch_size`` or ``bins``.
        TypeError: a model without ``encode``, or a bad ``generator``.
    """
    if getattr(dataset, "factors", None) is None:
        name = getattr(dataset, "name", type(dataset).__name__)
        raise ValueError(
            f"dataset: {name!s} has no ground-truth factors (dataset.factors is None); MIG needs a dataset "
            "with factors, such as fastvae.data.Shapes ('shapes')"
        )
    for attribute in ("index_to_factors", "batch"):
        if not callable(getattr(dataset, attribute, None)):
            raise ValueError(f"dataset: a dataset with factors must have {attribute}(indices); "
                             f"{type(dataset).__name__} has none")
    if not callable(getattr(model, "encode", None)):
        raise TypeError(f"model: expected a VAE with encode(x) -> (mu, logvar), got {type(model).__name__}")
    n = _check_positive("n", n)
    batch_size = _check_positive("batch_size", batch_size)
    bins = _check_bins(bins)
    generator = _as_generator(generator)

    indices = torch.randint(len(dataset), (n,), generator=generator, device=generator.device)
    data_device = getattr(dataset, "device", None)
    if data_device is not None:
        indices = indices.to(data_device)
    device = _model_device(model)

    modules = list(model.modules()) if hasattr(model, "modules") else []
    modes = [module.training for module in modules]
    codes = []
    try:
        if hasattr(model, "eval"):
            model.eval()
        with torch.no_grad():
            for start in range(0, n, batch_size):
                x = dataset.batch(indices[start:start + batch_size])
                if device is not None:
                    x = x.to(device)
                out = model.encode(x)
                mu = out[0] if isinstance(out, (tuple, list)) else out
                if mu.dim() != 2:
                    raise ValueError(f"model.encode: expected means of shape (B, L), got {tuple(mu.shape)}")
                codes.append(mu)
    finally:
        for module, mode in zip(modules, modes):
            module.training = mode
    codes = torch.cat(codes)
    factors = dataset.index_to_factors(indices).to(codes.device)
    return mig(codes, factors, bins=bins)
