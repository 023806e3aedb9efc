"""A loopback-only network namespace for local Ray runs (tests, benchmarks).

Ray's processes open gRPC ports on every interface. Inside a fresh network namespace that has only `lo`, nothing
outside this machine can reach them. The namespace belongs to the calling thread and to every thread and process
it starts from then on; leaving the block returns the thread to its old namespace. Needs root (CAP_SYS_ADMIN).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


@contextlib.contextmanager
def loopback_only() -> Iterator[bool]:
    """Run the block in a new namespace with only loopback; yields False, changing nothing, where that is denied."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    except OSError:
        yield False
        return
    if libc.unshare(CLONE_NEWNET) != 0:
        os.close(original)
        yield False
        return
    try:
        _bring_loopback_up()
        yield True
    finally:
        libc.setns(original, CLONE_NEWNET)
        os.close(original)
