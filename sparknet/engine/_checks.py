"""What the engine refuses before Caffe sees it: shared Data readers, bad class indices,
non-finite inputs (Caffe would hang, read out of bounds, or train on NaN)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sparknet.proto import caffe_pb2
from sparknet.proto.rules import PHASES, active_phases, solver_net_state


def check_data_readers(param: caffe_pb2.SolverParameter) -> None:
    """Refuse what would hang Caffe: one Data reader shared by TRAIN and TEST.

    Caffe keys its background database readers by layer name and source, so a
    Data layer active in both phases (or two of the same name and source)
    would have the TEST net wait forever for records the TRAIN net takes.
    """
    net = param.net_param if param.HasField("net_param") else param.train_net_param
    states = [solver_net_state(param, phase) for phase in PHASES]
    seen: dict[tuple[str, str], tuple[str, ...]] = {}
    for layer in net.layer:
        if layer.type != "Data":
            continue
        key = (layer.name, layer.data_param.source)
        phases = active_phases(layer, states)
        if not phases:
            continue  # in neither net (another stage or level): it reads nothing
        if len(phases) > 1 or key in seen:
            raise ValueError(f"Data layer '{layer.name}' reads {layer.data_param.source!r} in "
                             "both TRAIN and TEST; Caffe would share one reader between them "
                             "and hang. Give each phase its own Data layer with a different "
                             "name or source (or feed the net through Input layers)")
        seen[key] = phases


#: Layers that read a bottom as class (or row) indices, and which bottom. Caffe checks
#: these indices only in debug builds: out of range, they read and write out of bounds.
_INDEX_BOTTOM = {"SoftmaxWithLoss": 1, "Accuracy": 1, "MultinomialLogisticLoss": 1,
                 "InfogainLoss": 1, "HingeLoss": 1, "Embed": 0}
#: Layers that pass their (single) bottom's values on unchanged.
_SAME_VALUES = {"Split", "Reshape", "Flatten"}


@dataclass(frozen=True)
class IndexRule:
    """Input ``index`` (blob ``blob``) must hold indices in [0, classes) for ``layer``.

    The one label rule of sparknet: the engine checks every batch with it, the
    Spark trainer the statistics of the cached data, the ML stages find the
    label and scores blobs with it (:class:`~sparknet.engine.NetSignature`).
    ``scores`` is the blob the layer reads as scores, by the name the user gave
    it (``""`` for ``Embed``, whose ``classes`` is its ``input_dim``).
    """

    index: int
    blob: str
    layer: str
    layer_type: str
    classes: int
    scores: str
    ignore_label: int | None

    def _reads_as(self) -> str:
        what = "a class index" if self.layer_type != "Embed" else "an index into its rows"
        of = (f"of '{self.scores}', which has {self.classes} classes" if self.scores
              else f"(input_dim {self.classes})")
        return f"layer '{self.layer}' ({self.layer_type}) reads it as {what} {of}"

    def _allowed(self) -> str:
        allowed = f"integers in [0, {self.classes})"
        if self.ignore_label is not None:
            allowed += f" or {self.ignore_label} (its ignore_label)"
        return allowed

    def check(self, values: np.ndarray) -> None:
        """Raise ValueError naming the first value this layer cannot take."""
        if not values.size:
            return
        lo, hi = values.min(), values.max()  # NaN fails both comparisons below
        if lo >= 0 and hi < self.classes and np.array_equal(values, np.trunc(values)):
            return
        bad = ~((values >= 0) & (values < self.classes) & (values == np.trunc(values)))
        if self.ignore_label is not None:
            bad &= values != self.ignore_label
        where = np.flatnonzero(bad)
        if not where.size:
            return
        first = int(where[0])
        per_example = values.size // values.shape[0] if values.ndim else values.size
        raise ValueError(
            f"input blob '{self.blob}' holds {values.flat[first]:g} (example "
            f"{first // max(per_example, 1)}; {where.size} of {values.size} values are bad), "
            f"but {self._reads_as()}: it must hold {self._allowed()}")

    def range_error(self, lo: float, hi: float, integral: bool) -> str | None:
        """What is wrong with values from ``lo`` to ``hi`` (all integers or not); ``None``: fine.

        For checks made from a data set's statistics rather than its values (the
        Spark trainer's cached partitions); ``ignore_label`` may be either end.
        """
        ignore = self.ignore_label
        ok_lo = lo >= 0 or (ignore is not None and lo == ignore)
        ok_hi = hi < self.classes or (ignore is not None and hi == ignore)
        if integral and ok_lo and ok_hi:
            return None
        bad = "non-integer values" if not integral else f"values from {lo:g} to {hi:g}"
        return (f"input blob '{self.blob}' has {bad}, but {self._reads_as()}: it must hold "
                f"{self._allowed()}")


def index_rules(layers: Sequence[tuple], shapes: Mapping[str, tuple[int, ...]],
                 inputs: Sequence[str]) -> list[IndexRule]:
    """The input blobs a built net reads as indices, traced through Split/Reshape/Flatten."""
    def source(blob: str, at: int, through: set[str]) -> tuple[str, int]:
        """The blob (and the layer that wrote it) that ``blob``, read by layer ``at``, copies."""
        while True:  # back to the layer that last wrote the blob before `at`
            at = next((i for i in range(at - 1, -1, -1) if blob in layers[i][3]), -1)
            if at < 0 or layers[at][1] not in through or not layers[at][2]:
                return blob, at
            blob = layers[at][2][0]

    rules = []
    for position, (name, kind, bottoms, _, raw) in enumerate(layers):
        if kind not in _INDEX_BOTTOM or len(bottoms) <= _INDEX_BOTTOM[kind]:
            continue
        blob, at = source(bottoms[_INDEX_BOTTOM[kind]], position, _SAME_VALUES)
        if at < 0 or layers[at][1] != "Input" or blob not in inputs:
            continue
        param = caffe_pb2.LayerParameter.FromString(raw)
        ignore = None
        if kind == "Embed":
            classes, scores = param.embed_param.input_dim, ""
        else:
            shape = shapes[bottoms[0]]
            scores = source(bottoms[0], position, {"Split"})[0]  # the name the user gave
            if kind in ("SoftmaxWithLoss", "Accuracy"):
                axis = (param.softmax_param.axis if kind == "SoftmaxWithLoss"
                        else param.accuracy_param.axis)
                classes = shape[axis % len(shape)] if shape else 1
                rule = param.loss_param if kind == "SoftmaxWithLoss" else param.accuracy_param
                if rule.HasField("ignore_label"):
                    ignore = int(rule.ignore_label)
            else:  # Caffe's dim = count / num
                classes = math.prod(shape[1:]) if shape else 1
        rules.append(IndexRule(list(inputs).index(blob), blob, name, kind, int(classes),
                                scores, ignore))
    return rules


def nonfinite_inputs(names: Sequence[str], arrays: Sequence[np.ndarray | None]) -> str:
    """Which input blobs hold NaN or inf, and where; ``""`` when none does."""
    found = []
    for name, values in zip(names, arrays):
        if values is None or np.isfinite(values).all():
            continue
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        first = int(np.flatnonzero(~np.isfinite(values))[0])
        per_example = values.size // values.shape[0] if values.ndim and values.shape[0] else 1
        kinds = " and ".join(f"{n} {k}" for n, k in ((nan, "NaN"), (inf, "inf")) if n)
        found.append(f"input blob '{name}' holds {kinds} (first in example "
                     f"{first // max(per_example, 1)})")
    return "; ".join(found)


def finite(values: np.ndarray | None) -> bool:
    """No NaN or inf (two reductions, no temporary array)."""
    return values is None or not values.size or bool(
        np.isfinite(values.min()) and np.isfinite(values.max()))
