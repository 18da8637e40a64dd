"""The sub-commands of ``python -m cnnmm``, one module each (see :mod:`cnnmm.cli`)."""
