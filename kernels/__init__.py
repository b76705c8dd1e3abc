"""Triton kernels of fastvae (installed as ``fastvae._kernels``).

Only ``@triton.jit`` code lives here, one file per op family:

* ``random``      -- counter-based Philox normals shared by the latent kernels.
* ``polynomials`` -- Horner evaluation for the hand-written transcendentals.
* ``latent``      -- reparameterization sampling fused with the closed-form KL to N(0, I).
* ``likelihoods`` -- reconstruction negative log-likelihoods fused with their gradient,
  and the in-place per-sample gradient scaling used in backward.

Every kernel works on a 2-D view ``(B, D)`` of its inputs: dim 0 is the batch, D is the
product of the other dims.  Rows may be strided (``row_stride`` elements apart) but the
elements of a row are contiguous, so ``h.chunk(2, dim=1)`` views need no copy.  Launchers
live in ``fastvae/ops``; nothing here knows about modules or autograd.
"""
