"""Saving and loading :class:`~sparknet.ml.CaffeModel` to any Hadoop path Spark can write.

A saved model is a directory:

* ``metadata/``: Spark's own ML metadata (class, uid, Params as JSON, written
  by ``DefaultParamsWriter``), with a ``sparknet`` entry: the format version,
  the SHA-1 of the net and of the weights file, and the weight layout;
* ``net.prototxt`` and ``solver.prototxt``: the net (both phases) and its
  solver, in Caffe's text format (``net: "net.prototxt"``);
* ``weights.caffemodel``: the weights in Caffe's binary format.

Files go through Hadoop's ``FileSystem`` (local, ``file://``, ``hdfs://``, and
``s3a://`` where Spark has the S3A connector), each written under a temporary
name and renamed; the metadata is written last, so a directory without it was
never completely saved. Loading checks the class, both digests and the layout,
and refuses anything else with an error naming the path.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from sparknet._util import UserError
from sparknet.ml.scoring import digest

log = logging.getLogger("sparknet.ml")

FORMAT = 1
NET, SOLVER, WEIGHTS = "net.prototxt", "solver.prototxt", "weights.caffemodel"


class ModelDirectoryError(UserError, ValueError):
    """A directory that is not a saved sparknet model (or not of this net), or a path Spark
    cannot write one to; names the path."""


def filesystem(spark: Any, path: str) -> tuple[Any, Any]:
    """Hadoop's (FileSystem, Path) for ``path``; ``ValueError`` naming it when Spark has none.

    Call it to check an output path before a long fit: ``s3a://`` without Spark's
    S3A connector, or an unknown scheme, is refused here with the reason.
    """
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    try:
        return hpath.getFileSystem(conf), hpath
    except Exception as e:  # noqa: BLE001 - py4j's Py4JJavaError: UnsupportedFileSystemException, ...
        scheme = path.split("://", 1)[0] if "://" in path else "file"
        java = getattr(e, "java_exception", None)
        text = str(java.toString()) if java is not None else (str(e) or type(e).__name__)
        text = text.splitlines()[0]
        if scheme == "s3a":
            raise ModelDirectoryError(
                f"{path}: Spark has no S3A filesystem here (the hadoop-aws and AWS SDK jars "
                f"matching Spark's Hadoop are not on its classpath; add them with "
                f"spark.jars.packages or spark.jars), or save to a local or HDFS path "
                f"({text})") from None
        raise ModelDirectoryError(f"{path}: Spark cannot open a filesystem for '{scheme}://' ({text})"
                         ) from None


def _child(jvm: Any, parent: Any, name: str) -> Any:
    return jvm.org.apache.hadoop.fs.Path(parent, name)


def _sha1(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


class CaffeModelWriter(MLWriter):
    """Writes a :class:`~sparknet.ml.CaffeModel` (see the module docstring for the layout)."""

    def __init__(self, instance: Any):
        super().__init__()
        self.instance = instance

    def save(self, path: str) -> None:
        """Save to ``path``; refuses a filesystem Spark cannot write before touching anything."""
        filesystem(self.sparkSession, str(path))
        super().save(str(path))

    def saveImpl(self, path: str) -> None:
        model = self.instance
        spark = self.sparkSession
        fs, root = filesystem(spark, path)
        jvm = spark.sparkContext._jvm
        param = model._effective_solver()
        info = model._info()
        solver = type(param)()
        solver.CopyFrom(param)
        solver.ClearField("net_param")
        solver.net = NET
        with tempfile.TemporaryDirectory(prefix="sparknet-save-") as d:
            local = Path(d)
            (local / NET).write_text(text_format.MessageToString(param.net_param))
            (local / SOLVER).write_text(text_format.MessageToString(solver))
            model.save_caffemodel(str(local / WEIGHTS))
            extra = {"sparknet": {
                "format": FORMAT,
                "net_sha1": digest(param),
                "weights_sha1": _sha1(local / WEIGHTS),
                "num_params": info.num_params,
                "layout": [[name, [list(s) for s in shapes]] for name, shapes in info.layout],
            }}
            fs.mkdirs(root)
            for name in (NET, SOLVER, WEIGHTS):
                dst = _child(jvm, root, name)
                tmp = _child(jvm, root, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
                fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(
                    (local / name).resolve().as_uri()), tmp)
                if fs.exists(dst):
                    fs.delete(dst, False)
                if not fs.rename(tmp, dst):
                    fs.delete(tmp, False)
                    raise OSError(f"{path}: could not rename {tmp.getName()} to {name}")
        DefaultParamsWriter.saveMetadata(model, path, spark, extraMetadata=extra)
        log.info("saved %s (%d parameters) to %s", type(model).__name__, info.num_params, path)


class CaffeModelReader(MLReader):
    """Reads what :class:`CaffeModelWriter` wrote; refuses anything else, naming the path."""

    def __init__(self, cls: type):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        from sparknet.engine import CaffeNet

        path = str(path)
        spark = self.sparkSession
        fs, root = filesystem(spark, path)
        jvm = spark.sparkContext._jvm
        if not fs.exists(root):
            raise ModelDirectoryError(f"{path}: no such directory")
        if not fs.exists(_child(jvm, root, "metadata")):
            raise ModelDirectoryError(f"{path}: not a saved Spark ML model (no metadata/; an "
                                      "interrupted save leaves none)")
        try:
            metadata = DefaultParamsReader.loadMetadata(path, spark)
        except Exception as e:  # noqa: BLE001  # Spark's reader: name the path instead
            raise ModelDirectoryError(f"{path}: unreadable Spark ML metadata ({e})") from None
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata.get("class") != expected:
            raise ModelDirectoryError(f"{path}: holds a {metadata.get('class')}, not a "
                                      f"{expected}")
        ours = metadata.get("sparknet")
        if not isinstance(ours, dict) or ours.get("format") != FORMAT:
            raise ModelDirectoryError(f"{path}: no sparknet format {FORMAT} entry in its "
                                      "metadata")
        model = self.cls()
        model._resetUid(metadata["uid"])
        try:
            DefaultParamsReader.getAndSetParams(model, metadata)
        except Exception as e:  # noqa: BLE001
            raise ModelDirectoryError(f"{path}: its Params do not load ({e})") from None
        param = model._effective_solver()
        if digest(param) != ours.get("net_sha1"):
            raise ModelDirectoryError(f"{path}: the solver in its metadata is not the net it "
                                      "was saved with (net_sha1 differs)")
        with tempfile.TemporaryDirectory(prefix="sparknet-load-") as d:
            local = Path(d)
            for name in (NET, WEIGHTS):
                src = _child(jvm, root, name)
                if not fs.exists(src):
                    raise ModelDirectoryError(f"{path}: {name} is missing")
                try:
                    fs.copyToLocalFile(False, src, jvm.org.apache.hadoop.fs.Path(
                        (local / name).resolve().as_uri()), True)
                except Exception as e:  # noqa: BLE001  # py4j: a checksum or I/O error
                    java = getattr(e, "java_exception", None)
                    why = str(java.toString()) if java is not None else str(e)
                    raise ModelDirectoryError(f"{path}/{name}: cannot be read ({why})"
                                              ) from None
            from sparknet.proto import PrototxtError, loader

            try:
                net = loader.parse_net((local / NET).read_text(), f"{path}/{NET}")
            except PrototxtError as e:
                raise ModelDirectoryError(f"not a Caffe net prototxt: {e}") from None
            if net != param.net_param:
                raise ModelDirectoryError(f"{path}/{NET} is another net than the one its "
                                          f"metadata describes ('{net.name}' vs "
                                          f"'{param.net_param.name}')")
            if _sha1(local / WEIGHTS) != ours.get("weights_sha1"):
                raise ModelDirectoryError(f"{path}/{WEIGHTS} is not the file saved with this "
                                          "model (its SHA-1 differs)")
            caffe = CaffeNet(param)
            layout = [[n, [list(s) for s in shapes]] for n, shapes in caffe.weight_layout]
            if layout != ours.get("layout"):
                raise ModelDirectoryError(f"{path}: saved by another net (its weight layout "
                                          "differs from the net's)")
            try:
                caffe.load_weights(local / WEIGHTS)
            except Exception as e:  # noqa: BLE001  # CaffeError / ValueError naming layers
                raise ModelDirectoryError(f"{path}/{WEIGHTS}: {e}") from None
            model._set_weights(caffe.get_weights())
        log.info("loaded %s from %s", self.cls.__name__, path)
        return model
