"""Where the report's records go: one JSON object per measured case (docs/bench-schema.md),
written to report.jsonl as they are made (a run cut short keeps what it measured), plus the
notes that say what was skipped and why, and the wall-clock budget of the run."""
import datetime
import json
import math
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# Paths whose changes alter what is measured; other people's edits elsewhere do not make a
# record "-dirty".
MEASURED_PATHS = ["src", "include", "python", "bench/eval", "setup.py", "CMakeLists.txt"]


def commit_id() -> str:
    """`git rev-parse --short HEAD`, with -dirty when the measured paths have changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", *MEASURED_PATHS],
                                cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if status.strip() else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else cpu_model()


def device_slug(name: str) -> str:
    """File-name form: 'NVIDIA H200' -> NVIDIA-H200; a cpu model -> its first two words in lower
    case ('AMD EPYC 7B13 64-Core Processor' -> amd-epyc), as bench/results names them."""
    if name.startswith("NVIDIA"):
        return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    words = re.sub(r"\((R|TM|tm|r)\)", "", name).split()
    return "-".join(w.lower() for w in words[:2]) or "cpu"


def _clean(value):
    """JSON has no inf/nan: write them as strings, so every line stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Recorder:
    def __init__(self, path, device: str, commit: str, log=print):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w")
        self.base = dict(date=datetime.date.today().isoformat(), device=device_name(device),
                         commit=commit)
        self.records, self.notes, self.log = [], [], log

    def emit(self, **fields) -> dict:
        record = _clean({**self.base, **fields})
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        return record

    def note(self, text: str):
        self.notes.append(text)
        self.log(f"note: {text}")

    def close(self):
        self.file.close()


class Budget:
    """Seconds left of the run's wall-clock budget."""

    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def expired(self, reserve: float = 0.0) -> bool:
        return self.left() < reserve


def load(path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def number(value):
    """A record's float field back from JSON ('inf' strings included); None stays None."""
    return float(value) if isinstance(value, str) else value


def cases(records, section) -> list:
    """The case names of one report section, in the order they first appear."""
    seen = []
    for r in records:
        if r.get("section") == section and r["case"] not in seen:
            seen.append(r["case"])
    return seen
