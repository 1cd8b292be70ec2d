"""Files in a run folder that record what goes to MLflow, written before anything is sent.

`metrics.jsonl` contains one JSON object per evaluation and is the source of truth for the run's curves.
`mlflow-outbox.jsonl` lists the files waiting for upload as artifacts. `mlflow-mirror.json` records how
far the mirror has sent both. This module does not import mlflow, so training workers stay light.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import posixpath
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
OUTBOX_FILE = "mlflow-outbox.jsonl"
STATE_FILE = "mlflow-mirror.json"

# MLflow 3.17 accepts metric keys made of these characters, at most 250 of them, that stay the same
# under posixpath.normpath (mlflow/utils/validation.py). Checked here so that a bad key fails in the
# caller instead of blocking the mirror later.
METRIC_KEY_PATTERN = re.compile(r"^[/\w.\- :]+$")
MAX_METRIC_KEY_LENGTH = 250

# Strict JSON has no NaN or infinity, so they are written as these strings and read back as floats.
NONFINITE_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

_logger = logging.getLogger(__name__)


def kimg_to_step(kimg: float) -> int:
    """Return the MLflow step for a point at `kimg`: kimg rounded half up to an integer."""
    return math.floor(kimg + 0.5)


def encode_value(value: float) -> float | str:
    """Return `value` as strict JSON allows: finite floats as they are, NaN and infinities by name."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def decode_value(value: Any) -> float:
    """Return the float written by `encode_value`; raise ValueError for anything else."""
    if isinstance(value, str):
        if value not in NONFINITE_NAMES:
            raise ValueError(f"invalid metric value {value!r}: expected a number or one of {sorted(NONFINITE_NAMES)}")
        return NONFINITE_NAMES[value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"invalid metric value {value!r}: expected a number")
    return float(value)


def check_metric_key(key: Any) -> None:
    """Raise ValueError unless MLflow accepts `key` as a metric name."""
    if not isinstance(key, str) or not METRIC_KEY_PATTERN.match(key):
        raise ValueError(f"invalid metric key {key!r}: use letters, digits and _ - . / : or space")
    if len(key) > MAX_METRIC_KEY_LENGTH:
        raise ValueError(f"invalid metric key {key[:40]!r}...: longer than {MAX_METRIC_KEY_LENGTH} characters")
    if posixpath.normpath(key) != key or key.startswith("/"):
        raise ValueError(f"invalid metric key {key!r}: it must not change under path normalization")


def _metric_float(key: str, value: Any) -> float:
    if isinstance(value, (str, bytes, bool)):
        raise TypeError(f"metric {key!r}: value {value!r} is not a number")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"metric {key!r}: value {value!r} is not a number") from error


@dataclasses.dataclass(frozen=True)
class MetricRecord:
    """One line of metrics.jsonl: the metrics measured at `kimg`, with the Unix time in seconds."""

    kimg: float
    time: float
    metrics: dict[str, float]

    @property
    def step(self) -> int:
        return kimg_to_step(self.kimg)

    def to_json(self) -> str:
        metrics = {key: encode_value(value) for key, value in self.metrics.items()}
        line = {"step": self.step, "kimg": self.kimg, "time": self.time, "metrics": metrics}
        return json.dumps(line, allow_nan=False)

    @classmethod
    def from_json(cls, line: str) -> MetricRecord:
        data = json.loads(line)
        metrics = {key: decode_value(value) for key, value in data["metrics"].items()}
        return cls(kimg=float(data["kimg"]), time=float(data["time"]), metrics=metrics)


def _append_line(path: Path, line: str) -> None:
    """Append one line and fsync it, so that a crash right after the call keeps it."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def _drop_partial_last_line(path: Path) -> None:
    """Truncate a last line without newline, left by a crash in the middle of a write."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as file:
        data = file.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        _logger.warning("%s: dropping %d bytes of an unfinished last line", path, len(data) - keep)
        file.truncate(keep)
        file.flush()
        os.fsync(file.fileno())


class MetricLog:
    """Append-only metrics.jsonl in a run folder; every append is on disk when the call returns."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        _drop_partial_last_line(self.path)

    def append(self, kimg: float, metrics: Mapping[str, Any], timestamp: float | None = None) -> MetricRecord:
        """Write the metrics measured at `kimg`; NaN and infinite values are kept as they are.

        A `kimg` entry in `metrics` must equal `kimg`, because the mirror also sends `kimg` as a metric.
        """
        kimg = float(kimg)
        if not math.isfinite(kimg) or kimg < 0:
            raise ValueError(f"invalid kimg {kimg!r}: expected a finite number >= 0")
        values: dict[str, float] = {}
        for key, value in metrics.items():
            check_metric_key(key)
            values[key] = _metric_float(key, value)
        if "kimg" in values and values["kimg"] != kimg:
            raise ValueError(f"metric 'kimg' is {values['kimg']!r} but the record is at kimg {kimg!r}")
        record = MetricRecord(kimg=kimg, time=time.time() if timestamp is None else float(timestamp),
                              metrics=values)
        _append_line(self.path, record.to_json())
        return record


def read_lines(path: Path, offset: int) -> Iterator[tuple[str, int]]:
    """Yield (line, end offset) for each complete line after byte `offset`; a partial last line is left."""
    if not path.exists():
        return
    with open(path, "rb") as file:
        file.seek(offset)
        data = file.read()
    position = offset
    for raw in data.splitlines(keepends=True):
        if not raw.endswith(b"\n"):
            break
        position += len(raw)
        yield raw.decode("utf-8").rstrip("\n"), position


def count_lines(path: Path, offset: int) -> int:
    return sum(1 for _ in read_lines(path, offset))


@dataclasses.dataclass(frozen=True)
class QueuedArtifact:
    """A local file (or folder) to upload into the run's artifacts under `artifact_path`."""

    path: str
    artifact_path: str | None

    @classmethod
    def from_json(cls, line: str) -> QueuedArtifact:
        data = json.loads(line)
        return cls(path=data["path"], artifact_path=data.get("artifact_path"))


def queue_artifact(run_dir: str | os.PathLike, path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Add a file to the run folder's upload queue; the file must stay in place until it is uploaded."""
    local = Path(path).resolve()
    if not local.exists():
        raise FileNotFoundError(f"artifact {local} not found")
    entry = {"path": str(local), "artifact_path": artifact_path, "time": time.time()}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    _append_line(Path(run_dir) / OUTBOX_FILE, json.dumps(entry))


@dataclasses.dataclass
class MirrorState:
    """How far the mirror got: byte offsets into metrics.jsonl and the outbox, for one MLflow run."""

    run_id: str
    metrics_offset: int = 0
    outbox_offset: int = 0
    missing_artifacts: list[str] = dataclasses.field(default_factory=list)
    last_error: str | None = None


def load_state(run_dir: str | os.PathLike, run_id: str) -> MirrorState:
    """Return the saved state for `run_id`, or a fresh one when none is saved or it is for another run."""
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return MirrorState(run_id=run_id)
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("run_id") != run_id:
        _logger.info("%s belongs to MLflow run %s, not %s: starting from the first line",
                     path, data.get("run_id"), run_id)
        return MirrorState(run_id=run_id)
    fields = {field.name for field in dataclasses.fields(MirrorState)}
    return MirrorState(**{key: value for key, value in data.items() if key in fields})


def save_state(run_dir: str | os.PathLike, state: MirrorState) -> None:
    """Write the state atomically: a temporary file in the same folder, fsync'd, then renamed."""
    run_dir = Path(run_dir)
    descriptor, temporary = tempfile.mkstemp(prefix=STATE_FILE + ".", suffix=".tmp", dir=run_dir)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(dataclasses.asdict(state), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, run_dir / STATE_FILE)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclasses.dataclass(frozen=True)
class MirrorBacklog:
    """Backlog of a mirror: metric lines and artifacts not yet in MLflow, and queued files that vanished."""

    metric_lines: int
    artifacts: int
    missing_artifacts: tuple[str, ...] = ()
    last_error: str | None = None

    @property
    def empty(self) -> bool:
        return self.metric_lines == 0 and self.artifacts == 0


def read_backlog(run_dir: str | os.PathLike, run_id: str) -> MirrorBacklog:
    """Count what the mirror of `run_id` has not sent yet from the files in `run_dir`."""
    run_dir = Path(run_dir)
    state = load_state(run_dir, run_id)
    return MirrorBacklog(
        metric_lines=count_lines(run_dir / METRICS_FILE, state.metrics_offset),
        artifacts=count_lines(run_dir / OUTBOX_FILE, state.outbox_offset),
        missing_artifacts=tuple(state.missing_artifacts),
        last_error=state.last_error,
    )
