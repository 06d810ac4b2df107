"""The local Ray processes a sweep started, recorded so that a killed driver leaves nothing behind.

A driver that starts its own local Ray owns that Ray's processes (GCS, raylet, dashboard and
runtime-env agents, workers).  ``ray.shutdown()`` stops them on a normal end, but a driver
killed with SIGKILL cannot: some of them (the dashboard and runtime-env agents) outlive it.
So the driver records them — PID plus start time, read from ``/proc`` — in the sweep folder,
and the next ``resume`` stops exactly those processes that are still alive with the same start
time (never another process that reused a PID, never anything by name), then forgets them.

Linux only (``/proc``); elsewhere nothing is recorded and nothing is stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessId:
    """A process, told apart from a later one with the same PID by its start time (clock ticks since boot)."""

    pid: int
    started: int


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)", or None when the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
        return text[text.rindex(")") + 2 :].split()
    except (OSError, ValueError):
        return None


def identify(pid: int) -> ProcessId | None:
    """The live (not zombie) process ``pid``, with its start time."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in "ZXx":
        return None
    return ProcessId(pid, int(fields[19]))  # field 22 of stat: starttime


def descendants(root: int) -> list[ProcessId]:
    """Every live process below ``root`` (children, grandchildren, …)."""
    if not PROC.is_dir():
        return []
    children: dict[int, list[int]] = {}
    for entry in os.listdir(PROC):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, stack = [], list(children.get(root, []))
    while stack:
        pid = stack.pop()
        if (process := identify(pid)) is not None:
            found.append(process)
        stack.extend(children.get(pid, []))
    return found


def record(path: Path, processes: list[ProcessId]) -> None:
    """Add ``processes`` to the record at ``path`` (kept until ``forget``)."""
    known = set(read(path)) | set(processes)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    body = {"record": str(path.resolve()), "processes": [asdict(p) for p in sorted(known, key=lambda p: p.pid)]}
    temporary.write_text(json.dumps(body))
    os.replace(temporary, path)


def read(path: Path) -> list[ProcessId]:
    """The processes recorded at ``path``; none when the record was written elsewhere (a copied sweep folder)."""
    try:
        body = json.loads(path.read_text())
        if body["record"] != str(path.resolve()):
            return []  # the original's processes, not this copy's: never stop them from here
        return [ProcessId(int(item["pid"]), int(item["started"])) for item in body["processes"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)


def alive(processes: list[ProcessId]) -> list[ProcessId]:
    """Those of ``processes`` that still run (same PID and start time)."""
    return [p for p in processes if identify(p.pid) == p]


def stop(processes: list[ProcessId], grace_s: float = 3.0) -> list[ProcessId]:
    """SIGTERM those still alive, then SIGKILL what is left after ``grace_s``; returns any survivors."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 3.0)):
        left = alive(processes)
        if not left:
            return []
        for process in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(process.pid, sig)
        deadline = time.monotonic() + wait_s
        while alive(left) and time.monotonic() < deadline:
            time.sleep(0.1)
    return alive(processes)


def stop_recorded(path: Path) -> int:
    """Stop the still-running processes recorded at ``path`` by an earlier driver; returns how many ran."""
    left = alive(read(path))
    survivors = stop(left) if left else []
    if not survivors:
        forget(path)
    return len(left)
