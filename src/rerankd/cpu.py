"""The one CPU probe: the model name and feature flags, and what they mean for inference.

The engine picks its precision from these (backends/select.py) and every benchmark records them (reporting.py).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# int8 dot products in hardware: x86 VNNI (AVX-512 or AVX) and AMX, Arm's dot-product extension.
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"})
# bf16 arithmetic in hardware (x86): without it bf16 is emulated, slower than fp32.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Flags worth recording beside a measurement: they decide which kernels run fast.
RECORDED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class Cpu:
    """One CPU's model name and feature flags, and whether it is x86 (OpenVINO's engines were measured there only)."""

    model: str
    flags: frozenset[str]
    x86: bool = True

    @property
    def int8_dot(self) -> bool:
        return bool(INT8_DOT_FLAGS & self.flags)

    @property
    def bf16(self) -> bool:
        return bool(BF16_FLAGS & self.flags)

    @property
    def recorded_flags(self) -> list[str]:
        return [flag for flag in RECORDED_FLAGS if flag in self.flags]


def read_cpu(cpuinfo: Path = CPUINFO) -> Cpu:
    """The first CPU's model and flags from /proc/cpuinfo (Linux; x86 `flags`, Arm `Features`); elsewhere the
    architecture's name and no flags."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags") or fields.get("Features") or ""
    model = fields.get("model name") or platform.processor() or platform.machine()
    return Cpu(model, frozenset(flags.split()), x86=platform.machine() in ("x86_64", "AMD64"))


@cache
def this_cpu() -> Cpu:
    """This machine's CPU, read once."""
    return read_cpu()
