"""Checks a version folder in a process of its own, bounded in memory.

``python -m streaminfer.models.model_check FOLDER MAX_MEMORY PARENT`` exits 0 if the
version can be served, else 1 with the reason as the last line of its stderr.  It ends
with its parent (process id ``PARENT``): a check of up to 8 GiB must not outlive the
server or worker that asked for it.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
from pathlib import Path

from streaminfer.models.deploy import DeployError, check_model_here, more_memory_than
from streaminfer.processes import die_with_parent


def main(argv: list[str]) -> int:
    folder, max_memory, parent = Path(argv[0]), int(argv[1]), int(argv[2])
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # it ended before the line above took effect
        return 1
    # Before the model is read: an allocation past it fails instead of growing the process.
    resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
    try:
        check_model_here(folder)
    except DeployError as exc:
        print(exc, file=sys.stderr)
        return 1
    except MemoryError:  # raised by Python's own allocations, in the imports too
        needs = more_memory_than(max_memory)
        print(f"not a valid model: loading and running it once needs {needs}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
