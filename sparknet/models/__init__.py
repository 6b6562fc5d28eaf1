"""The nets sparknet ships, as DSL modules.

Each module has ``net(batch_size=..., ...)`` returning a
:class:`~sparknet.dsl.NetParam` and ``solver(batch_size=..., ...)`` returning a
:class:`~sparknet.dsl.SolverParam` for it, and is mirrored by prototxt files
under ``caffe/models/<name>/`` (the module's ``PROTOTXT`` and
``SOLVER_PROTOTXT``); with their default arguments the two compile to the same
``caffe_pb2`` messages. Every net is fed through Input layers named ``data``
and ``label`` and scores an Accuracy layer with top ``accuracy`` in TEST::

    from sparknet.models import lenet
    net = CaffeNet(lenet.solver(batch_size=64))
"""
from __future__ import annotations

from types import ModuleType

from sparknet.models import caffenet, cifar10_quick, googlenet, lenet

__all__ = ["MODELS", "caffenet", "cifar10_quick", "get", "googlenet", "lenet"]

#: The shipped models by name.
MODELS: dict[str, ModuleType] = {
    "lenet": lenet, "cifar10_quick": cifar10_quick, "caffenet": caffenet,
    "googlenet": googlenet,
}


def get(name: str) -> ModuleType:
    """The model module called ``name`` (``"lenet"``, ``"caffenet"`` ...)."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"no shipped model '{name}'; there are "
                         f"{', '.join(MODELS)}") from None
