"""What runs in the Spark tasks: training rounds and housekeeping (scoring: :mod:`.scoring`).

Each Python worker process keeps a few :class:`~sparknet.engine.CaffeNet`
objects, keyed by the digest of the solver they were built from, and reuses
them from task to task (building a net costs more than a round's overhead).

A partition's solver state (iteration count, momentum history and, for
EASGD, its local weights) lives with the partition, not with the process:
after every round the task saves it beside the partition's cached data (the
local folder of the executor that cached it, :func:`state_dir`): iteration
and history in the engine's raw format (``round-<r>.state``, a third of a
Caffe snapshot's cost; the weights come from the driver anyway),
or Caffe's own snapshot (``round-<r>_iter_<i>.solverstate``) in checkpoint
rounds and for EASGD, whose local weights are state too. The next round's
task for that partition continues from memory when it lands in the same
process with the net untouched since, else restores that file — so a task
retried after a failure mid-round, or moved to another process or to another
executor on the same machine (where it still opens the cached data), computes
exactly what the first attempt would have. Only when the executor holding the
data was lost is the state gone (once: the data is cached again elsewhere,
and the state with it); the partition then restarts its
momentum (at the right iteration, so the learning-rate schedule holds) and
the round's metadata says so.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sparknet.io import atomic_write_bytes
from sparknet.spark import _faults
from sparknet.spark._messages import (
    NetSpec,
    Nonfinite,
    RoundReport,
    RoundSpec,
    StateChunk,
    StoreHandle,
    TaskInfo,
    Timings,
)
from sparknet.spark._socket_exchange import forget_fetched
from sparknet.spark._store import batch_indices, local_root, open_store, remove_dataset

log = logging.getLogger(__name__)

_MAX_NETS = 2
_STATE_CHUNK = 1 << 22


# -- the per-process net cache --------------------------------------------------------------

class _Entry:
    __slots__ = ("buffers", "net", "tag", "weights_id")

    def __init__(self, net: Any):
        self.net = net
        self.tag: Any = "fresh"  # (run, partition, round) of the state it holds; None: dirty
        self.buffers: dict[int, np.ndarray] = {}
        self.weights_id: Any = None

    def buffer(self, slot: int, size: int) -> np.ndarray:
        b = self.buffers.get(slot)
        if b is None or b.size != size:
            b = self.buffers[slot] = np.empty(size, np.float32)
        return b


_NETS: OrderedDict[str, _Entry] = OrderedDict()
_GRAVEYARD: list[Any] = []
_POISONED = False


def _poison(key: str, entry: _Entry) -> None:
    """A net trained into NaN/inf: Caffe may have written out of bounds in this process.

    The net is dropped from the cache but never destroyed (its destructor could
    trip over the damage), and the task that noticed leaves its input unread so
    that Spark does not reuse this Python worker (the process then exits
    without running destructors).
    """
    global _POISONED
    _POISONED = True
    _GRAVEYARD.append(entry.net)
    if _NETS.get(key) is entry:
        del _NETS[key]


def _device(spec: NetSpec) -> int | None:
    if not spec.gpu:
        return None
    from pyspark import TaskContext

    ctx = TaskContext.get()
    gpus = ctx.resources().get("gpu") if ctx is not None else None
    if gpus is not None and gpus.addresses:
        return int(gpus.addresses[0])
    return 0


def _blas(spec: NetSpec) -> None:
    from pyspark import TaskContext

    from sparknet.engine import set_blas_threads

    threads = spec.blas_threads
    if threads is None:
        ctx = TaskContext.get()
        threads = ctx.cpus() if ctx is not None else 1
    set_blas_threads(max(1, int(threads)))


def _build(spec: NetSpec) -> Any:
    from sparknet.engine import CaffeNet

    return CaffeNet(spec.solver, gpu=_device(spec))


def net_entry(spec: NetSpec) -> _Entry:
    """The cached net for ``spec`` (built on first use in this process)."""
    _blas(spec)
    entry = _NETS.get(spec.key)
    if entry is None:
        entry = _Entry(_build(spec))
        _NETS[spec.key] = entry
        while len(_NETS) > _MAX_NETS:
            _NETS.popitem(last=False)
    else:
        _NETS.move_to_end(spec.key)
    return entry


def read_flat(net: Any, out: np.ndarray) -> np.ndarray:
    """The net's parameters into ``out`` (a reused buffer: no fresh model-sized allocation)."""
    net.get_weights(out=out)
    return out


def write_flat(net: Any, flat: np.ndarray) -> None:
    """Set the net's parameters from a flat vector (read in place, even when read-only)."""
    net.set_weights(flat)


# -- per-partition solver state ---------------------------------------------------------------

def state_dir(run: str, partition: int, store_dir: str | os.PathLike | None = None) -> Path:
    """Where a partition's solver state lives: beside its cached data.

    ``store_dir`` is the partition's store folder (``<root>/<dataset>/part-*``);
    the state goes under the same ``<root>``, the local folder of the executor
    that cached the data. Any task that can open the store (on that executor,
    or on another executor of the same machine that Spark ran it on after its
    locality wait) then finds the state too: the state is lost only with the
    data, when the executor's folder goes, and then once.
    """
    root = Path(store_dir).parent.parent if store_dir is not None else local_root()
    return root / f"run-{run}" / f"state-{partition:05d}"


def _raw_state(folder: Path, rnd: int) -> Path:
    """The state after round ``rnd`` in the engine's raw format (no weights)."""
    return folder / f"round-{rnd:06d}.state"


def _state_file(folder: Path, rnd: int) -> Path | None:
    """Caffe's snapshot after round ``rnd`` (weights and state), if there is one."""
    found = sorted(folder.glob(f"round-{rnd:06d}_iter_*.solverstate"))
    return found[-1] if found else None


def _prune(folder: Path, keep_from: int) -> None:
    for p in folder.glob("round-*"):
        try:
            if int(p.name[6:12]) < keep_from:
                p.unlink()
        except (ValueError, OSError):
            pass


def _steps_before(solver_param: Any, iteration: int) -> int:
    return sum(1 for v in solver_param.stepvalue if v < iteration)


def _set_iteration(net: Any, iteration: int, scratch: Path) -> None:
    """Put a pristine net's solver at ``iteration`` (history stays zero)."""
    if iteration <= 0:
        return
    from sparknet.proto import caffe_pb2

    scratch.mkdir(parents=True, exist_ok=True)
    model, state_path = net.snapshot(scratch / "reset")
    state = caffe_pb2.SolverState()
    state.ParseFromString(state_path.read_bytes())
    state.iter = iteration
    state.current_step = _steps_before(net.solver_param, iteration)
    state.ClearField("learned_net")
    state_path.write_bytes(state.SerializeToString())
    net.restore(state_path)
    for p in (model, state_path):
        p.unlink(missing_ok=True)


def _install(folder: Path, rnd: int, files: Mapping[str, bytes]) -> None:
    """Write a checkpointed partition state so that round ``rnd`` finds it."""
    from sparknet.proto import caffe_pb2

    folder.mkdir(parents=True, exist_ok=True)
    state = caffe_pb2.SolverState()
    state.ParseFromString(files["solverstate"])
    stem = folder / f"round-{rnd:06d}_iter_{state.iter}"
    if files.get("caffemodel"):
        model = stem.with_suffix(".caffemodel")
        model.write_bytes(files["caffemodel"])
        state.learned_net = str(model)
    else:
        state.ClearField("learned_net")
    atomic_write_bytes(stem.with_suffix(".solverstate"), state.SerializeToString())


def ensure_state(spec: RoundSpec, entry: _Entry, partition: int,
                 install: Mapping[str, bytes] | None, folder: Path | None = None) -> str:
    """Bring the net to this partition's state after round ``spec.round - 1``.

    Returns how: ``"memory"``, ``"file"``, ``"fresh"`` (first round), or
    ``"reset"`` (the state was lost with its executor: momentum restarts).
    """
    want = (spec.run, partition, spec.round - 1)
    if spec.round > 0 and entry.tag == want:
        return "memory"
    if folder is None:
        folder = state_dir(spec.run, partition)
    if install is not None and spec.round > 0:
        _install(folder, spec.round - 1, install)
    if spec.round > 0:
        raw = _raw_state(folder, spec.round - 1)
        if spec.easgd_rate is None and raw.exists():  # averaging: the weights come next
            entry.net.load_state(raw)
            return "file"
        path = _state_file(folder, spec.round - 1)
        if path is not None:
            entry.net.restore(path)
            return "file"
    if entry.tag != "fresh":  # used before (another partition or run): start from scratch
        entry.net = _build(spec.net)
        entry.buffers.clear()
    _set_iteration(entry.net, spec.start, folder / "scratch")
    return "fresh" if spec.round == 0 else "reset"


def round_seed(seed: int, partition: int, rnd: int) -> int:
    """Caffe's random seed for a partition's round: the same in any process, on any retry."""
    return int(np.random.SeedSequence([seed, partition, rnd, 3]).generate_state(1)[0])


def apply_transforms(transforms: Mapping[str, Callable[..., Any]], batch: dict[str, np.ndarray],
                     rng_key: list[int]) -> dict[str, np.ndarray]:
    """Each blob's per-batch transform (a random crop ...), its generator seeded by ``rng_key``.

    The key (seed, partition, position) makes the draws the same in any
    process and on any retry; training, testing and ``predict`` all transform
    their batches here.
    """
    for name, fn in transforms.items():
        if name in batch:
            if hasattr(fn, "rng"):
                fn.rng = np.random.default_rng(rng_key)
            batch[name] = fn(batch[name])
    return batch


# -- tasks ------------------------------------------------------------------------------------

def task_info(partition: int) -> TaskInfo:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    return TaskInfo(partition, socket.gethostname(), os.getpid(),
                    ctx.attemptNumber() if ctx is not None else 0)


def round_task(spec: RoundSpec, channel: Any, extras_bc: Any, install_bc: Any,
               partition: int, handles: Iterable[StoreHandle]) -> Iterator[Any]:
    """One partition's round: set weights, ``steps`` solver steps, send the result back.

    ``channel`` (from ``sparknet.spark._comm``) gives the round's weights and
    takes the result: the trained weights, for EASGD the difference to the
    centre. Yields a :class:`RoundReport`, then whatever items the channel
    sends the result as (none when it pushed it to the driver directly), then
    in checkpoint rounds the :class:`StateChunk` items of the partition's
    solver state.
    """
    items = iter(handles)
    seen = False
    while True:
        # Read the (tiny) input to its end, so that Spark reuses this Python worker and its
        # caches -- unless a diverged net may have corrupted this process: then leave it
        # unread, and Spark retires the worker once the task has finished.
        handle = next(items, None)
        if handle is None:
            if not seen:  # no data at all: a ring round must not wait for this task
                channel.absent(partition)
            return
        seen = True
        yield from _train_partition(spec, channel, extras_bc, install_bc, handle)
        if _POISONED:
            return


def _train_partition(spec: RoundSpec, channel: Any, extras_bc: Any, install_bc: Any,
                     handle: StoreHandle) -> Iterator[Any]:
    t0 = time.perf_counter()
    p = handle.partition
    task = task_info(p)
    store = open_store(handle)
    folder = state_dir(spec.run, p, handle.dir)
    hook = _faults.task_hook()  # None unless a test injects a fault
    if store is None or (hook is not None and hook.data_missing(spec.round, p, folder)):
        channel.absent(p)  # a ring round's other tasks must not wait for this one
        yield RoundReport(task, missing_store=True)
        return
    entry = net_entry(spec.net)
    entry.weights_id = None  # training changes the weights: a scorer must write its own again
    install = None
    if install_bc is not None:
        install = install_bc.value.get(p)
    how = ensure_state(spec, entry, p, install, folder)
    net = entry.net
    entry.tag = None  # dirty until this round completes
    t_fetch = time.perf_counter()
    center = channel.weights(folder)
    t_fetched = time.perf_counter()
    if spec.easgd_rate is None or how in ("fresh", "reset"):
        write_flat(net, center)
    t_ready = time.perf_counter()
    transforms = extras_bc.value.transform if extras_bc is not None else {}

    def batches() -> Iterator[dict[str, np.ndarray]]:
        first = spec.start
        for step in range(first, first + spec.steps):
            idx = batch_indices(store.n, spec.batch, step, seed=spec.seed, partition=p,
                                shuffle=spec.shuffle)
            batch = store.batch(idx, spec.names)
            if transforms:
                batch = apply_transforms(transforms, batch, [spec.seed, p, step, 1])
            yield batch

    net.seed(round_seed(spec.seed, p, spec.round))  # dropout: the same masks on any retry
    stream = batches()
    if hook is not None:
        stream = hook.batches(spec.round, p, task.attempt, stream, folder)
    losses = np.empty(spec.steps, np.float32)
    for k, batch in enumerate(stream):
        # one step at a time: stop at the first NaN/inf loss, before Caffe runs more steps
        # on NaN activations (its max pooling then writes out of bounds)
        losses[k] = net.train(1, (batch,))[0]
        if not np.isfinite(losses[k]):
            _poison(spec.net.key, entry)
            channel.absent(p)
            yield RoundReport(task, state=how, images=(k + 1) * spec.batch,
                              losses=tuple(losses[:k + 1].tolist()),
                              nonfinite=Nonfinite(spec.start + k,
                                                  float(losses[k])))
            return
    t_trained = time.perf_counter()
    result = read_flat(net, entry.buffer(0, spec.num_params))
    if not np.isfinite(result).all():
        _poison(spec.net.key, entry)
        channel.absent(p)
        yield RoundReport(task, state=how, images=spec.steps * spec.batch,
                          losses=tuple(losses.tolist()),
                          nonfinite=Nonfinite(spec.start + spec.steps - 1, float("nan"),
                                              weights=True))
        return
    if spec.easgd_rate is not None:
        # result <- x - centre (what the driver sums); local <- x - rate * (x - centre)
        np.subtract(result, center, out=result)
        local = entry.buffer(1, spec.num_params)
        np.multiply(result, 1.0 - spec.easgd_rate, out=local)
        np.add(local, center, out=local)
        write_flat(net, local)
    del center
    if spec.send_state or spec.easgd_rate is not None:
        # Caffe's files: a checkpoint keeps them; EASGD's local weights are state too
        model, state = net.snapshot(folder / f"round-{spec.round:06d}")
    else:  # what a retry needs to redo the next round: iteration and history, raw
        net.save_state(_raw_state(folder, spec.round))
    _prune(folder, spec.round - 1)
    entry.tag = (spec.run, p, spec.round)
    t_saved = time.perf_counter()
    sent = channel.send(p, result, folder)  # a socket channel has pushed it all by now
    t_end = time.perf_counter()
    waited = getattr(channel, "waited", 0.0)  # a ring channel: until its peers had joined
    yield RoundReport(task, state=how, images=spec.steps * spec.batch,
                      losses=tuple(losses.tolist()),
                      gathered=getattr(channel, "gathered", None),
                      seconds=Timings(load=t_ready - t0, fetch=t_fetched - t_fetch,
                                      compute=t_trained - t_ready, save=t_saved - t_trained,
                                      send=t_end - t_saved, total=t_end - t0,
                                      wait=waited))
    yield from sent
    if spec.send_state:
        kinds = [("solverstate", state)]
        if spec.easgd_rate is not None:
            kinds.append(("caffemodel", model))
        for kind, path in kinds:
            with open(path, "rb") as f:
                offset = 0
                while True:
                    data = f.read(_STATE_CHUNK)
                    if not data:
                        break
                    yield StateChunk(p, kind, offset, data)
                    offset += len(data)
            yield StateChunk(p, kind, -1, b"")  # end of this file


def ping_task(channel: Any, handles: Iterable[StoreHandle]) -> Iterator[tuple[str, str | None]]:
    """Can this executor reach the driver's weight exchange? ``(host, None or the error)``."""
    for _ in handles:  # read the input to its end: the Python worker stays reusable
        pass
    try:
        channel.ping()
    except OSError as e:
        yield socket.gethostname(), str(e)
    else:
        yield socket.gethostname(), None


def offer_task(run: str, channel: Any, partition: int,
               handles: Iterable[StoreHandle]) -> Iterator[bool]:
    """Send the driver the weights ``channel`` names, where this executor keeps them.

    (A ring exchange's :meth:`~sparknet.spark._ring_exchange.RingChannel.offer`,
    from the partition's state folder or this process.) Yields whether it did.
    """
    for handle in handles:
        yield channel.offer(handle.partition, state_dir(run, handle.partition, handle.dir))


def cleanup_task(datasets: tuple[str, ...], run: str | None,
                 handles: Iterable[StoreHandle]) -> Iterator[int]:
    """Delete this executor's stores of ``datasets`` and the run's solver states."""
    roots = {local_root()}
    for handle in handles:
        roots.add(Path(handle.dir).parent.parent)
    for d in datasets:
        remove_dataset(d)
    if run is not None:
        for root in roots:
            shutil.rmtree(root / f"run-{run}", ignore_errors=True)
        forget_fetched()
    yield 1
