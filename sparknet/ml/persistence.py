"""Saving and loading :class:`~sparknet.ml.CaffeModel` through Spark's own readers and writers.

A saved model is a directory (format 2):

* ``data/``: a Parquet table of the model's files, one row per piece of at
  most :data:`PIECE` bytes (``file``, ``offset``, ``bytes``): ``net.prototxt``
  and ``solver.prototxt`` (the net, both phases, and its solver in Caffe's
  text format, ``net: "net.prototxt"``) and ``weights.caffemodel`` (Caffe's
  binary format; :func:`export_files` writes them out as files Caffe reads);
* ``metadata/``: Spark's own ML metadata (class, uid, Params as JSON, written
  by ``DefaultParamsWriter``), with a ``sparknet`` entry: the format version,
  the SHA-1 of the net and of the weights file, and the weight layout.

Everything goes through Spark's DataFrame readers and writers, as
``xgboost.spark`` saves its boosters, never through ``SparkContext`` or its
JVM: so any file system Spark reads and writes (local, ``file://``,
``hdfs://``, ``s3a://`` where Spark has the S3A connector) works, under
Spark Connect too. Spark's commit protocol makes each of the two appear
whole; the metadata is written last, so a directory without it was never
completely saved. Loading checks the class, both digests and the layout, and
refuses anything else with an error naming the path.

Format 1 (before this one) kept the three files as plain files beside
``metadata/``, written through Hadoop's ``FileSystem``; such a model still
loads (read with Spark's ``binaryFile`` source), with the same checks.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReader, MLWriter

from sparknet._util import UserError
from sparknet.ml.scoring import digest

log = logging.getLogger("sparknet.ml")

FORMAT = 2
#: The formats :class:`CaffeModelReader` reads: 1 (plain files), 2 (a Parquet table).
READABLE = (1, 2)
NET, SOLVER, WEIGHTS = "net.prototxt", "solver.prototxt", "weights.caffemodel"
DATA = "data"
#: The largest piece of a file in one row of ``data/`` (Parquet pages stay moderate).
PIECE = 8 << 20
SCHEMA = "file string, offset long, bytes binary"

__all__ = ["FORMAT", "CaffeEstimatorWriter", "CaffeModelReader", "CaffeModelWriter",
           "ModelDirectoryError",
           "check_output_path", "export_files"]


class ModelDirectoryError(UserError, ValueError):
    """A directory that is not a saved sparknet model (or not of this net), or a path Spark
    cannot write one to; names the path."""


# -- what Spark says about a path ------------------------------------------------------------

def _text(e: BaseException) -> str:
    """The first line of what Spark says, the JVM's own exception where there is one."""
    java = getattr(e, "java_exception", None)  # py4j's Py4JJavaError in classic Spark
    text = str(java.toString()) if java is not None else (str(e) or type(e).__name__)
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def _missing(e: BaseException) -> bool:
    """Whether Spark refused a read because the path does not exist."""
    condition = getattr(e, "getCondition", lambda: None)()
    return condition == "PATH_NOT_FOUND" or "PATH_NOT_FOUND" in str(e)


def _exists(spark: Any, path: str) -> bool:
    """Whether ``path`` exists (as anything), asked of Spark's file index."""
    try:
        _ = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(path).schema
    except Exception as e:  # Spark's AnalysisException, or the JVM's: re-raised
        if _missing(e):
            return False
        raise
    return True


def check_output_path(spark: Any, path: str) -> None:
    """Refuse, before a long fit, a path Spark cannot write: ``ModelDirectoryError`` naming it.

    ``s3a://`` without Spark's S3A connector, or a scheme no Hadoop file system
    serves, is refused with the reason. Only Spark's reader is asked (for a
    name under ``path`` that does not exist), so nothing is written.
    """
    probe = f"{str(path).rstrip('/')}/.sparknet-probe-{uuid.uuid4().hex[:8]}"
    try:
        _ = spark.read.format("binaryFile").load(probe).schema  # Connect resolves it here
    except Exception as e:  # noqa: BLE001 - py4j's Py4JJavaError, Connect's gRPC error...
        if _missing(e):
            return  # the file system answered: the path can be written
        text = _text(e)
        scheme = path.split("://", 1)[0] if "://" in path else "file"
        if scheme == "s3a" and ("S3AFileSystem" in text or "No FileSystem" in text):
            raise ModelDirectoryError(
                f"{path}: Spark has no S3A filesystem here (the hadoop-aws and AWS SDK jars "
                f"matching Spark's Hadoop are not on its classpath; add them with "
                f"spark.jars.packages or spark.jars), or save to a local or HDFS path "
                f"({text})") from None
        if "No FileSystem for scheme" in text or "UnsupportedFileSystem" in text:
            raise ModelDirectoryError(f"{path}: Spark cannot open a filesystem for "
                                      f"'{scheme}://' ({text})") from None
        raise ModelDirectoryError(f"{path}: Spark cannot use this path ({text})") from None
    # A probe that exists (it cannot, by its random name) is no reason to refuse.


def filesystem(spark: Any, path: str) -> None:
    """Deprecated: :func:`check_output_path` (which needs no JVM, so works under Connect)."""
    warnings.warn("sparknet.ml.persistence.filesystem is deprecated: use check_output_path "
                  "(it returns nothing: Hadoop's FileSystem is not sparknet's to hand out)",
                  DeprecationWarning, stacklevel=2)
    check_output_path(spark, path)


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def export_files(spark: Any, path: str, folder: str | Path) -> dict[str, Path]:
    """Write the files of the model saved at ``path`` into the local ``folder``.

    ``net.prototxt``, ``solver.prototxt`` and ``weights.caffemodel``, as Caffe's
    own tools read them (``caffe test -model net.prototxt -weights
    weights.caffemodel``); returns name -> path. Any format is read.
    """
    from sparknet.io import atomic_write_bytes

    metadata = _metadata(spark, str(path))
    files = _files(spark, str(path), _format(str(path), metadata), (NET, SOLVER, WEIGHTS))
    out = {}
    for name, data in files.items():
        out[name] = Path(folder) / name
        atomic_write_bytes(out[name], data)
    return out


# -- writing --------------------------------------------------------------------------------

class _Writer(MLWriter):
    """What both stages' writers do before writing: check the path, overwrite."""

    def save(self, path: str) -> None:
        """Save to ``path``; refuses a path Spark cannot write before touching anything."""
        check_output_path(self.sparkSession, str(path))
        super().save(str(path))

    def _handleOverwrite(self, path: str) -> None:
        """Remove what is at ``path`` (``overwrite()``), as Spark's own writers do.

        A Spark Connect client has no JVM to call: there Spark's ML helper on the
        server removes it, as pyspark's own writers of Python stages do.
        """
        from pyspark.sql.utils import is_remote

        if is_remote():
            from pyspark.ml.connect.readwrite import RemoteMLWriter

            RemoteMLWriter.handleOverwrite(path, True)
        else:
            super()._handleOverwrite(path)


class CaffeEstimatorWriter(_Writer, DefaultParamsWriter):
    """Writes a :class:`~sparknet.ml.CaffeEstimator`: its Params, as Spark's ML metadata."""


class CaffeModelWriter(_Writer):
    """Writes a :class:`~sparknet.ml.CaffeModel` (see the module docstring for the layout)."""

    def __init__(self, instance: Any):
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        model = self.instance
        spark = self.sparkSession
        param = model._effective_solver()
        info = model._info()
        solver = type(param)()
        solver.CopyFrom(param)
        solver.ClearField("net_param")
        solver.net = NET
        with tempfile.TemporaryDirectory(prefix="sparknet-save-") as d:
            model.save_caffemodel(str(Path(d) / WEIGHTS))
            weights = (Path(d) / WEIGHTS).read_bytes()
        files = {NET: text_format.MessageToString(param.net_param).encode(),
                 SOLVER: text_format.MessageToString(solver).encode(), WEIGHTS: weights}
        rows = [(name, off, data[off:off + PIECE]) for name, data in files.items()
                for off in range(0, max(len(data), 1), PIECE)]
        # One file (coalesce): a model is read whole, and a few large rows need no more.
        spark.createDataFrame(rows, SCHEMA).coalesce(1).write.parquet(_join(path, DATA))
        extra = {"sparknet": {
            "format": FORMAT,
            "net_sha1": digest(param),
            "weights_sha1": _sha1(weights),
            "num_params": info.num_params,
            "layout": [[name, [list(s) for s in shapes]] for name, shapes in info.layout],
        }}
        DefaultParamsWriter.saveMetadata(model, path, spark, extraMetadata=extra)
        log.info("saved %s (%d parameters) to %s", type(model).__name__, info.num_params, path)


# -- reading --------------------------------------------------------------------------------

def _join(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def _metadata(spark: Any, path: str) -> dict:
    """Spark's ML metadata of ``path``; ``ModelDirectoryError`` saying why there is none."""
    try:
        return DefaultParamsReader.loadMetadata(path, spark)
    except Exception as e:  # noqa: BLE001 - Spark's reader: name the path instead
        if _missing(e):
            if not _exists(spark, path):
                raise ModelDirectoryError(f"{path}: no such directory") from None
            raise ModelDirectoryError(f"{path}: not a saved Spark ML model (no metadata/; an "
                                      "interrupted save leaves none)") from None
        raise ModelDirectoryError(f"{path}: unreadable Spark ML metadata ({_text(e)})"
                                  ) from None


def _format(path: str, metadata: Mapping[str, Any]) -> int:
    ours = metadata.get("sparknet")
    fmt = ours.get("format") if isinstance(ours, dict) else None
    if fmt not in READABLE:
        raise ModelDirectoryError(f"{path}: no sparknet format entry this version reads "
                                  f"({', '.join(map(str, READABLE))}) in its metadata")
    return fmt


def _where(path: str, fmt: int, name: str) -> str:
    """How a message names one of the model's files."""
    return _join(path, name) if fmt == 1 else f"{_join(path, DATA)} ({name})"


def _files(spark: Any, path: str, fmt: int, names: tuple[str, ...]) -> dict[str, bytes]:
    """The model's files ``names``, whole: from ``data/`` (format 2) or plain files (1)."""
    if fmt == 1:
        out = {}
        for name in names:
            try:
                rows = (spark.read.format("binaryFile").load(_join(path, name))
                        .select("content").collect())
            except Exception as e:  # noqa: BLE001 - Spark's AnalysisException, a checksum...
                if _missing(e):
                    raise ModelDirectoryError(f"{path}: {name} is missing") from None
                raise ModelDirectoryError(f"{_join(path, name)}: cannot be read ({_text(e)})"
                                          ) from None
            out[name] = bytes(rows[0][0])
        return out
    try:
        rows = spark.read.parquet(_join(path, DATA)).collect()
    except Exception as e:  # noqa: BLE001
        if _missing(e):
            raise ModelDirectoryError(f"{path}: {DATA}/ is missing") from None
        raise ModelDirectoryError(f"{_join(path, DATA)}: cannot be read ({_text(e)})") from None
    pieces: dict[str, list[tuple[int, bytes]]] = {}
    for row in rows:
        pieces.setdefault(row["file"], []).append((int(row["offset"]), bytes(row["bytes"])))
    out = {}
    for name in names:
        if name not in pieces:
            raise ModelDirectoryError(f"{path}: {DATA}/ holds no {name}")
        data = bytearray()
        for offset, piece in sorted(pieces[name]):
            if offset != len(data):
                raise ModelDirectoryError(f"{_where(path, fmt, name)}: pieces are missing "
                                          f"(one at byte {offset}, expected {len(data)})")
            data += piece
        out[name] = bytes(data)
    return out


class CaffeModelReader(MLReader):
    """Reads what :class:`CaffeModelWriter` wrote (and format 1); refuses anything else."""

    def __init__(self, cls: type):
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        from sparknet.engine import CaffeNet
        from sparknet.proto import PrototxtError, loader

        path = str(path)
        spark = self.sparkSession
        metadata = _metadata(spark, path)
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata.get("class") != expected:
            raise ModelDirectoryError(f"{path}: holds a {metadata.get('class')}, not a "
                                      f"{expected}")
        fmt = _format(path, metadata)
        ours = metadata["sparknet"]
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
        files = _files(spark, path, fmt, (NET, WEIGHTS))
        try:
            net = loader.parse_net(files[NET].decode(), _where(path, fmt, NET))
        except (PrototxtError, UnicodeDecodeError) as e:
            raise ModelDirectoryError(f"not a Caffe net prototxt: {e}") from None
        if net != param.net_param:
            raise ModelDirectoryError(f"{_where(path, fmt, NET)} is another net than the one "
                                      f"its metadata describes ('{net.name}' vs "
                                      f"'{param.net_param.name}')")
        if _sha1(files[WEIGHTS]) != ours.get("weights_sha1"):
            raise ModelDirectoryError(f"{_where(path, fmt, WEIGHTS)} is not the file saved "
                                      "with this model (its SHA-1 differs)")
        caffe = CaffeNet(param)
        layout = [[n, [list(s) for s in shapes]] for n, shapes in caffe.weight_layout]
        if layout != ours.get("layout"):
            raise ModelDirectoryError(f"{path}: saved by another net (its weight layout "
                                      "differs from the net's)")
        try:
            caffe.load_weights(files[WEIGHTS])
        except Exception as e:  # noqa: BLE001  # CaffeError / ValueError naming layers
            raise ModelDirectoryError(f"{_where(path, fmt, WEIGHTS)}: {e}") from None
        model._set_weights(caffe.get_weights())
        log.info("loaded %s from %s (format %d)", self.cls.__name__, path, fmt)
        return model
