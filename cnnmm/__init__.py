"""cnnmm: distributed-memory conv2d as a generalized matrix multiplication over MPI.

Convolution is a matmul whose rows are output pixels (n, h, w), whose columns are output
channels k and whose reduction runs over (c, r, s); cnnmm distributes it over a process grid
``(pN, pH, pW, pK, pC)`` the way the 2D (SUMMA), 2.5D and 3D matmul algorithms do, with halo
exchange where the image is split.

>>> import cnnmm
>>> y = cnnmm.conv2d(x, w, stride=1, padding=1)      # global arrays on rank 0, under mpiexec
"""

__version__ = "0.1.0"

# Size the BLAS and Numba thread pools before numpy or numba load (they read it once), and
# make an exception on any rank of a multi-rank job abort the job instead of hanging it.
from .runtime import default_thread_env as _default_thread_env, install_abort_hook as _install_abort_hook  # noqa

_install_abort_hook()
_default_thread_env()

from .errors import AlgorithmError, CnnmmError, GridError, LayerError, ShapeError  # noqa: E402
from .spec import ConvSpec  # noqa: E402
from .grid import GridDims, ProcessGrid  # noqa: E402
from .api import Conv2d, conv2d, conv2d_backward_data, conv2d_backward_weight  # noqa: E402

__all__ = ["ConvSpec", "GridDims", "ProcessGrid", "Conv2d", "conv2d", "conv2d_backward_data",
           "conv2d_backward_weight", "CnnmmError", "LayerError", "GridError", "ShapeError", "AlgorithmError",
           "__version__"]
