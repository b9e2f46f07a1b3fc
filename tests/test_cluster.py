"""A smoke sweep on a real two-node Ray cluster on loopback (`ray start --head` + `ray start --address`), whose
trials must land on both nodes while the driver alone writes the results. The cluster files are checked by
tests/test_cluster_files.py and tests/test_ray_up.py; a lost node by tests/test_cluster_faults.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_cluster import local_cluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_smoke_sweep_runs_on_both_nodes_of_a_real_cluster(tmp_path):
    with local_cluster(2) as cluster:
        command = [
            sys.executable,
            "ablations/layer_sweep.py",
            "--smoke-test",
            "--results",
            str(tmp_path),
            "--address",
            cluster.address,
        ]
        started = time.perf_counter()
        run = subprocess.run(command, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=400)
        print(f"two-node layer_sweep --smoke-test: {time.perf_counter() - started:.1f} s")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "results in" in run.stdout
    trials = pd.read_parquet(tmp_path / "layer_sweep" / "trials.parquet")
    assert len(trials) == 2 and set(trials["status"]) == {"ok"}
    assert trials["node"].nunique() == 2, trials[["trial_id", "node", "worker"]]  # one trial on each node
