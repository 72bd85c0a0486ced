"""Where a training run's metrics go: one JSON line per write in ``metrics.jsonl`` (the record a script reads
back) and the same scalars as TensorBoard events in ``tensorboard/`` (for watching a run live).

    with MetricsLog(run_dir, enabled=jax.process_index() == 0) as log:
        log.write(step, {"reward_mean": 0.41, "pass_rate": 0.125, "loss": 0.03})
        log.write(step, {"reward_mean": 0.38, "pass_rate": 0.1}, split="eval")
    plot_metrics(run_dir / "metrics.jsonl", run_dir / "metrics.png", title=run_dir.name)

Both files are on disk when ``write`` returns, so a killed run loses nothing it logged. Reopening a run
directory (``--resume``) appends: the JSONL file gets more lines, after any torn last line a kill left is
cut off, and TensorBoard gets a new event file beside the old ones (it reads them all); given ``purge_step``
(the step a resumed run starts from), that file opens with the event that makes TensorBoard drop the older
files' events from that step on.
"""

from __future__ import annotations

import json
import math
import operator
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("step", "split", "time")  # the keys every line has; a metric must not overwrite them

DEFAULT_PLOT_KEYS: tuple[tuple[str, str], ...] = (
    ("train", "reward_mean"),
    ("train", "pass_rate"),
    ("eval", "pass_rate"),
    ("eval", "reward_mean"),
)


def _scalar(key: str, value: Any) -> int | float:
    """A metric value as a JSON number: ints stay ints (counts), everything else is a float (numpy and JAX
    scalars included). Strings are refused although float() would take "1.5": a metric is a number."""
    if isinstance(value, bool | str | bytes):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}")
    try:
        return operator.index(value)  # int, numpy integer
    except TypeError:
        pass
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__} {value!r}") from exc


def _repair_tail(path: Path) -> None:
    """Before appending: a run killed mid-write leaves a torn last line; cut it off, or the next line would be
    glued to it and both lost. A last line that is whole JSON without its newline only gets the newline."""
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Find the start of the last line, reading backwards in chunks (the file can be long).
        start, pos, chunk = 0, size, 1 << 16
        while pos > 0:
            pos = max(0, pos - chunk)
            f.seek(pos)
            block = f.read(min(chunk, size - pos))
            newline = block.rfind(b"\n")
            if newline >= 0:
                start = pos + newline + 1
                break
        f.seek(start)
        tail = f.read()
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            whole = False
        if whole:
            f.seek(size)
            f.write(b"\n")
        else:
            f.truncate(start)


class MetricsLog:
    """Appends metrics to ``out_dir/metrics.jsonl`` and ``out_dir/tensorboard/``.

    ``enabled=False`` (every process but one of a multi-host run) writes nothing and creates nothing, but
    still checks each write's arguments, so a bad metric fails on every process alike rather than on one.
    """

    def __init__(self, out_dir: Path, *, enabled: bool = True, purge_step: int | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.enabled = enabled
        self._closed = False
        self._jsonl: Any = None
        self._events: Any = None
        if not enabled:
            return
        # Imported here: only the writing process pays for it (tensorboardX imports torch when it is installed).
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary

        self._Event, self._Summary = Event, Summary
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / METRICS_FILE
        if path.exists():
            _repair_tail(path)
        self._jsonl = path.open("a", encoding="utf-8")
        tb_dir = self.out_dir / TENSORBOARD_DIR
        tb_dir.mkdir(exist_ok=True)
        # EventsWriter is the synchronous writer under tensorboardX's SummaryWriter. SummaryWriter itself
        # hands events to a background thread through a queue, so its flush() can return before the event
        # is in the file (seen with tensorboardX 2.6.5: add_scalar + flush, file size unchanged) and a kill
        # loses up to flush_secs of scalars. Here each write is in the file (flushed to the OS) on return.
        # Its file name has a second-resolution time and the host; the suffix keeps a reopen within the same
        # second from truncating the previous file (it opens with "wb").
        self._events = EventsWriter(str(tb_dir / "events"), filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
        if purge_step is not None:
            # A resumed run runs its steps from purge_step again: a SessionLog START at that step makes
            # TensorBoard drop the earlier files' events at or after it (its "purge orphaned data", what
            # SummaryWriter(purge_step=) writes), so a re-run step is not drawn twice.
            self._events.write_event(
                Event(wall_time=time.time(), step=operator.index(purge_step),
                      session_log=SessionLog(status=SessionLog.START))
            )
            self._events.flush()

    @property
    def path(self) -> Path:
        return self.out_dir / METRICS_FILE

    def write(self, step: int, metrics: Mapping[str, float | int], *, split: str = "train") -> None:
        """One JSON line ``{"step", "split", "time", **metrics}`` (non-finite values as null) and one
        TensorBoard event with a scalar ``split/key`` per metric, both on disk when this returns."""
        if isinstance(step, bool):
            raise TypeError(f"step must be an int, got {step!r}")
        step = operator.index(step)
        if not isinstance(split, str) or not split:
            raise ValueError(f"split must be a non-empty string, got {split!r}")
        values: dict[str, int | float] = {}
        for key, value in metrics.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"metric names must be non-empty strings, got {key!r}")
            if key in _RESERVED:
                raise ValueError(f"metric name {key!r} is reserved (every line has {', '.join(_RESERVED)})")
            values[key] = _scalar(key, value)
        if self._closed:
            raise ValueError("write to a closed MetricsLog")
        if not self.enabled:
            return
        now = time.time()
        record = {"step": step, "split": split, "time": now}
        # JSON has no NaN or Infinity: null says "no value" and keeps every line valid JSON for any reader.
        record.update({k: v if isinstance(v, int) or math.isfinite(v) else None for k, v in values.items()})
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()  # in the OS's hands: a killed process loses nothing
        if values:
            # TensorBoard shows NaN and inf as such, so its scalars keep them.
            summary = self._Summary(
                value=[self._Summary.Value(tag=f"{split}/{k}", simple_value=float(v)) for k, v in values.items()]
            )
            self._events.write_event(self._Event(wall_time=now, step=step, summary=summary))
            self._events.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._jsonl is not None:
            self._jsonl.close()
        if self._events is not None:
            self._events.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def keep_records(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite a JSONL file of records with only those ``keep`` accepts (and no torn line), in their order;
    returns how many were dropped. For a resumed run: lines written after its last checkpoint go, so the
    steps it runs again are logged once. The new file replaces the old in one rename; a missing file is
    left missing."""
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a torn line (a run killed mid-write)
            dropped += 1
            continue
        if isinstance(record, dict) and keep(record):
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        tmp.replace(path)
    return dropped


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl file, in order. A torn last line (a run killed mid-write) is skipped; a
    bad line elsewhere is corruption and raises ValueError naming it."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").split("\n")
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            # Only the last line can be torn: every earlier one was followed by its newline.
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON line ({exc})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: not a JSON object")
        records.append(record)
    return records


def plot_metrics(
    metrics_jsonl: Path,
    png: Path,
    keys: Sequence[tuple[str, str]] = DEFAULT_PLOT_KEYS,
    *,
    title: str | None = None,
) -> Path:
    """Each key (reward, pass rate, ...) by step in its own panel, one line per split (train, held-out
    eval); ``(split, key)`` pairs with no values are skipped. ``title`` defaults to the run directory's name.
    Returns ``png``."""
    # Imported here: plotting happens once, at the end; a training process should not load matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metrics_jsonl, png = Path(metrics_jsonl), Path(png)
    records = read_metrics(metrics_jsonl)
    # A resumed run logs again the steps after its checkpoint: the later line for a (split, step) wins.
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for split, key in keys:
        by_step: dict[int, float] = {}
        for record in records:
            if record.get("split") == split and key in record and isinstance(record.get("step"), int):
                value = record[key]
                by_step[record["step"]] = math.nan if value is None else float(value)  # null: a gap
        if by_step:
            series.setdefault(key, {})[split] = sorted(by_step.items())

    panels = list(series) or [None]
    # One colour per split in every panel, also where a panel lacks a split.
    colours = {split: f"C{i}" for i, split in enumerate(dict.fromkeys(split for split, _ in keys))}
    fig = Figure(figsize=(8.0, 1.0 + 2.8 * len(panels)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # Agg explicitly: no display, no global pyplot state
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, panels, strict=True):
        if key is None:
            wanted = ", ".join(f"{s}/{k}" for s, k in keys)
            ax.text(0.5, 0.5, f"no values for {wanted}", ha="center", va="center", transform=ax.transAxes)
            ax.set_ylabel("value")
        else:
            for split, points in series[key].items():
                steps = [s for s, _ in points]
                values = [v for _, v in points]
                # Markers while points are few: a sparse eval series must show its points, not a bare line.
                marker = "o" if len(points) <= 60 else None
                ax.plot(steps, values, label=split, color=colours[split], marker=marker, markersize=3)
            ax.set_ylabel(key.replace("_", " "))
            ax.legend(loc="best")
            ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 2.5 ticks
    fig.suptitle(title if title is not None else metrics_jsonl.resolve().parent.name)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    return png
