"""Keep large, short-lived buffers in the heap while the hot loop runs.

glibc serves every allocation above a threshold (128 KiB to 32 MiB, adjusted
on the fly) with its own ``mmap`` and gives it back with ``munmap`` when it is
freed. A CNN forward pass allocates tens of such buffers per batch, so every
batch faults all of its activation memory in again: on a 2-core machine a
third of the CPU time of a ResNet-18 forward pass was spent in the kernel.
Inside :func:`heap_reuse` freed buffers stay in the process and are reused;
on exit the thresholds go back to glibc's defaults and the free memory is
returned to the operating system with ``malloc_trim``.

Set the environment variable ``SKPADIM_MALLOC_TUNING=0`` to turn this off.
On platforms other than glibc-based Linux it does nothing.
"""

import contextlib
import ctypes
import ctypes.util
import os
import sys
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_DEFAULT_THRESHOLD = 128 * 1024
_INT_MAX = 2**31 - 1

_lock = threading.Lock()
_depth = 0
_libc = None


def _glibc():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.gnu_get_libc_version  # noqa: B018  (present on glibc only)
                _libc = libc
            except (OSError, AttributeError):
                _libc = False
    return _libc


def _enabled():
    return os.environ.get("SKPADIM_MALLOC_TUNING", "1") != "0"


@contextlib.contextmanager
def heap_reuse():
    """Context manager: reuse freed heap memory instead of unmapping it.

    Re-entrant and thread-safe; only the outermost exit restores the defaults.
    """
    global _depth
    libc = _glibc() if _enabled() else False
    if not libc:
        yield
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
            libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD)
                libc.malloc_trim(0)
