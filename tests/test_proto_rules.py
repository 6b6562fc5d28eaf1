"""Caffe's include/exclude rules: the one implementation in ``sparknet.proto.rules``, the
DSL's typed form tested equal to it, and the places that once read only phases."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparknet.dsl import NetStateRule, Phase, ReLULayer
from sparknet.proto import caffe_pb2
from sparknet.proto.rules import active_phases, layer_active, phase_value, rule_met, solver_net_state

STAGES = ("a", "b", "deploy")
stage_sets = st.lists(st.sampled_from(STAGES), max_size=3, unique=True).map(tuple)
levels = st.integers(-2, 3)
rules = st.builds(NetStateRule, st.one_of(st.none(), st.sampled_from(Phase)),
                  min_level=st.one_of(st.none(), levels), max_level=st.one_of(st.none(), levels),
                  stage=stage_sets, not_stage=stage_sets)
states = st.tuples(st.sampled_from(Phase), levels, stage_sets)


@settings(max_examples=300, deadline=None)
@given(rule=rules, state=states)
def test_the_dsl_rule_and_the_proto_rule_agree(rule, state):
    phase, level, stages = state
    proto = ReLULayer("r", ["x"], include=[rule]).to_proto().include[0]
    assert rule.met_by(phase, level, stages) == rule_met(proto, phase, level, stages)


@settings(max_examples=300, deadline=None)
@given(chosen=st.lists(rules, max_size=3), exclude=st.booleans(), state=states)
def test_the_dsl_layer_and_the_proto_layer_are_kept_in_the_same_nets(chosen, exclude, state):
    phase, level, stages = state
    layer = ReLULayer("r", ["x"], **{"exclude" if exclude else "include": chosen})
    assert layer.active_in(phase, level, stages) == layer_active(layer.to_proto(), phase, level,
                                                                  stages)


def test_phases_are_named_or_numbered():
    assert phase_value("TRAIN") == phase_value("train") == phase_value(Phase.TRAIN) == caffe_pb2.TRAIN
    assert phase_value(1) == caffe_pb2.TEST
    for bad in ("VALIDATE", 2, True, None):
        with pytest.raises(ValueError, match="phase must be 'TRAIN' or 'TEST'"):
            phase_value(bad)


def _layer(text: str) -> caffe_pb2.LayerParameter:
    from google.protobuf import text_format

    return text_format.Parse(text, caffe_pb2.LayerParameter())


def test_level_and_stage_decide_as_caffe_does():
    staged = _layer('name: "d" include { phase: TEST stage: "deploy" }')
    assert not layer_active(staged, "TEST")
    assert layer_active(staged, "TEST", stages=["deploy", "a"])
    assert not layer_active(staged, "TRAIN", stages=["deploy"])
    leveled = _layer('name: "l" exclude { min_level: 2 }')
    assert active_phases(leveled) == ("TRAIN", "TEST")
    assert active_phases(leveled, [(2, ()), (0, ())]) == ("TEST",)


def test_the_solver_state_is_merged_over_the_nets():
    solver = caffe_pb2.SolverParameter()
    solver.net_param.state.stage.append("a")
    solver.net_param.state.level = 1
    solver.train_state.stage.append("b")
    solver.test_state.add(level=3)
    assert solver_net_state(solver, "TRAIN") == (1, ("a", "b"))
    assert solver_net_state(solver, "TEST") == (3, ("a",))


# -- the copies that read only phases, now on the one implementation ------------------------

_TWO_DATA_LAYERS = """
layer { name: "deploy_data" type: "Data" top: "data" top: "label"
        include { phase: TRAIN stage: "deploy" } transform_param { crop_size: 3 } }
layer { name: "data" type: "Data" top: "data" top: "label"
        include { phase: TRAIN } transform_param { crop_size: 5 } }
"""


def test_a_transform_of_a_layer_in_another_stage_is_not_taken():
    from sparknet.data.transform import Transformer

    assert Transformer.from_prototxt(_TWO_DATA_LAYERS, "TRAIN").crop_size == 5


def test_a_loss_in_another_level_sets_no_label_rule():
    from google.protobuf import text_format

    from sparknet.engine import CaffeNet

    net = text_format.Parse("""
        layer { name: "x" type: "Input" top: "x" top: "y"
                input_param { shape { dim: 4 dim: 10 } shape { dim: 4 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y"
                include { phase: TRAIN min_level: 1 } }""", caffe_pb2.NetParameter())

    def rules():
        solver = caffe_pb2.SolverParameter(net_param=net, base_lr=0.0, lr_policy="fixed")
        return [r.classes for r in CaffeNet(solver).label_rules("TRAIN")]

    assert rules() == []
    net.state.level = 1
    assert rules() == [10]


def test_a_data_layer_of_a_stage_the_solver_never_builds_is_no_shared_reader():
    from sparknet.engine import CaffeNet

    solver = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed")
    from google.protobuf import text_format

    text_format.Parse("""
        layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "d" type: "Data" top: "unused"
                include { stage: "never" } data_param { source: "/nowhere" backend: LMDB } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
                inner_product_param { num_output: 2 } }""", solver.net_param)
    net = CaffeNet(solver)
    assert net.input_names == ["x"] and net.test_input_names == ["x"]
