"""The pictures ``fastvae train`` leaves in its output folder (matplotlib, Agg backend).

* ``curves.png``: loss, distortion, rate and beta (on a log axis) against the training step, with
  the held-out numbers of each epoch as points;
* ``reconstructions.png``: inputs next to their reconstructions (from ``z = mu``);
* ``traversals.png``: for each latent dimension, sorted by its KL, the decoder output of ``mu + v e_d``
  for ``v`` in ``linspace(-2.5, 2.5)`` around one input's posterior mean ``mu``;
* ``samples.png``: decoded samples of the prior ``z ~ N(0, I)``.

Images are shown as the decoder's data mean (probabilities for a Bernoulli decoder).  matplotlib is
an optional dependency (``pip install fastvae[plots]``): without it :func:`write_report` prints a
note and writes nothing.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..schedules import KINDS, default_kind
from .metrics import ACTIVE_KL
from .metrics import kl_per_dim as latent_kl
from .seeding import eval_indices

__all__ = ["write_report", "plot_curves", "plot_reconstructions", "plot_traversals", "plot_samples",
           "TRAVERSAL_RANGE", "PNG_STEMS"]

TRAVERSAL_RANGE = 2.5
_TRAVERSAL_STEPS = 11
#: The PNGs of a run, ``<stem>.png`` in its folder.
PNG_STEMS = ("curves", "reconstructions", "traversals", "samples", "kl_per_dim")


class _Figures:
    """``figure``/``subplots`` made on :class:`matplotlib.figure.Figure` directly rather than through
    pyplot: no global backend switch and no figure manager, so a caller's interactive session or
    notebook backend is left alone; ``savefig`` renders the PNGs with Agg."""

    def __init__(self):
        from matplotlib.figure import Figure

        self._figure_class = Figure

    def figure(self, figsize):
        return self._figure_class(figsize=figsize)

    def subplots(self, nrows, ncols, figsize, **kwargs):
        fig = self._figure_class(figsize=figsize)
        return fig, fig.subplots(nrows, ncols, **kwargs)


def _figures() -> Optional[_Figures]:
    try:
        return _Figures()
    except ImportError:
        return None


def _is_image(sample_shape) -> bool:
    return len(sample_shape) == 3 and sample_shape[0] in (1, 3)


def _data_mean(model: nn.Module, output: Tensor) -> Tensor:
    """The decoder's data mean (the model's own rule when it has one: the continuous Bernoulli's mean
    is not its parameter)."""
    mean = getattr(model, "_data_mean", None)
    if callable(mean):
        return mean(output)
    return torch.sigmoid(output) if getattr(model, "likelihood", "bernoulli") == "bernoulli" else output


def _objective_text(c: dict) -> str:
    text = KINDS[default_kind(c.get("beta_schedule") or None, c.get("target_rate"))].title(c)
    if c.get("capacity") is not None:
        text += f", capacity {c['capacity']:g} nats"
    return text


def _title(metrics: dict) -> str:
    c = metrics.get("config", {})
    data = metrics.get("data", {}).get("name", c.get("data", "?"))
    if isinstance(data, str) and os.sep in data:
        data = os.path.basename(data)
    scale = metrics.get("learned_scale")
    sigma = f" (learned sigma {scale['sigma']:.3g})" if scale else ""
    return (f"{c.get('model', '?')} VAE on {data}: latent {c.get('latent_dim', '?')}, {c.get('likelihood', '?')}"
            f"{sigma}, {_objective_text(c)}; step {metrics.get('step', '?')}")


# ----------------------------------------------------------------------------- curves


def _overlay_rate_and_held_out(axes, metrics: dict, history: list, steps: list) -> None:
    """What :func:`plot_curves` draws over its panels: the held-out numbers per epoch, the beta-TCVAE terms,
    the target rate of a constrained run and the capacity of a capacity run."""
    # The held-out numbers of each epoch, as points over the training curves.
    epochs = [e for e in metrics.get("epochs") or [] if "val_loss" in e]
    for ax, key, label in ((axes[0, 0], "val_objective", "held-out loss"),
                           (axes[0, 1], "val_distortion", "held-out distortion"),
                           (axes[1, 0], "val_rate", "held-out rate")):
        if epochs:
            ax.plot([e["step"] for e in epochs], [e.get(key, math.nan) for e in epochs], linestyle="none",
                    marker="o", markersize=4, color="black", label=f"{label} (per epoch)")
            ax.legend(loc="best", fontsize=8)
    rate_ax = axes[1, 0]
    if any("tc" in h for h in history):  # beta-TCVAE: the rate's decomposition (MI + TC + dim-wise KL)
        for key, color in (("mi", "tab:olive"), ("tc", "tab:red"), ("dwkl", "tab:cyan")):
            rate_ax.plot(steps, [h.get(key, math.nan) for h in history], color=color, linewidth=1, label=key)
        rate_ax.legend(loc="best", fontsize=8)
    config = metrics.get("config", {})
    if config.get("target_rate") is not None:
        target = config["target_rate"]
        rate_ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target rate {target:g}")
        rate_ax.axhspan(0.9 * target, 1.1 * target, color="black", alpha=0.07, label="target +-10%")
        rate_ax.legend(loc="best", fontsize=8)
    if any("capacity" in h for h in history):
        rate_ax.plot(steps, [h.get("capacity", math.nan) for h in history], color="black", linestyle="--",
                     linewidth=1, label="capacity C")
        rate_ax.legend(loc="best", fontsize=8)


def plot_curves(metrics: dict, path: str, figures=None) -> Optional[str]:
    """Loss, distortion, rate and beta against the step (the ``history`` of ``metrics.json``)."""
    figures = figures or _figures()
    history = metrics.get("history") or []
    if figures is None or not history:
        return None
    steps = [h["step"] for h in history]
    fig, axes = figures.subplots(2, 2, figsize=(11, 7), sharex=True)
    style = dict(marker="o" if len(steps) < 3 else None, linewidth=1.5)
    objective = (metrics.get("config") or {}).get("objective", "beta-vae")
    loss_title = {"tcvae": "Loss = distortion + alpha MI + beta TC + gamma dim-wise KL",
                  "iwae": "Loss = -IWAE bound"}.get(objective, "Loss = distortion + beta x rate")
    panels = [
        (axes[0, 0], "loss", "loss (nats)", loss_title, "tab:blue"),
        (axes[0, 1], "distortion", "distortion (nats)", "Distortion: reconstruction NLL per sample", "tab:orange"),
        (axes[1, 0], "rate", "rate (nats)", "Rate: KL(q(z|x) || N(0, I)) per sample", "tab:green"),
        (axes[1, 1], "beta", "beta", "beta (weight of the rate)", "tab:purple"),
    ]
    for ax, key, ylabel, title, color in panels:
        values = [h.get(key, math.nan) for h in history]
        ax.plot(steps, values, color=color, **style)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    _overlay_rate_and_held_out(axes, metrics, history, steps)
    # beta on a log axis: a constrained beta moves by factors, and a fall to 1e-4 must show.
    betas = [h["beta"] for h in history if math.isfinite(h.get("beta", math.nan)) and h["beta"] > 0]
    if betas:
        axes[1, 1].set_yscale("log")
        axes[1, 1].set_title("beta (weight of the rate), log scale", fontsize=10)
    sigmas = [h.get("sigma", math.nan) for h in history]
    if any(math.isfinite(v) for v in sigmas):
        twin = axes[1, 1].twinx()
        twin.plot(steps, sigmas, color="tab:brown", linewidth=1, linestyle=":", label="learned sigma")
        twin.set_ylabel("decoder sigma")
        twin.legend(loc="lower right", fontsize=8)
    # The first steps of a VAE have a distortion orders of magnitude above the rest; a log scale keeps
    # the later, informative part of the curve readable.
    for ax, key in ((axes[0, 0], "loss"), (axes[0, 1], "distortion")):
        values = [h[key] for h in history if math.isfinite(h.get(key, math.nan))]
        if values and min(values) > 0 and max(values) / min(values) > 10:
            from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
    for ax in axes[1]:
        ax.set_xlabel("training step")
    speed = [h["samples_per_s"] for h in history if h.get("samples_per_s")]
    speed_text = f", {sorted(speed)[len(speed) // 2]:,.0f} samples/s (median)" if speed else ""
    fig.suptitle(_title(metrics) + speed_text, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------- images
# Each picture is one montage shown by one imshow: a grid of many small axes costs seconds per figure
# in matplotlib, which would be a noticeable part of a two-minute run.

_PAD = 2  # pixels of white between tiles


def _display(images: Tensor, value_range) -> Tensor:
    """(N, C, H, W) -> (N, H, W, 3) floats in [0, 1] (grey images repeated over 3 channels)."""
    lo, hi = value_range
    scale = (hi - lo) if hi > lo else 1.0
    images = ((images.detach().float().cpu() - lo) / scale).clamp_(0.0, 1.0)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images[:, :3].permute(0, 2, 3, 1)


def _montage(tiles: Tensor, rows: int, cols: int, pad: int = _PAD) -> "object":
    """(rows*cols, H, W, 3) tiles in row-major order -> one (rows*(H+pad)-pad, cols*(W+pad)-pad, 3) array."""
    n, h, w, _ = tiles.shape
    grid = torch.ones(rows * (h + pad) - pad, cols * (w + pad) - pad, 3)
    for i in range(min(n, rows * cols)):
        r, c = divmod(i, cols)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = tiles[i]
    return grid.numpy()


def _figure(figures, grid, *, scale: float, extra_w: float = 0.0, extra_h: float = 0.0):
    """A figure sized so one image pixel is ``scale`` points wide, with room around the montage."""
    h, w = grid.shape[:2]
    width, height = w * scale / 72 + extra_w, h * scale / 72 + extra_h
    fig = figures.figure(figsize=(width, height))
    return fig, width, height


def _hide_frame(ax) -> None:
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)


@torch.no_grad()
def plot_reconstructions(model: nn.Module, x: Tensor, path: str, value_range=(0.0, 1.0), title: str = "",
                         figures=None, columns: int = 8) -> Optional[str]:
    """Rows of inputs, each followed by a row of their reconstructions (``z = mu``)."""
    figures = figures or _figures()
    if figures is None:
        return None
    recon = model.reconstruct(x)
    n = x.shape[0]
    blocks = math.ceil(n / columns)
    if _is_image(tuple(x.shape[1:])):
        inputs, outputs = _display(x, value_range), _display(recon, value_range)
        blank = torch.ones_like(inputs[:1])
        tiles = []
        for block in range(blocks):
            for source in (inputs, outputs):
                row = list(source[block * columns:(block + 1) * columns])
                tiles += row + [blank[0]] * (columns - len(row))
        rows = 2 * blocks
        grid = _montage(torch.stack(tiles), rows, columns, pad=_PAD)
        tile_h = x.shape[-2] + _PAD
        fig, width, height = _figure(figures, grid, scale=1.5 if x.shape[-1] >= 32 else 6.0, extra_w=1.4, extra_h=0.9)
        ax = fig.add_axes([1.3 / width, 0.1 / height, 1 - 1.4 / width, 1 - 1.0 / height])
        ax.imshow(grid, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([tile_h * (r + 0.5) for r in range(rows)])
        ax.set_yticklabels(["input", "reconstruction"] * blocks, fontsize=10)
        _hide_frame(ax)
        fig.text(0.5, 1 - 0.1 / height, title or "Inputs and their reconstructions", ha="center", va="top",
                 fontsize=11)
    else:  # vectors: input and reconstruction as curves over the feature index
        fig, axes = figures.subplots(blocks, columns, figsize=(2.2 * columns, 1.9 * blocks + 0.6), squeeze=False)
        for i in range(blocks * columns):
            ax = axes[i // columns, i % columns]
            if i >= n:
                ax.axis("off")
                continue
            ax.plot(x[i].flatten().float().cpu().numpy(), color="0.5", linewidth=1, label="input")
            ax.plot(recon[i].flatten().float().cpu().numpy(), color="tab:red", linewidth=1, label="reconstruction")
            ax.set_xticks([])
            ax.tick_params(labelsize=7)
        axes[0, 0].legend(fontsize=7, loc="best")
        fig.suptitle(title or "Inputs and their reconstructions", fontsize=11)
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


@torch.no_grad()
def plot_traversals(model: nn.Module, x: Tensor, kl_per_dim, path: str, value_range=(0.0, 1.0), title: str = "",
                    figures=None, steps: int = _TRAVERSAL_STEPS, span: float = TRAVERSAL_RANGE) -> Optional[str]:
    """One row per latent dimension ``d`` (largest KL first): ``decode(mu + v e_d)`` for ``v`` in
    ``linspace(-span, span, steps)``, ``mu`` the posterior mean of the single input ``x`` ``(1, ...)``."""
    figures = figures or _figures()
    if figures is None or not _is_image(tuple(x.shape[1:])):
        return None
    mu, _ = model.encode(x[:1])
    latent = mu.shape[1]
    offsets = torch.linspace(-span, span, steps, device=mu.device, dtype=mu.dtype)
    order = sorted(range(latent), key=lambda j: -kl_per_dim[j])
    z = mu.repeat(latent * steps, 1).view(latent, steps, latent)
    for row, dim in enumerate(order):
        z[row, :, dim] += offsets
    images = _data_mean(model, model.decode(z.view(-1, latent))).reshape(latent * steps, *x.shape[1:])
    grid = _montage(_display(images, value_range), latent, steps)
    tile_h, tile_w = x.shape[-2] + _PAD, x.shape[-1] + _PAD
    scale = 1.25 if x.shape[-1] >= 32 else 5.0
    label_w, head_h = 1.6, 1.1
    fig, width, height = _figure(figures, grid, scale=scale, extra_w=label_w + 0.2, extra_h=head_h + 0.15)
    ax = fig.add_axes([label_w / width, 0.15 / height, 1 - (label_w + 0.2) / width, 1 - (head_h + 0.15) / height])
    ax.imshow(grid, interpolation="nearest")
    ax.xaxis.tick_top()
    ax.set_xticks([tile_w * (c + 0.5) for c in range(steps)])
    ax.set_xticklabels([f"{v:+.1f}" if abs(v) > 1e-6 else "0 (mu)" for v in offsets.tolist()], fontsize=9)
    ax.set_yticks([tile_h * (r + 0.5) for r in range(latent)])
    labels = []
    for dim in order:
        kl = kl_per_dim[dim]
        labels.append(f"z{dim}  KL {kl:.2f}" + (" (inactive)" if kl < ACTIVE_KL else ""))
    ax.set_yticklabels(labels, fontsize=9)
    for tick, dim in zip(ax.get_yticklabels(), order):
        if kl_per_dim[dim] < ACTIVE_KL:
            tick.set_color("0.55")
    _hide_frame(ax)
    thumb = 0.8
    inset = fig.add_axes([0.25 / width, (height - 0.3 - thumb) / height, thumb / width, thumb / height])
    inset.imshow(_montage(_display(x[:1], value_range), 1, 1), interpolation="nearest")
    inset.set_xticks([])
    inset.set_yticks([])
    inset.set_title("input", fontsize=9)
    fig.text((label_w + (width - label_w - 0.2) / 2) / width, 1 - 0.12 / height, title or "Latent traversals",
             ha="center", va="top", fontsize=11)
    fig.savefig(path, dpi=100)
    return path


@torch.no_grad()
def plot_samples(model: nn.Module, sample_shape, path: str, value_range=(0.0, 1.0), title: str = "",
                 figures=None, n: int = 64, seed: int = 0, images: Optional[Tensor] = None) -> Optional[str]:
    """A grid of decoder outputs for ``z ~ N(0, I)`` (or of ``images``, samples drawn already)."""
    figures = figures or _figures()
    if figures is None or not _is_image(tuple(sample_shape)):
        return None
    if images is None:
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        images = model.sample(n, generator=generator)
    n = images.shape[0]
    images = images.reshape(n, *sample_shape)
    side = math.ceil(math.sqrt(n))
    grid = _montage(_display(images, value_range), math.ceil(n / side), side)
    fig, width, height = _figure(figures, grid, scale=1.25 if sample_shape[-1] >= 32 else 5.0, extra_w=0.4,
                                 extra_h=0.8)
    ax = fig.add_axes([0.2 / width, 0.1 / height, 1 - 0.4 / width, 1 - 0.9 / height])
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    fig.text(0.5, 1 - 0.1 / height, title or "Samples from the prior z ~ N(0, I)", ha="center", va="top",
             fontsize=11)
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------- all of them


def write_report(out: str, model: nn.Module, dataset, metrics: dict, *, seed: int = 0,
                 log: Callable[[str], None] = print, indices: Optional[Tensor] = None) -> list:
    """Write the PNGs of a run into ``out``; returns their paths (none without matplotlib).  The
    reconstructions and the traversal are of held-out samples (the first of ``indices``) when there
    are any, else of a fixed draw of the data."""
    figures = _figures()
    if figures is None:
        log("note: matplotlib is not installed, so no plots were written (pip install fastvae[plots])")
        return []
    was_training = model.training
    model.eval()
    paths = []
    try:
        value_range = tuple(metrics.get("data", {}).get("value_range", (0.0, 1.0)))
        if getattr(model, "likelihood", None) in ("bernoulli", "continuous_bernoulli"):
            value_range = (0.0, 1.0)
        device = next(model.parameters()).device
        if indices is None or len(indices) == 0:
            indices = eval_indices(len(dataset), 16, seed, device)
        x = dataset.batch(indices[:16])
        head = _title(metrics)
        png = {stem: os.path.join(out, f"{stem}.png") for stem in PNG_STEMS}
        paths.append(plot_curves(metrics, png["curves"], figures=figures))
        inputs = "Held-out inputs" if (metrics.get("data") or {}).get("val") else "Inputs"
        paths.append(plot_reconstructions(model, x, png["reconstructions"], value_range,
                                          title=f"{inputs} and their reconstructions (decoded from z = mu)\n{head}",
                                          figures=figures))
        kl = (metrics.get("evaluation") or {}).get("kl_per_dim")
        if kl is None:
            kl = latent_kl(*model.encode(x))
        paths.append(plot_traversals(
            model, x[:1], kl, png["traversals"], value_range, figures=figures,
            title=f"Latent traversals: decode(mu + v e_d), v in [-{TRAVERSAL_RANGE}, {TRAVERSAL_RANGE}]; "
                  f"rows sorted by KL (nats)\n{head}"))
        paths.append(plot_samples(model, tuple(x.shape[1:]), png["samples"], value_range, figures=figures,
                                  seed=seed, title=f"Samples from the prior z ~ N(0, I)\n{head}"))
        from .evaluate import plot_kl_per_dim

        paths.append(plot_kl_per_dim(kl, png["kl_per_dim"], title=f"KL of each latent dimension\n{head}"))
        if not _is_image(tuple(x.shape[1:])):
            log(f"note: samples of shape {tuple(x.shape[1:])} are not images; traversals and prior samples "
                "are drawn for (C, H, W) data only")
    finally:
        model.train(was_training)
    return [p for p in paths if p]
