"""A smoke sweep on a real two-node Ray cluster on loopback (`ray start --head` + `ray start --address`), whose
trials must land on both nodes while the driver alone writes the results, and whose every process listens and
talks on loopback only; a driver without the cluster's token is refused in one line. The cluster files are
checked by tests/test_cluster_files.py and tests/test_ray_up.py; a lost node by tests/test_cluster_faults.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_cluster import beyond_loopback, descendants, local_cluster, tcp_sockets

ROOT = Path(__file__).resolve().parents[1]


def _refused(cluster, tmp_path, auth: dict[str, str]) -> str:
    """The stderr of a sweep driver joining `cluster` with the token settings `auth` (RAY_AUTH_*)."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")} | auth
    command = [sys.executable, "ablations/layer_sweep.py", "--smoke-test", "--results", str(tmp_path / "refused")]
    started = time.perf_counter()
    run = subprocess.run(
        [*command, "--address", cluster.address], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and time.perf_counter() - started < 60, run.stderr[-3000:]
    assert not (tmp_path / "refused" / "layer_sweep" / "trials").exists()
    lines = run.stderr.strip().splitlines()
    errors = [line for line in lines if "error" in line.lower() or "Token" in line]  # Ray's InvalidAuthToken lines
    assert errors == lines[-1:], lines
    return lines[-1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_smoke_sweep_runs_on_both_nodes_of_a_real_cluster_on_loopback_only(tmp_path):
    with local_cluster(2) as cluster:
        none = _refused(cluster, tmp_path, {})
        assert "requires a token and this driver has none" in none, none
        wrong = tmp_path / "wrong_token"
        wrong.write_text("0" * 64)
        other = _refused(cluster, tmp_path, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)})
        assert "refuses this driver's token" in other, other

        command = [sys.executable, "ablations/layer_sweep.py", "--smoke-test", "--results", str(tmp_path)]
        started = time.perf_counter()
        driver = subprocess.Popen(
            [*command, "--address", cluster.address],
            cwd=ROOT,
            env=cluster.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seen = {}
        while driver.poll() is None:  # every socket of the nodes, their workers and the driver, while trials run
            pids = [driver.pid, *descendants(driver.pid)] + [
                p for n in cluster.nodes for p in [n.pid, *descendants(n.pid)]
            ]
            seen |= {(s.state, s.local, s.peer): s for s in tcp_sockets(pids)}
            time.sleep(0.5)
        output = driver.stdout.read()
        print(f"two-node layer_sweep --smoke-test: {time.perf_counter() - started:.1f} s")
    assert driver.returncode == 0, output[-3000:]
    assert "results in" in output
    listening = [s for s in seen.values() if s.state == "LISTEN"]
    print(f"{len(seen)} TCP sockets seen, {len(listening)} listening: {sorted(s.local for s in listening)}")
    assert len(listening) >= 6, listening  # GCS, 2 x (raylet + object manager), workers, the driver
    assert not beyond_loopback(seen.values()), beyond_loopback(seen.values())
    trials = pd.read_parquet(tmp_path / "layer_sweep" / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}
    assert trials["node"].nunique() == 2, trials[["trial_id", "node", "worker"]]  # one trial on each node
