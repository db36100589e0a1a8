"""The malloc tuning keeps a batch-sized block on the heap, and leaves an operator's own tuning.

Each case runs in a fresh interpreter: the setting is process-wide and cannot be undone.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt tuning applies to glibc only",
)

# Allocates 16 MiB (above glibc's initial mmap threshold, below the tuned one) and prints whether
# the tuning took and how many mmapped blocks that allocation added.
PROBE = """
import ctypes, sys
from model.inference.allocator import keep_activations_on_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
tuned = keep_activations_on_heap() if sys.argv[1] == "tune" else False
before = libc.mallinfo2().hblks
block = libc.malloc(16 << 20)
print(tuned, libc.mallinfo2().hblks - before)
libc.free(block)
"""


def probe(mode: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env=clean | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_untuned_glibc_maps_a_batch_sized_block_afresh() -> None:
    assert probe("plain") == "False 1"


def test_tuning_serves_it_from_the_heap() -> None:
    assert probe("tune") == "True 0"


def test_operator_tuning_is_left_alone() -> None:
    # The operator asked glibc for a 1 MiB threshold: the block is mapped, as they asked.
    assert probe("tune", MALLOC_MMAP_THRESHOLD_="1048576") == "False 1"
