"""Put ImageNet (or any folder of class folders) on S3 as tar shards for sparknet.

    python -m sparknet.data.imagenet_to_s3 --bucket B \\
        --train ILSVRC2012_img_train.tar \\
        --val ILSVRC2012_img_val.tar --val-labels val.txt

Sources: the ILSVRC training tar (a tar of one tar per synset), a flat tar
or folder of images with a ``<name> <label>`` list (``--*-labels``), or a
folder of class folders. Class labels are the index of the class (synset or
folder name) in sorted order, or in ``--classes FILE``; training and
validation share that order.

Each split is shuffled with ``--seed``, every image is resized to
``--size`` (256x256 by default; JPEGs are decoded at a reduced DCT scale
when at least twice that size) and re-encoded as JPEG, and the images are
written in shards of ``--shard-size`` to
``<prefix><split>.00000.tar``... with a small ``.txt`` list of each shard's
labels beside it. Uploads are retried; a progress bar shows the images.
When all shards are there, the split's label list (``train.txt``,
``val.txt``) is written at ``--labels-prefix`` (the bucket root by default).

Re-running the same command resumes: shards already uploaded by an identical
run (same inputs, seed, size, shard size; recorded in each shard's metadata)
are kept, not redone or duplicated; a shard left by a different run is an
error unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import itertools
import json
import logging
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from sparknet.data.imagenet import parse_labels
from sparknet.data.images import ImageDecodeError, decode_image, encode_jpeg
from sparknet.io.s3 import S3Options, head, list_keys, s3_error

log = logging.getLogger("sparknet.data.imagenet_to_s3")

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
FORMAT_VERSION = 1
RUN_META = "sparknet-run"


@dataclass(frozen=True, slots=True)
class Item:
    """One source image: its name in the shards, its label, and where its bytes are."""

    name: str
    label: int
    path: str
    offset: int = -1  # -1: the whole file at path; else a byte range inside a tar
    size: int = -1

    def read(self) -> bytes:
        """The image's bytes (the member's, for an image inside a tar file)."""
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


# -- indexing the sources -----------------------------------------------------------------

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def read_label_file(path: str | os.PathLike) -> dict[str, int]:
    """A local ``<file> <label>`` list as a dict (errors name the file and line)."""
    p = Path(path)
    try:
        return parse_labels(p.read_text().splitlines(), str(p))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such label list") from None


def class_names(source: str | os.PathLike) -> list[str]:
    """The classes a source defines: inner tar names (ILSVRC train) or subfolder names."""
    p = Path(source)
    if p.is_dir():
        return sorted(d.name for d in p.iterdir() if d.is_dir())
    with tarfile.open(p, "r:") as outer:
        return sorted(Path(m.name).name[:-4] for m in outer if m.isfile()
                      and m.name.endswith(".tar"))


def index_source(source: str | os.PathLike, labels: dict[str, int] | None,
                 classes: Sequence[str] | None) -> tuple[list[Item], list[str]]:
    """``(items, problems)`` for a tar file or folder.

    With ``labels``, the images are those the list names (a name the source
    lacks is a problem, reported); else each class (inner tar or subfolder)
    is a label, numbered by its index in ``classes``.
    """
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder")
    items: list[Item] = []
    problems: list[str] = []
    class_index = {c: i for i, c in enumerate(classes or ())}

    def label_for_class(cls: str, where: str) -> int | None:
        if cls not in class_index:
            problems.append(f"{where}: class '{cls}' is not in the class list; skipped")
            return None
        return class_index[cls]

    if p.is_dir():
        if labels is not None:
            for name, label in labels.items():
                f = p / name
                if f.is_file():
                    items.append(Item(name, label, str(f)))
                else:
                    problems.append(f"{p}: the label list names {name}, which is not there")
        else:
            for d in sorted(x for x in p.iterdir() if x.is_dir()):
                label = label_for_class(d.name, str(d))
                if label is None:
                    continue
                for f in sorted(d.rglob("*")):
                    if f.is_file() and _is_image(f.name):
                        items.append(Item(f.relative_to(p).as_posix(), label, str(f)))
        return items, problems
    try:
        outer = tarfile.open(p, "r:")  # noqa: SIM115 - closed in the finally below
    except tarfile.TarError as e:
        raise ValueError(f"{p}: not an uncompressed tar file ({e})") from None
    with outer:
        members = [m for m in outer if m.isfile()]
        inner_tars = [m for m in members if m.name.endswith(".tar")]
        if inner_tars and labels is None:
            for m in sorted(inner_tars, key=lambda m: m.name):
                cls = Path(m.name).name[:-4]
                label = label_for_class(cls, f"{p}:{m.name}")
                if label is None:
                    continue
                handle = outer.extractfile(m)
                try:
                    inner = tarfile.open(fileobj=handle, mode="r:")  # noqa: SIM115 - closed in the finally below
                    for im in inner:
                        if im.isfile() and _is_image(im.name):
                            items.append(Item(Path(im.name).name, label, str(p),
                                              m.offset_data + im.offset_data, im.size))
                except tarfile.TarError as e:
                    problems.append(f"{p}:{m.name}: unreadable inner tar ({e}); skipped")
        else:
            by_name = {m.name: m for m in members if _is_image(m.name)}
            by_base = {Path(n).name: m for n, m in by_name.items()}
            if labels is None:
                raise ValueError(f"{p} is a flat tar of images: give its label list "
                                 "(--train-labels / --val-labels)")
            for name, label in labels.items():
                m = by_name.get(name) or by_base.get(Path(name).name)
                if m is None:
                    problems.append(f"{p}: the label list names {name}, which is not there")
                    continue
                items.append(Item(Path(m.name).name if name not in by_name else name, label,
                                  str(p), m.offset_data, m.size))
    return items, problems


# -- one image ----------------------------------------------------------------------------

def resize_photo(data: bytes, size: tuple[int, int], quality: int = 90) -> bytes:
    """Decode (at a reduced DCT scale where possible), resize to ``size``, encode as JPEG."""
    return encode_jpeg(decode_image(data, size), quality)


def _prepare(args: tuple[Item, tuple[int, int], int]) -> tuple[Item, bytes | None, str | None]:
    item, size, quality = args
    try:
        return item, resize_photo(item.read(), size, quality), None
    except ImageDecodeError as e:
        return item, None, str(e)
    except OSError as e:
        return item, None, f"cannot read: {e}"


# -- shards -------------------------------------------------------------------------------

def _tar_bytes_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def fingerprint(split: str, items: Sequence[Item], *, seed: int, shard_size: int,
                size: tuple[int, int], quality: int) -> str:
    """A digest of everything that determines a split's shards."""
    h = hashlib.sha256(json.dumps({"v": FORMAT_VERSION, "split": split, "seed": seed,
                                   "shard_size": shard_size, "size": list(size),
                                   "quality": quality}).encode())
    for it in items:
        h.update(f"{it.name}\t{it.label}\t{it.size}\n".encode())
    return h.hexdigest()[:24]


def _with_retries(what: str, fn: Any, attempts: int = 5) -> Any:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except (BotoCoreError, ClientError, S3UploadFailedError, OSError) as e:
            status = (e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                      if isinstance(e, ClientError) else None)
            if isinstance(e, ClientError) and status is not None and 400 <= status < 500 \
                    and status not in (408, 429):
                raise
            if attempt == attempts:
                raise OSError(f"{what}: failed after {attempts} attempts: {e}") from e
            delay = min(2.0 ** attempt, 30.0)
            log.warning("%s failed (%s); retrying in %.0f s", what, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


@dataclass
class SplitResult:
    """What uploading one split wrote: shards, images and what was skipped."""

    split: str
    images: int
    shards: int
    uploaded: int
    kept: int
    skipped: list[tuple[str, str]]
    labels_key: str
    problems: list[str] = field(default_factory=list)


def upload_split(client: Any, bucket: str, split: str, items: list[Item], *, prefix: str,
                 labels_prefix: str, seed: int, shard_size: int, size: tuple[int, int],
                 quality: int, jobs: int, overwrite: bool = False, tmp_dir: str | None = None,
                 progress: bool = True, options: S3Options | None = None) -> SplitResult:
    """Shuffle, resize, shard and upload one split; write its label list last."""
    from tqdm import tqdm

    if not items:
        raise ValueError(f"{split}: no images found")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    items = sorted(items, key=lambda it: it.name)
    names = [it.name for it in items]
    dup = next((a for a, b in itertools.pairwise(names) if a == b), None)
    if dup is not None:
        raise ValueError(f"{split}: two images are named {dup}; shard member names must be unique")
    order = np.random.default_rng(seed).permutation(len(items))
    items = [items[i] for i in order]
    fp = fingerprint(split, items, seed=seed, shard_size=shard_size, size=size, quality=quality)
    shards = [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
    key_of = [f"{prefix}{split}.{i:05d}.tar" for i in range(len(shards))]
    side_of = [f"{prefix}{split}.{i:05d}.txt" for i in range(len(shards))]

    existing = {k for k, _ in list_keys(client, bucket, f"{prefix}{split}.", options=options)}
    todo: list[int] = []
    kept = 0
    for i, key in enumerate(key_of):
        if key in existing and side_of[i] in existing:
            meta = (head(client, bucket, key, options) or {}).get("Metadata", {})
            if meta.get(RUN_META) == fp:
                kept += 1
                continue
            if not overwrite:
                raise FileExistsError(
                    f"s3://{bucket}/{key} was written by a different run (other inputs, seed, "
                    f"size or shard size); use --overwrite, or another --prefix")
        todo.append(i)
    stale = sorted(k for k in existing if k.endswith(".tar") and k not in set(key_of))
    if stale:
        log.warning("%s: %d shards under s3://%s/%s%s. are not part of this run (first: %s)",
                    split, len(stale), bucket, prefix, split, stale[0])
    if kept:
        log.info("%s: %d of %d shards already uploaded by this run; resuming", split, kept,
                 len(shards))

    skipped: list[tuple[str, str]] = []
    shard_lines: dict[int, list[str]] = {}
    work = [(it, size, quality) for i in todo for it in shards[i]]
    bar = tqdm(total=len(work), desc=f"{split} images", unit="img", disable=not progress,
               file=sys.stderr)
    pool = get_context("spawn").Pool(jobs) if jobs > 1 and len(work) > 1 else None
    try:
        results: Iterator[tuple[Item, bytes | None, str | None]] = (
            pool.imap(_prepare, work, chunksize=4) if pool is not None else map(_prepare, work))
        for i in todo:
            lines: list[str] = []
            fd, tmp = tempfile.mkstemp(prefix=f"{split}.{i:05d}.", suffix=".tar", dir=tmp_dir)
            os.close(fd)
            try:
                with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for _ in shards[i]:
                        item, data, error = next(results)
                        bar.update(1)
                        if data is None:
                            skipped.append((item.name, error or "unknown error"))
                            log.warning("%s: %s skipped: %s", split, item.name, error)
                            continue
                        _tar_bytes_member(tar, item.name, data)
                        lines.append(f"{item.name} {item.label}")
                body = ("\n".join(lines) + "\n").encode() if lines else b""
                meta = {RUN_META: fp, "sparknet-images": str(len(lines))}
                # the label sidecar first: a shard that exists always has its labels
                _with_retries(f"upload s3://{bucket}/{side_of[i]}", functools.partial(
                    client.put_object, Bucket=bucket, Key=side_of[i], Body=body, Metadata=meta))
                _with_retries(f"upload s3://{bucket}/{key_of[i]}", functools.partial(
                    client.upload_file, tmp, bucket, key_of[i], ExtraArgs={"Metadata": meta}))
            finally:
                os.unlink(tmp)
            shard_lines[i] = lines
            bar.set_postfix(shards=f"{len(shard_lines) + kept}/{len(shards)}")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    from botocore.exceptions import ClientError

    all_lines: list[str] = []
    for i in range(len(shards)):
        if i not in shard_lines:
            try:
                obj = client.get_object(Bucket=bucket, Key=side_of[i])
            except ClientError as e:
                raise s3_error(e, bucket, side_of[i], options) from None
            shard_lines[i] = obj["Body"].read().decode().splitlines()
        all_lines.extend(line for line in shard_lines[i] if line)
    labels_key = f"{labels_prefix}{split}.txt"
    _with_retries(f"upload s3://{bucket}/{labels_key}", lambda: client.put_object(
        Bucket=bucket, Key=labels_key, Body=("\n".join(all_lines) + "\n").encode(),
        Metadata={RUN_META: fp}))
    log.info("%s: %d images in %d shards (%d uploaded, %d kept), %d skipped; labels in s3://%s/%s",
             split, len(all_lines), len(shards), len(todo), kept, len(skipped), bucket,
             labels_key)
    return SplitResult(split, len(all_lines), len(shards), len(todo), kept, skipped, labels_key)


# -- command line -------------------------------------------------------------------------

def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size is N or WxH, got {text!r}") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"size is N or WxH, got {text!r}")
    return dims[0], dims[1]


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m sparknet.data.imagenet_to_s3``."""
    p = argparse.ArgumentParser(prog="python -m sparknet.data.imagenet_to_s3",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket", required=True, help="the S3 bucket (must exist)")
    p.add_argument("--train", help="ILSVRC train tar, a flat tar/folder with --train-labels, "
                   "or a folder of class folders")
    p.add_argument("--train-labels", help="'<name> <label>' list for a flat --train source")
    p.add_argument("--val", help="validation tar or folder (flat needs --val-labels)")
    p.add_argument("--val-labels", help="'<name> <label>' list for a flat --val source")
    p.add_argument("--classes", help="class names (synsets), one per line, in label order; "
                   "default: sorted names found in --train")
    p.add_argument("--train-prefix", default="ILSVRC2012_train/",
                   help="key prefix of the training shards (default %(default)s)")
    p.add_argument("--val-prefix", default="ILSVRC2012_val/",
                   help="key prefix of the validation shards (default %(default)s)")
    p.add_argument("--labels-prefix", default="",
                   help="key prefix of train.txt / val.txt (default: the bucket root)")
    p.add_argument("--shard-size", type=int, default=1000, help="images per shard")
    p.add_argument("--size", type=_size, default=(256, 256), help="N or WxH (default 256)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--limit", type=int, help="use only the first N images of each split "
                   "(after sorting by name): a trial run")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes that resize (default: all cores)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (default: boto3's chain)")
    p.add_argument("--region", help="S3 region (default: boto3's chain)")
    p.add_argument("--tmp-dir", help="where shards are assembled before upload")
    p.add_argument("--overwrite", action="store_true",
                   help="replace shards left by a different run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the upload tool; the process exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.train and not args.val:
        parser().error("give --train and/or --val")
    opts = S3Options(endpoint_url=args.endpoint_url, region_name=args.region)
    client = opts.client()
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=args.bucket)
    except ClientError as e:
        log.error("%s", s3_error(e, args.bucket, None, opts))
        return 2

    try:
        if args.classes:
            classes = [line.split()[0] for line in Path(args.classes).read_text().splitlines()
                       if line.strip()]
        elif args.train and not args.train_labels:
            classes = class_names(args.train)
        elif args.val and not args.val_labels:
            classes = class_names(args.val)
        else:
            classes = []
        results = []
        for split, source, labels_file, prefix in (
                ("train", args.train, args.train_labels, args.train_prefix),
                ("val", args.val, args.val_labels, args.val_prefix)):
            if not source:
                continue
            labels = read_label_file(labels_file) if labels_file else None
            items, problems = index_source(source, labels, classes)
            for msg in problems:
                log.warning("%s", msg)
            if args.limit:
                items = sorted(items, key=lambda it: it.name)[:args.limit]
            log.info("%s: %d images from %s", split, len(items), source)
            result = upload_split(
                client, args.bucket, split, items, prefix=prefix,
                labels_prefix=args.labels_prefix, seed=args.seed, shard_size=args.shard_size,
                size=args.size, quality=args.quality, jobs=max(1, args.jobs),
                overwrite=args.overwrite, tmp_dir=args.tmp_dir,
                progress=not args.no_progress, options=opts)
            result.problems = problems
            results.append(result)
        if classes:
            body = ("\n".join(classes) + "\n").encode()
            key = f"{args.labels_prefix}classes.txt"
            _with_retries(f"upload s3://{args.bucket}/{key}",
                          lambda: client.put_object(Bucket=args.bucket, Key=key, Body=body))
    except (FileNotFoundError, FileExistsError, ValueError, PermissionError, OSError) as e:
        log.error("%s", e)
        return 1
    for r in results:
        print(f"{r.split}: {r.images} images in {r.shards} shards ({r.uploaded} uploaded, "
              f"{r.kept} already there), {len(r.skipped)} skipped; "
              f"labels: s3://{args.bucket}/{r.labels_key}")
        for name, why in r.skipped[:20]:
            print(f"  skipped {name}: {why}")
        if r.problems:
            print(f"  {len(r.problems)} problems with the sources (not uploaded):")
            for msg in r.problems[:20]:
                print(f"  {msg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
