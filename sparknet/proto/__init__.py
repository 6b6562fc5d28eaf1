"""Caffe's protobuf schema as Python, and prototxt loading.

``caffe_pb2`` is generated at build time (``setup.py``) from the very
``caffe.proto`` that Caffe itself is compiled from, so the Python and C++ sides
never disagree about a field; the protoc that writes it (``grpcio-tools``'
for protobuf >= 5, else the system one) is chosen for the installed protobuf
runtime. :class:`ProtoLoader` reads and
writes prototxt and prepares nets for sparknet's feeding (see
:mod:`sparknet.proto.loader`). :mod:`sparknet.proto.rules` is Caffe's
include/exclude phase rules (which layers a net of a phase keeps), and
:func:`as_message` turns anything with ``to_proto()`` into a message.
"""
import importlib.util as _importlib_util

if _importlib_util.find_spec("sparknet.proto.caffe_pb2") is None:  # pragma: no cover
    raise ImportError("sparknet.proto.caffe_pb2 is generated when sparknet is built; "
                      "run `make build` (or `pip install .`) first")
try:
    from sparknet.proto import caffe_pb2
except Exception as e:  # protobuf's VersionError, or an ImportError of its own
    import google.protobuf

    raise ImportError(
        f"sparknet.proto.caffe_pb2 was generated for another protobuf than the installed "
        f"{google.protobuf.__version__} ({type(e).__name__}: {e}); rebuild sparknet with "
        "this protobuf installed (`make build`, or `pip install .`) to generate it anew"
    ) from e

from sparknet.proto.loader import DataLayerInfo, ProtoLoader, PrototxtError, as_message
from sparknet.proto.rules import layer_active, rule_met

__all__ = ["DataLayerInfo", "ProtoLoader", "PrototxtError", "as_message", "caffe_pb2",
           "layer_active", "rule_met"]
