"""Typed exceptions. Every message says which value is wrong and what to do about it.

All are raised collectively: the checks run on metadata every rank holds, before any
communication, so every rank raises the same error and no rank waits on another.
"""

__all__ = ["CnnmmError", "LayerError", "GridError", "ShapeError", "AlgorithmError"]


class CnnmmError(ValueError):
    """Base class of cnnmm's input errors (a ``ValueError``)."""


class LayerError(CnnmmError):
    """An impossible or malformed convolution layer."""


class GridError(CnnmmError):
    """A process grid that does not fit the rank count, the layer or the algorithm."""


class ShapeError(CnnmmError):
    """Arrays whose shapes or dtypes do not match the layer."""


class AlgorithmError(CnnmmError):
    """An unknown algorithm, pass or option."""
