"""Checks a version folder in a process of its own, bounded in memory.

``python -m streaminfer.models.model_check FOLDER MAX_MEMORY`` exits 0 if the version
can be served, else 1 with the reason as the last line of its stderr.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

from streaminfer.models.deploy import DeployError, check_model_here


def main(argv: list[str]) -> int:
    folder, max_memory = Path(argv[0]), int(argv[1])
    # Before the model is read: an allocation past it fails instead of growing the process.
    resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))
    try:
        check_model_here(folder)
    except DeployError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
