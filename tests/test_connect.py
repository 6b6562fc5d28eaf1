"""sparknet from a Spark Connect client: train, predict, fit, save, load, transform, SQL.

One Spark Connect server for the module (``SparkConnectServer`` from the jar pyspark
ships, ``local[2]``, on a free loopback port, started and stopped here), and one
client process that runs the flows of ``tests/connect_client.py`` against it, with
no JVM and no SparkContext of its own. Each flow's figures are compared with the
same run on the suite's classic session: digits LeNet ``train`` reaches the same
weights exactly (so the same accuracy, >= 97 %), checkpoints resume to those
weights, ``predict``/``featurize`` give the classic scores, and the Pipeline's
fit, save, load, transform and ``caffe_udf`` in SQL agree with the classic fit.
``bench/connect.py --smoke`` runs here too, its client on the same server.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(900)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import connect_client  # noqa: E402  (tests/connect_client.py: the flows and their settings)

FLOWS = ("train", "pipeline", "refusals")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def connect_server(tmp: Path):
    """A Spark Connect server (local[2]) on a free loopback port: yields its sc:// URL."""
    import pyspark

    home = Path(pyspark.__file__).parent
    port = _free_port()
    env = dict(os.environ, SPARK_HOME=str(home), PYSPARK_PYTHON=sys.executable,
               SPARK_LOCAL_IP="127.0.0.1")
    log = open(tmp / "connect-server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(home / "bin" / "spark-submit"), "--class",
         "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", "local[2]",
         "--conf", f"spark.connect.grpc.binding.port={port}",
         "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
         "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=2",
         "--conf", "spark.python.worker.faulthandler.enabled=true"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300  # a hang guard: a busy machine takes its time
        while True:
            if proc.poll() is not None:
                raise RuntimeError("the Spark Connect server exited:\n"
                                   + (tmp / "connect-server.log").read_text()[-4000:])
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the Spark Connect server did not listen within 300 s")
            time.sleep(0.5)
        yield f"sc://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def connect_url(tmp_path_factory):
    """The module's Spark Connect server: the client flows and the bench's smoke run use it."""
    with connect_server(tmp_path_factory.mktemp("connect-server")) as url:
        yield url


@pytest.fixture(scope="module")
def connect_runs(tmp_path_factory, connect_url):
    """Every flow run once from a Connect client: flow -> (results, folder)."""
    tmp = tmp_path_factory.mktemp("connect")
    proc = subprocess.run([sys.executable, str(HERE / "connect_client.py"), connect_url,
                           str(tmp), *FLOWS], capture_output=True, text=True, timeout=1500,
                          check=False)
    runs = {}
    for flow in FLOWS:
        path = tmp / flow / f"{flow}.json"
        assert path.is_file(), f"client exited {proc.returncode}:\n{proc.stderr[-6000:]}"
        runs[flow] = (json.loads(path.read_text()), tmp / flow)
    return runs


def _run(connect_runs, flow: str) -> tuple[dict, Path]:
    result, folder = connect_runs[flow]
    assert "error" not in result, result.get("error")
    return result, folder


@pytest.fixture(scope="module")
def classic_train(spark):
    """The train flow's run on the suite's classic session."""
    from sparknet.data import digits_dataframe
    from sparknet.models import lenet
    from sparknet.spark import train

    return train(spark, lenet.solver(batch_size=64), digits_dataframe(spark, "train"),
                 test_data=digits_dataframe(spark, "test"), progress=False,
                 **connect_client.TRAIN)


def test_train_from_connect_gives_the_classic_sessions_weights_and_accuracy(
        connect_runs, classic_train):
    result, folder = _run(connect_runs, "train")
    weights = np.load(folder / "train_weights.npy")
    assert np.array_equal(weights, classic_train.weights.flat)
    assert result["test"] == classic_train.history[-1]["test"]
    assert result["test"]["accuracy"] >= 0.97
    assert result["exchange"] == "connect"
    assert "weights travel through each round's Spark Connect query" in result["log"]
    # every round ran each partition where its data is cached: no reruns, no state resets
    assert all("rerun" not in r and "state_reset" not in r for r in result["history"])


def test_a_connect_run_resumed_from_its_checkpoint_reaches_the_uninterrupted_weights(
        connect_runs):
    """Interrupted after round 3 and resumed, fed as (x, y) arrays: the same weights."""
    result, folder = _run(connect_runs, "train")
    assert np.array_equal(np.load(folder / "resumed_weights.npy"),
                          np.load(folder / "train_weights.npy"))
    # rounds 1-3 came from the checkpoint, measured times and all: they did not run again
    # (the full run added round 3's checkpoint-writing time to its record after saving it)
    head = result["resumed_history"][:3]
    full = [dict(r, seconds=dict(r["seconds"])) for r in result["history"][:3]]
    assert full[2]["seconds"].pop("checkpoint") > 0
    assert head == full
    assert [r["round"] for r in result["resumed_history"]] == [1, 2, 3, 4, 5, 6]


def test_predict_and_featurize_from_connect_score_as_on_the_classic_session(
        spark, connect_runs, classic_train):
    from sparknet.data import digits_dataframe
    from sparknet.models import lenet
    from sparknet.spark import featurize, predict

    result, folder = _run(connect_runs, "train")
    test_df = digits_dataframe(spark, "test")
    rows = predict(spark, lenet.solver(batch_size=64), classic_train, test_df,
                   blobs=["ip2"]).collect()
    np.testing.assert_array_equal(np.load(folder / "predict_ip2.npy"),
                                  np.asarray([r.ip2 for r in rows], np.float32))
    assert result["predict_labels"] == [r.label for r in rows]
    feats = featurize(spark, lenet.solver(batch_size=64), classic_train, test_df, blobs=["ip1"])
    assert result["featurize_schema"] == feats.schema.simpleString() == \
        "struct<label:float,ip1:vector>"
    np.testing.assert_array_equal(np.asarray(result["featurize_first"], np.float32),
                                  feats.first().ip1.toArray().astype(np.float32))


def test_pipeline_fit_save_load_transform_and_sql_udf_from_connect(spark, connect_runs):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import SQLTransformer

    from sparknet.data import digits_dataframe
    from sparknet.ml import CaffeEstimator, caffe_udf
    from sparknet.models import lenet

    result, folder = _run(connect_runs, "pipeline")
    features = SQLTransformer(statement="SELECT data AS features, label FROM __THIS__")
    est = CaffeEstimator(solver=lenet.solver(batch_size=64), featuresCol="features",
                         labelCol="label", **connect_client.PIPELINE)
    classic = Pipeline(stages=[features, est]).fit(digits_dataframe(spark, "train"))
    assert np.array_equal(np.load(folder / "pipeline_weights.npy"),
                          classic.stages[-1].weights.flat)
    rows = classic.transform(digits_dataframe(spark, "test")).select("prediction").collect()
    classic_predictions = [r.prediction for r in rows]
    # the loaded model predicts what the fitted one did, which is the classic fit's
    assert result["predictions"] == result["predictions_before_save"] == classic_predictions
    accuracy = np.mean(np.asarray(result["predictions"]) == np.asarray(result["labels"]))
    assert accuracy >= 0.95
    assert result["sql_argmax"] == [int(p) for p in result["predictions"]]
    # caffe_udf's scores in the client's SQL are the classic model's, bit for bit
    scores = caffe_udf(classic.stages[-1])
    classic_ip2 = [r.ip2 for r in digits_dataframe(spark, "test")
                   .select(scores("data").alias("ip2")).collect()]
    np.testing.assert_array_equal(np.load(folder / "sql_ip2.npy"),
                                  np.asarray(classic_ip2, np.float32))
    assert all(abs(s - 1.0) < 1e-6 for s in result["probability_sums"])
    assert {"metadata", "stages"} <= set(result["saved"])


def test_what_needs_rdds_says_so_in_one_line_naming_the_alternative(connect_runs):
    result, _ = _run(connect_runs, "refusals")
    assert result["digits_rdd"] == (
        "ConnectUnsupportedError: digits_rdd needs a SparkContext (RDDs), which a Spark "
        "Connect session does not have; digits_dataframe gives the same examples as a "
        "DataFrame")
    assert result["socket"] == (
        "ValueError: exchange='socket' needs a classic SparkSession (the driver's socket or "
        "Spark's broadcasts); a Spark Connect session moves the weights inside its queries: "
        "leave exchange='auto'")
    assert result["ring"] == (
        "ValueError: exchange='ring' needs a classic SparkSession (its barrier tasks meet at "
        "the driver's exchange); a Spark Connect session moves the weights inside its queries: "
        "leave exchange='auto'")
    assert result["big"] == (
        "ValueError: train: the weights (19 MB, 4,770,010 parameters) are more than the 16 MiB "
        "(4,194,304 parameters) sparknet sends inside a Spark Connect query (every task holds "
        "a copy on the server); use a classic SparkSession for a model this large")


#: What bench/connect.py --smoke must print (tests/test_bench_smoke.py's form: one
#: regular expression per line).
BENCH_LINES = (r"^images/s, Connect / classic: \d+\.\d+x",
               r"^target connect_vs_classic: \d+\.\d+ \(>= 0\.8\) (met|NOT met)$")


def test_the_connect_bench_smoke_run_against_the_modules_server_prints_its_ratio_and_target(
        connect_url):
    """bench/connect.py --smoke as a user runs it, its client on this module's server.

    Here rather than in tests/test_bench_smoke.py: ``--remote`` spares the bench's
    Connect half starting a server of its own (a JVM and its warm-up).
    """
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    done = subprocess.run([sys.executable, str(HERE.parent / "bench" / "connect.py"), "--smoke",
                           "--remote", connect_url], cwd=HERE.parent, env=env,
                          capture_output=True, text=True, timeout=400, check=False)
    tail = f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert done.returncode == 0, tail
    for pattern in BENCH_LINES:
        assert re.search(pattern, done.stdout, re.MULTILINE), f"no line /{pattern}/\n{tail}"
    assert f"the Connect server at {connect_url}" in done.stdout, tail


def _readme_connect_block() -> str:
    text = (HERE.parent / "README.md").read_text()
    section = text.split("\n## Spark Connect\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_connect_section_runs_as_written(tmp_path):
    """As a user runs it: the venv's python, nothing activated, a local server in-process."""
    with socket.socket() as s:  # remote("local[...]") serves on Connect's default port
        assert s.connect_ex(("127.0.0.1", 15002)) != 0, "port 15002 is taken: another server"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYSPARK_", "VIRTUAL_ENV", "PYTHONPATH", "SPARK_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != Path(sys.executable).parent)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    if "SPARK_SUBMIT_OPTS" in os.environ:  # the suite's JVM options (tests/conftest.py)
        env["SPARK_SUBMIT_OPTS"] = os.environ["SPARK_SUBMIT_OPTS"]
    script = tmp_path / "connect_readme.py"
    script.write_text(_readme_connect_block() +
                      '\nprint("CONNECT-ACCURACY", result.history[-1]["test"]["accuracy"])\n')
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert float(done.stdout.split("CONNECT-ACCURACY")[1].split()[0]) >= 0.97
    assert "|label|prediction|" in done.stdout.replace(" ", "")
    assert (tmp_path / "runs" / "connect" / "history.jsonl").is_file()
    assert (tmp_path / "runs" / "connect-model" / "metadata").is_dir()


@pytest.mark.parametrize(("options", "message"), [
    ({"exchange": "spark"}, "exchange='spark' needs a classic SparkSession (the driver's socket "
     "or Spark's broadcasts); a Spark Connect session moves the weights inside its queries: "
     "leave exchange='auto'"),
    ({"reduction": "tree"}, "reduction='tree' sums on the executors through RDDs, which a Spark "
     "Connect session does not have: leave reduction='auto'"),
])
def test_every_other_exchange_a_connect_run_cannot_use_is_refused_naming_auto(options, message):
    """The refusals the client flow does not run: the same check, before any job."""
    from sparknet.spark import connect

    run = dict({"exchange": "auto", "reduction": "auto", "num_params": 431080}, **options)
    with pytest.raises(ValueError) as caught:
        connect.check_run(**run)
    assert str(caught.value) == message
    connect.check_run("auto", "auto", 431080)  # LeNet with the defaults goes ahead
