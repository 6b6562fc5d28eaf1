"""The outer optimizer's step and the tau schedules, as pure functions (no Spark)."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from sparknet.spark import Outer, TauSchedule
from sparknet.spark.outer import _BLOCK

N = 2 * _BLOCK + 12345  # three slices, the last one short


def _vectors(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(n).astype(np.float32)
    mean = (w - 0.01 * rng.standard_normal(n)).astype(np.float32)
    return w, mean


def _reference(outer: Outer, w: np.ndarray, mean: np.ndarray, m: np.ndarray) -> None:
    """The update in whole-vector numpy, the same operations in the same order."""
    delta = np.subtract(w, mean, dtype=mean.dtype)
    m *= np.float32(outer.momentum)
    np.add(m, delta, out=m, casting="same_kind")
    update = delta + np.multiply(m, outer.momentum, dtype=delta.dtype) \
        if outer.name == "nesterov" else m
    np.subtract(w, np.multiply(update, outer.lr, dtype=update.dtype), out=w,
                casting="same_kind")


def test_average_takes_the_mean_exactly():
    w, mean = _vectors(0)
    Outer.average().step(w, mean, None)
    assert np.array_equal(w, mean)
    total = np.stack([_vectors(1)[0], _vectors(2)[0], _vectors(3)[0]]).astype(np.float64)
    w2 = np.empty(N, np.float32)
    s = total.sum(0)
    Outer.average().step_from_sum(w2, s.copy(), 3, Outer.average().init_state(N))
    assert np.array_equal(w2, (s / 3).astype(np.float32))  # what the driver always did
    assert Outer.average().init_state(N) is None


@pytest.mark.parametrize("outer", [Outer.nesterov(), Outer.slowmo(lr=0.9, momentum=0.6)],
                         ids=["nesterov", "slowmo"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_momentum_steps_follow_their_rule_bit_for_bit_across_slices(outer, dtype):
    w, _ = _vectors(4)
    m = outer.init_state(N)
    ref_w, ref_m = w.copy(), np.zeros(N, np.float32)
    for r in range(3):
        mean = (w - 0.02 * np.random.default_rng(10 + r).standard_normal(N)).astype(dtype)
        outer.step(w, mean.copy(), m)
        _reference(outer, ref_w, mean, ref_m)
        assert np.array_equal(w, ref_w) and np.array_equal(m, ref_m)


def test_nesterov_is_dilocos_update_in_float64_terms():
    """Two rounds against the formulas, in float64 (DiLoCo: lr 0.7, momentum 0.9)."""
    w, mean1 = _vectors(5, 1000)
    mean2 = (mean1 + 0.003).astype(np.float32)
    outer = Outer.nesterov()
    m = outer.init_state(1000)
    x = w.astype(np.float64)
    outer.step(w, mean1, m)
    d = x - mean1
    mom = d
    x = x - 0.7 * (d + 0.9 * mom)
    assert np.allclose(w, x, rtol=0, atol=1e-6)
    d = w.astype(np.float64) - mean2
    mom = 0.9 * mom + d
    x = w.astype(np.float64) - 0.7 * (d + 0.9 * mom)
    outer.step(w, mean2, m)
    assert np.allclose(w, x, rtol=0, atol=1e-6)
    assert np.allclose(m, mom, rtol=0, atol=1e-6)


def test_slowmo_without_momentum_and_unit_lr_is_averaging():
    w, mean = _vectors(6)
    outer = Outer.slowmo(lr=1.0, momentum=0.0)
    outer.step(w, mean, outer.init_state(N))
    assert np.allclose(w, mean, rtol=0, atol=1e-6)


def test_the_step_is_deterministic_and_leaves_the_mean_alone():
    a, mean = _vectors(7)
    b = a.copy()
    keep = mean.copy()
    ma, mb = Outer.nesterov().init_state(N), Outer.nesterov().init_state(N)
    Outer.nesterov().step(a, mean, ma)
    Outer.nesterov().step(b, mean, mb)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert np.array_equal(mean, keep)


def test_the_step_allocates_no_model_sized_temporaries():
    n = 4_000_000  # 16 MB of float32
    w, mean = _vectors(8, n)
    total = mean.astype(np.float64) * 4
    outer = Outer.nesterov()
    m = outer.init_state(n)
    tracemalloc.start()
    try:
        outer.step_from_sum(w, total, 4, m)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * _BLOCK * 8, peak  # a few slices, far below one 16 MB copy


@pytest.mark.parametrize(("make", "words"), [
    (lambda: Outer.nesterov(momentum=1.0), r"Outer\.nesterov: momentum must be in \[0, 1\), "
                                           r"got 1\.0"),
    (lambda: Outer.slowmo(lr=0), r"Outer\.slowmo: lr must be finite and > 0, got 0"),
    (lambda: Outer.nesterov(lr=float("nan")), r"Outer\.nesterov: lr must be finite"),
    (lambda: Outer.slowmo(momentum=-0.1), r"Outer\.slowmo: momentum must be in \[0, 1\)"),
    (lambda: Outer("adam"), r"Outer: name must be one of average, nesterov, slowmo, "
                            r"got 'adam'"),
    (lambda: Outer("average", lr=0.5), r"Outer\.average takes no lr or momentum"),
    (lambda: Outer.parse("adam"), r"outer must be 'average', 'nesterov' \(or 'diloco'\), "
                                  r"'slowmo' or an Outer value, got 'adam'"),
    (lambda: Outer.parse({"name": "nesterov", "beta": 0.9}), r"outer: a dict needs 'name'"),
])
def test_bad_outer_values_name_the_field(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_outer_values_parse_from_names_and_their_own_description():
    assert Outer.parse(None) == Outer.parse("average") == Outer.average()
    assert Outer.parse("DiLoCo") == Outer.nesterov(lr=0.7, momentum=0.9)
    for o in (Outer.average(), Outer.nesterov(lr=0.5, momentum=0.8), Outer.slowmo()):
        assert Outer.parse(o.describe()) == o
    assert str(Outer.nesterov()) == "nesterov(lr=0.7, momentum=0.9)"
    with pytest.raises(TypeError, match="lr and momentum must be numbers"):
        Outer.nesterov(lr="fast")
    with pytest.raises(TypeError, match="outer must be .* an Outer value or a dict, got float"):
        Outer.parse(0.7)
    with pytest.raises(ValueError, match="needs its float32 momentum buffer"):
        Outer.nesterov().step(*_vectors(9, 10), None)


# -- tau schedules -----------------------------------------------------------------------------

def test_fixed_and_post_local_taus_and_where_each_round_starts():
    fixed = TauSchedule.fixed()
    assert [fixed.tau_at(r, 50, []) for r in range(3)] == [50, 50, 50]
    assert fixed.first_step(7, 50, []) == 350
    post = TauSchedule.post_local(rounds=3, tau=2)
    taus = [post.tau_at(r, 50, []) for r in range(6)]
    assert taus == [2, 2, 2, 50, 50, 50]
    assert [post.first_step(r, 50, []) for r in range(7)] == \
        [sum(taus[:r]) for r in range(6)] + [6 + 150]


def test_the_adaptive_tau_follows_the_loss():
    sched = TauSchedule.adaptive(interval=2, min_tau=4)
    losses = [2.0, 1.6, 0.5, 0.5, 0.125, 0.125, 0.001, 0.001]
    taus = [sched.tau_at(r, 50, losses) for r in range(8)]
    # rounds 3-4: mean of rounds 1-2 = 1.8, sqrt(1.8 / 2) * 50 = 47.4 -> 48;
    # rounds 5-6: sqrt(0.5 / 2) * 50 = 25; rounds 7-8: sqrt(0.0625) * 50 = 12.5 -> 13
    assert taus == [50, 50, 48, 48, 25, 25, 13, 13]
    assert sched.tau_at(8, 50, losses) == 4  # sqrt(0.0005) * 50 = 1.1: min_tau
    assert [sched.first_step(r, 50, losses) for r in range(9)] == \
        [sum(taus[:r]) for r in range(9)]
    assert sched.first_step(8, 50, losses) == 272
    with pytest.raises(ValueError, match="round 5 needs the losses of rounds 1..4, got 3"):
        sched.tau_at(4, 50, losses[:3])


def test_tau_schedules_parse_and_name_bad_fields():
    for s in (TauSchedule.fixed(), TauSchedule.post_local(rounds=4, tau=5),
              TauSchedule.adaptive(interval=3, min_tau=2)):
        assert TauSchedule.parse(s.describe()) == s
    assert TauSchedule.parse("post-local") == TauSchedule.post_local()
    assert TauSchedule.parse("AdaComm") == TauSchedule.adaptive()
    with pytest.raises(ValueError, match=r"TauSchedule\.post_local: tau must be >= 1, got 0"):
        TauSchedule.post_local(tau=0)
    with pytest.raises(ValueError, match=r"TauSchedule\.adaptive: interval must be >= 1"):
        TauSchedule.adaptive(interval=0)
    with pytest.raises(ValueError, match=r"tau_schedule must be 'fixed'.*got 'often'"):
        TauSchedule.parse("often")
    with pytest.raises(TypeError, match="whole numbers, got 2.5"):
        TauSchedule.post_local(rounds=2.5)
    with pytest.raises(ValueError, match="a dict needs 'name'"):
        TauSchedule.parse({"name": "fixed", "tau": 3})
