"""Keep freed CPU memory in the process (glibc ``mallopt``) instead of mapping fresh, zeroed pages for every tensor.

glibc serves an allocation above its mmap threshold with a mapping of its own and unmaps it when freed, and gives
the top of its heap back to the kernel once more than the trim threshold is free there; both thresholds adapt only
to the largest block freed so far. An RL step alternates a rollout (prefill and decoding tensors of a few MB, new
every turn) with training on small micro-batches, which never frees a block large enough to lift the thresholds
above the rollout's tensors: each of them is then a fresh mapping whose pages the kernel zeroes on first touch. In a
process that had trained on micro-batches of 16 rows, 40 batched ``generate`` calls of the tiny policy took 330,000
page faults instead of 21,000, and the quickstart's rollout 1.31 s instead of 1.18 (docs/results/train_step.md,
"The CPU allocator"). Fixing the mmap threshold at glibc's largest (32 MB) and the trim threshold at 2 GB keeps those
tensors in the heap: the process keeps its peak memory instead of returning it between phases.
"""

from __future__ import annotations

import ctypes

#: ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 = 32 MB on 64-bit machines.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (module docstring); False where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without the symbol, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
