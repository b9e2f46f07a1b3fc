"""A smoke sweep on a real two-node Ray cluster on loopback (`ray start --head` + `ray start --address`), whose
trials must land on both nodes. The cluster files are checked by tests/test_cluster_files.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


# --- a real two-node cluster on loopback ---------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _our_processes(marker: str) -> list[int]:
    """Pids of processes whose command line mentions `marker` (this test's own temp dir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop(node: subprocess.Popen, marker: str) -> None:
    """Stop one `ray start --block` node we started: its process group, then anything left under our temp dir."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(node.pid, sig)
            node.wait(timeout=wait)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in _our_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait_for_nodes(address: str, env: dict, count: int, deadline: float) -> None:
    probe = (f"import ray; ray.init(address={address!r}, log_to_driver=False); "
             "print(sum(node['Alive'] for node in ray.nodes()))")
    while True:
        answer = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        if answer.returncode == 0 and answer.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        assert time.monotonic() < deadline, f"{count} nodes not up: {answer.stderr[-2000:]}"
        time.sleep(2)


@pytest.fixture()
def two_node_cluster():
    """A head (1 CPU) and a second node (1 CPU, resource node2) on this machine: (address, environment).

    Ray 2.60 authenticates with a token (~/.ray/auth_token, made by any local ray.init) and a driver that
    joins by explicit address must say so with RAY_AUTH_MODE=token (set before Ray starts in that process,
    hence drivers run as subprocesses here).
    """
    temp = tempfile.mkdtemp(prefix="tliray", dir="/tmp")  # short: Ray's socket paths live under it
    env = os.environ | {"RAY_AUTH_MODE": "token"}
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(Path(temp) / "nodes.log", "w")
    nodes = []
    try:
        deadline = time.monotonic() + 180
        for flags in (["--head", f"--port={port}", "--include-dashboard=false"],
                      [f"--address={address}", '--resources={"node2": 1}']):
            nodes.append(subprocess.Popen([RAY, "start", *flags, *common], env=env, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
            _wait_for_nodes(address, env, len(nodes), deadline)
        yield address, env
    finally:
        for node in reversed(nodes):
            _stop(node, temp)
        log.close()
        subprocess.run(["rm", "-rf", temp], check=False)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_smoke_sweep_runs_on_both_nodes_of_a_real_cluster(two_node_cluster, tmp_path):
    address, env = two_node_cluster
    command = [sys.executable, "ablations/layer_sweep.py", "--smoke-test", "--results", str(tmp_path), "--address", address]
    started = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    print(f"two-node layer_sweep --smoke-test: {time.perf_counter() - started:.1f} s")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "results in" in run.stdout
    trials = pd.read_parquet(tmp_path / "layer_sweep" / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}
    assert trials["node"].nunique() == 2, trials[["trial_id", "node", "worker"]]  # one trial on each node
