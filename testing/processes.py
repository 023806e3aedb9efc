"""Processes that tests and benchmarks start or look for on this machine: stopping one they started, and finding
a fleet's model replicas by their title or everything in a network namespace."""

from __future__ import annotations

import os
import subprocess

import psutil


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """Ask `process` to exit (SIGTERM), and kill it if it has not within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def namespace_pids(inode: int) -> list[int]:
    """Processes other than this one whose network namespace is `inode` (`os.stat(".../ns/net").st_ino`)."""
    found = []
    for pid in psutil.pids():
        try:  # psutil has no namespace API; the process may be gone by now
            if pid != os.getpid() and os.stat(f"/proc/{pid}/ns/net").st_ino == inode:
                found.append(pid)
        except OSError:
            continue
    return sorted(found)


def replica_pids(root: int | None = None, title: str = "ServeReplica:rerankd:Model") -> list[int]:
    """Model replica processes started by `root` (default: this process), found by the title Ray gives them
    (`ray::ServeReplica:<app>:<deployment>`)."""
    found = []
    try:
        descendants = psutil.Process(root or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for process in descendants:
        try:
            cmdline = " ".join(process.cmdline())
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
        if title in cmdline:
            found.append(process.pid)
    return sorted(found)
