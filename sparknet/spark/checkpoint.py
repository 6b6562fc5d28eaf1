"""Training checkpoints on a local path or S3, written so that a reader never sees half of one.

A checkpoint of round *r* is a folder (an S3 prefix) ``round-<r>/`` holding

* ``weights.caffemodel`` — the averaged (EASGD: centre) weights, Caffe's format;
* ``workers/part-<p>.solverstate`` (and ``.caffemodel`` for EASGD) — each
  partition's solver state: iteration, momentum history, local weights;
* ``outer.npy`` — the outer optimizer's momentum buffer (float32, one value
  per parameter), when the run has an outer optimizer with state;
* ``state.json`` — the round, the configuration, the seeds, the elapsed time
  and the history so far; written last.

and the top-level ``latest`` file names the newest complete checkpoint.
Locally, a checkpoint is assembled in a temporary folder and renamed into
place, then ``latest`` is replaced atomically; on S3 every file is one
complete ``PutObject`` and ``state.json`` then ``latest`` go last. Reading
trusts ``latest`` and falls back to the newest ``round-*`` with a
``state.json``.
"""
from __future__ import annotations

import io
import json
import logging
import math
import shutil
import tempfile
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from google.protobuf import text_format

from sparknet._util import UserError
from sparknet.io import Storage, named_os_error, open_storage
from sparknet.proto import caffe_pb2

log = logging.getLogger(__name__)

LATEST = "latest"
WEIGHTS = "weights.caffemodel"
OUTER = "outer.npy"
#: The marker of a complete ``round-*`` checkpoint: written (uploaded) last.
STATE = "state.json"
ROUND_PREFIX = "round-"


def round_name(rnd: int) -> str:
    return f"{ROUND_PREFIX}{rnd:06d}"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be resumed from (corrupt, truncated, incomplete).

    ``checkpoint`` is where it is (a folder or ``s3://`` prefix).
    """

    def __init__(self, message: str, checkpoint: str):
        super().__init__(message)
        self.checkpoint = checkpoint


def _fingerprint(path: Path) -> dict[str, int]:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return {"bytes": path.stat().st_size, "crc32": crc}


class Checkpoints:
    """Write and find the checkpoints of one training run."""

    def __init__(self, storage: Storage, keep: int = 2):
        self.storage = storage
        self.keep = max(1, int(keep))

    def begin(self) -> Path:
        """A local folder to assemble the next checkpoint in."""
        return self.storage.staging()

    def commit(self, rnd: int, staged: Path, state: Mapping[str, Any]) -> str:
        """Publish the staged checkpoint of round ``rnd``; returns where it is."""
        name = round_name(rnd)
        # sizes and checksums of the other files: a resume recognises a truncated or
        # corrupted one, names it and falls back to an older checkpoint
        files = {p.relative_to(staged).as_posix(): _fingerprint(p)
                 for p in sorted(staged.rglob("*")) if p.is_file() and p.name != STATE}
        state = {**state, "files": files}
        (staged / STATE).write_text(json.dumps(state, indent=1, sort_keys=True))
        try:
            self.storage.publish(name, staged, last=STATE)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
        self.storage.write_bytes(LATEST, (name + "\n").encode())
        for old in self.rounds()[:-self.keep]:
            if old != name:
                self.storage.delete_tree(old)
        return self.storage.where(name)

    def rounds(self) -> list[str]:
        """The complete ``round-*`` checkpoints (those holding a ``state.json``), oldest first."""
        return self.storage.folders(ROUND_PREFIX, STATE)

    def latest(self) -> str | None:
        """The name of the newest complete checkpoint, if any."""
        data = self.storage.read_bytes(LATEST)
        if data:
            name = data.decode().strip()
            if self.storage.read_bytes(f"{name}/{STATE}") is not None:
                return name
            log.warning("%s names %s, which is incomplete; looking for another",
                        self.storage.where(LATEST), name)
        found = self.rounds()
        return found[-1] if found else None

    def candidates(self) -> list[str]:
        """Complete checkpoints, newest first (``latest``'s first when it names one)."""
        found = sorted(self.rounds(), reverse=True)
        first = self.latest()
        if first is not None and first in found:
            found.remove(first)
        return ([first] if first is not None else []) + found

    def load_state(self, name: str) -> dict[str, Any]:
        """The checkpoint's ``state.json``; :class:`CheckpointError` naming it if unreadable."""
        where = self.storage.where(f"{name}/{STATE}")
        data = self.storage.read_bytes(f"{name}/{STATE}")
        if data is None:
            raise CheckpointError(f"{where} is missing", self.storage.where(name))
        try:
            state = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{where} is not valid JSON (truncated or corrupt: {e})",
                                  self.storage.where(name)) from None
        if not isinstance(state, dict) or not isinstance(state.get("round"), int):
            raise CheckpointError(f"{where} holds no round number: not a sparknet checkpoint "
                                  f"state", self.storage.where(name))
        return state

    def read_file(self, name: str, state: Mapping[str, Any], fname: str) -> bytes:
        """One file of a checkpoint, checked against the size and checksum ``state`` records."""
        where = self.storage.where(f"{name}/{fname}")
        data = self.storage.read_bytes(f"{name}/{fname}")
        if data is None:
            raise CheckpointError(f"{where} is missing", self.storage.where(name))
        want = state.get("files", {}).get(fname)
        if want is not None:
            if len(data) != want.get("bytes"):
                raise CheckpointError(f"{where} is {len(data)} bytes, but the checkpoint "
                                      f"recorded {want.get('bytes')} (truncated?)",
                                      self.storage.where(name))
            if zlib.crc32(data) != want.get("crc32"):
                raise CheckpointError(f"{where} does not match its recorded checksum "
                                      f"(corrupt)", self.storage.where(name))
        return data


# -- resuming and committing a training run -----------------------------------------------------

@attrs.frozen
class Resumed:
    """Where a run starts: after ``round`` (0: from scratch), with what it had then.

    ``weights``: the flat averaged weights (``None``: from scratch);
    ``install``: partition -> its solver-state files (``kind`` -> bytes);
    ``elapsed``: seconds of training before; ``history``: the rounds so far;
    ``checkpoint``: where it was read from; ``outer_state``: the outer
    optimizer's momentum buffer (``None``: none, or from scratch).
    """

    round: int = 0
    weights: np.ndarray | None = attrs.field(default=None, eq=False)
    install: dict[int, dict[str, bytes]] = attrs.field(factory=dict, eq=False)
    elapsed: float = 0.0
    history: list[dict] = attrs.field(factory=list)
    checkpoint: str | None = None
    outer_state: np.ndarray | None = attrs.field(default=None, eq=False)


#: What a checkpoint written before an option existed ran with: the option's default.
_BEFORE = {"outer": {"name": "average"}, "tau_schedule": {"name": "fixed"}}


def run_config(config: Any, model: Any) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed by a run (``TrainConfig``, ``Model``)."""
    return {"solver_sha1": model.solver_key, "workers": config.workers,
            "sync_interval": config.sync_interval, "seed": config.seed,
            "shuffle": config.shuffle, "batch_size": model.signature.batch,
            "num_params": model.signature.num_params,
            "strategy": config.strategy.describe(config.workers),
            "outer": config.outer.describe(), "tau_schedule": config.tau_schedule.describe()}


class RunCheckpoints(Checkpoints):
    """The checkpoints of one training run: resume from the newest usable, commit rounds.

    ``config`` and ``model`` are the run's ``TrainConfig`` and ``Model``;
    ``driver`` its ``DriverNet`` (reads and writes ``.caffemodel`` files).
    """

    def __init__(self, config: Any, model: Any, driver: Any):
        super().__init__(open_storage(config.checkpoint_dir, config.s3_options),
                         config.keep_checkpoints)
        self.config, self.model, self.driver = config, model, driver

    def resume(self) -> Resumed:
        """The newest usable checkpoint (or a fresh start when there is none).

        A corrupt or truncated checkpoint (state, weights or a worker's state)
        is named in a warning and the next older one is tried.
        """
        names = self.candidates()
        if not names:
            log.info("resume: no checkpoint in %s yet; starting from scratch",
                     self.storage.where())
            return Resumed()
        problems: list[str] = []
        for name in names:
            try:
                loaded = self._load(name)
            except CheckpointError as e:
                problems.append(str(e))
                log.warning("cannot resume from %s: %s; trying an older checkpoint",
                            e.checkpoint, e)
                continue
            if problems:
                log.warning("resuming from %s, the newest usable checkpoint (%d newer one(s) "
                            "unusable)", self.storage.where(name), len(problems))
            return loaded
        raise CheckpointError(f"no usable checkpoint in {self.storage.where()}: "
                              + "; ".join(problems), self.storage.where())

    def _load(self, name: str) -> Resumed:
        state = self.load_state(name)
        mine, theirs = run_config(self.config, self.model), state.get("config", {})
        theirs = {**_BEFORE, **theirs}
        diffs = [f"{k}: checkpoint {theirs.get(k)!r}, now {v!r}" for k, v in mine.items()
                 if theirs.get(k) != v]
        if diffs:
            raise ValueError(f"cannot resume from {self.storage.where(name)}: it was written by "
                             f"a different configuration ({'; '.join(diffs)})")
        where = self.storage.where(f"{name}/{WEIGHTS}")
        data = self.read_file(name, state, WEIGHTS)
        self._check_weights(data, where, self.storage.where(name))
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / WEIGHTS
            local.write_bytes(data)
            try:
                flat = self.driver.flat(local)
            except Exception as e:  # noqa: BLE001  # Caffe's words, about the checkpoint's file
                raise CheckpointError(f"{where}: {str(e).replace(str(local), WEIGHTS)}",
                                      self.storage.where(name)) from None
        install: dict[int, dict[str, bytes]] = {}
        for p, files in state.get("partitions", {}).items():
            entry: dict[str, bytes] = {}
            for kind, fname in files.items():
                entry[kind] = self.read_file(name, state, fname)
                if kind == "solverstate":
                    try:
                        caffe_pb2.SolverState().ParseFromString(entry[kind])
                    except Exception as e:  # noqa: BLE001  # protobuf's DecodeError
                        raise CheckpointError(
                            f"{self.storage.where(f'{name}/{fname}')} is not a Caffe solver "
                            f"state (truncated or corrupt: {e})",
                            self.storage.where(name)) from None
            install[int(p)] = entry
        return Resumed(int(state["round"]), flat, install, float(state.get("elapsed", 0.0)),
                       list(state.get("history", [])), self.storage.where(name),
                       self._outer_state(name, state))

    def _outer_state(self, name: str, state: Mapping[str, Any]) -> np.ndarray | None:
        """The outer optimizer's momentum the checkpoint holds (``None`` if it needs none)."""
        fresh = self.config.outer.init_state(self.model.signature.num_params)
        if fresh is None:
            return None
        where = self.storage.where(f"{name}/{OUTER}")
        data = self.read_file(name, state, OUTER)  # names the file if it is missing
        try:
            buf = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise CheckpointError(f"{where} is not a numpy array (truncated or corrupt: {e})",
                                  self.storage.where(name)) from None
        if buf.dtype != fresh.dtype or buf.shape != fresh.shape:
            raise CheckpointError(f"{where} holds {buf.dtype} {buf.shape}, not the "
                                  f"{fresh.size} float32 values of the outer momentum",
                                  self.storage.where(name))
        return buf

    def _check_weights(self, data: bytes, where: str, checkpoint: str) -> None:
        """The weights file parses and holds every layer of the net with the right sizes."""
        proto = caffe_pb2.NetParameter()
        try:
            proto.ParseFromString(data)
        except Exception as e:  # noqa: BLE001  # protobuf's DecodeError
            raise CheckpointError(f"{where} is not a Caffe NetParameter (truncated or corrupt: "
                                  f"{e})", checkpoint) from None
        have = {layer.name: [len(b.data) for b in layer.blobs]
                for layer in (*proto.layer, *proto.layers)}
        for lname, shapes in self.model.signature.layout:
            want = [math.prod(sh) for sh in shapes]
            if have.get(lname) != want:
                raise CheckpointError(f"{where} holds no complete weights for layer '{lname}' "
                                      f"(truncated or from another net)", checkpoint)

    def commit_round(self, rnd: int, flat: np.ndarray, staged: Path | None,
                     partitions: Mapping[int, Mapping[str, str]], *, elapsed: float,
                     history: list[dict], outer_state: np.ndarray | None = None) -> str:
        """Write round ``rnd``'s checkpoint: the weights (and the outer optimizer's
        state) into ``staged`` (a fresh folder when ``None``), beside the partitions'
        states already there; then publish it."""
        if staged is None:
            staged = self.begin()
        try:
            self.driver.save(flat, staged / WEIGHTS)
            if outer_state is not None:
                try:  # no atomic write of its own: the whole folder is published at once
                    with open(staged / OUTER, "wb") as f:
                        np.save(f, outer_state, allow_pickle=False)
                except OSError as e:  # a full disk: say which file
                    raise named_os_error(e, staged / OUTER) from None
        except BaseException:  # disk full: the staging folder does not stay behind
            shutil.rmtree(staged, ignore_errors=True)
            raise
        param = self.model.param
        state = {"format": 1, "round": rnd, "rounds": self.config.rounds,
                 "config": run_config(self.config, self.model), "elapsed": elapsed,
                 "history": history,
                 "rng": {"seed": self.config.seed, "sampling": "numpy default_rng([seed, "
                         "partition, epoch]).permutation per epoch; solver random_seed "
                         f"{param.random_seed}"},
                 "solver": text_format.MessageToString(param),
                 "partitions": {str(p): dict(v) for p, v in partitions.items()},
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        return self.commit(rnd, staged, state)
