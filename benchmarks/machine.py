"""The line every benchmark table starts with: the commit, the CPU and its vector extensions, cores, torch threads."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]
#: Extensions that change CPU matmul speed several-fold between machines of the same kind.
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def describe() -> str:
    """``commit abc1234; <CPU model> (avx2 avx512f ...), N cores, torch X with T threads, Python Y``."""
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    cpu, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    extensions = " ".join(flag for flag in FLAGS if flag in flags) or "no AVX2"
    return (
        f"commit {commit.stdout.strip() or 'unknown'}; {cpu} ({extensions}), {os.cpu_count()} cores, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}"
    )
