"""Cache folders built once: by one process at a time, and never seen half-built.

A file lock beside the folder makes concurrent builders (server workers, test processes) wait for the first one
and reuse its result instead of building too; the build goes into a staging folder that is renamed into place,
so a crash leaves nothing that looks finished.

With `verify=True` the folder's files are also trusted only while they match the SHA-256 digests written beside
them at build time (`SHA256SUMS`, in `sha256sum` format): a file flipped, truncated or replaced on disk is found
when the folder is next used, and the folder is rebuilt, with a warning in the log.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

DIGESTS = "SHA256SUMS"


def build_once(folder: Path, build: Callable[[Path], None], *, done: str, verify: bool = False) -> Path:
    """`folder`, built by `build(staging)` unless `folder/done` exists already; returns `folder`. With `verify`, an
    existing folder must also pass `digest_problem`, else it is rebuilt (and its digests are written when built)."""
    problem = _problem(folder, done, verify)
    if problem is None:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.with_name(f"{folder.name}.lock")):
        if (folder / done).is_file():
            problem = _problem(folder, done, verify)  # another process may have rebuilt it while this one waited
            if problem is None:
                return folder
            log.warning("cached %s is not what was built (%s): rebuilding it", folder, problem)
        staging = folder.with_name(f".{folder.name}.building")
        shutil.rmtree(staging, ignore_errors=True)  # what a crashed build left
        staging.mkdir()
        try:
            build(staging)
            if verify:
                write_digests(staging)
            shutil.rmtree(folder, ignore_errors=True)  # a leftover without `done` is not ours to keep
            staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def write_digests(folder: Path) -> None:
    """Write `folder/SHA256SUMS`: the SHA-256 of every file below `folder`, checkable with `sha256sum -c`."""
    lines = [f"{sha256(path)}  {name}\n" for name, path in _files(folder).items()]
    (folder / DIGESTS).write_text("".join(lines))


def digest_problem(folder: Path) -> str | None:
    """Why `folder`'s files do not match its `SHA256SUMS` (a digest missing, a file changed, missing or added), or
    None when every file matches. Reads each file once."""
    sums = folder / DIGESTS
    if not sums.is_file():
        return f"no {DIGESTS}"
    expected = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        expected[name] = digest
    files = _files(folder)
    if extra := sorted(files.keys() - expected.keys()):
        return f"{extra[0]} is not in {DIGESTS}"
    for name, digest in expected.items():
        if name not in files:
            return f"{name} is missing"
        if sha256(files[name]) != digest:
            return f"{name} does not match its SHA-256 in {DIGESTS}"
    return None


def sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _files(folder: Path) -> dict[str, Path]:
    return {
        path.relative_to(folder).as_posix(): path
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != DIGESTS
    }


def _problem(folder: Path, done: str, verify: bool) -> str | None:
    if not (folder / done).is_file():
        return f"no {done}"
    return digest_problem(folder) if verify else None
