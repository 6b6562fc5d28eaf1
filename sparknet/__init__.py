"""sparknet: distributed deep learning on Apache Spark with real Caffe.

Subpackages (dependencies point down this list, never up):

- :mod:`sparknet.spark`  -- parameter-averaging training and inference on Spark
- :mod:`sparknet.data`   -- data sets into RDDs/DataFrames, preprocessing
- :mod:`sparknet.engine` -- the Cython binding over Caffe: ``CaffeNet``, ``WeightCollection``
- :mod:`sparknet.models` -- the nets this project ships, as DSL modules
- :mod:`sparknet.dsl`    -- the typed net and solver DSL
- :mod:`sparknet.proto`  -- Caffe's schema (``caffe_pb2``) and ``ProtoLoader``
"""
__version__ = "0.1.0"
