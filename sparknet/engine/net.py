"""CaffeNet: a real Caffe solver and its TEST net, driven from Python."""
from __future__ import annotations

import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparknet._util import shape_str
from sparknet.engine import _caffe
from sparknet.engine._caffe import TEST, TRAIN, CaffeError
from sparknet.engine._checks import (
    IndexRule,
    check_data_readers,
    finite,
    index_rules,
    nonfinite_inputs,
)
from sparknet.engine.signature import NetSignature
from sparknet.engine.weights import WeightCollection, check_layouts
from sparknet.io import atomic_file
from sparknet.proto import as_message, caffe_pb2
from sparknet.proto.rules import phase_value

Batch = Mapping[str, Any] | Sequence[Any]

logger = logging.getLogger(__name__)

_LOG_LEVELS = {"INFO": 0, "WARNING": 1, "ERROR": 2, "FATAL": 3}
_log_level_set = False
#: A URI with a scheme (``s3://``, ``hdfs://``): read by the caller's ``fetch``.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_LR_POLICIES = {"fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"}


def set_log_level(level: str | int) -> None:
    """Caffe's log level: ``"INFO"``, ``"WARNING"`` (default), ``"ERROR"`` or 0-3."""
    global _log_level_set
    value = _LOG_LEVELS.get(str(level).upper(), level)
    if not isinstance(value, int) or not 0 <= value <= 3:
        raise ValueError(f"unknown Caffe log level {level!r}; use one of {list(_LOG_LEVELS)}")
    _caffe.set_log_level(value)
    _log_level_set = True


def set_blas_threads(threads: int) -> None:
    """Threads the BLAS libcaffe is linked to (OpenBLAS or MKL) uses for Caffe's CPU
    math (a Spark task: its cores); :func:`build_info` shows which BLAS that is."""
    _caffe.set_blas_threads(int(threads))


def blas_threads() -> int:
    """Threads Caffe's BLAS uses (as the library itself reports)."""
    return _caffe.blas_threads()


def cuda_build() -> bool:
    """Whether the Caffe sparknet was built with supports CUDA."""
    return _caffe.cuda_build()


def solver_proto(solver: Any) -> caffe_pb2.SolverParameter:
    """A ``caffe_pb2.SolverParameter`` from one, its bytes, or a DSL object."""
    return as_message(solver, caffe_pb2.SolverParameter)


def _engine_solver(param: caffe_pb2.SolverParameter) -> caffe_pb2.SolverParameter:
    """The solver as the engine runs it: the caller drives testing and snapshots."""
    if not (param.HasField("net_param") or param.HasField("train_net_param")
            or param.HasField("net") or param.HasField("train_net")):
        raise ValueError("the solver has no net: set net_param (the DSL and ProtoLoader do)")
    if param.lr_policy not in _LR_POLICIES:
        raise ValueError(f"the solver's lr_policy is {param.lr_policy!r}; Caffe knows "
                         f"{', '.join(sorted(_LR_POLICIES))}")
    check_data_readers(param)
    p = caffe_pb2.SolverParameter()
    p.CopyFrom(param)
    for field in ("test_iter", "test_net", "test_net_param", "test_state"):
        p.ClearField(field)
    p.test_interval = 0
    p.test_initialization = False
    p.snapshot = 0
    p.display = 0
    return p


def _numeric(name: str, value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"input blob '{name}': dtype {a.dtype} cannot be fed to Caffe "
                         "(needs numbers; float32 is copied as is)")
    return np.ascontiguousarray(a, dtype=np.float32)


def _fits(given: tuple[int, ...], blob: tuple[int, ...]) -> bool:
    """Same shape, up to size-1 axes (a (64,) label feeds a (64, 1) blob)."""
    return given == blob or [d for d in given if d != 1] == [d for d in blob if d != 1]


def _out_buffer(out: Any, num_params: int, what: str) -> np.ndarray:
    """``out`` if the engine can copy the parameters straight into it.

    Anything else raises: ``TypeError`` for an object that is no numpy array,
    ``ValueError`` naming what ``out`` should be and what it is.
    """
    expected = f"a writable C-contiguous 1-d float32 array of {num_params} values"
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{what} must be {expected}, got {type(out).__name__}")
    problem = None
    if out.dtype != np.float32:
        problem = f"dtype {out.dtype}"
    elif out.ndim != 1 or out.size != num_params:
        problem = f"shape {shape_str(out.shape)}"
    elif not out.flags.c_contiguous:
        problem = "a non-contiguous array"
    elif not out.flags.writeable:
        problem = "a read-only array"
    if problem:
        raise ValueError(f"{what} must be {expected}, got {problem}")
    return out


def _flat_weights(flat: np.ndarray, num_params: int) -> np.ndarray:
    """A flat weight array as the engine reads it: C-contiguous float32 (copied only if not)."""
    if flat.ndim != 1 or flat.size != num_params:
        raise ValueError(f"a flat weight array must be 1-d with {num_params} values (the net's "
                         f"num_params), got shape {shape_str(flat.shape)}")
    if flat.dtype.kind not in "iuf":
        raise ValueError(f"a flat weight array must hold real numbers, got dtype {flat.dtype}")
    return np.ascontiguousarray(flat, np.float32)


class CaffeNet:
    """A Caffe solver (TRAIN net) plus a TEST net sharing its weights.

    ``solver`` is a ``caffe_pb2.SolverParameter`` with the net inline
    (``net_param``) or a DSL ``SolverParam`` (anything with ``to_proto()``).
    The net is fed through Caffe ``Input`` layers: each training step copies
    the next batch into the input blobs, then runs one solver step. Testing and
    snapshots are driven from Python (``test_*`` and ``snapshot`` fields of the
    solver are ignored by the engine).

    ``gpu``: a CUDA device number, or ``None`` for the CPU. ``blas_threads``:
    OpenBLAS threads for CPU math (process-wide).
    """

    def __init__(self, solver: Any, *, gpu: int | None = None,
                 blas_threads: int | None = None):
        if not _log_level_set:
            set_log_level(os.environ.get("SPARKNET_CAFFE_LOG", "WARNING"))
        if blas_threads is not None:
            set_blas_threads(blas_threads)
        self.solver_param = solver_proto(solver)
        if gpu is not None and not cuda_build():
            raise ValueError(f"gpu={gpu} asked for, but this Caffe was built without CUDA; "
                             "rebuild with SPARKNET_CUDA=1 on a machine with nvcc")
        self._gpu = gpu
        self._engine = _caffe.Engine_(_engine_solver(self.solver_param).SerializeToString(),
                                      -1 if gpu is None else int(gpu))
        self._inputs = {TRAIN: self._engine.inputs(TRAIN)}
        self._index_rules: dict[int, list[IndexRule]] = {}
        self._layout: tuple | None = None
        #: Why the last :meth:`train` stopped at a refused step (``None``: it did not).
        self.last_refusal: str | None = None

    # -- structure -----------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        """Names of the TRAIN net's input blobs, in feeding order."""
        return [n for n, _ in self._inputs[TRAIN]]

    @property
    def output_names(self) -> list[str]:
        """Output blobs of the TRAIN net (its losses, usually)."""
        return [n for n, _ in self._engine.outputs(TRAIN)]

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input blob name -> shape (batch first) of the TRAIN net."""
        return dict(self._inputs[TRAIN])

    @property
    def test_input_names(self) -> list[str]:
        """Names of the TEST net's input blobs, in the net's blob order."""
        inputs = dict(self._test_inputs())
        return [n for n in self.blob_names("TEST") if n in inputs]

    @property
    def test_input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Input blob name -> shape (batch first) of the TEST net."""
        return dict(self._test_inputs())

    @property
    def test_output_names(self) -> list[str]:
        """Output blobs of the TEST net (accuracy and loss, usually)."""
        return [n for n, _ in self._engine.outputs(TEST)]

    def blob_names(self, phase: str = "TEST") -> list[str]:
        """Every blob of the TRAIN or TEST net, in the net's order."""
        return self._engine.blob_names(self._phase(phase))

    def blob_shapes(self, phase: str = "TEST") -> dict[str, tuple[int, ...]]:
        """Blob name -> shape, as Caffe computed it, for the TRAIN or TEST net."""
        return dict(self._engine.blob_shapes(self._phase(phase)))

    @property
    def iteration(self) -> int:
        """The solver's iteration count (steps taken, or restored)."""
        return self._engine.iteration

    def seed(self, value: int) -> None:
        """Reseed Caffe's random numbers (dropout masks...) for the steps that follow.

        Caffe draws from one generator per thread, seeded once when a solver is
        built. Reseeding before a run of steps makes those steps draw the same
        numbers in whichever process runs them (``sparknet.spark.train``
        reseeds every partition's every round).
        """
        if not 0 <= int(value) < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {value}")
        self._engine.seed(int(value))

    @property
    def mode(self) -> str:
        """``"cpu"`` or ``"gpu"``."""
        return "cpu" if self._gpu is None else "gpu"

    @property
    def device(self) -> int | None:
        """The GPU this net runs on (``None`` on the CPU)."""
        return self._gpu

    @staticmethod
    def _phase(phase: str | int) -> int:
        return phase_value(phase)  # caffe_pb2's TRAIN/TEST are the engine's

    def _test_inputs(self) -> list[tuple[str, tuple[int, ...]]]:
        if TEST not in self._inputs:
            self._inputs[TEST] = self._engine.inputs(TEST)
        return self._inputs[TEST]

    # -- feeding -------------------------------------------------------------------
    def _arrays(self, net: int, batch: Batch, *, require_all: bool,
                allow_resize: bool) -> tuple[list[np.ndarray | None], int | None]:
        """Validated float32 arrays in input order (None: leave the blob as is)."""
        inputs = self._inputs[TRAIN] if net == TRAIN else self._test_inputs()
        names = [n for n, _ in inputs]
        if isinstance(batch, Mapping):
            unknown = [k for k in batch if k not in names]
            if unknown:
                raise ValueError(f"no input blob named '{unknown[0]}' "
                                 f"(input blobs: {', '.join(names) or 'none'})")
            given = [batch.get(n) for n in names]
        elif isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
            if len(batch) > len(names):
                raise ValueError(f"a batch of {len(batch)} arrays for {len(names)} input blobs "
                                 f"({', '.join(names)})")
            given = list(batch) + [None] * (len(names) - len(batch))
        else:
            raise TypeError(f"a batch is a dict of input blob name -> array or a tuple of "
                            f"arrays, got {type(batch).__name__}")
        arrays: list[np.ndarray | None] = []
        batch_size = None
        for (name, shape), value in zip(inputs, given):
            if value is None:
                if require_all:
                    raise ValueError(f"the batch has no array for input blob '{name}'")
                arrays.append(None)
                continue
            a = _numeric(name, value)
            if a.size == 0:  # Caffe would divide by the batch size (SIGFPE)
                raise ValueError(f"input blob '{name}': the batch gives an empty array, shape "
                                 f"{shape_str(a.shape)}")
            if not _fits(a.shape, shape):
                resizable = (allow_resize and a.ndim >= 1 and len(shape) >= 1
                             and _fits(a.shape[1:], shape[1:]))
                if not resizable:
                    raise ValueError(f"input blob '{name}' has shape {shape_str(shape)}, "
                                     f"the batch gives {shape_str(a.shape)}")
                if batch_size is not None and a.shape[0] != batch_size:
                    raise ValueError(f"input blob '{name}': batch of {a.shape[0]}, "
                                     f"other inputs have {batch_size}")
                batch_size = a.shape[0]
            arrays.append(a)
        if batch_size is not None:
            self._resize(net, batch_size)
        self._check_indices(net, arrays)
        return arrays, batch_size

    def _check_indices(self, net: int, arrays: Sequence[np.ndarray | None]) -> None:
        """Refuse labels (indices) out of range before Caffe reads past its arrays."""
        for rule in self.label_rules(net):
            values = arrays[rule.index]
            if values is not None:
                rule.check(values)

    def label_rules(self, phase: str | int = "TRAIN") -> list[IndexRule]:
        """The input blobs a layer of the phase's net reads as class (or row) indices.

        One :class:`IndexRule` per such layer (``SoftmaxWithLoss``, ``Accuracy``,
        ``MultinomialLogisticLoss``, ``InfogainLoss``, ``HingeLoss``, ``Embed``),
        the input traced back through ``Split``/``Reshape``/``Flatten``, with the
        number of classes as Caffe counts them. :meth:`train`, :meth:`test` and
        :meth:`forward` check every batch with these rules.
        """
        net = self._phase(phase)
        rules = self._index_rules.get(net)
        if rules is None:
            inputs = self._inputs[TRAIN] if net == TRAIN else self._test_inputs()
            rules = self._index_rules[net] = index_rules(
                self._engine.layers(net), dict(self._engine.blob_shapes(net)),
                [n for n, _ in inputs])
        return list(rules)

    def layer_tops(self, layer_type: str, phase: str | int = "TEST") -> list[str]:
        """The blobs the phase's layers of type ``layer_type`` write, in net order."""
        return [top for _, kind, _, tops, _ in self._engine.layers(self._phase(phase))
                if kind == layer_type for top in tops]

    def signature(self) -> NetSignature:
        """What the nets take and give: inputs, shapes, outputs, label rules, layout."""
        return NetSignature.of(self)

    def _resize(self, net: int, n: int) -> None:
        inputs = self._inputs[TRAIN] if net == TRAIN else self._test_inputs()
        if all(not shape or shape[0] == n for _, shape in inputs):
            return
        self._engine.reshape_inputs(net, [(n, *shape[1:]) if shape else None
                                          for _, shape in inputs])
        self._inputs[net] = self._engine.inputs(net)
        self._index_rules.pop(net, None)

    # -- training and testing --------------------------------------------------------
    def train(self, steps: int, batches: Iterable[Batch] | None = None) -> np.ndarray:
        """Run ``steps`` solver steps, feeding one batch per step; return the losses.

        ``batches`` yields a dict (input blob name -> array) or a tuple in input
        order per step; it may be omitted for nets that read their own data
        (a Caffe ``Data`` layer). The GIL is released while Caffe computes.

        A step whose batch holds NaN or inf, or whose forward pass gives a
        non-finite loss, is not applied: Caffe runs no backward pass and no
        update, so the weights, the solver's history and :attr:`iteration` stay
        as they were before it. That loss (NaN for a refused batch) is the last
        value returned and training stops there (the result is shorter than
        ``steps`` unless it was the last step): ``losses[-1]`` is
        finite exactly when every step was applied. On the CPU, a max-pooling
        window of nothing but NaN also stops a step, with the loss NaN, even if
        the loss came out finite: Caffe's backward pass would write out of
        bounds there. The net stays usable: finite batches train on from the
        weights before the refused step. The warning logged, also kept in
        :attr:`last_refusal`, names the input blobs that held NaN or inf, if any.

        Labels are checked before Caffe sees them: an input blob that a layer
        reads as class indices (``SoftmaxWithLoss``, ``Accuracy``,
        ``MultinomialLogisticLoss``, ``InfogainLoss``, ``HingeLoss``; ``Embed``'s
        row indices), directly or through ``Split``/``Reshape``/``Flatten``,
        must hold integers in [0, classes) or that layer's ``ignore_label``;
        otherwise ``ValueError`` names the blob, the value, the layer and the
        number of classes, and the step is not run. ``test`` and ``forward``
        check their batches the same way.
        """
        self.last_refusal = None
        steps = int(steps)
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        losses = np.empty(steps, np.float32)
        if batches is None:
            if self._inputs[TRAIN]:
                raise ValueError(f"the net has input blobs ({', '.join(self.input_names)}); "
                                 "give batches to train on")
            for i in range(steps):
                losses[i] = loss = self._engine.step([])
                if not math.isfinite(loss):
                    return self._stopped(losses, i, steps, [])
            return losses
        it = iter(batches)
        for i in range(steps):
            try:
                batch = next(it)
            except StopIteration:
                raise ValueError(f"the batches ran out after {i} of {steps} steps") from None
            arrays, _ = self._arrays(TRAIN, batch, require_all=True, allow_resize=False)
            if not all(finite(a) for a in arrays):
                # refused before Caffe runs: a NaN or inf input can give a finite
                # loss and still fill the gradients (and then the weights) with NaN
                losses[i] = np.nan
                return self._stopped(losses, i, steps, arrays)
            losses[i] = loss = self._engine.step(arrays)
            if not math.isfinite(loss):
                return self._stopped(losses, i, steps, arrays)
        return losses

    def _stopped(self, losses: np.ndarray, i: int, steps: int,
                 arrays: Sequence[np.ndarray | None]) -> np.ndarray:
        step = f"training step {i + 1} of {steps} (iteration {self.iteration})"
        cause = nonfinite_inputs(self.input_names, arrays)
        if cause:
            self.last_refusal = f"{step} was refused: {cause}"
        else:
            weights = ("the weights are finite: a learning rate too high, or a loss that "
                       "overflows?" if np.isfinite(self.get_weights().flat).all()
                       else "the weights hold NaN or inf")
            self.last_refusal = f"{step} gave a loss of {losses[i]} ({weights})"
        logger.warning("%s; the step was not applied and training stopped", self.last_refusal)
        return losses[:i + 1]

    def test(self, batches: Iterable[Batch], max_batches: int | None = None
             ) -> dict[str, float | np.ndarray]:
        """Score the current weights with the TEST net.

        Returns the mean of each TEST output blob over the batches, keyed by blob
        name (``{"accuracy": 0.97, "loss": 0.1}``), each batch weighted by its
        size; a smaller last batch is fine. Non-scalar outputs give arrays.
        """
        totals: dict[str, np.ndarray] = {}
        seen = 0
        for k, batch in enumerate(batches):
            if max_batches is not None and k >= max_batches:
                break
            arrays, n = self._arrays(TEST, batch, require_all=False, allow_resize=True)
            self._engine.forward(TEST, arrays)
            if n is None:
                n = next((s[0] for _, s in self._test_inputs() if s), 1)
            for name in self.test_output_names:
                value = self._engine.blob(TEST, name).astype(np.float64) * n
                totals[name] = totals[name] + value if name in totals else value
            seen += n
        if not seen:
            raise ValueError("test() got no batches")
        return {name: (float(t.reshape(-1)[0]) / seen if t.size == 1 else (t / seen))
                for name, t in totals.items()}

    def forward(self, inputs: Batch, blobs: Sequence[str] | None = None,
                phase: str = "TEST") -> dict[str, np.ndarray]:
        """One forward pass; returns copies of the requested blobs (default: outputs).

        The batch dimension may differ from the net's: the inputs are reshaped.
        """
        net = self._phase(phase)
        arrays, _ = self._arrays(net, inputs, require_all=False, allow_resize=True)
        self._engine.forward(net, arrays)
        if blobs is None:
            blobs = [n for n, _ in self._engine.outputs(net)]
        elif isinstance(blobs, str):
            blobs = [blobs]
        return {name: self._engine.blob(net, name) for name in blobs}

    # -- weights -------------------------------------------------------------------
    @property
    def weight_layout(self) -> tuple:
        """``((layer, (shape, ...)), ...)``: each learnable layer's blob shapes, in order."""
        if self._layout is None:
            self._layout = self._engine.param_layout()
        return self._layout

    @property
    def num_params(self) -> int:
        """The number of values in all learnable parameters (``get_weights().num_params``)."""
        return self._engine.num_params

    def get_weights(self, out: np.ndarray | WeightCollection | None = None) -> WeightCollection:
        """A copy of every learnable layer's parameters.

        With ``out``, nothing model-sized is allocated: the parameters are copied
        into it and the collection returned views it. ``out`` is a writable,
        C-contiguous, 1-d float32 array of :attr:`num_params` values (the result
        is then ``WeightCollection.from_flat(net.weight_layout, out)``), or a
        ``WeightCollection`` of this net's layout (filled and returned itself).
        """
        layout = self.weight_layout
        if out is None:
            flat = np.empty(self.num_params, np.float32)
        elif isinstance(out, WeightCollection):
            check_layouts(layout, out.layout)
            self._engine.read_params(_out_buffer(out.flat, self.num_params, "out.flat"))
            return out
        else:
            flat = _out_buffer(out, self.num_params, "out")
        self._engine.read_params(flat)
        return WeightCollection.from_flat(layout, flat)

    def set_weights(self, weights: WeightCollection | Mapping[str, Sequence[Any]] | np.ndarray
                    ) -> None:
        """Overwrite the parameters.

        ``weights`` is a ``WeightCollection`` or a mapping (layer name -> arrays)
        whose layout matches this net's exactly, or a flat 1-d array of
        :attr:`num_params` values in :attr:`weight_layout` order (what
        ``get_weights().flat`` holds). A C-contiguous float32 array is read in
        place, without a copy, and may be read-only (a ``np.memmap`` with
        ``mode="r"``, say); other real dtypes are converted.
        """
        if isinstance(weights, np.ndarray):
            self._engine.write_params(_flat_weights(weights, self.num_params))
            return
        if not isinstance(weights, WeightCollection):
            weights = WeightCollection(weights)
        check_layouts(self.weight_layout, weights.layout)
        self._engine.write_params(np.ascontiguousarray(weights.flat, np.float32))

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write the weights as a ``.caffemodel``, Caffe's own format.

        The one ``.caffemodel`` writer of sparknet: atomic (a temporary file in
        the same folder, renamed into place, so an older file at ``path``
        stays whole until the new one is complete), missing folders made, and a
        write that fails (a full disk, a quota) raises an ``OSError`` naming
        ``path`` and leaves no temporary file behind.
        """
        self._write(path, lambda fd: self._engine.write_weights(fd, False))

    @staticmethod
    def _write(path: str | os.PathLike, write: Callable[[int], int]) -> None:
        """``write(fd)`` (the engine's: 0 or an errno) into ``path``, atomically."""
        with atomic_file(path) as f:
            error = write(f.fileno())
            if error:  # atomic_file names the file and removes its temporary
                raise OSError(error, os.strerror(error))

    def load_weights(self, source: str | os.PathLike | bytes) -> None:
        """Copy weights from a ``.caffemodel``, a local path or the file's bytes (by
        layer name, as Caffe does).

        Every layer is checked before any is copied: a file that does not fit
        raises ``ValueError`` naming each mismatching layer and changes nothing.
        """
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._load_weights_bytes(bytes(source), "the .caffemodel given as bytes")
            return
        self._load_weights_file(Path(source), os.fspath(source))

    def _load_weights_file(self, path: Path, what: str) -> None:
        try:
            self._engine.load_weights(os.fspath(path))
        except CaffeError as e:  # Caffe could not read it: say which file
            raise CaffeError(f"{what}: {e}") from None

    def use_weights(self, weights: Any, *, fetch: Callable[[str], bytes] | None = None) -> bool:
        """Set the weights from any form sparknet accepts; ``False`` for ``None`` (the
        net keeps its filler weights).

        ``weights`` is a ``WeightCollection``, a mapping of layer name to
        arrays, an object holding a ``WeightCollection`` as ``.weights`` (a
        ``TrainResult``, a ``CaffeModel``), a flat float32 array, the bytes of a
        ``.caffemodel``, its local path, or a URI (``s3://bucket/key``) that
        ``fetch`` reads into bytes (the engine knows no storage; the caller's
        layer does).
        """
        if weights is None:
            return False
        held = getattr(weights, "weights", None)
        if isinstance(held, WeightCollection):
            weights = held
        if isinstance(weights, (WeightCollection, Mapping, np.ndarray)):
            self.set_weights(weights)
        elif isinstance(weights, (bytes, bytearray, memoryview)):
            self.load_weights(weights)
        elif isinstance(weights, (str, os.PathLike)):
            name = os.fspath(weights)
            if _URI.match(name):
                if fetch is None:
                    raise ValueError(f"{name}: a URI, and no way to read it was given (fetch=)")
                self._load_weights_bytes(fetch(name), name)
            elif not Path(name).is_file():
                raise FileNotFoundError(f"{name}: no such .caffemodel")
            else:
                self.load_weights(name)
        else:
            raise TypeError("weights must be a WeightCollection, a mapping of layer name to "
                            "arrays, a TrainResult, .caffemodel bytes or a path to one, got "
                            f"{type(weights).__name__}")
        return True

    def _load_weights_bytes(self, data: bytes, what: str) -> None:
        with tempfile.TemporaryDirectory(prefix="sparknet-weights-") as d:
            path = Path(d) / "weights.caffemodel"
            path.write_bytes(data)
            self._load_weights_file(path, what)

    def snapshot(self, prefix: str | os.PathLike) -> tuple[Path, Path]:
        """Caffe's snapshot: ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate``.

        The files Caffe's ``Solver::Snapshot`` writes (the weights with their
        gradients when the solver sets ``snapshot_diff``; ``.h5`` files for
        ``snapshot_format: HDF5``), each written as :meth:`save_weights` writes:
        atomically, and an ``OSError`` naming the file when it cannot be.
        """
        prefix = os.fspath(prefix)
        Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        stem = f"{prefix}_iter_{self.iteration}"
        if self.solver_param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            self._engine.snapshot_hdf5(prefix)
            return Path(stem + ".caffemodel.h5"), Path(stem + ".solverstate.h5")
        model, state = Path(stem + ".caffemodel"), Path(stem + ".solverstate")
        diff = bool(self.solver_param.snapshot_diff)
        self._write(model, lambda fd: self._engine.write_weights(fd, diff))
        self._write(state, lambda fd: self._engine.write_solverstate(fd, os.fspath(model)))
        return model, state

    def restore(self, solverstate: str | os.PathLike) -> None:
        """Continue from a ``.solverstate``: weights, solver history, iteration."""
        try:
            self._engine.restore(os.fspath(solverstate))
        except CaffeError as e:  # unreadable, or another solver's: say which file
            if os.fspath(solverstate) in str(e):
                raise
            raise CaffeError(f"{os.fspath(solverstate)}: {e}") from None

    def save_state(self, path: str | os.PathLike) -> Path:
        """The solver's own state (iteration, history; not the weights), raw and atomically.

        sparknet's scratch format: several times faster than :meth:`snapshot`
        (no protobuf, no weights), for state that only this project reads back
        with :meth:`load_state`. Use :meth:`snapshot` for Caffe's files.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._engine.save_state(os.fspath(path))
        return path

    def load_state(self, path: str | os.PathLike) -> None:
        """Continue from :meth:`save_state`'s file: iteration and history (weights unchanged).

        Raises ``ValueError`` naming the file when it was written by another
        solver (other history shapes) or is truncated; nothing is changed then.
        """
        self._engine.load_state(os.fspath(path))

    def __repr__(self) -> str:
        return (f"CaffeNet({self.solver_param.net_param.name or 'net'!r}, "
                f"inputs={self.input_shapes}, iteration={self.iteration}, mode={self.mode})")
