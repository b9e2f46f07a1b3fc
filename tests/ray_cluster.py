"""Real multi-node Ray clusters on this machine for tests: `ray start --head` plus `ray start --address`.

Every node listens on 127.0.0.1 only, authenticates with a token kept in the cluster's own temp dir
(never ~/.ray), and is stopped with everything it started when the `local_cluster` block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
FAST_FAILURE_DETECTION = {  # a dead node is noticed in seconds, not the default half minute
    "RAY_health_check_initial_delay_ms": "0",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


@dataclasses.dataclass
class Cluster:
    address: str  # host:port of the head
    env: dict[str, str]  # the environment a driver joining it needs (token auth)
    nodes: list[subprocess.Popen]  # `ray start --block` processes, head first
    temp: str  # the cluster's temp dir: every one of its processes names it on its command line


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_naming(marker: str) -> list[int]:
    """Pids of processes (other than this one) whose command line mentions `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], list(children.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stop(node: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(node.pid, sig)
            node.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for_nodes(address: str, env: dict, count: int, deadline: float) -> None:
    probe = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(sum(node['Alive'] for node in ray.nodes()))"
    )
    while True:
        answer = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if answer.returncode == 0 and answer.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        assert time.monotonic() < deadline, f"{count} nodes not up: {answer.stderr[-2000:]}"
        time.sleep(2)


@contextlib.contextmanager
def local_cluster(nodes: int = 2, extra_env: dict[str, str] | None = None) -> Iterator[Cluster]:
    """A head and `nodes - 1` more nodes of 1 CPU each (node i also has resource `node<i>`), token-authenticated."""
    temp = tempfile.mkdtemp(prefix="tliray", dir="/tmp")  # short: Ray's socket paths live under it
    token = Path(temp) / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)} | (extra_env or {})
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(Path(temp) / "nodes.log", "w")
    started: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 180
        for index in range(nodes):
            flags = (
                ["--head", f"--port={port}", "--include-dashboard=false"]
                if index == 0
                else [f"--address={address}", f'--resources={{"node{index + 1}": 1}}']
            )
            started.append(
                subprocess.Popen(
                    [RAY, "start", *flags, *common],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            _wait_for_nodes(address, env, len(started), deadline)
        yield Cluster(address, env, started, temp)
    finally:
        for node in reversed(started):
            _stop(node)
        for pid in processes_naming(temp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
        subprocess.run(["rm", "-rf", temp], check=False)
