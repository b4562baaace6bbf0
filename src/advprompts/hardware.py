"""What machine a measurement ran on, for manifests and benchmark reports."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model ("AMD EPYC ..."); `platform.processor()` often says only "x86_64" on Linux."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(v.split(":", 1)[1].strip() for v in lines if v.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
