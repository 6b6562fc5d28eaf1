"""The Caffe engine: a Cython binding over the ``ccaffe`` facade.

``CaffeNet`` runs a real Caffe solver from Python; ``WeightCollection`` holds
a net's parameters in one flat buffer for cheap averaging and pickling. A Caffe
CHECK failure surfaces as :class:`CaffeError` and never aborts the process.
"""
from sparknet.engine._caffe import CaffeError
from sparknet.engine.net import (
    CaffeNet,
    blas_threads,
    cuda_build,
    set_blas_threads,
    set_log_level,
    solver_proto,
)
from sparknet.engine.weights import WeightCollection

__all__ = [
    "CaffeError",
    "CaffeNet",
    "WeightCollection",
    "blas_threads",
    "cuda_build",
    "set_blas_threads",
    "set_log_level",
    "solver_proto",
]
