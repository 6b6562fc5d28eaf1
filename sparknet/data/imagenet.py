"""ImageNet from S3: tar shards of JPEGs, one Spark partition per shard.

The layout is SparkNet's (what ``python -m sparknet.data.imagenet_to_s3``
writes): training images in tar shards under a prefix
(``ILSVRC2012_train/train.00000.tar``, ...), validation shards likewise, and
label lists ``train.txt`` / ``val.txt`` at the bucket root, one
``<member name> <label>`` per line (Caffe's ``convert_imageset`` format).

The driver lists only the shard keys under the prefix and reads the label
list; each worker streams its shard from S3 (never whole, never through the
driver), decodes and resizes every member to a fixed size, and yields
``(float32 CHW array, label)`` pairs. A member that is not an image, is
corrupt, or is cut short by a truncated shard is skipped and recorded with its
shard and name; reads have timeouts and resume, so no bad file stalls a worker.
After an action, :meth:`ImageNetData.report` says what was skipped, which
members had no label, and which labelled files no shard held.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sparknet.data.images import ImageDecodeError, decode_batch, decode_image
from sparknet.data.rdd import DataError, batched
from sparknet.io import spark_context
from sparknet.io.s3 import S3Options, list_keys, open_s3

log = logging.getLogger(__name__)

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
#: Members larger than this are skipped (no ImageNet photo comes close).
MAX_MEMBER_BYTES = 64 << 20


# -- label lists --------------------------------------------------------------------------

def parse_labels(lines: Iterable[str], name: str = "<labels>") -> dict[str, int]:
    """``<file name> <label>`` lines -> dict; the label is after the last space, as in Caffe."""
    labels: dict[str, int] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, sep, tail = line.rpartition(" ")
        if not sep:
            head, sep, tail = line.rpartition("\t")
        try:
            labels[head.strip()] = int(tail)
            if not head.strip():
                raise ValueError
        except ValueError:
            raise DataError(f"{name} line {n}: expected '<file> <integer label>', "
                             f"got {line[:80]!r}") from None
    return labels


def read_labels(bucket: str, key: str, options: S3Options | None = None,
                client: Any = None) -> dict[str, int]:
    """Stream a label list from ``s3://bucket/key`` into a dict (``FileNotFoundError`` if absent)."""
    opts = options or S3Options()
    client = client or opts.client()
    with open_s3(client, bucket, key, options=opts) as f:
        text = io.TextIOWrapper(f, encoding="utf-8", errors="strict")
        try:
            return parse_labels(text, f"s3://{bucket}/{key}")
        except UnicodeDecodeError as e:
            raise DataError(f"s3://{bucket}/{key}: not a text label list ({e})") from None


def _lookup(labels: Mapping[str, int], name: str) -> tuple[str, int] | None:
    if name in labels:
        return name, labels[name]
    base = posixpath.basename(name)
    if base in labels:
        return base, labels[base]
    return None


# -- reports ------------------------------------------------------------------------------

@dataclass
class ShardReport:
    """What one shard gave: images yielded, names matched, members skipped."""

    shard: str
    images: int = 0
    matched: list[str] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)
    complete: bool = False
    members: int = 0  # regular members seen

    def summary(self) -> str:
        """``"<images> of <members> members, <k> skipped (bad: a, b; no label: c)"``."""
        text = f"{self.images} images from {self.members} members"
        if self.bad or self.unlabeled:
            text += f", {len(self.bad) + len(self.unlabeled)} skipped"
            parts = []
            if self.bad:
                parts.append("bad: " + ", ".join(n for n, _ in self.bad[:10])
                             + (" ..." if len(self.bad) > 10 else ""))
            if self.unlabeled:
                parts.append("no label: " + ", ".join(self.unlabeled[:10])
                             + (" ..." if len(self.unlabeled) > 10 else ""))
            text += f" ({'; '.join(parts)})"
        return text


def _merge_reports(a: dict[str, ShardReport], b: dict[str, ShardReport]
                   ) -> dict[str, ShardReport]:
    for key, rep in b.items():
        old = a.get(key)
        if old is None or rep.complete or not old.complete:
            a[key] = rep  # a recomputed shard replaces, never doubles, its counts
    return a


def _report_param() -> Any:
    from pyspark.accumulators import AccumulatorParam

    class ReportParam(AccumulatorParam):
        def zero(self, value: dict) -> dict:
            return {}

        def addInPlace(self, a: dict, b: dict) -> dict:
            return _merge_reports(a, b)

    return ReportParam()


@dataclass
class LoadReport:
    """The outcome of loading shards, as far as Spark has computed them.

    ``bad``: ``(shard, member, reason)`` for every skipped member (not an
    image, corrupt, truncated). ``unlabeled``: ``(shard, member)`` for images
    the label list does not name. ``missing``: label-list names that no shard
    held (known once every shard has been read). ``shards_done`` of
    ``shards_total`` shards were read to the end.
    """

    images: int
    bad: list[tuple[str, str, str]]
    unlabeled: list[tuple[str, str]]
    missing: list[str]
    shards_done: int
    shards_total: int

    @property
    def complete(self) -> bool:
        """Whether every shard was read to its end."""
        return self.shards_done == self.shards_total

    @property
    def skipped(self) -> int:
        """How many members were skipped (bad or unlabelled)."""
        return len(self.bad) + len(self.unlabeled)

    def summary(self) -> str:
        """One line: images, shards read, and what was skipped or missing."""
        parts = [f"{self.images} images from {self.shards_done}/{self.shards_total} shards"]
        if self.bad:
            parts.append(f"{len(self.bad)} bad members skipped")
        if self.unlabeled:
            parts.append(f"{len(self.unlabeled)} members without a label skipped")
        if self.missing:
            parts.append(f"{len(self.missing)} labelled files in no shard")
        return ", ".join(parts)


# -- the loader ---------------------------------------------------------------------------

class _ImageNetReport:
    """What :class:`ImageNetData` adds to pyspark's RDD: the shards, labels and report."""

    shards: list[str]
    labels: dict[str, int] | None
    bucket: str

    def __init__(self, rdd: Any, shards: list[str], labels: dict[str, int] | None,
                 bucket: str, accumulator: Any):
        from pyspark import RDD

        RDD.__init__(self, rdd._jrdd, rdd.ctx, rdd._jrdd_deserializer)
        self.shards = shards
        self.labels = labels
        self.bucket = bucket
        self._acc = accumulator

    @property
    def rdd(self) -> Any:
        """This RDD itself (``load_imagenet(...).rdd`` still works)."""
        return self

    def __repr__(self) -> str:
        return f"ImageNetData(s3://{self.bucket}, {len(self.shards)} shards)"

    def report(self, *, log_it: bool = True) -> LoadReport:
        """What has been loaded so far (run an action on ``rdd`` first)."""
        reports: dict[str, ShardReport] = dict(self._acc.value)
        done = [r for r in reports.values() if r.complete]
        bad = [(r.shard, m, why) for r in reports.values() for m, why in r.bad]
        unlabeled = [(r.shard, m) for r in reports.values() for m in r.unlabeled]
        missing: list[str] = []
        if self.labels is not None and len(done) == len(self.shards):
            seen = {m for r in done for m in r.matched}
            for r in done:  # a bad member is in a shard, even if it gave no image
                for name, _ in r.bad:
                    seen.add(name)
                    seen.add(posixpath.basename(name))
            missing = sorted(k for k in self.labels if k not in seen)
        rep = LoadReport(images=sum(r.images for r in reports.values()), bad=sorted(bad),
                         unlabeled=sorted(unlabeled), missing=missing,
                         shards_done=len(done), shards_total=len(self.shards))
        if log_it:
            level = logging.WARNING if (bad or unlabeled or missing) else logging.INFO
            log.log(level, "s3://%s: %s", self.bucket, rep.summary())
            for shard, member, why in rep.bad[:20]:
                log.warning("skipped s3://%s/%s member %s: %s", self.bucket, shard, member, why)
            for name in rep.missing[:20]:
                log.warning("label list names %s, which no shard holds", name)
        return rep


@functools.cache
def _imagenet_data_class() -> type:
    """``ImageNetData``: pyspark's RDD with the report mixed in.

    Built once, on first use, so that importing :mod:`sparknet.data` does not
    import pyspark.
    """
    from pyspark import RDD

    doc = """An RDD of ``(CHW array, label)`` read from S3 tar shards, that reports the load.

    What :func:`load_imagenet` returns: a ``pyspark.RDD`` like the other
    loaders' ``*_rdd`` (give it to ``train``, transform it as any RDD), one
    partition per shard, in key order, plus ``shards`` (the keys), ``labels``
    (the label list, or None), ``bucket`` and :meth:`report`. ``rdd`` is the
    RDD itself, for code written when this was a wrapper around one.
    """
    return type("ImageNetData", (_ImageNetReport, RDD), {"__doc__": doc, "__module__": __name__})


if TYPE_CHECKING:
    from pyspark import RDD

    class ImageNetData(_ImageNetReport, RDD):
        """See :func:`_imagenet_data_class`."""
else:
    def __getattr__(name: str) -> Any:
        if name == "ImageNetData":
            return _imagenet_data_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_imagenet(spark: Any, bucket: str, *, shard_prefix: str = "ILSVRC2012_train/train.",
                  labels_key: str | None = "train.txt", size: tuple[int, int] = (256, 256),
                  color: str = "RGB", dtype: Any = np.float32,
                  transform: Callable[[np.ndarray], np.ndarray] | None = None,
                  transform_batch: int = 64, max_shards: int | None = None,
                  endpoint_url: str | None = None, region_name: str | None = None,
                  options: S3Options | None = None) -> ImageNetData:
    """ImageNet-style tar shards on S3 as an RDD of ``(array, label)``, one partition per shard.

    Returns an :class:`ImageNetData`: a ``pyspark.RDD``, as the other
    loaders' ``*_rdd`` return, that also has :meth:`~ImageNetData.report`
    (what was skipped, once an action has run), ``shards`` and ``labels``.

    ``shard_prefix`` selects the shards (keys under it ending in ``.tar``,
    ``.tar.gz`` or ``.tgz``; ``max_shards`` keeps the first few).
    ``labels_key`` names the label list (``None``: every label is -1).
    Images are decoded and resized to ``size`` ``(width, height)`` on the
    workers, in ``color`` order (``"RGB"``, ``"BGR"`` or ``"L"``), as
    ``dtype`` CHW arrays. ``transform`` (a :class:`Transformer`, say) is applied
    to uint8 NCHW batches of ``transform_batch`` on the workers.

    S3 is reached through ``options`` or ``endpoint_url``/``region_name``
    and boto3's standard chain; the workers need the same credentials (the
    environment, a role, or ``spark.executorEnv.*``). A missing bucket, an
    empty prefix or a missing label list raise ``FileNotFoundError`` naming it.
    """
    opts = options or S3Options(endpoint_url=endpoint_url, region_name=region_name)
    sc = spark_context(spark, what="load_imagenet")
    client = opts.client()
    shards: list[str] = []
    for key, _size in list_keys(client, bucket, shard_prefix, suffixes=SHARD_SUFFIXES,
                                options=opts):
        shards.append(key)
        if max_shards is not None and len(shards) >= max_shards:
            break
    if not shards:
        raise FileNotFoundError(f"no tar shards under s3://{bucket}/{shard_prefix}"
                                f"{opts.where()}")
    labels = read_labels(bucket, labels_key, opts, client) if labels_key else None
    log.info("s3://%s/%s*: %d shards, %s labels", bucket, shard_prefix, len(shards),
             len(labels) if labels is not None else "no")
    labels_bc = sc.broadcast(labels) if labels is not None else None
    acc = sc.accumulator({}, _report_param())
    np_dtype = np.dtype(dtype)
    wh = (int(size[0]), int(size[1]))

    def partition(keys: Iterator[str]) -> Iterator[tuple[np.ndarray, float]]:
        table = labels_bc.value if labels_bc is not None else None
        worker_client = opts.client()
        for key in keys:
            yield from chw_examples(
                shard_examples(worker_client, bucket, key, table, size=wh, color=color,
                               options=opts, report_to=acc.add),
                np_dtype, transform, transform_batch)

    rdd = sc.parallelize(shards, len(shards)).mapPartitions(partition)
    return _imagenet_data_class()(rdd, shards, labels, bucket, acc)


def chw_examples(examples: Iterable[tuple[np.ndarray, float]], dtype: Any = np.uint8,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 transform_batch: int = 64) -> Iterator[tuple[np.ndarray, float]]:
    """Decoded ``(HWC image, label)`` pairs -> ``(dtype CHW array, label)``, as the loader yields.

    This is what :func:`load_imagenet` runs on each shard after decoding it,
    and so what the Spark trainer caches on its workers. ``transform``, when
    given, runs on NCHW batches of ``transform_batch`` images.
    """
    np_dtype = np.dtype(dtype)
    if transform is None:
        for img, label in examples:
            yield np.ascontiguousarray(img.transpose(2, 0, 1), np_dtype), label
        return
    for chunk in batched(examples, transform_batch):
        out = transform(np.stack([img for img, _ in chunk]).transpose(0, 3, 1, 2))
        for a, (_, label) in zip(out, chunk):
            yield np.asarray(a, np_dtype), label


def shard_examples(client: Any, bucket: str, key: str, labels: Mapping[str, int] | None, *,
                   size: tuple[int, int] | None = (256, 256), color: str = "RGB",
                   options: S3Options | None = None,
                   report_to: Callable[[dict[str, ShardReport]], None] | None = None,
                   max_member_bytes: int = MAX_MEMBER_BYTES
                   ) -> Iterator[tuple[np.ndarray, float]]:
    """Stream one tar shard from S3; yield ``(uint8 HWC image, label)`` per good member.

    Bad members are logged and recorded; the :class:`ShardReport` is passed to
    ``report_to`` when the shard ends (``complete`` when it was read to the
    end). A shard that cannot be fetched at all raises an ``OSError`` naming it.
    """
    report = ShardReport(shard=key)
    uri = f"s3://{bucket}/{key}"
    try:
        with open_s3(client, bucket, key, options=options) as f:
            yield from _tar_examples(f, uri, labels, report, size=size, color=color,
                                     max_member_bytes=max_member_bytes)
        report.complete = True
    finally:
        if report_to is not None:
            report_to({key: report})


def _members(f: Any, where: str, report: ShardReport, max_member_bytes: int
             ) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of each regular member; what cannot be read goes into ``report``."""
    try:
        tar = tarfile.open(fileobj=f, mode="r|*")  # noqa: SIM115 - entered by the `with tar` below
    except (tarfile.TarError, EOFError, zlib.error) as e:
        report.bad.append(("<shard>", f"not a readable tar file: {e}"))
        log.warning("%s: not a readable tar file (%s); shard skipped", where, e)
        return
    with tar:
        while True:
            try:
                member = tar.next()
            except (tarfile.TarError, EOFError, zlib.error) as e:
                report.bad.append(("<end of shard>", f"truncated or corrupt tar: {e}"))
                log.warning("%s: truncated or corrupt after %d members (%s); rest of the shard "
                            "skipped", where, report.members, e)
                return
            if member is None:
                return
            if not member.isfile():
                continue
            name = member.name
            report.members += 1
            if member.size > max_member_bytes:
                report.bad.append((name, f"{member.size} bytes is more than "
                                         f"max_member_bytes ({max_member_bytes})"))
                log.warning("%s: %s is %d bytes; skipped", where, name, member.size)
                continue
            try:
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"{len(data)} of {member.size} bytes")
            except (tarfile.TarError, EOFError, zlib.error) as e:
                report.bad.append((name, f"truncated: {e}"))
                log.warning("%s: member %s is truncated (%s); rest of the shard skipped",
                            where, name, e)
                return
            yield name, data


def _labelled(labels: Mapping[str, int] | None, name: str, where: str, report: ShardReport
              ) -> tuple[str, int] | None:
    """The member's (matched name, label), or None (recorded as unlabeled)."""
    found = _lookup(labels, name) if labels is not None else (name, -1)
    if found is None:
        report.unlabeled.append(name)
        log.warning("%s: member %s is not in the label list; skipped", where, name)
    return found


def _tar_examples(f: Any, where: str, labels: Mapping[str, int] | None, report: ShardReport,
                  *, size: tuple[int, int] | None, color: str, max_member_bytes: int
                  ) -> Iterator[tuple[np.ndarray, float]]:
    for name, data in _members(f, where, report, max_member_bytes):
        found = _labelled(labels, name, where, report)
        if found is None:
            continue
        try:
            img = decode_image(data, size, color=color)
        except ImageDecodeError as e:
            report.bad.append((name, str(e)))
            log.warning("%s: member %s skipped: %s", where, name, e)
            continue
        report.images += 1
        report.matched.append(found[0])
        yield img, float(found[1])


def tar_examples(path_or_file: Any, labels: Mapping[str, int] | None = None, *,
                 size: tuple[int, int] | None = None, color: str = "RGB"
                 ) -> Iterator[tuple[np.ndarray, float]]:
    """The same streaming decode for a local tar file (path or binary file object)."""
    report = ShardReport(shard=str(path_or_file))
    if isinstance(path_or_file, (str, bytes)) or hasattr(path_or_file, "__fspath__"):
        with open(path_or_file, "rb") as f:
            yield from _tar_examples(f, str(path_or_file), labels, report, size=size,
                                     color=color, max_member_bytes=MAX_MEMBER_BYTES)
    else:
        yield from _tar_examples(path_or_file, "<tar>", labels, report, size=size, color=color,
                                 max_member_bytes=MAX_MEMBER_BYTES)


def tar_members(f: Any) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of each regular member of a tar stream, in order."""
    with tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                yield member.name, handle.read() if handle is not None else b""


def tar_minibatches(path_or_file: Any, transformer: Callable[[np.ndarray], np.ndarray],
                    batch_size: int, labels: Mapping[str, int] | None = None, *,
                    size: tuple[int, int] | None = None, color: str = "RGB",
                    report: ShardReport | None = None
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The training-time path: a tar shard -> transformed float32 ``(x, y)`` minibatches.

    Members are decoded a batch at a time straight into one reused uint8 NHWC
    buffer (:func:`~sparknet.data.images.decode_batch`), then ``transformer``
    (a :class:`~sparknet.data.transform.Transformer`: mean, crop, mirror,
    scale) runs on the whole batch (called with ``layout="NHWC"``). ``size`` defaults to the first
    image's. A bad member (not an image, corrupt, cut short by a truncated
    shard) or one without a label is skipped, never fatal: each is logged by
    name, recorded in ``report`` (a :class:`ShardReport`, if given) as
    :func:`tar_examples` and the S3 loader do, and the skips are summed up in
    one warning at the end. Labels come from ``labels`` by member name
    (default -1).
    """
    close = False
    f = path_or_file
    if isinstance(path_or_file, (str, bytes)) or hasattr(path_or_file, "__fspath__"):
        where = os.fsdecode(path_or_file)
        f = open(path_or_file, "rb")  # noqa: SIM115 - closed below when opened here
        close = True
    else:
        where = str(getattr(path_or_file, "name", "<tar>"))
    report = report if report is not None else ShardReport(shard=where)
    buffer: np.ndarray | None = None  # decoded pixels, reused batch after batch

    def decode(chunk: list[tuple[str, bytes, float]]) -> tuple[np.ndarray | None, np.ndarray]:
        nonlocal size, buffer
        try:
            batch = buffer = decode_batch([d for _, d, _ in chunk], size, color=color,
                                          layout="NHWC", out=buffer)
            y = np.asarray([label for _, _, label in chunk], np.float32)
        except ImageDecodeError:
            good, keep = [], []
            for name, d, label in chunk:
                try:
                    good.append(decode_image(d, size, color=color))
                    keep.append(label)
                except ImageDecodeError as e:
                    report.bad.append((name, str(e)))
                    log.warning("%s: member %s skipped: %s", where, name, e)
            batch = np.stack(good) if good else None
            y = np.asarray(keep, np.float32)
        report.images += len(y)
        if batch is not None and size is None:
            size = (batch.shape[2], batch.shape[1])
        return batch, y

    def labelled() -> Iterator[tuple[str, bytes, float]]:
        for name, data in _members(f, where, report, MAX_MEMBER_BYTES):
            found = _labelled(labels, name, where, report)
            if found is not None:
                yield name, data, float(found[1])

    try:
        for chunk in batched(labelled(), batch_size):
            batch, y = decode(chunk)
            if batch is not None:
                yield transformer(batch, layout="NHWC"), y
        report.complete = True
    finally:
        if close:
            f.close()
        if report.bad or report.unlabeled:
            log.warning("%s: %s", where, report.summary())
