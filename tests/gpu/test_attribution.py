"""Pod attribution from /proc/<pid>/cgroup and the kubelet's log directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.attribution import PodRef, PodResolver, parse_cgroup, start_time

UID = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8"
CID = "ab" * 32


@pytest.mark.parametrize(
    "text",
    [
        # cgroup v2, systemd driver, containerd
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
        f"{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n",
        # cgroup v1, cgroupfs driver
        f"12:memory:/kubepods/besteffort/pod{UID}/{CID}\n11:cpu:/kubepods/besteffort/pod{UID}/{CID}\n",
        # CRI-O
        f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n",
    ],
)
def test_cgroup_paths_of_every_runtime_name_the_pod_and_container(text: str) -> None:
    assert parse_cgroup(text) == (UID, CID)


@pytest.mark.parametrize(
    "text",
    [
        f"0::/system.slice/docker-{CID}.scope\n",  # a container, but not Kubernetes
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "",
        "garbage without colons",
    ],
)
def test_processes_outside_kubernetes_have_no_pod(text: str) -> None:
    assert parse_cgroup(text) is None


def test_start_time_survives_spaces_and_parens_in_the_command_name() -> None:
    fields = ["S"] + ["0"] * 18 + ["777"] + ["0"] * 30
    assert start_time(f"42 (my (odd) cmd) {' '.join(fields)}") == 777
    assert start_time("42 (truncated") is None


def _host(root: Path, pid: int, cgroup: str, started: int) -> None:
    d = root / "proc" / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "cgroup").write_text(cgroup)
    fields = ["S"] + ["0"] * 18 + [str(started)] + ["0"] * 30
    (d / "stat").write_text(f"{pid} (python3) {' '.join(fields)}\n")


K8S = f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n"


def test_names_come_from_the_container_log_links(tmp_path: Path) -> None:
    _host(tmp_path, 10, K8S, 1)
    logs = tmp_path / "var" / "log" / "containers"
    logs.mkdir(parents=True)
    (logs / f"vllm-0_llm_server-{CID}.log").touch()
    (logs / f"other-1_llm_server-{'cd' * 32}.log").touch()
    assert PodResolver(tmp_path / "proc").for_pid(10) == PodRef("llm", "vllm-0", "server")


def test_pod_log_directory_names_the_pod_when_the_container_is_unknown(tmp_path: Path) -> None:
    _host(tmp_path, 10, K8S, 1)
    (tmp_path / "var" / "log" / "pods" / f"llm_vllm-0_{UID}" / "server").mkdir(parents=True)
    assert PodResolver(tmp_path / "proc").for_pid(10) == PodRef("llm", "vllm-0", "")


def test_without_log_directories_the_pod_uid_is_shown(tmp_path: Path) -> None:
    _host(tmp_path, 10, K8S, 1)
    assert PodResolver(tmp_path / "proc").for_pid(10) == PodRef("", UID, "")


def test_explicit_log_root(tmp_path: Path) -> None:
    _host(tmp_path, 10, K8S, 1)
    logs = tmp_path / "elsewhere"
    (logs / "containers").mkdir(parents=True)
    (logs / "containers" / f"vllm-0_llm_server-{CID}.log").touch()
    assert PodResolver(tmp_path / "proc", logs).for_pid(10) == PodRef("llm", "vllm-0", "server")


def test_a_recycled_pid_is_read_again_and_gone_pids_are_none(tmp_path: Path) -> None:
    _host(tmp_path, 10, K8S, 1)
    resolver = PodResolver(tmp_path / "proc")
    assert resolver.for_pid(10) == PodRef("", UID, "")
    _host(tmp_path, 10, "0::/user.slice/session-1.scope\n", 2)  # same pid, new process
    assert resolver.for_pid(10) is None
    assert resolver.for_pid(99) is None  # no such process


def test_entries_not_asked_for_are_pruned_and_the_container_index_follows_the_logs(
    tmp_path: Path,
) -> None:
    """Churning PIDs and containers cannot grow the caches: both are bounded by what is live."""
    for pid in (10, 11):
        _host(tmp_path, pid, K8S, 1)
    resolver = PodResolver(tmp_path / "proc", forget_after_seconds=0.0)
    resolver.resolve([10])
    resolver.resolve([11])  # 10 was not asked for since: pruned
    assert set(resolver._by_pid) == {11}
    logs = tmp_path / "var" / "log" / "containers"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"vllm-0_llm_server-{CID}.log").touch()
    _host(tmp_path, 12, K8S, 1)
    assert resolver.resolve([12])[12] == PodRef("llm", "vllm-0", "server")
    (logs / f"vllm-0_llm_server-{CID}.log").unlink()
    (logs / f"vllm-1_llm_server-{'b' * 64}.log").touch()
    resolver._from_container_logs("c" * 64)  # a miss re-lists: the deleted container is gone
    assert CID not in resolver._by_container
