"""The metrics log: JSON lines read back equal, TensorBoard events read back from the files (TFRecord framing
and CRCs checked here, with tensorboardX's protobuf classes), nothing lost when the process is killed, resume
appends (repairing a torn line), a disabled log writes nothing, and the plot is a real PNG."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.record_writer import masked_crc32c

from rl_jax.learner.metrics_log import MetricsLog, plot_metrics, read_metrics

ROOT = Path(__file__).resolve().parents[3]


def _read_events(tb_dir: Path) -> list[Event]:
    """Every event in the directory's event files (oldest file first), parsed from TFRecord framing:
    8-byte length, 4-byte masked CRC of it, data, 4-byte masked CRC of the data."""
    events: list[Event] = []
    files = sorted(tb_dir.glob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for path in files:
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            assert header_crc == masked_crc32c(header)
            body = data[pos + 12 : pos + 12 + length]
            (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
            assert body_crc == masked_crc32c(body)
            events.append(Event.FromString(body))
            pos += 16 + length
    return events


def _scalars(tb_dir: Path) -> list[tuple[int, str, float]]:
    return [(e.step, v.tag, v.simple_value) for e in _read_events(tb_dir) for v in e.summary.value]


def _without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in records]


def test_jsonl_reads_back_equal(tmp_path: Path):
    written = [
        (0, {"reward_mean": 0.25, "pass_rate": 0.0, "tokens": 512}, "train"),
        (1, {"reward_mean": 0.5, "pass_rate": 0.125, "tokens": 640}, "train"),
        (1, {"reward_mean": 0.375, "pass_rate": 0.1}, "eval"),
    ]
    before = time.time()
    with MetricsLog(tmp_path / "run") as log:
        for step, metrics, split in written:
            log.write(step, metrics, split=split)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert _without_time(records) == [{"step": s, "split": sp, **m} for s, m, sp in written]
    assert list(records[0]) == ["step", "split", "time", "reward_mean", "pass_rate", "tokens"]
    assert before <= records[0]["time"] <= records[1]["time"] <= records[2]["time"] <= time.time()
    assert type(records[0]["tokens"]) is int  # counts stay ints


def test_non_finite_as_null_and_numpy_scalars(tmp_path: Path):
    with MetricsLog(tmp_path) as log:
        log.write(3, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": np.float32(0.5), "e": np.int64(7)})
        lines = log.path.read_text().splitlines()
    assert json.loads(lines[0])["a"] is None  # valid JSON: no NaN token
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    (record,) = _without_time(read_metrics(log.path))
    assert record == {"step": 3, "split": "train", "a": None, "b": None, "c": None, "d": 0.5, "e": 7}
    # TensorBoard keeps the non-finite values as they are.
    values = {tag: v for _, tag, v in _scalars(tmp_path / "tensorboard")}
    assert math.isnan(values["train/a"]) and values["train/b"] == math.inf and values["train/c"] == -math.inf
    assert values["train/d"] == 0.5 and values["train/e"] == 7.0


def test_tensorboard_scalars_are_in_the_file_when_write_returns(tmp_path: Path):
    log = MetricsLog(tmp_path)
    log.write(0, {"reward_mean": 0.25, "loss": 1.5})
    log.write(10, {"pass_rate": 0.5}, split="eval")
    # Not closed: what write() returned from is already in the file.
    assert _scalars(tmp_path / "tensorboard") == [
        (0, "train/reward_mean", 0.25), (0, "train/loss", 1.5), (10, "eval/pass_rate", 0.5),
    ]
    events = _read_events(tmp_path / "tensorboard")
    assert events[0].file_version == "brain.Event:2"  # the header event TensorBoard expects first
    assert events[1].wall_time == pytest.approx(read_metrics(log.path)[0]["time"])  # one clock for both
    log.close()
    log.close()  # twice is fine
    with pytest.raises(ValueError, match="closed"):
        log.write(11, {"x": 1.0})


def test_tensorboard_reader_if_installed(tmp_path: Path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    with MetricsLog(tmp_path) as log:
        for step in range(3):
            log.write(step, {"reward_mean": step / 4})
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(s.step, s.value) for s in acc.Scalars("train/reward_mean")] == [(0, 0.0), (1, 0.25), (2, 0.5)]


def test_nothing_lost_when_killed(tmp_path: Path):
    # A real SIGKILL after the writes: no close(), no atexit, no interpreter shutdown.
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from rl_jax.learner.metrics_log import MetricsLog
        log = MetricsLog(Path({str(tmp_path)!r}))
        for step in range(5):
            log.write(step, {{"reward_mean": step / 10}})
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert [(s, v) for s, _, v in _scalars(tmp_path / "tensorboard")] == [
        (s, pytest.approx(s / 10)) for s in range(5)
    ]


def test_resume_appends_and_keeps_the_old_event_file(tmp_path: Path):
    with MetricsLog(tmp_path) as log:
        log.write(0, {"loss": 1.0})
        log.write(1, {"loss": 0.5})
    first_files = sorted((tmp_path / "tensorboard").iterdir())
    # Reopened at once (same second, same host): a new event file, the old one untouched.
    with MetricsLog(tmp_path) as log:
        log.write(2, {"loss": 0.25})
    files = sorted((tmp_path / "tensorboard").iterdir())
    assert len(first_files) == 1 and len(files) == 2 and first_files[0] in files
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    assert sorted((s, v) for s, _, v in _scalars(tmp_path / "tensorboard")) == [(0, 1.0), (1, 0.5), (2, 0.25)]


def test_torn_last_line_is_tolerated_and_cut_off_on_resume(tmp_path: Path):
    with MetricsLog(tmp_path) as log:
        log.write(0, {"loss": 1.0})
        log.write(1, {"loss": 0.5})
    path = tmp_path / "metrics.jsonl"
    with path.open("a") as f:
        f.write('{"step": 2, "split": "train", "torn')  # what a kill mid-write leaves
    assert [r["step"] for r in read_metrics(path)] == [0, 1]
    with MetricsLog(tmp_path) as log:
        log.write(2, {"loss": 0.25})
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]
    assert path.read_text().count("\n") == 3 and "torn" not in path.read_text()


def test_whole_last_line_without_newline_is_kept_on_resume(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "split": "train", "time": 1.0, "loss": 2.0}')  # torn exactly before "\n"
    assert read_metrics(path) == [{"step": 0, "split": "train", "time": 1.0, "loss": 2.0}]
    with MetricsLog(tmp_path) as log:
        log.write(1, {"loss": 1.0})
    assert [r["step"] for r in read_metrics(path)] == [0, 1]


def test_a_bad_line_before_the_last_is_an_error(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON line"):
        read_metrics(path)


def test_disabled_writes_nothing_but_checks_arguments(tmp_path: Path):
    out = tmp_path / "run"
    with MetricsLog(out, enabled=False) as log:
        log.write(0, {"loss": 1.0})
        with pytest.raises(TypeError, match="must be a number"):
            log.write(1, {"loss": "1.0"})  # type: ignore[dict-item]
    assert not out.exists()


def test_refuses_bad_arguments(tmp_path: Path):
    with MetricsLog(tmp_path) as log:
        with pytest.raises(ValueError, match="reserved"):
            log.write(0, {"step": 1.0})
        with pytest.raises(TypeError, match="must be a number"):
            log.write(0, {"ok": True})
        with pytest.raises(TypeError, match="step must be an int"):
            log.write(True, {"x": 1.0})
        with pytest.raises(TypeError):
            log.write(1.5, {"x": 1.0})  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="split"):
            log.write(0, {"x": 1.0}, split="")
    assert read_metrics(tmp_path / "metrics.jsonl") == []  # a refused write writes nothing


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_reward_and_pass_rate(tmp_path: Path):
    with MetricsLog(tmp_path) as log:
        for step in range(40):
            log.write(step, {"reward_mean": 0.2 + 0.5 * step / 40, "pass_rate": 0.1 + 0.6 * step / 40})
            if step % 10 == 9:
                # Held-out eval: pass rate only; its reward_mean is missing and simply not drawn.
                log.write(step, {"pass_rate": 0.05 + 0.5 * step / 40}, split="eval")
        log.write(20, {"reward_mean": math.nan})  # a null: drawn as a gap, and the later line for step 20 wins
    png = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "plots" / "metrics.png", title="tiny run")
    assert png == tmp_path / "plots" / "metrics.png"
    width, height = _png_size(png)
    assert (width, height) == (800, 660)  # two panels: reward and pass rate
    assert png.stat().st_size > 10_000  # lines, labels and legends, not a blank canvas


def test_plot_skips_keys_without_values(tmp_path: Path):
    with MetricsLog(tmp_path) as log:
        log.write(0, {"loss": 1.0})
    png = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "one.png", keys=[("train", "loss"), ("eval", "loss")])
    assert _png_size(png) == (800, 380)  # one panel
    png = plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "none.png")  # none of the default keys
    assert _png_size(png) == (800, 380)


def test_importing_the_module_loads_neither_tensorboardx_nor_matplotlib():
    # A disabled log (every process but one) and the reader must not pay for either.
    code = (
        "import sys, rl_jax.learner.metrics_log as m; m.MetricsLog('unused', enabled=False).write(0, {'x': 1});"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'tensorboardX', 'matplotlib', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_keep_records_cuts_a_log_back_and_drops_a_torn_line(tmp_path: Path):
    """What a resumed run does to its logs (``rl_jax.learner.loop.rewind_logs``): lines past its checkpoint go."""
    from rl_jax.learner.metrics_log import keep_records

    path = tmp_path / "episodes.jsonl"
    lines = [json.dumps({"step": s, "split": "train"}) for s in (0, 1, 2)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 3, "spl')  # killed mid-write
    assert keep_records(path, lambda r: r["step"] <= 1) == 2
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert keep_records(path, lambda r: True) == 0 and path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    assert keep_records(tmp_path / "missing.jsonl", lambda r: True) == 0
    assert not (tmp_path / "missing.jsonl").exists()


def test_a_resumed_log_tells_tensorboard_to_drop_the_steps_it_runs_again(tmp_path: Path) -> None:
    """A run resumed from its step-2 checkpoint runs step 2 again: its new event file opens with a SessionLog
    START at step 2, TensorBoard's signal to drop the older files' events from that step on (what
    ``SummaryWriter(purge_step=)`` writes), before the re-run step's scalars. A fresh log writes none."""
    from tensorboardX.proto.event_pb2 import SessionLog

    with MetricsLog(tmp_path) as log:
        for step in (1, 2, 3):
            log.write(step, {"reward": float(step)})
    assert not [e for e in _read_events(tmp_path / "tensorboard") if e.HasField("session_log")]
    time.sleep(0.01)  # the new file's mtime orders it after the first
    with MetricsLog(tmp_path, purge_step=2) as log:
        log.write(2, {"reward": 20.0})
    newest = max((tmp_path / "tensorboard").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime_ns)
    events = [e for e in _read_events(newest.parent) if e.HasField("session_log") or e.HasField("summary")]
    starts = [i for i, e in enumerate(events) if e.HasField("session_log")]
    assert len(starts) == 1
    start = events[starts[0]]
    assert start.step == 2 and start.session_log.status == SessionLog.START
    rerun = [i for i, e in enumerate(events) if e.HasField("summary") and e.summary.value[0].simple_value == 20.0]
    assert rerun and rerun[0] > starts[0]
