"""The Caffe engine: a Cython binding over the ``ccaffe`` facade.

``CaffeNet`` runs a real Caffe solver from Python; ``WeightCollection`` holds
a net's parameters in one flat buffer for cheap averaging and pickling. A Caffe
CHECK failure surfaces as :class:`CaffeError` and never aborts the process.
"""
from sparknet.engine import _blas

_blas.prepare()  # before libcaffe.so, and so its BLAS, is loaded

from sparknet.engine._blas import BlasWarning, build_info, describe_build  # noqa: E402
from sparknet.engine._caffe import CaffeError  # noqa: E402
from sparknet.engine.net import (  # noqa: E402
    CaffeNet,
    blas_threads,
    cuda_build,
    set_blas_threads,
    set_log_level,
    solver_proto,
)
from sparknet.engine.signature import IndexRule, NetSignature  # noqa: E402
from sparknet.engine.weights import WeightCollection  # noqa: E402

_blas.check_kernels()

__all__ = [
    "BlasWarning",
    "CaffeError",
    "CaffeNet",
    "IndexRule",
    "NetSignature",
    "WeightCollection",
    "blas_threads",
    "build_info",
    "cuda_build",
    "describe_build",
    "set_blas_threads",
    "set_log_level",
    "solver_proto",
]
