"""Fargate task sizes: parsing ``cpu=`` / ``memory=`` options and checking them up front.

Fargate accepts only these task-level CPU/memory combinations (Amazon ECS developer guide, "Task
CPU and memory"; the same table is in the ECS API reference for ``RegisterTaskDefinition``):

====================  =====================================================
CPU (units / vCPU)    memory
====================  =====================================================
256 / 0.25            512 MiB, 1 GB, 2 GB
512 / 0.5             1 GB to 4 GB in 1 GB steps
1024 / 1              2 GB to 8 GB in 1 GB steps
2048 / 2              4 GB to 16 GB in 1 GB steps
4096 / 4              8 GB to 30 GB in 1 GB steps
8192 / 8              16 GB to 60 GB in 4 GB steps (Linux platform 1.4.0+)
16384 / 16            32 GB to 120 GB in 8 GB steps (Linux platform 1.4.0+)
====================  =====================================================

"GB" in ECS means GiB: 1 GB = 1024 MiB, which is how task definitions store memory.

ARM64 (Graviton) tasks take the same sizes as x86_64 on Linux (platform 1.4.0, which ``LATEST``
is), and Fargate Spot runs ARM64 tasks since September 2024; so the architecture adds no size
constraint. It is still an argument, so a future constraint has one place to live.
"""

from __future__ import annotations

import math
import re
from typing import Union

#: vCPU per CPU unit: ECS counts 1024 units per vCPU.
UNITS_PER_VCPU = 1024

#: Architectures Fargate runs on Linux, by the name ECS's ``runtimePlatform.cpuArchitecture`` takes.
ARCHITECTURES = {"x86_64": "X86_64", "arm64": "ARM64"}

_ARCH_ALIASES = {
    "x86_64": "x86_64", "x86-64": "x86_64", "x86": "x86_64", "amd64": "x86_64", "x64": "x86_64",
    "arm64": "arm64", "aarch64": "arm64", "arm": "arm64", "graviton": "arm64",
}

_GB = 1024  # MiB per GB (ECS's GB is a GiB)


def _range(lo_gb: int, hi_gb: int, step_gb: int) -> tuple[int, ...]:
    return tuple(gb * _GB for gb in range(lo_gb, hi_gb + 1, step_gb))


#: CPU units -> the memory sizes (MiB) Fargate accepts with them.
FARGATE_SIZES: dict[int, tuple[int, ...]] = {
    256: (512, 1 * _GB, 2 * _GB),
    512: _range(1, 4, 1),
    1024: _range(2, 8, 1),
    2048: _range(4, 16, 1),
    4096: _range(8, 30, 1),
    8192: _range(16, 60, 4),
    16384: _range(32, 120, 8),
}

CpuLike = Union[int, float, str]
MemoryLike = Union[int, float, str]


def normalize_arch(arch: str | None) -> str:
    """``"x86_64"`` or ``"arm64"`` for any common spelling (amd64, aarch64, Graviton, ...)."""
    if arch is None:
        return "x86_64"
    key = str(arch).strip().lower()
    if key not in _ARCH_ALIASES:
        raise ValueError(f"arch={arch!r} is not a Fargate architecture; use 'x86_64' or 'arm64'")
    return _ARCH_ALIASES[key]


def valid_sizes(arch: str = "x86_64") -> list[tuple[int, int]]:
    """Every valid ``(cpu_units, memory_mib)`` pair for ``arch``, smallest first."""
    normalize_arch(arch)
    return [(cpu, mem) for cpu, mems in FARGATE_SIZES.items() for mem in mems]


def _number(text: str, what: str, original: object) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}={original!r} is not understood") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}={original!r} is not a finite number")
    return value


def parse_cpu(cpu: CpuLike) -> float:
    """vCPU count for ``4``, ``"4"``, ``0.5``, ``"0.5 vCPU"``, or ECS CPU units (``"1024"``).

    A number that is a Fargate CPU-unit value (256, 512, ..., 16384) is read as units: no Fargate
    task has that many vCPU, so the reading is never ambiguous.
    """
    if isinstance(cpu, bool):
        raise TypeError(f"cpu must be a number of vCPU, got {cpu!r}")
    if isinstance(cpu, (int, float)):
        value = float(cpu)
        if not math.isfinite(value):
            raise ValueError(f"cpu={cpu!r} is not a finite number")
    elif isinstance(cpu, str):
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(vcpus?|cpus?|units?)?\s*", cpu, re.IGNORECASE)
        if not match:
            raise ValueError(f"cpu={cpu!r} is not understood; give a number of vCPU such as 4")
        value = _number(match.group(1), "cpu", cpu)
        if (match.group(2) or "").lower().startswith("unit"):
            value /= UNITS_PER_VCPU
            return _check_positive(value, "cpu", cpu)
    else:
        raise TypeError(f"cpu must be a number of vCPU, got {type(cpu).__name__}")
    if value == int(value) and int(value) in FARGATE_SIZES:
        value /= UNITS_PER_VCPU
    return _check_positive(value, "cpu", cpu)


def _check_positive(value: float, what: str, original: object) -> float:
    if value <= 0:
        raise ValueError(f"{what}={original!r} must be greater than zero")
    return value


_MEMORY_UNITS = {
    "": 1, "m": 1, "mb": 1, "mib": 1,
    "g": _GB, "gb": _GB, "gib": _GB,
    "t": _GB * 1024, "tb": _GB * 1024, "tib": _GB * 1024,
}


def parse_memory(memory: MemoryLike) -> int:
    """MiB for ``"8GB"``, ``"8 GiB"``, ``"512MB"``, ``"0.5 GB"`` or a bare number of MiB (``8192``).

    As in ECS task definitions, GB means GiB (1024 MiB) and a bare number is MiB. A bare number
    too small for any Fargate task (below 512) is refused with a hint, since ``memory=8`` almost
    certainly meant 8 GB.
    """
    if isinstance(memory, bool):
        raise TypeError(f"memory must be a size such as '8GB' or a number of MiB, got {memory!r}")
    if isinstance(memory, (int, float)):
        mib = float(memory)
        if not math.isfinite(mib):
            raise ValueError(f"memory={memory!r} is not a finite number")
        bare = True
    elif isinstance(memory, str):
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Z]*)\s*", memory)
        if not match or match.group(2).lower() not in _MEMORY_UNITS:
            raise ValueError(f"memory={memory!r} is not understood; write it like '8GB' or '512MB'")
        unit = match.group(2).lower()
        mib = _number(match.group(1), "memory", memory) * _MEMORY_UNITS[unit]
        bare = unit == ""
    else:
        raise TypeError(f"memory must be a size such as '8GB', got {type(memory).__name__}")
    _check_positive(mib, "memory", memory)
    if bare and mib < 512:
        raise ValueError(
            f"memory={memory!r} reads as {format_number(mib)} MiB, below any Fargate size; "
            f"did you mean '{format_number(mib)}GB'?"
        )
    rounded = round(mib)
    if abs(mib - rounded) > 1e-6:
        raise ValueError(f"memory={memory!r} is not a whole number of MiB")
    return int(rounded)


def format_number(value: float) -> str:
    """``4`` for 4.0, ``0.25`` for 0.25: no trailing zeros."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def format_cpu(cpu_units_or_vcpu: float, units: bool = True) -> str:
    """``"4 vCPU"`` for 4096 units (or for 4 vCPU when ``units=False``)."""
    vcpu = cpu_units_or_vcpu / UNITS_PER_VCPU if units else cpu_units_or_vcpu
    return f"{format_number(vcpu)} vCPU"


def format_memory(mib: float) -> str:
    """``"30 GB"`` for 30720 MiB, ``"0.5 GB"`` for 512 MiB, ``"1.5 GB"`` for 1536 MiB."""
    return f"{format_number(mib / _GB)} GB"


def format_size(cpu_units: int, memory_mib: int) -> str:
    """``"4 vCPU/30 GB"``."""
    return f"{format_cpu(cpu_units)}/{format_memory(memory_mib)}"


def _describe_options(cpu_units: int) -> str:
    mems = FARGATE_SIZES[cpu_units]
    if len(mems) <= 4 or cpu_units == 256:
        listed = ", ".join(format_memory(m) for m in mems[:-1]) + f" or {format_memory(mems[-1])}"
        return f"{format_cpu(cpu_units)} takes {listed}"
    step = mems[1] - mems[0]
    return (
        f"{format_cpu(cpu_units)} takes {format_memory(mems[0])} to {format_memory(mems[-1])} "
        f"in {format_memory(step)} steps"
    )


def nearest_sizes(cpu_units: float, memory_mib: float, arch: str = "x86_64") -> list[tuple[int, int]]:
    """Up to two valid sizes around an invalid one: the largest that fits inside it (no more CPU
    and no more memory) and the smallest that covers it (at least as much of both)."""
    sizes = valid_sizes(arch)
    below = [s for s in sizes if s[0] <= cpu_units + 1e-9 and s[1] <= memory_mib + 1e-9]
    above = [s for s in sizes if s[0] >= cpu_units - 1e-9 and s[1] >= memory_mib - 1e-9]
    found = []
    if below:
        found.append(max(below))
    if above:
        found.append(min(above))
    return list(dict.fromkeys(found))


def validate_size(cpu: CpuLike, memory: MemoryLike, arch: str = "x86_64") -> tuple[int, int]:
    """``(cpu_units, memory_mib)`` for a valid Fargate size, else ValueError naming the nearest.

    >>> validate_size(4, "8GB")
    (4096, 8192)
    """
    normalize_arch(arch)
    vcpu = parse_cpu(cpu)
    mib = parse_memory(memory)
    units = vcpu * UNITS_PER_VCPU
    whole_units = round(units)
    if abs(units - whole_units) < 1e-6 and whole_units in FARGATE_SIZES:
        if mib in FARGATE_SIZES[whole_units]:
            return whole_units, mib
    near = nearest_sizes(units, mib, arch)
    message = (
        f"{format_cpu(vcpu, units=False)} with {format_memory(mib)} is not a Fargate size; "
        f"nearest: {' or '.join(format_size(c, m) for c, m in near)}"
    )
    if abs(units - whole_units) < 1e-6 and whole_units in FARGATE_SIZES:
        message += f" ({_describe_options(whole_units)})"
    elif units > max(FARGATE_SIZES):
        message += " (the largest Fargate task has 16 vCPU and 120 GB)"
    else:
        message += " (Fargate CPU sizes are 0.25, 0.5, 1, 2, 4, 8 and 16 vCPU)"
    raise ValueError(message)
