"""Caffe's protobuf schema as Python, and prototxt loading.

``caffe_pb2`` is generated at build time (``setup.py``) by the system ``protoc``
from the very ``caffe.proto`` that Caffe itself is compiled from, so the Python
and C++ sides never disagree about a field. :class:`ProtoLoader` reads and
writes prototxt and prepares nets for sparknet's feeding (see
:mod:`sparknet.proto.loader`). :mod:`sparknet.proto.rules` is Caffe's
include/exclude phase rules (which layers a net of a phase keeps), and
:func:`as_message` turns anything with ``to_proto()`` into a message.
"""
try:
    from sparknet.proto import caffe_pb2
except ImportError as e:  # pragma: no cover - only before the first build
    raise ImportError(
        "sparknet.proto.caffe_pb2 is generated when sparknet is built; "
        "run `make build` (or `pip install .`) first"
    ) from e

from sparknet.proto.loader import DataLayerInfo, ProtoLoader, PrototxtError, as_message
from sparknet.proto.rules import layer_active, rule_met

__all__ = ["DataLayerInfo", "ProtoLoader", "PrototxtError", "as_message", "caffe_pb2",
           "layer_active", "rule_met"]
