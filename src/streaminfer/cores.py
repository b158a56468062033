"""How many cores this process may use: its CPU affinity, and its cgroups' CPU quota.

A container's CPU limit (Kubernetes ``resources.limits.cpu``, ``podman run --cpus``) is a
CFS quota, not an affinity: the process still sees every core of the node and may run on
any of them, but gets only ``quota / period`` cores' worth of time.  Counted by affinity
alone, ``--processes auto`` in a 2-CPU pod on a 64-core node would start 64 members, and
ONNX Runtime would run 64 threads for each model, every one of them throttled.  Only a
cpuset (Kubernetes' static CPU manager) narrows the affinity itself.

The quota is read the way the JVM and Go's runtime read it: the process's cgroup in
each CPU hierarchy (v1's ``cpu`` controller or v2's unified one) and every ancestor up to
the hierarchy's mount, the smallest quota found, rounded up to whole cores.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_MOUNTINFO = Path("/proc/self/mountinfo")
_CGROUPS = Path("/proc/self/cgroup")


def usable_cores() -> int:
    """The cores this process may run on, and at most what its CPU quota is worth."""
    return quota_cores() or max(1, len(os.sched_getaffinity(0)))


def quota_cores() -> int | None:
    """The cores the CPU quota of this process's cgroups is worth, rounded up and at most
    its affinity's; None when no cgroup limits it (or cgroups cannot be read)."""
    try:
        quota = cpu_quota(_MOUNTINFO.read_text(), _CGROUPS.read_text())
    except OSError:  # no /proc (not Linux) or a sandbox that hides it: no limit known
        return None
    if quota is None:
        return None
    return max(1, min(len(os.sched_getaffinity(0)), math.ceil(quota)))


def cpu_quota(mountinfo: str, cgroups: str) -> float | None:
    """The smallest CPU quota, in cores, on the path from this process's cgroups to each
    CPU hierarchy's mount; None without one.  ``mountinfo`` and ``cgroups`` are the
    contents of ``/proc/self/mountinfo`` and ``/proc/self/cgroup``."""
    paths = _cgroup_paths(cgroups)
    quotas = []
    for mount_root, mount_point, version in _cpu_mounts(mountinfo):
        if version not in paths:
            continue
        top = Path(mount_point)
        folder = top / _below(mount_root, paths[version]).strip("/")
        while True:  # this cgroup, then each ancestor: a limit on any of them holds
            quota = _quota(folder, version)
            if quota is not None:
                quotas.append(quota)
            if folder == top:
                break
            folder = folder.parent
    return min(quotas, default=None)


def _below(mount_root: str, path: str) -> str:
    """A cgroup's path under a mount of its hierarchy.  A container's mount (or a cgroup
    namespace's) shows the hierarchy from its own cgroup down: a path outside that is
    the mount's top."""
    root = mount_root.rstrip("/")
    if not root:
        return path
    if path == root or path.startswith(root + "/"):
        return path[len(root) :]
    return "/"


def _cgroup_paths(cgroups: str) -> dict[str, str]:
    """This process's cgroup in the v1 ``cpu`` hierarchy and in the v2 one, by version."""
    paths = {}
    for line in cgroups.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["v1"] = path
    return paths


def _cpu_mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """(root, mount point, version) of every mount of a CPU hierarchy."""
    mounts = []
    for line in mountinfo.splitlines():
        mount, _, filesystem = line.partition(" - ")
        fields, kind = mount.split(), filesystem.split()
        if len(fields) < 5 or len(kind) < 3:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if kind[0] == "cgroup2":
            mounts.append((root, point, "v2"))
        elif kind[0] == "cgroup" and "cpu" in kind[2].split(","):
            mounts.append((root, point, "v1"))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline or backslash in a path as an octal escape."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def _quota(folder: Path, version: str) -> float | None:
    """One cgroup's CPU quota in cores; None if it has none (or no such files)."""
    try:
        if version == "v2":
            limit, _, period = (folder / "cpu.max").read_text().partition(" ")
        else:
            limit = (folder / "cpu.cfs_quota_us").read_text()
            period = (folder / "cpu.cfs_period_us").read_text()
        if limit.strip() == "max" or int(limit) <= 0 or int(period) <= 0:
            return None
        return int(limit) / int(period)
    except (OSError, ValueError):
        return None
