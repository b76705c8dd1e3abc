"""The ops: launchers, autograd nodes, torch.library custom ops and the PyTorch path.

Data flows one way: ``fastvae.functional`` -> ``latent.latent`` / ``objective.loss`` ->
the launchers here -> the Triton kernels in ``kernels/`` (or the PyTorch implementation of the
same math).  In eager mode the ops are plain autograd Functions; the custom ops below are what
``torch.compile`` and ``torch.library.opcheck`` see.
"""
from ._backend import BACKENDS, get_backend, set_backend, use_triton
from .iwae import log_weights_backward, log_weights_forward
from .latent import draw_seed, latent_backward, latent_forward, standard_normal
from .likelihoods import KINDS
from .objective import objective_forward
from .reduction import REDUCTIONS

#: Every custom op fastvae registers, for ``torch.library.opcheck`` and the docs.
CUSTOM_OPS = (latent_forward, latent_backward, objective_forward, log_weights_forward, log_weights_backward)

__all__ = [
    "BACKENDS", "CUSTOM_OPS", "KINDS", "REDUCTIONS", "draw_seed", "get_backend", "latent_backward",
    "latent_forward", "log_weights_backward", "log_weights_forward", "objective_forward", "set_backend",
    "standard_normal", "use_triton",
]
