"""Core counting honours cgroup CPU quotas (v2 and v1), read from fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rerankd.cores import available_cores, cgroup_cpu_limit

AFFINITY = len(os.sched_getaffinity(0))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2(tmp_path: Path, cpu_max: dict[str, str], own: str = "/") -> tuple[Path, Path]:
    """A cgroup v2 tree with `cpu.max` per folder, and a membership file placing this process at `own`."""
    for folder, text in cpu_max.items():
        write(tmp_path / "fs" / folder.strip("/") / "cpu.max", text)
    write(tmp_path / "cgroup", f"0::{own}\n")
    return tmp_path / "fs", tmp_path / "cgroup"


@pytest.mark.parametrize(
    ("cpu_max", "limit"),
    [("200000 100000\n", 2.0), ("150000 100000\n", 1.5), ("max 100000\n", None), ("50000 100000\n", 0.5)],
)
def test_v2_quota_at_the_container_root(tmp_path: Path, cpu_max: str, limit: float | None) -> None:
    root, membership = v2(tmp_path, {"/": cpu_max})
    assert cgroup_cpu_limit(root, membership) == limit
    expected = AFFINITY if limit is None else max(1, min(AFFINITY, int(limit)))
    assert available_cores(root, membership) == expected


def test_v2_tightest_quota_on_the_path_wins(tmp_path: Path) -> None:
    """A systemd slice's quota limits the service below it; a looser one further down does not widen it."""
    cgroups = {"/": "max 100000", "/system.slice": "100000 100000", "/system.slice/rerankd.service": "300000 100000"}
    root, membership = v2(tmp_path, cgroups, own="/system.slice/rerankd.service")
    assert cgroup_cpu_limit(root, membership) == 1.0
    assert available_cores(root, membership) == 1


def test_v2_host_path_missing_inside_the_container(tmp_path: Path) -> None:
    root, membership = v2(tmp_path, {"/": "100000 100000"}, own="/docker/abc123")
    assert cgroup_cpu_limit(root, membership) == 1.0


def test_v1_cfs_quota_and_period(tmp_path: Path) -> None:
    write(tmp_path / "fs/cpu,cpuacct/cpu.cfs_quota_us", "100000\n")
    write(tmp_path / "fs/cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    write(tmp_path / "cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "cgroup") == 1.0
    assert available_cores(tmp_path / "fs", tmp_path / "cgroup") == 1


def test_v1_unlimited(tmp_path: Path) -> None:
    write(tmp_path / "fs/cpu/cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "fs/cpu/cpu.cfs_period_us", "100000\n")
    write(tmp_path / "cgroup", "1:cpu:/\n")
    assert cgroup_cpu_limit(tmp_path / "fs", tmp_path / "cgroup") is None


def test_no_cgroups_means_the_affinity_mask(tmp_path: Path) -> None:
    assert available_cores(tmp_path / "missing", tmp_path / "missing-membership") == AFFINITY
