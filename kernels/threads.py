"""This rank's kernel threads: independent work items split over a small thread pool.

The jitted kernels release the GIL (``nogil=True``), so plain Python threads run them in
parallel; the pool's size is Numba's thread count, which :func:`cnnmm.runtime.set_threads`
sets together with the BLAS pool. One thread (the default under MPI with one rank per core)
runs the work inline.
"""

from concurrent.futures import ThreadPoolExecutor

import numba

__all__ = ["count", "run_range"]

_pool, _pool_workers = None, 0


def count():
    """Threads the kernels use: Numba's current thread count."""
    return numba.get_num_threads()


def run_range(fn, n, *args):
    """Call ``fn(i0, i1, *args)`` on contiguous parts of ``range(n)``, one part per thread;
    re-raises the first exception."""
    global _pool, _pool_workers
    parts = min(count(), n)
    if parts <= 1:
        if n > 0:
            fn(0, n, *args)
        return
    if _pool_workers < parts - 1:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=parts - 1, thread_name_prefix="cnnmm-kernel")
        _pool_workers = parts - 1
    bounds = [n * i // parts for i in range(parts + 1)]
    futures = [_pool.submit(fn, bounds[i], bounds[i + 1], *args) for i in range(1, parts)]
    fn(bounds[0], bounds[1], *args)
    for f in futures:
        f.result()
