"""Finding a fleet's processes on this machine (for fault benchmarks and tests): model replicas by their title,
or everything in a network namespace."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def _processes() -> Iterator[tuple[int, Path]]:
    """(pid, its /proc folder) of every process; any of them may be gone by the time it is read."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name), entry


def _parents() -> dict[int, int]:
    parents = {}
    for pid, entry in _processes():
        try:
            # The command name may hold spaces and parentheses; the fields after its last ")" do not.
            parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def namespace_pids(inode: int) -> list[int]:
    """Processes other than this one whose network namespace is `inode` (`os.stat(".../ns/net").st_ino`)."""
    found = []
    for pid, entry in _processes():
        try:
            if pid != os.getpid() and (entry / "ns/net").stat().st_ino == inode:
                found.append(pid)
        except OSError:
            continue
    return sorted(found)


def replica_pids(root: int | None = None, title: str = "ServeReplica:rerankd:Model") -> list[int]:
    """Model replica processes started by `root` (default: this process), found by the title Ray gives them
    (`ray::ServeReplica:<app>:<deployment>`)."""
    root = root or os.getpid()
    parents = _parents()
    found = []
    for pid in parents:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, root):
            ancestor = parents.get(ancestor)
        if ancestor != root:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if title in cmdline:
            found.append(pid)
    return sorted(found)
