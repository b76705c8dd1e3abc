"""fastvae's Triton kernels live in the repository's top-level ``kernels/`` folder.

Installed, that folder *is* this package: pyproject.toml maps ``fastvae._kernels`` to ``kernels/``
(``[tool.setuptools.package-dir]``), so this file is not part of a wheel.  In a source tree (an
editable install, or ``PYTHONPATH`` pointing at a checkout) this file stands in for it and points
the package's search path at ``kernels/``, so ``import fastvae._kernels.latent`` loads
``kernels/latent.py``.
"""
from pathlib import Path

__path__ = [str(Path(__file__).resolve().parents[2] / "kernels")]
