"""ImageNet tar shards on a real S3-compatible server (moto, on loopback): the loader,
its error handling, resumed downloads through a faulty connection, and the upload tool."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sparknet.data import S3Options, load_imagenet, synthetic
from sparknet.data.imagenet import tar_members, tar_minibatches
from sparknet.data.imagenet_to_s3 import main as upload_main
from sparknet.data.images import decode_image
from sparknet.io.s3 import S3ObjectReader, read_s3

ROOT = Path(__file__).resolve().parent.parent
SIZE = (40, 30)


def photos(n, seed=0, w=120, h=90):
    return [synthetic.photo_jpeg(w + 7 * i, h + 5 * i, seed + i) for i in range(n)]


@pytest.fixture()
def shards(s3, spark):
    """A bucket in SparkNet's layout with good and bad shards; returns (bucket, truth)."""
    s3.spark_env(spark)
    bucket = s3.bucket()
    imgs = photos(7)
    truth = {f"n{i:02d}_{i}.JPEG": (imgs[i], i % 3) for i in range(7)}
    names = list(truth)
    s0 = [(names[0], imgs[0]), (names[1], imgs[1]), (names[2], imgs[2])]
    s1 = [(names[3], imgs[3]),
          ("corrupt.JPEG", imgs[4][:len(imgs[4]) // 3]),   # a cut-off JPEG
          ("notes.txt", b"not an image"),                   # not an image at all
          ("extra/unlabelled.JPEG", imgs[0]),               # no line in train.txt
          (names[4], imgs[4])]
    full = synthetic.tar_bytes([(names[5], imgs[5]), (names[6], imgs[6])])
    start6 = 512 + -(-len(imgs[5]) // 512) * 512 + 512      # where names[6]'s bytes begin
    cut = start6 + len(imgs[6]) // 2                       # the shard ends inside names[6]
    s3.put(bucket, "ILSVRC2012_train/train.00000.tar", synthetic.tar_bytes(s0))
    s3.put(bucket, "ILSVRC2012_train/train.00001.tar", synthetic.tar_bytes(s1))
    s3.put(bucket, "ILSVRC2012_train/train.00002.tar", full[:cut])
    s3.put(bucket, "ILSVRC2012_train/train.00000.txt", b"sidecars are not shards")
    s3.put(bucket, "elsewhere/other.00000.tar", synthetic.tar_bytes(s0))
    lines = [f"{n} {lab}" for n, (_, lab) in truth.items()]
    lines += ["corrupt.JPEG 1", "notes.txt 2", "never_uploaded.JPEG 0"]
    s3.put(bucket, "train.txt", ("\n".join(lines) + "\n").encode())
    return bucket, truth


def test_shards_load_one_partition_each_with_bad_members_counted(s3, shards, spark):
    bucket, truth = shards
    data = load_imagenet(spark, bucket, size=SIZE, endpoint_url=s3.endpoint_url)
    assert data.shards == [f"ILSVRC2012_train/train.0000{i}.tar" for i in range(3)]
    assert data.rdd.getNumPartitions() == 3
    per_part = data.rdd.glom().collect()
    assert [len(p) for p in per_part] == [3, 2, 1]   # the truncated shard still gives its first
    got = [ex for part in per_part for ex in part]
    names = list(truth)
    order = [0, 1, 2, 3, 4, 5]
    for (array, label), i in zip(got, order):
        img, lab = truth[names[i]]
        assert label == float(lab)
        assert array.dtype == np.float32 and array.shape == (3, SIZE[1], SIZE[0])
        np.testing.assert_array_equal(array, decode_image(img, SIZE).transpose(2, 0, 1))
    rep = data.report()
    assert rep.images == 6 and rep.complete and rep.shards_done == 3
    bad = {(shard.rsplit("/", 1)[1], member): why for shard, member, why in rep.bad}
    assert set(bad) == {("train.00001.tar", "corrupt.JPEG"), ("train.00001.tar", "notes.txt"),
                        ("train.00002.tar", names[6])}
    assert "not an image" in bad[("train.00001.tar", "notes.txt")]
    assert "truncated" in bad[("train.00002.tar", names[6])]
    assert rep.unlabeled == [("ILSVRC2012_train/train.00001.tar", "extra/unlabelled.JPEG")]
    assert rep.missing == ["never_uploaded.JPEG"]  # listed, but in no shard
    # a second action over the same RDD does not double the counts
    assert data.rdd.count() == 6
    assert data.report().images == 6 and len(data.report().bad) == 3


def test_load_imagenet_returns_an_rdd_like_the_other_loaders(s3, shards, spark):
    from pyspark import RDD

    from sparknet.data import ImageNetData, digits_rdd

    bucket, _ = shards
    data = load_imagenet(spark, bucket, size=SIZE, max_shards=1, options=s3.options())
    assert isinstance(data, RDD) and isinstance(data, ImageNetData) and data.rdd is data
    assert data.map(lambda ex: ex[1]).collect() == [0.0, 1.0, 2.0]  # an RDD's own methods
    assert data.report().images == 3 and data.shards == ["ILSVRC2012_train/train.00000.tar"]
    assert digits_rdd(spark, "test", num_partitions=2).getNumPartitions() == 2


def test_transform_on_workers_and_bgr(s3, shards, spark):
    from sparknet.data import Transformer

    bucket, truth = shards
    t = Transformer(crop_size=24, mean=[100.0, 110.0, 120.0], phase="TEST", scale=0.5)
    data = load_imagenet(spark, bucket, size=SIZE, color="BGR", transform=t, max_shards=1,
                         options=s3.options())
    got = data.rdd.collect()
    assert len(data.shards) == 1 and len(got) == 3
    img = decode_image(truth[next(iter(truth))][0], SIZE, color="BGR").transpose(2, 0, 1)
    np.testing.assert_allclose(got[0][0], t(img[None])[0], rtol=1e-6)
    assert got[0][0].shape == (3, 24, 24)


def test_missing_bucket_prefix_labels_and_shard(s3, shards, spark):
    bucket, _ = shards
    opts = s3.options()
    with pytest.raises(FileNotFoundError, match="S3 bucket 'no-such-bucket' does not exist"):
        load_imagenet(spark, "no-such-bucket", options=opts)
    with pytest.raises(FileNotFoundError, match=f"no tar shards under s3://{bucket}/nothing/"):
        load_imagenet(spark, bucket, shard_prefix="nothing/", options=opts)
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/val.txt does not exist"):
        load_imagenet(spark, bucket, labels_key="val.txt", options=opts)
    s3.put(bucket, "bad.txt", b"a.JPEG 1\nb.JPEG one\n")
    with pytest.raises(ValueError, match=f"s3://{bucket}/bad.txt line 2: expected"):
        load_imagenet(spark, bucket, labels_key="bad.txt", options=opts)
    # a shard that disappears after listing fails its task, naming the key
    data = load_imagenet(spark, bucket, size=SIZE, options=opts)
    s3.client().delete_object(Bucket=bucket, Key="ILSVRC2012_train/train.00001.tar")
    with pytest.raises(Exception, match=f"s3://{bucket}/ILSVRC2012_train/train.00001.tar "
                                        "does not exist"):
        data.rdd.count()


def test_downloads_resume_after_cut_and_stalled_connections(s3, flaky_s3, spark):
    bucket = s3.bucket()
    body = os.urandom(300_000)
    s3.put(bucket, "blob.bin", body)
    flaky_s3.fail("blob.bin", after=50_000, mode="cut")
    flaky_s3.fail("blob.bin", after=120_000, mode="stall")
    opts = S3Options(endpoint_url=flaky_s3.endpoint_url, read_timeout=1.0, max_attempts=2)
    with S3ObjectReader(opts.client(), bucket, "blob.bin", options=opts) as r:
        got = r.read()
    assert got == body
    # resumed from the bytes already delivered, never restarted from 0
    assert flaky_s3.ranges[0] == "bytes=50000-"
    assert 50_000 < int(flaky_s3.ranges[1][6:-1]) <= 170_000
    # more failures in a row than the retry budget: a clear error, not a hang
    flaky_s3.fail("blob.bin", after=10, mode="cut", times=30)
    with pytest.raises(OSError, match=f"s3://{bucket}/blob.bin: reading failed at byte"):
        read_s3(f"s3://{bucket}/blob.bin", opts)
    # a shard cut mid-stream on a worker still yields every image
    s3.spark_env(spark)
    imgs = photos(4, seed=10)
    s3.put(bucket, "shards/train.00000.tar",
           synthetic.tar_bytes((f"i{i}.JPEG", b) for i, b in enumerate(imgs)))
    s3.put(bucket, "train.txt", b"".join(f"i{i}.JPEG {i}\n".encode() for i in range(4)))
    flaky_s3.gets.clear()
    flaky_s3._faults.clear()
    flaky_s3.fail("train.00000.tar", after=len(imgs[0]) + 3000, mode="cut")
    data = load_imagenet(spark, bucket, shard_prefix="shards/train.", size=SIZE,
                         options=S3Options(endpoint_url=flaky_s3.endpoint_url, read_timeout=5))
    assert [lab for _, lab in data.rdd.collect()] == [0.0, 1.0, 2.0, 3.0]
    assert data.report().bad == []
    assert sum(v for k, v in flaky_s3.gets.items() if "train.00000.tar" in k) == 2


def test_endpoint_from_boto3_chain(s3, monkeypatch):
    bucket = s3.bucket()
    s3.put(bucket, "k", b"hello")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3.endpoint_url)
    assert read_s3(f"s3://{bucket}/k") == b"hello"  # no endpoint given: the chain has it


# -- the upload tool -----------------------------------------------------------------------

def ilsvrc_train_tar(path: Path) -> dict[str, int]:
    """A tar of per-synset tars, like ILSVRC2012_img_train.tar; one corrupt JPEG inside."""
    expected = {}
    outer = io.BytesIO()
    with tarfile.open(fileobj=outer, mode="w") as tar:
        for label, synset in enumerate(["n01440764", "n01443537", "n01484850"]):
            members = []
            for i, (w, h) in enumerate([(500, 375), (130, 90), (64, 64), (700, 520)]):
                name = f"{synset}_{i}.JPEG"
                members.append((name, synthetic.photo_jpeg(w, h, label * 10 + i)))
                expected[name] = label
            if label == 1:
                members.append((f"{synset}_bad.JPEG", members[0][1][:400]))
            inner = synthetic.tar_bytes(members)
            info = tarfile.TarInfo(f"{synset}.tar")
            info.size = len(inner)
            tar.addfile(info, io.BytesIO(inner))
    path.write_bytes(outer.getvalue())
    return expected


def test_upload_tool_ilsvrc_layout_resume_and_load(tmp_path, s3, spark, capsys, caplog):
    s3.spark_env(spark)
    bucket = s3.bucket()
    expected = ilsvrc_train_tar(tmp_path / "train.tar")
    val_imgs = photos(3, seed=50, w=300, h=200)
    (tmp_path / "val.tar").write_bytes(synthetic.tar_bytes(
        (f"ILSVRC2012_val_{i:08d}.JPEG", b) for i, b in enumerate(val_imgs, 1)))
    (tmp_path / "val_labels.txt").write_text(
        "ILSVRC2012_val_00000001.JPEG 2\nILSVRC2012_val_00000002.JPEG 0\n"
        "ILSVRC2012_val_00000003.JPEG 1\nILSVRC2012_val_00000099.JPEG 1\n")
    args = ["--bucket", bucket, "--endpoint-url", s3.endpoint_url, "--train",
            str(tmp_path / "train.tar"), "--val", str(tmp_path / "val.tar"), "--val-labels",
            str(tmp_path / "val_labels.txt"), "--shard-size", "5", "--size", "32",
            "--jobs", "1", "--no-progress", "--tmp-dir", str(tmp_path)]
    assert upload_main(args) == 0
    out = capsys.readouterr().out
    assert "train: 12 images in 3 shards (3 uploaded, 0 already there), 1 skipped" in out
    assert "n01443537_bad.JPEG" in out
    assert "val: 3 images in 1 shards (1 uploaded" in out
    assert "the label list names ILSVRC2012_val_00000099.JPEG, which is not there" in out
    keys = s3.keys(bucket)
    shard_keys = [f"ILSVRC2012_train/train.0000{i}.tar" for i in range(3)]
    assert set(shard_keys + ["ILSVRC2012_val/val.00000.tar", "train.txt", "val.txt",
                             "classes.txt"]) <= set(keys)
    client = s3.client()
    train_txt = client.get_object(Bucket=bucket, Key="train.txt")["Body"].read().decode()
    lines = train_txt.split()
    listed = dict(zip(lines[::2], map(int, lines[1::2])))
    assert listed == expected                       # every good image, its synset's index
    assert list(listed) != sorted(listed)           # shuffled
    classes = client.get_object(Bucket=bucket, Key="classes.txt")["Body"].read().decode()
    assert classes.split() == ["n01440764", "n01443537", "n01484850"]
    shard = client.get_object(Bucket=bucket, Key=shard_keys[0])["Body"].read()
    members = list(tar_members(io.BytesIO(shard)))
    assert [m for m, _ in members] == list(listed)[:5]
    assert all(decode_image(b).shape == (32, 32, 3) for _, b in members)

    # it loads back: every image with its label, nothing skipped or missing
    data = load_imagenet(spark, bucket, size=(32, 32), options=s3.options())
    got = data.rdd.collect()
    assert [lab for _, lab in got] == [float(v) for v in listed.values()]
    rep = data.report()
    assert rep.images == 12 and not rep.bad and not rep.missing and not rep.unlabeled
    val = load_imagenet(spark, bucket, shard_prefix="ILSVRC2012_val/val.", labels_key="val.txt",
                        size=(32, 32), options=s3.options())
    assert sorted(lab for _, lab in val.rdd.collect()) == [0.0, 1.0, 2.0]

    # re-running resumes: nothing is uploaded twice
    stamps = {k: client.head_object(Bucket=bucket, Key=k)["ETag"] for k in shard_keys}
    assert upload_main(args) == 0
    assert "train: 12 images in 3 shards (0 uploaded, 3 already there)" in capsys.readouterr().out
    client.delete_object(Bucket=bucket, Key=shard_keys[1])
    assert upload_main(args) == 0
    assert "(1 uploaded, 2 already there)" in capsys.readouterr().out
    assert {k: client.head_object(Bucket=bucket, Key=k)["ETag"] for k in shard_keys} == stamps
    assert client.get_object(Bucket=bucket, Key="train.txt")["Body"].read().decode() == train_txt
    assert len([k for k in s3.keys(bucket, "ILSVRC2012_train/") if k.endswith(".tar")]) == 3

    # another seed into the same prefix is refused, naming the shard
    caplog.clear()
    assert upload_main(args + ["--seed", "1"]) == 1
    assert f"s3://{bucket}/ILSVRC2012_train/train.00000.tar was written by a different run" \
        in caplog.text
    # a missing bucket is a clear error
    assert upload_main(["--bucket", "no-such-bucket", "--endpoint-url", s3.endpoint_url,
                        "--train", str(tmp_path / "train.tar"), "--no-progress"]) == 2


def test_upload_tool_command_line_class_folders(tmp_path, s3):
    bucket = s3.bucket()
    for label, cls in enumerate(["cats", "dogs"]):
        d = tmp_path / "photos" / cls
        d.mkdir(parents=True)
        for i, data in enumerate(photos(3, seed=20 + 5 * label, w=600, h=400)):
            (d / f"{cls}{i}.jpg").write_bytes(data)
    (tmp_path / "photos" / "dogs" / "readme.txt").write_text("not an image, not listed")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "sparknet.data.imagenet_to_s3", "--bucket", bucket,
           "--endpoint-url", s3.endpoint_url, "--train", str(tmp_path / "photos"),
           "--train-prefix", "pets/", "--shard-size", "4", "--size", "48x40", "--jobs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "train: 6 images in 2 shards (2 uploaded, 0 already there), 0 skipped" in done.stdout
    assert "train images" in done.stderr  # the progress bar
    labels = s3.client().get_object(Bucket=bucket, Key="train.txt")["Body"].read().decode()
    assert sorted(labels.splitlines()) == [f"cats/cats{i}.jpg 0" for i in range(3)] + \
        [f"dogs/dogs{i}.jpg 1" for i in range(3)]
    shard = s3.client().get_object(Bucket=bucket, Key="pets/train.00000.tar")["Body"].read()
    assert all(decode_image(b).shape == (40, 48, 3) for _, b in tar_members(io.BytesIO(shard)))
    help_text = subprocess.run([sys.executable, "-m", "sparknet.data.imagenet_to_s3", "--help"],
                               capture_output=True, text=True, env=env, timeout=60).stdout
    assert "--shard-size" in help_text and "--endpoint-url" in help_text


def test_local_tar_minibatches(tmp_path):
    from sparknet.data import Transformer

    imgs = [synthetic.photo_jpeg(64, 64, 30 + i) for i in range(5)]
    members = [(f"m{i}.jpg", b) for i, b in enumerate(imgs)]
    members.insert(2, ("broken.jpg", imgs[0][:300]))
    synthetic.write_tar(tmp_path / "s.tar", members)
    labels = {f"m{i}.jpg": i for i in range(5)} | {"broken.jpg": 9}
    t = Transformer(crop_size=56, mirror=True, mean=[120.0, 120.0, 120.0], seed=0)
    batches = list(tar_minibatches(tmp_path / "s.tar", t, 4, labels))
    assert [b[0].shape for b in batches] == [(3, 3, 56, 56), (2, 3, 56, 56)]
    assert np.concatenate([b[1] for b in batches]).tolist() == [0, 1, 2, 3, 4]


def test_tar_minibatches_name_and_count_the_members_they_skip(tmp_path, caplog):
    from sparknet.data import Transformer
    from sparknet.data.imagenet import ShardReport

    imgs = [synthetic.photo_jpeg(64, 64, 40 + i) for i in range(4)]
    members = [("a.jpg", imgs[0]), ("notes.txt", b"not an image"), ("b.jpg", imgs[1]),
               ("stray.jpg", imgs[2]), ("c.jpg", imgs[3])]
    synthetic.write_tar(tmp_path / "s.tar", members)
    labels = {"a.jpg": 0, "notes.txt": 1, "b.jpg": 2, "c.jpg": 3}   # stray.jpg: no label
    report = ShardReport(shard="s.tar")
    t = Transformer(crop_size=56, seed=0)
    with caplog.at_level("WARNING", logger="sparknet.data.imagenet"):
        batches = list(tar_minibatches(tmp_path / "s.tar", t, 2, labels, report=report))
    assert np.concatenate([b[1] for b in batches]).tolist() == [0, 2, 3]
    assert [name for name, _ in report.bad] == ["notes.txt"]
    assert report.unlabeled == ["stray.jpg"]
    assert (report.images, report.members, report.complete) == (3, 5, True)
    assert "notes.txt" in caplog.text and "stray.jpg" in caplog.text
    assert f"{tmp_path / 's.tar'}: 3 images from 5 members, 2 skipped" in caplog.text

    # a shard cut short: the members before the cut train, the cut is named, nothing raises
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:data.index(imgs[3]) + 100])  # inside c.jpg
    report = ShardReport(shard="cut.tar")
    caplog.clear()
    with caplog.at_level("WARNING", logger="sparknet.data.imagenet"):
        got = list(tar_minibatches(tmp_path / "cut.tar", t, 2, labels, report=report))
    assert sum(len(y) for _, y in got) == report.images >= 1
    assert report.bad[-1][0] == "c.jpg" and "truncated" in report.bad[-1][1]
    assert f"{tmp_path / 'cut.tar'}: member c.jpg is truncated" in caplog.text


def test_the_old_module_sparknet_data_s3_still_imports_with_a_deprecation_warning():
    import importlib
    import sys

    sys.modules.pop("sparknet.data.s3", None)
    with pytest.warns(DeprecationWarning, match="sparknet.io.s3"):
        old = importlib.import_module("sparknet.data.s3")
    from sparknet.io import s3 as new

    assert old.S3Options is new.S3Options and old.read_s3 is new.read_s3
