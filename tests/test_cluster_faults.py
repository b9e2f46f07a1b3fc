"""A lost node: on a real two-node Ray cluster (this machine, loopback), the second node's raylet is SIGKILLed
while one of its trials runs; the trial is retried on the surviving node and the sweep ends with every trial
exactly once, all ok.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_cluster import FAST_FAILURE_DETECTION, command_line, descendants, local_cluster

ROOT = Path(__file__).resolve().parents[1]


def _running_trial(node: subprocess.Popen) -> int | None:
    """The pid of a Tune trial actor running on `node` (its process title is `ray::ImplicitFunc...`), if any."""
    return next((pid for pid in descendants(node.pid) if command_line(pid).startswith("ray::ImplicitFunc")), None)


def _raylet(node: subprocess.Popen) -> int:
    return next(pid for pid in descendants(node.pid) if "/raylet/raylet" in command_line(pid).split(" ")[0])


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_trial_on_a_lost_node_is_retried_on_the_survivor(tmp_path):
    with local_cluster(2, FAST_FAILURE_DETECTION) as cluster:
        command = [
            sys.executable,
            "ablations/layer_sweep.py",
            "--smoke-test",
            "--layers",
            "20,30",
            "--results",
            str(tmp_path),
            "--address",
            cluster.address,
            "--max-failures",
            "2",
        ]
        driver = subprocess.Popen(
            command,
            cwd=ROOT,
            env=cluster.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while _running_trial(cluster.nodes[1]) is None:
                assert driver.poll() is None, driver.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "no trial started on the second node"
                time.sleep(0.5)
            time.sleep(2)  # well inside its training
            os.kill(_raylet(cluster.nodes[1]), signal.SIGKILL)
            output, _ = driver.communicate(timeout=400)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
        assert driver.returncode == 0, output[-3000:]
    folder = tmp_path / "layer_sweep"
    trials = pd.read_parquet(folder / "trials.parquet")
    assert sorted(trials["target_layer"]) == [20, 30] and trials["trial_id"].is_unique
    assert set(trials["status"]) == {"ok"}, trials[["trial_id", "status", "error"]]
    assert trials["node"].nunique() == 1  # both finished on the surviving head node
    assert sorted(p.name for p in (folder / "trials").iterdir()) == sorted(trials["trial_id"])
    assert "2 ok / 0 error trials" in output
