"""glibc's allocator, tuned per process for how that process allocates (``mallopt(3)``).

With another C library, or none that has ``mallopt``, nothing changes.
"""

from __future__ import annotations

import contextlib
import ctypes

# mallopt's parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
LARGE_BLOCK = 4 << 20
"""Allocations of 4 MiB and more (decoded images, request bodies) are mapped on their own
and unmapped when freed.  glibc would otherwise raise its threshold as large blocks are
freed and keep them in per-thread arenas: four decode threads each holding the last
50-megapixel image they decoded took the server past 700 MB."""


def _glibc(function: str, *args: int) -> None:
    """Call one of the C library's functions, if it has it."""
    with contextlib.suppress(OSError, AttributeError):  # no such C library or function
        getattr(ctypes.CDLL(None), function)(*args)


def mallopt(parameter: int, value: int) -> None:
    """Set one of glibc's allocator parameters."""
    _glibc("mallopt", parameter, value)


def trim_heaps() -> None:
    """Give the free pages inside every heap back to the operating system (``malloc_trim``).
    It walks the heaps, so it takes milliseconds: call it off the event loop."""
    _glibc("malloc_trim", 0)


ARENAS = 2
"""Heaps all of a process's threads share.  glibc makes up to 8 a core, each keeping its
own free memory: a worker decodes, fetches and batches on about a dozen threads, a server
on its gRPC, decode and runtime threads."""


def keep_heaps_small() -> None:
    """Blocks of ``LARGE_BLOCK`` and more go back to the operating system when freed, and
    threads share ``ARENAS`` heaps.  Only heaps not made yet are affected: call it first
    thing, before other threads allocate."""
    mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)
    mallopt(M_ARENA_MAX, ARENAS)
