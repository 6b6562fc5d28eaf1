"""An outer optimizer and tau schedules in real training runs on local[2]."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from sparknet.data import digits_rdd
from sparknet.engine import CaffeNet
from sparknet.models import lenet
from sparknet.proto import caffe_pb2
from sparknet.spark import EASGD, Outer, TauSchedule, train

SMALL = {"workers": 2, "sync_interval": 5, "test_interval": 0, "progress": False}


@pytest.fixture(scope="module")
def data(spark):
    return digits_rdd(spark, "train", num_partitions=2)


@pytest.fixture(scope="module")
def solver16():
    return lenet.solver(16)


def test_the_driver_applies_the_outer_step_to_the_workers_mean(spark, data, solver16):
    """One round with DiLoCo's step == the step applied to plain averaging's mean, bit for bit."""
    start = train(spark, solver16, data, rounds=0, **SMALL).weights.flat.copy()
    mean = train(spark, solver16, data, rounds=1, **SMALL).weights.flat
    got = train(spark, solver16, data, rounds=1, outer=Outer.nesterov(), **SMALL)
    want = start.copy()
    Outer.nesterov().step(want, mean, Outer.nesterov().init_state(want.size))
    assert np.array_equal(got.weights.flat, want)
    assert not np.array_equal(want, mean)  # the step is not the mean
    assert got.history[0]["tau"] == 5


def test_an_outer_optimizer_resumes_exactly_with_its_momentum(spark, data, solver16, tmp_path,
                                                              caplog):
    outer = Outer.nesterov(lr=0.5, momentum=0.8)
    full = train(spark, solver16, data, rounds=4, outer=outer, **SMALL)
    plain = train(spark, solver16, data, rounds=4, **SMALL)
    assert full.weights != plain.weights
    assert train(spark, solver16, data, rounds=4, outer="slowmo", **SMALL).weights \
        not in (full.weights, plain.weights)
    ck = tmp_path / "ck"
    train(spark, solver16, data, rounds=2, outer=outer, checkpoint_dir=ck,
          checkpoint_interval=2, **SMALL)
    saved = np.load(ck / "round-000002" / "outer.npy")
    assert saved.dtype == np.float32 and saved.size == full.weights.flat.size
    assert np.abs(saved).max() > 0
    state = json.loads((ck / "round-000002" / "state.json").read_text())
    assert state["config"]["outer"] == {"name": "nesterov", "lr": 0.5, "momentum": 0.8}
    resumed = train(spark, solver16, data, rounds=4, outer=outer, checkpoint_dir=ck,
                    checkpoint_interval=2, resume=True, **SMALL)
    assert [h["round"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.weights == full.weights
    with pytest.raises(ValueError, match=r"different configuration \(outer: checkpoint \{'lr': "
                                         r"0\.5, 'momentum': 0\.8, 'name': 'nesterov'\}, now "
                                         r"\{'name': 'average'\}\)"):
        train(spark, solver16, data, rounds=5, checkpoint_dir=ck, resume=True, **SMALL)
    # a corrupt momentum file is named, and the older checkpoint resumes to the same weights
    (ck / "round-000004" / "outer.npy").write_bytes(b"not numpy")
    with caplog.at_level(logging.WARNING, logger="sparknet.spark"):
        again = train(spark, solver16, data, rounds=4, outer=outer, checkpoint_dir=ck,
                      checkpoint_interval=2, resume=True, **SMALL)
    assert "round-000004/outer.npy is 9 bytes, but the checkpoint recorded" in caplog.text
    assert [h["round"] for h in again.history] == [1, 2, 3, 4]
    assert again.weights == full.weights


def test_a_tau_schedule_reaches_the_workers_and_their_solver_iteration(spark, data, solver16,
                                                                        tmp_path):
    sched = TauSchedule.post_local(rounds=2, tau=2)
    res = train(spark, solver16, data, rounds=4, tau_schedule=sched, checkpoint_dir=tmp_path,
                checkpoint_interval=4, **SMALL)
    assert [h["tau"] for h in res.history] == [2, 2, 5, 5]
    assert [h["images"] for h in res.history] == [2 * 2 * 16] * 2 + [2 * 5 * 16] * 2
    for p in (0, 1):  # each worker's solver ran the 14 steps: the lr schedule saw them all
        st = caffe_pb2.SolverState()
        st.ParseFromString((tmp_path / "round-000004" / "workers"
                            / f"part-{p:05d}.solverstate").read_bytes())
        assert st.iter == 14
    # the same taus as fixed ones give the same run: the iteration arithmetic agrees
    same = train(spark, solver16, data, rounds=3,
                 tau_schedule=TauSchedule.post_local(rounds=2, tau=5), **SMALL)
    assert same.weights == train(spark, solver16, data, rounds=3, **SMALL).weights


def test_an_adaptive_tau_follows_the_loss_and_resumes_exactly(spark, data, solver16, tmp_path):
    sched = TauSchedule.adaptive(interval=1, min_tau=2)
    opts = {**SMALL, "sync_interval": 8, "tau_schedule": sched}
    full = train(spark, solver16, data, rounds=4, **opts)
    taus = [h["tau"] for h in full.history]
    losses = [h["loss"] for h in full.history]
    assert taus == [sched.tau_at(r, 8, losses) for r in range(4)]
    assert taus[0] == 8 and min(taus) < 8  # the loss fell, and tau with it
    train(spark, solver16, data, rounds=2, checkpoint_dir=tmp_path, checkpoint_interval=2,
          **opts)
    resumed = train(spark, solver16, data, rounds=4, checkpoint_dir=tmp_path,
                    checkpoint_interval=2, resume=True, **opts)
    assert [h["tau"] for h in resumed.history] == taus
    assert resumed.weights == full.weights


def test_outer_options_are_checked_before_any_job(spark, data, solver16):
    with pytest.raises(ValueError, match=r"outer=nesterov\(lr=0\.7, momentum=0\.9\) needs "
                                         r"strategy='average': EASGD"):
        train(spark, solver16, data, rounds=1, strategy=EASGD(), outer="nesterov", **SMALL)
    with pytest.raises(ValueError, match=r"Outer\.slowmo: momentum must be in \[0, 1\)"):
        train(spark, solver16, data, rounds=1, outer={"name": "slowmo", "momentum": 1.5},
              **SMALL)
    with pytest.raises(ValueError, match="tau_schedule must be 'fixed'"):
        train(spark, solver16, data, rounds=1, tau_schedule="sometimes", **SMALL)
    # EASGD keeps its own rule, and a tau schedule works with it
    res = train(spark, solver16, data, rounds=2, strategy="easgd",
                tau_schedule=TauSchedule.post_local(rounds=1, tau=3), **SMALL)
    assert [h["tau"] for h in res.history] == [3, 5]
    net = CaffeNet(solver16)
    net.set_weights(res.weights.flat)


def test_the_estimator_trains_with_its_outer_and_tau_schedule_params(spark, solver16, tmp_path):
    from pyspark.ml.tuning import ParamGridBuilder

    from sparknet.data import digits_dataframe
    from sparknet.ml import CaffeEstimator

    df = digits_dataframe(spark, "train", num_partitions=2)
    est = CaffeEstimator(solver=solver16, featuresCol="data", workers=2, syncInterval=5,
                         rounds=2, testInterval=0, outer=Outer.nesterov(lr=0.6),
                         tauSchedule=TauSchedule.post_local(rounds=1, tau=3))
    assert est.getOuter() == Outer.nesterov(lr=0.6, momentum=0.9)
    model = est.fit(df)
    assert [h["tau"] for h in model.history] == [3, 5]
    # what train() gives with the same options: the Params reached it
    want = train(spark, solver16, df, rounds=2, seed=int(est.getSeed()) % 2 ** 31,
                 outer=Outer.nesterov(lr=0.6),
                 tau_schedule=TauSchedule.post_local(rounds=1, tau=3), **SMALL)
    assert model.weights == want.weights
    # the Params persist as JSON and vary in a grid like any other
    est.write().overwrite().save(str(tmp_path / "est"))
    again = CaffeEstimator.load(str(tmp_path / "est"))
    assert again.getOuter() == est.getOuter() and again.getTauSchedule() == est.getTauSchedule()
    grid = ParamGridBuilder().addGrid(est.outer, [Outer.average(), "slowmo"]).build()
    assert [est.copy(g).getOuter() for g in grid] == [Outer.average(), Outer.slowmo()]
    assert CaffeEstimator().getOuter() == Outer.average()
    assert CaffeEstimator().getTauSchedule() == TauSchedule.fixed()
    with pytest.raises(ValueError, match=r"Outer\.nesterov: lr must be finite and > 0"):
        CaffeEstimator(outer={"name": "nesterov", "lr": -1})

