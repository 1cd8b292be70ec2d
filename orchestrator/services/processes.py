"""Start servers as detached process groups and stop them again by recorded pid.

A pid is signalled only while it still runs the command line recorded at start and has the same
start time, so a pid that the system reused for another process is never touched.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCALHOST = "127.0.0.1"
POLL_INTERVAL_S = 0.1
KILL_WAIT_S = 5.0

# Runs in a short-lived Python process: starts the server in a new session with its output
# appended to the log, prints the server's pid and exits. The server is then nobody's child in
# the caller, so the caller never has to reap it, and it outlives the `progan` command.
_LAUNCHER = """
import subprocess, sys
with open(sys.argv[1], "ab") as log:
    server = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
print(server.pid)
"""


@dataclass(frozen=True)
class ProcessRecord:
    """Identity of a started server: its pid, its command line and its start time."""

    pid: int
    argv: tuple[str, ...]
    start_time: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "argv": list(self.argv), "start_time": self.start_time}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessRecord | None:
        if not data.get("pid") or not data.get("argv"):
            return None
        return cls(int(data["pid"]), tuple(data["argv"]), data.get("start_time"))


@dataclass(frozen=True)
class _ProcessInfo:
    argv: tuple[str, ...]
    start_time: str | None
    process_group: int
    zombie: bool


def start_detached(argv: Sequence[str], *, log_path: Path, env: Mapping[str, str],
                   cwd: Path) -> ProcessRecord:
    """Start `argv` in its own session with stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as stream:
        stream.write(f"\n--- progan services: starting at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                     f"{' '.join(argv)}\n")
    launched = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log_path), *argv],
                              env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, check=False)
    if launched.returncode != 0:
        raise RuntimeError(f"failed to start {argv[0]}: {launched.stderr.strip()}")
    pid = int(launched.stdout.strip())
    info = _read_process(pid)
    record = ProcessRecord(pid, tuple(argv), info.start_time if info else None)
    log.info("started pid %d: %s (log %s)", pid, argv[0], log_path)
    return record


def is_running(record: ProcessRecord | None) -> bool:
    """Return True when the recorded pid is alive and still runs the recorded command."""
    if record is None:
        return False
    info = _read_process(record.pid)
    if info is None or info.zombie:
        return False
    return info.argv == record.argv and (record.start_time is None
                                         or info.start_time == record.start_time)


def stop(record: ProcessRecord, timeout_s: float) -> str:
    """Stop a recorded server and its process group: SIGTERM, wait up to `timeout_s`, SIGKILL.

    Returns "stopped", "killed" (it outlived the timeout) or "not running" (the pid is gone or
    now belongs to another command, which is left alone).
    """
    if not is_running(record):
        return "not running"
    info = _read_process(record.pid)
    # The server was started as a session leader, so its group id is its pid. A server that
    # moved to another group gets the signal alone.
    group = record.pid if info is not None and info.process_group == record.pid else None
    _signal(record.pid, group, signal.SIGTERM)
    log.info("sent SIGTERM to pid %d", record.pid)
    if _wait_exit(record.pid, group, timeout_s):
        return "stopped"
    log.warning("pid %d still running %.0f s after SIGTERM; sending SIGKILL", record.pid, timeout_s)
    _signal(record.pid, group, signal.SIGKILL)
    if not _wait_exit(record.pid, group, KILL_WAIT_S):
        raise RuntimeError(f"pid {record.pid} ({record.argv[0]}) survived SIGKILL")
    return "killed"


def free_ports(count: int) -> list[int]:
    """Return `count` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOCALHOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def ports_available(ports: Sequence[int]) -> bool:
    """Return True when every port can be bound on 127.0.0.1 right now."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOCALHOST, port))
            except OSError:
                return False
    return True


def wait_ports_available(ports: Sequence[int], timeout_s: float) -> bool:
    """Return True once every port can be bound, or False after `timeout_s`.

    A server killed a moment ago can still hold its ports: Linux frees the command line before
    it closes the file descriptors, so the pid no longer looks like the server while it exits.
    """
    deadline = time.monotonic() + timeout_s
    while not ports_available(ports):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def _signal(pid: int, group: int | None, signum: int) -> None:
    try:
        if group is not None:
            os.killpg(group, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _wait_exit(pid: int, group: int | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        alive = _group_alive(group) if group is not None else _pid_alive(pid)
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_S)


def _pid_alive(pid: int) -> bool:
    info = _read_process(pid)
    return info is not None and not info.zombie


def _group_alive(group: int) -> bool:
    """Return True while any process of the group is alive; zombies waiting for reaping count
    as gone."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _read_proc_stat(int(entry.name))
        if stat is not None and stat[1] == group and not stat[0]:
            return True
    return False


def _read_process(pid: int) -> _ProcessInfo | None:
    """Return the command line, start time, group and zombie state of `pid`, or None if gone."""
    if Path("/proc").is_dir():
        return _read_proc(pid)
    return _read_ps(pid)


def _read_proc(pid: int) -> _ProcessInfo | None:
    try:
        raw_argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    stat = _read_proc_stat(pid)
    if stat is None:
        return None
    zombie, process_group, start_time = stat
    argv = tuple(part.decode(errors="replace") for part in raw_argv.split(b"\0")[:-1])
    return _ProcessInfo(argv=argv, start_time=start_time, process_group=process_group,
                        zombie=zombie)


def _read_proc_stat(pid: int) -> tuple[bool, int, str] | None:
    """Return (zombie, process group, start time in clock ticks since boot) from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # Fields after the command name, which is in parentheses and may itself hold spaces:
    # state is field 3, process group field 5, start time field 22.
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0] in ("Z", "X"), int(fields[2]), fields[19]


def _read_ps(pid: int) -> _ProcessInfo | None:
    """`ps`-based reader for systems without /proc (macOS); the command line is compared as one
    space-joined string, because ps does not keep the argument boundaries."""
    def ps_field(name: str) -> str | None:
        result = subprocess.run(["ps", "-p", str(pid), "-o", f"{name}="], capture_output=True,
                                text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None

    command = ps_field("command")
    if command is None:
        return None
    state = ps_field("stat") or ""
    return _ProcessInfo(argv=tuple(command.split(" ")), start_time=ps_field("lstart"),
                        process_group=int(ps_field("pgid") or 0), zombie=state.startswith("Z"))
