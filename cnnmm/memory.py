"""Accounting of the buffers an algorithm allocates (what ``peak_bytes`` reports).

Algorithms allocate every work buffer (extended input tiles, panels, partial outputs, packed
send buffers, results) through a :class:`MemoryMeter` and release it when done, so the peak
is a property of the algorithm and the grid, not of the Python allocator. The caller's own
input and weight shards are not counted: they exist whatever the algorithm does.
"""

import numpy as np

__all__ = ["MemoryMeter"]


class MemoryMeter:
    """Counts live and peak bytes of the buffers allocated through it."""

    def __init__(self):
        self.live = 0
        self.peak = 0
        self._sizes = {}

    def empty(self, shape, dtype):
        return self._track(np.empty(shape, dtype=dtype))

    def zeros(self, shape, dtype):
        return self._track(np.zeros(shape, dtype=dtype))

    def copy(self, array):
        """A C-contiguous counted copy of ``array``."""
        return self._track(np.array(array, order="C", copy=True))

    def _track(self, array):
        self._sizes[id(array)] = array.nbytes
        self.live += array.nbytes
        self.peak = max(self.peak, self.live)
        return array

    def free(self, *arrays):
        """Stop counting ``arrays`` (the caller drops its references)."""
        for array in arrays:
            if array is not None:
                self.live -= self._sizes.pop(id(array), 0)

    def reset_peak(self):
        """Start a new peak from what is live now (e.g. tiles retained from an earlier pass)."""
        self.peak = self.live

    def reset(self):
        self.live = self.peak = 0
        self._sizes.clear()
