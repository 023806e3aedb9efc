"""Cache folders built once: by one process at a time, and never seen half-built.

A file lock beside the folder makes concurrent builders (server workers, test processes) wait for the first one
and reuse its result instead of building too; the build goes into a staging folder that is renamed into place,
so a crash leaves nothing that looks finished.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def build_once(folder: Path, build: Callable[[Path], None], *, done: str) -> Path:
    """`folder`, built by `build(staging)` unless `folder/done` exists already; returns `folder`."""
    if (folder / done).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(f"{folder.name}.lock")):
        if (folder / done).is_file():
            return folder  # built by another process while this one waited
        staging = folder.with_name(f".{folder.name}.building")
        shutil.rmtree(staging, ignore_errors=True)  # what a crashed build left
        staging.mkdir()
        try:
            build(staging)
            shutil.rmtree(folder, ignore_errors=True)  # a leftover without `done` is not ours to keep
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder
