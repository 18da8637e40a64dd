"""``python -m cnnmm``: see :mod:`cnnmm.cli`."""
import sys

from .cli import main

sys.exit(main())
