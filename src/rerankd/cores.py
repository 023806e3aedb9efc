"""How many cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

A container started with `cpus: 2` on a 64-core host sees 64 cores in its affinity mask but gets 2 cores' time;
sizing thread pools by the mask would start 64 threads that the kernel throttles every scheduling period.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


def available_cores(root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> int:
    """Cores to size thread pools by: the affinity mask (taskset, cpusets), capped by the cgroup quota.

    The quota is rounded down (at least 1): a thread more than the quota allows is throttled in every period.
    """
    cores = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root, membership)
    return cores if limit is None else max(1, min(cores, math.floor(limit)))


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> float | None:
    """CPUs' worth of time the tightest quota on this process's cgroup or its ancestors allows; None if none."""
    limits = [limit for folder in _cgroup_folders(root, membership) if (limit := _quota(folder)) is not None]
    return min(limits, default=None)


def _cgroup_folders(root: Path, membership: Path) -> list[Path]:
    """This process's cgroup folder and its ancestors, for cgroup v2 and for v1's cpu controller.

    Inside a container the cgroup file system is usually the container's own, so deeper paths from the host's
    view do not exist there and the mount's root holds the container's quota: every level is checked.
    """
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return []
    folders: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            bases = [root]  # v2: one unified hierarchy
        elif "cpu" in controllers.split(","):
            bases = [root / controllers, root / "cpu"]  # v1: mounted as cpu,cpuacct, usually linked as cpu
        else:
            continue
        parts = PurePosixPath(path).parts[1:]
        folders += [base.joinpath(*parts[:depth]) for base in bases for depth in range(len(parts) + 1)]
    return list(dict.fromkeys(folders))  # v1's `cpu` controller line names the same folder twice


def _quota(folder: Path) -> float | None:
    """One folder's quota in CPUs: v2 `cpu.max` ("max 100000" or "200000 100000"), v1 cfs quota and period."""
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        if quota in {"max", "-1"}:
            return None
        return int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None  # missing or unreadable: no limit known


def leave_cores_to_the_runtime() -> None:
    """Run numpy's BLAS (heads, pooling, MaxSim) on one thread. Its pool's threads spin after each call and take the
    cores from the inference runtime's next batch: with OpenBLAS on both of 2 cores, a ColBERT (its projection in
    numpy after an ONNX Runtime body) took 1.21x as long on 1,000 documents (bench/results/late_interaction.json)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")
