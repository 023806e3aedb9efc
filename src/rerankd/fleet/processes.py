"""Finding a fleet's model replica processes on this machine (for fault benchmarks and tests)."""

from __future__ import annotations

import os
from pathlib import Path


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                # The command name may hold spaces and parentheses; the fields after its last ")" do not.
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


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
