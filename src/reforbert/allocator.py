"""Keep freed host memory inside the process while training on the CPU.

glibc's malloc serves every request above a threshold (128 KiB, raised dynamically up to 32 MiB) with
its own ``mmap`` and gives it back to the kernel on ``free``; it also trims the top of the heap as soon
as more than 128 KiB there is free. A training step allocates and frees the same multi-megabyte
activations and gradients every time, so by default each step maps fresh pages and the kernel zeroes
them again on first touch. Raising both thresholds to 1 GiB keeps those blocks in the heap, where the
next step reuses them: on a 2-core virtual machine a ``mini`` pretraining step (64 x 128, bf16,
eager) took a tenth less time with a tenth of the page faults and the same peak RSS; compiled, or in a
small fine-tuning run, the difference was within the noise (README, "Throughput and memory"). The
price is resident memory between steps: up to 1 GiB of freed heap is no longer returned, and at very
long lengths, where a step frees many blocks under 1 GiB, the peak can grow.

Only the training commands ask for it (``reforbert pretrain``, ``finetune``, ``demo``) and only when no
GPU is visible; the library itself never changes the allocator of a program that imports it.
``REFORBERT_KEEP_FREED_MEMORY=0`` turns it off, and a user who tunes glibc's malloc through its own
environment variables keeps those settings.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt() parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap and stay there once freed; larger ones (a single tensor
# of more than 1 GiB) still go back to the kernel at once. This does not bound the heap itself: at
# 262,144 tokens the many smaller blocks a step frees raised its peak RSS about twofold (README).
KEEP_BLOCKS_UP_TO_BYTES = 1 << 30

OPT_OUT_VARIABLE = "REFORBERT_KEEP_FREED_MEMORY"
# Set by a user who tunes glibc's malloc already; their choice wins.
USER_MALLOC_VARIABLES = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "GLIBC_TUNABLES",
)


def keep_freed_memory(limit_bytes: int = KEEP_BLOCKS_UP_TO_BYTES) -> bool:
    """Ask glibc to keep freed blocks up to ``limit_bytes`` for reuse; True if it now does.

    Does nothing (False) off Linux/glibc, when ``REFORBERT_KEEP_FREED_MEMORY=0``, or when the user set
    glibc's malloc variables."""
    if os.environ.get(OPT_OUT_VARIABLE, "1").strip() == "0":
        return False
    if any(name in os.environ for name in USER_MALLOC_VARIABLES):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success and 0 when it refuses the value.
    return mallopt(M_MMAP_THRESHOLD, limit_bytes) == 1 and mallopt(M_TRIM_THRESHOLD, limit_bytes) == 1


def keep_freed_memory_when_training_on_cpu() -> bool:
    """``keep_freed_memory()`` for a training command, unless a GPU will do the training."""
    import torch

    if torch.cuda.is_available():
        return False
    return keep_freed_memory()
