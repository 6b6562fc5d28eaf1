"""Decoding benchmark: the training-time image path against a per-image PIL baseline.

1. Training-time path: tar shards of 256x256 JPEGs -> float32 CHW minibatches
   of 64 (mean image subtracted, random 227x227 crop, random mirror), on one
   core. sparknet: ``tar_minibatches`` (JPEGs decoded a batch at a time into
   one reused uint8 buffer with libjpeg-turbo, then ``Transformer`` over the
   whole batch: per image, crop, mirror, CHW and float in one copy, the mean
   window subtracted in place, into a recycled output batch once the caller
   has let go of it). Baseline, per image: ``PIL.Image.open(...).convert("RGB")``,
   ``np.asarray``, to float, subtract the mean, crop, mirror, transpose;
   ``np.stack`` per batch. Both read the members with the same tar reader.
   Two figures: the first pass (every JPEG decoded), and a later pass, where
   sparknet works from the decoded uint8 images that the Spark trainer keeps
   on the worker between rounds while the baseline decodes again. The
   decode alone (libjpeg-turbo into the batch buffer) is printed too: it
   bounds the first pass from above.
2. The upload tool's resize of full-size photos (about 500x375 and
   1600x1200) to 256x256 (``decode_image``: reduced-DCT decoding where the
   source is at least twice the target, then the resize) against plain
   ``PIL.Image.open(...).convert("RGB").resize((256, 256))`` with the same
   (bilinear) filter.

The images are generated here (photo-like, JPEG quality 90); nothing is
downloaded. Each measurement alternates baseline and sparknet rounds (one
shard of 128 images per round for the training path) and keeps the fastest
round of each, the one least disturbed by other work on the machine. The
first-pass training-path ratio is printed last (target >= 2x).
"""
from __future__ import annotations

import io
import os
import tarfile
import time

import numpy as np
from PIL import Image

from sparknet.data import Transformer, synthetic
from sparknet.data.imagenet import tar_members, tar_minibatches
from sparknet.data.images import decode_batch, decode_image, has_fast_jpeg

BATCH = 64
CROP = 227
N_TRAIN = 512
SHARD = 128
ROUNDS_TRAIN = 24
ROUNDS_RESIZE = 5


def one_core() -> str:
    """Pin this process to one CPU, so the figures are per core."""
    if hasattr(os, "sched_setaffinity"):
        cpu = sorted(os.sched_getaffinity(0))[-1]
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned"


def make_shards(n: int, per_shard: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    jpegs = [synthetic.photo_jpeg(256, 256, rng) for _ in range(n)]
    return [synthetic.tar_bytes((f"img{i:05d}.JPEG", jpegs[i])
                                for i in range(s, min(s + per_shard, n)))
            for s in range(0, n, per_shard)]


def baseline_epoch(shards: list[bytes], mean_hwc: np.ndarray, rng: np.random.Generator
                   ) -> int:
    count = 0
    for shard in shards:
        batch = []
        for _, data in tar_members(io.BytesIO(shard)):
            a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float32)
            a = a - mean_hwc
            y, x = rng.integers(0, 256 - CROP + 1, 2)
            a = a[y:y + CROP, x:x + CROP]
            if rng.random() < 0.5:
                a = a[:, ::-1]
            batch.append(a.transpose(2, 0, 1))
            if len(batch) == BATCH:
                out = np.stack(batch)
                count += len(out)
                batch = []
        if batch:
            count += len(np.stack(batch))
    return count


def sparknet_epoch(shards: list[bytes], transformer: Transformer) -> int:
    count = 0
    for shard in shards:
        for x, _y in tar_minibatches(io.BytesIO(shard), transformer, BATCH):
            assert x.dtype == np.float32 and x.shape[1:] == (3, CROP, CROP)
            count += len(x)
    return count


def decode_only_epoch(shards: list[bytes]) -> int:
    """The first pass's decoding alone: JPEGs into the reused uint8 NHWC buffer."""
    count = 0
    buf = None
    for shard in shards:
        datas = [d for _, d in tar_members(io.BytesIO(shard))]
        for i in range(0, len(datas), BATCH):
            buf = decode_batch(datas[i:i + BATCH], layout="NHWC", out=buf)
            count += len(buf)
    return count


def sparknet_cached_epoch(decoded: np.ndarray, transformer: Transformer) -> int:
    """A later pass: minibatches from the decoded uint8 NHWC images kept on the worker."""
    count = 0
    for i in range(0, len(decoded), BATCH):
        x = transformer(decoded[i:i + BATCH], layout="NHWC")
        count += len(x)
    return count


def best_rate(runs: list[tuple[str, object]], n_expected: int, rounds: int) -> dict[str, float]:
    """Alternate the runs ``rounds`` times; images per second of each one's fastest round.

    The best round is the one least disturbed by whatever else the machine
    was doing, for baseline and sparknet alike.
    """
    best = {name: float("inf") for name, _ in runs}
    for _ in range(rounds):
        for name, fn in runs:
            t0 = time.perf_counter()
            n = fn()
            dt = time.perf_counter() - t0
            assert n == n_expected, (name, n, n_expected)
            best[name] = min(best[name], dt)
    return {name: n_expected / dt for name, dt in best.items()}


def training_path() -> tuple[float, float, float, float]:
    shards = make_shards(N_TRAIN, SHARD)
    rng = np.random.default_rng(1)
    mean_chw = (rng.random((3, 256, 256), dtype=np.float32) * 40 + 100).astype(np.float32)
    mean_hwc = np.ascontiguousarray(mean_chw.transpose(1, 2, 0))
    transformer = Transformer(crop_size=CROP, mirror=True, mean=mean_chw, phase="TRAIN", seed=0)
    # both paths compute the same thing: check one image with the same (centre) crop
    with tarfile.open(fileobj=io.BytesIO(shards[0])) as tar:
        first = tar.extractfile(tar.getmembers()[0]).read()
    ref = np.asarray(Image.open(io.BytesIO(first)).convert("RGB")).astype(np.float32) - mean_hwc
    centre = Transformer(crop_size=CROP, mean=mean_chw, phase="TEST")
    ours = centre(decode_image(first)[None], layout="NHWC")[0]
    off = (256 - CROP) // 2
    err = np.abs(ours - ref[off:off + CROP, off:off + CROP].transpose(2, 0, 1)).max()
    assert err <= 2.0, f"decoders disagree by {err}"  # libjpeg-turbo IDCT rounding only
    turn = iter(range(10**9))
    cached = [decode_batch([d for _, d in tar_members(io.BytesIO(sh))], layout="NHWC")
              for sh in shards]
    first = best_rate([("baseline", lambda: baseline_epoch([shards[next(turn) % len(shards)]],
                                                           mean_hwc, rng)),
                       ("sparknet", lambda: sparknet_epoch([shards[next(turn) % len(shards)]],
                                                           transformer))],
                      SHARD, ROUNDS_TRAIN)
    later = best_rate([("sparknet", lambda: sparknet_cached_epoch(
        cached[next(turn) % len(cached)], transformer)),
                       ("decode", lambda: decode_only_epoch([shards[next(turn) % len(shards)]]))],
                      SHARD, ROUNDS_TRAIN)
    return first["baseline"], first["sparknet"], later["sparknet"], later["decode"]


def resize_path(w: int, h: int, n: int) -> tuple[float, float]:
    jpegs = [synthetic.photo_jpeg(w, h, i) for i in range(n)]

    def plain() -> int:
        for data in jpegs:
            np.asarray(Image.open(io.BytesIO(data)).convert("RGB")
                       .resize((256, 256), Image.Resampling.BILINEAR))
        return n

    def ours() -> int:
        for data in jpegs:
            decode_image(data, (256, 256))
        return n

    rates = best_rate([("plain", plain), ("ours", ours)], n, ROUNDS_RESIZE)
    return rates["plain"], rates["ours"]


def main() -> None:
    where = one_core()
    decoder = "simplejpeg (libjpeg-turbo)" if has_fast_jpeg() else "Pillow"
    print(f"bench/decode.py: one core ({where}); JPEG decoder: {decoder}")
    for w, h, n in ((500, 375, 60), (1600, 1200, 12)):
        base, fast = resize_path(w, h, n)
        print(f"resize {w}x{h} -> 256x256 (bilinear), {n} photos: plain PIL {base:7.1f} img/s, "
              f"upload tool {fast:7.1f} img/s, ratio {fast / base:.2f}x")
    base, fast, later, decode = training_path()
    print(f"training path: {N_TRAIN} 256x256 JPEGs in tar shards -> float32 (64, 3, {CROP}, "
          f"{CROP}) minibatches (mean image, random crop, mirror):")
    print(f"  per-image PIL baseline            {base:7.1f} img/s")
    print(f"  sparknet, later passes (decoded images kept on the worker) {later:7.1f} img/s, "
          f"{later / base:.2f}x the baseline")
    print(f"  JPEG decode alone (libjpeg-turbo, tar read included) {decode:7.1f} img/s, "
          f"{decode / base:.2f}x the baseline: the first pass's ceiling")
    print(f"  sparknet, first pass              {fast:7.1f} img/s")
    print(f"training path ratio, first pass (sparknet / baseline, target >= 2x): "
          f"{fast / base:.2f}x")


if __name__ == "__main__":
    main()
