"""Op registration: launchers, torch.library custom ops with their autograd, and the torch path.

Data flows one way: ``fastvae.functional`` -> these custom ops -> the launchers here -> the
Triton kernels in ``kernels/`` (or the PyTorch implementation of the same math).
"""
from ._backend import backend_setting, use_triton
from .latent import draw_seed, latent_backward, latent_forward
from .likelihoods import KINDS, REDUCTIONS, nll_forward, nll_rescale_, scale_rows_

#: Every custom op fastvae registers, for ``torch.library.opcheck`` and the docs.
CUSTOM_OPS = (
    latent_forward,
    latent_backward,
    nll_forward,
    scale_rows_,
    nll_rescale_,
)

__all__ = [
    "CUSTOM_OPS", "KINDS", "REDUCTIONS", "backend_setting", "draw_seed", "latent_backward",
    "latent_forward", "nll_forward", "nll_rescale_", "scale_rows_", "use_triton",
]
