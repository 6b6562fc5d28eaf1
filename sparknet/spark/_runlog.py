"""The training log: SparkNet-style event lines, JSON-lines history, progress bar, plot.

Every event goes through :mod:`logging` (logger ``sparknet.spark``) as
``<elapsed seconds>: message``, the way SparkNet's apps logged, and, with an
output folder, into ``training.log`` there. Each round's history record is
appended to ``history.jsonl`` as it completes; ``history.png`` plots loss and
accuracy against time at the end of the run. A tqdm bar on the driver shows
rounds, loss, accuracy and images per second.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("sparknet.spark")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (1e308 if value > 0 else -1e308)
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunLog:
    """Events, history records, progress; files under ``output_dir`` when given."""

    def __init__(self, output_dir: str | Path | None, *, rounds: int, start_round: int,
                 elapsed_before: float = 0.0, progress: bool | None = True,
                 history: Sequence[Mapping[str, Any]] = ()):
        self.t0 = time.perf_counter() - elapsed_before
        self.out = Path(output_dir) if output_dir is not None else None
        self.log_path: Path | None = None
        self.history_path: Path | None = None
        self.plot_path: Path | None = None
        self._log_file = None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            self.log_path = self.out / "training.log"
            self.history_path = self.out / "history.jsonl"
            self._log_file = open(  # noqa: SIM115  # closed by close()
                self.log_path, "a" if start_round else "w", buffering=1)
            # the history file restarts from what the checkpoint says happened
            with open(self.history_path, "w") as f:
                f.writelines(json.dumps(_jsonable(rec)) + "\n" for rec in history)
        self._bar = None
        if progress is not False:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=rounds, initial=start_round, unit="round",
                                 desc="sparknet", disable=None if progress is None else False,
                                 dynamic_ncols=True, leave=True)
            except Exception:  # noqa: BLE001  # pragma: no cover - no tqdm or terminal
                self._bar = None
        self._postfix: dict[str, str] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def event(self, message: str, *args: Any, level: int = logging.INFO) -> None:
        """One ``<elapsed>: message`` line to the logger and the log file."""
        text = message % args if args else message
        line = f"{self.elapsed():.3f}: {text}"
        log.log(level, line)
        if self._log_file is not None:
            self._log_file.write(line + "\n")

    def record(self, rec: Mapping[str, Any]) -> None:
        """A finished round: JSON line, progress bar, log line."""
        if self.history_path is not None:
            with open(self.history_path, "a") as f:
                f.write(json.dumps(_jsonable(rec)) + "\n")
        if self._bar is not None:
            self._postfix["loss"] = f"{rec['loss']:.4f}"
            test = rec.get("test") or {}
            if "accuracy" in test:
                self._postfix["acc"] = f"{test['accuracy']:.4f}"
            self._postfix["img/s"] = f"{rec['images_per_second']:.0f}"
            self._bar.set_postfix(self._postfix, refresh=False)
            self._bar.update(1)

    def plot(self, history: Sequence[Mapping[str, Any]], path: Path | None = None
             ) -> Path | None:
        """``history.png``: train/test loss and test accuracy against time."""
        path = path or (self.out / "history.png" if self.out is not None else None)
        if path is None or not history:
            return None
        self.plot_path = plot_history(history, path)
        return self.plot_path

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def plot_history(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Plot loss (train and test) and the test metrics that look like accuracies vs time."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    path = Path(path)
    t = [h["time"] for h in history]
    loss = [h["loss"] for h in history]
    tested = [h for h in history if h.get("test")]
    fig = Figure(figsize=(9, 4), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(t, loss, label="train loss", lw=1)
    if tested and "loss" in tested[0]["test"]:
        ax1.plot([h["time"] for h in tested], [h["test"]["loss"] for h in tested], "o-",
                 label="test loss", ms=3)
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log" if all(v and v > 0 for v in loss) else "linear")
    ax1.legend()
    ax1.grid(alpha=0.3)
    metrics = sorted({k for h in tested for k, v in h["test"].items()
                      if k != "loss" and isinstance(v, (int, float))})
    for k in metrics:
        ax2.plot([h["time"] for h in tested if k in h["test"]],
                 [h["test"][k] for h in tested if k in h["test"]], "o-", label=k, ms=3)
    ax2.set_xlabel("seconds")
    ax2.set_ylabel("test " + (metrics[0] if len(metrics) == 1 else "metrics"))
    if metrics:
        ax2.legend()
    ax2.grid(alpha=0.3)
    fig.suptitle(f"{len(history)} rounds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    tmp.replace(path)
    return path
