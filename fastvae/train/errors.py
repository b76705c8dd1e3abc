"""The one error of ``fastvae train``."""

__all__ = ["TrainError"]


class TrainError(ValueError):
    """A run cannot start or continue: bad option, data, checkpoint or output folder.  The message
    says what was expected and what was found; ``fastvae train`` prints it and exits with status 2."""
