"""Keep a forward pass's activations on the heap instead of handing them back to the OS.

glibc's malloc serves every allocation above its mmap threshold (128 KiB at start) with a fresh
`mmap` and returns it with `munmap` when freed. A forward pass allocates and frees tens of
megabytes of activations, so on the CPU each pass page-faults all of them in again: measured
here, that costs about a third of the model's throughput at batch 8 (`bench.stream`'s bare side
read 16 images/s without this and 22 to 25 with it, in the same hour). glibc raises the
threshold by itself once a large block has been freed, which is why a process that has trained
a model first scores faster than a fresh one; the worker never trains, so it must not depend on
that accident.

`keep_activations_on_heap` sets the threshold to glibc's maximum (32 MiB on 64-bit) and the
trim threshold to 512 MiB, so the memory of one batch is kept for the next: a steady worker's
resident size is its peak batch, which it needs anyway. It is a no-op on other C libraries and
where the operator has tuned malloc through glibc's own environment variables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for it on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 512 * 1024 * 1024
OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")

_done = False


def keep_activations_on_heap() -> bool:
    """Tune glibc malloc for repeated forward passes, once per process; True when it did."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or any(v in os.environ for v in OPERATOR_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt, nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _done
