"""Cache-line aligned work buffers.

numpy aligns large arrays to 16 bytes only (measured: 16 or 48 modulo 64), so a 64-byte vector
load from a row that starts at a whole number of cache lines into such a buffer still splits two
lines. Backward-weight's slab, transposed ``dy`` and accumulators (:mod:`.direct`) come from here.
"""

import numpy as np

#: Bytes of a cache line: the alignment of every buffer.
LINE = 64


def empty(n, dtype):
    """An uninitialised 1-D array of ``n`` elements of ``dtype`` whose data starts on a cache line."""
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + LINE, np.uint8)
    skip = -raw.ctypes.data % LINE
    return raw[skip:skip + n * dtype.itemsize].view(dtype)


def zeros(n, dtype):
    """:func:`empty`, filled with zeros."""
    a = empty(n, dtype)
    a.fill(0)
    return a
