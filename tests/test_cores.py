"""The cores a process may use: affinity, and a container's CPU quota (v1 and v2 cgroups)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streaminfer.cores import cpu_quota, usable_cores
from streaminfer.models.export.tiny import export_tiny_model
from tests.support import cpu_limited_cgroup

V2_SELF = "0::/kubepods/pod1/worker\n"
V1_SELF = "4:cpu,cpuacct:/kubepods/pod1/worker\n3:memory:/kubepods/pod1/worker\n"


def mountinfo(*mounts: tuple[str, Path, str, str]) -> str:
    """mountinfo lines for (root, mount point, fstype, super options) mounts."""
    return "".join(
        f"{30 + i} 20 0:{40 + i} {root} {str(point).replace(' ', chr(92) + '040')} rw,relatime"
        f" shared:{i} - {fstype} {fstype} {options}\n"
        for i, (root, point, fstype, options) in enumerate(mounts)
    )


def v2_limit(folder: Path, limit: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(f"{limit}\n")


def v1_limit(folder: Path, quota: int, period: int = 100_000) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (folder / "cpu.cfs_period_us").write_text(f"{period}\n")


def test_a_v2_quota_on_the_process_cgroup(tmp_path: Path) -> None:
    v2_limit(tmp_path / "kubepods/pod1/worker", "150000 100000")
    info = mountinfo(("/", tmp_path, "cgroup2", "rw"))
    assert cpu_quota(info, V2_SELF) == 1.5


def test_the_smallest_quota_on_the_way_to_the_root_holds(tmp_path: Path) -> None:
    v2_limit(tmp_path / "kubepods", "400000 100000")
    v2_limit(tmp_path / "kubepods/pod1", "50000 100000")  # the pod's limit: half a core
    v2_limit(tmp_path / "kubepods/pod1/worker", "max 100000")  # none of its own
    assert cpu_quota(mountinfo(("/", tmp_path, "cgroup2", "rw")), V2_SELF) == 0.5


def test_no_quota_anywhere_is_none(tmp_path: Path) -> None:
    v2_limit(tmp_path / "kubepods/pod1/worker", "max 100000")
    assert cpu_quota(mountinfo(("/", tmp_path, "cgroup2", "rw")), V2_SELF) is None
    v1_limit(tmp_path / "cpu/kubepods/pod1/worker", -1)
    info = mountinfo(("/", tmp_path / "cpu", "cgroup", "rw,cpu,cpuacct"))
    assert cpu_quota(info, V1_SELF) is None
    assert cpu_quota("", V2_SELF) is None  # no cgroup mounted at all


def test_a_v1_quota_with_its_own_period(tmp_path: Path) -> None:
    v1_limit(tmp_path / "cpu,cpuacct/kubepods/pod1/worker", 300_000, period=200_000)
    info = mountinfo(
        ("/", tmp_path / "memory", "cgroup", "rw,memory"),  # not a CPU hierarchy
        ("/", tmp_path / "cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
    )
    assert cpu_quota(info, V1_SELF) == 1.5


def test_a_container_mount_shows_the_hierarchy_from_its_own_cgroup(tmp_path: Path) -> None:
    """Docker without a cgroup namespace: /proc/self/cgroup names the full path, but the
    mount's root is the container's cgroup, so its files are at the mount point."""
    point = tmp_path / "sys fs cgroup"  # a space, escaped in mountinfo
    v2_limit(point, "200000 100000")
    info = mountinfo(("/kubepods/pod1/worker", point, "cgroup2", "rw"))
    assert cpu_quota(info, V2_SELF) == 2.0
    # A path outside the mount's root (a cgroup namespace's view): the mount's top.
    assert cpu_quota(info, "0::/\n") == 2.0


def test_hybrid_hierarchies_take_the_smaller_quota(tmp_path: Path) -> None:
    v1_limit(tmp_path / "cpu/kubepods/pod1/worker", 300_000)
    v2_limit(tmp_path / "unified/kubepods/pod1/worker", "100000 100000")
    info = mountinfo(
        ("/", tmp_path / "cpu", "cgroup", "rw,cpu"),
        ("/", tmp_path / "unified", "cgroup2", "rw"),
    )
    assert cpu_quota(info, V1_SELF + V2_SELF) == 1.0


def test_unreadable_or_odd_files_are_no_quota(tmp_path: Path) -> None:
    (tmp_path / "kubepods/pod1/worker").mkdir(parents=True)
    (tmp_path / "kubepods/pod1/worker/cpu.max").write_text("garbage")
    (tmp_path / "kubepods/pod1/cpu.max").write_text("100000 0")
    (tmp_path / "kubepods/cpu.max").write_text("100000 -100000")
    assert cpu_quota(mountinfo(("/", tmp_path, "cgroup2", "rw")), V2_SELF) is None
    assert cpu_quota("not a mountinfo line\n", "nonsense\n") is None


# -- real cgroups ------------------------------------------------------------------------
def _inside(prefix: list[str], code: str) -> str:
    return subprocess.run(
        [*prefix, sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_real_cpu_quota_narrows_the_usable_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert cores >= 2, "the machine must have two cores for a quota of one to show"
    assert usable_cores() == cores  # no quota on the suite itself
    code = "from streaminfer.cores import usable_cores; print(usable_cores())"
    with cpu_limited_cgroup(cores=1) as inside:
        assert _inside(inside, code) == "1"
    with cpu_limited_cgroup(cores=0.5) as inside:
        assert _inside(inside, code) == "1"  # rounded up: a process gets at least one


def test_onnx_runtime_runs_as_many_threads_as_the_quota_allows(tmp_path: Path) -> None:
    export_tiny_model(tmp_path, version=1)
    code = (
        "from pathlib import Path\n"
        "from streaminfer.models.metadata import ModelMetadata\n"
        "from streaminfer.models.runtime import OnnxModel, RuntimeOptions\n"
        f"folder = Path({str(tmp_path / 'tiny' / '1')!r})\n"
        "model = OnnxModel(folder, ModelMetadata.read(folder), RuntimeOptions())\n"
        "print(model._session.get_session_options().intra_op_num_threads)\n"
    )
    assert _inside([], code) == "0"  # no quota: ONNX Runtime's own choice, a thread a core
    with cpu_limited_cgroup(cores=1) as inside:
        assert _inside(inside, code) == "1"
