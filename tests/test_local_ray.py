"""A sweep on its private local Ray, run as a user runs it from a shell: its Ray listens and talks on loopback
only and needs the token made for it (mode 600, in a folder of mode 700, never ~/.ray, gone after); a second
driver on the same experiment is refused in one line; Ctrl-C exits 130, counts the trials that did not run and
names the command that resumes the sweep, which then finishes it.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_ablation
from ray_cluster import beyond_loopback, command_line, descendants, tcp_sockets

ROOT = Path(__file__).resolve().parents[1]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_private_sweep_stays_on_loopback_is_locked_and_stops_on_ctrl_c(tmp_path, small_pairs, capsys):
    command = ["ablations/layer_sweep.py", "--pairs", str(small_pairs[0]), "--layers", "1,2,3", "--epochs", "1"]
    command += ["--no-drift", "--n-boot", "100", "--max-concurrent", "1", "--results", str(tmp_path / "results")]
    folder = tmp_path / "results" / "layer_sweep"
    log = tmp_path / "driver.log"
    with open(log, "w") as out:  # a shell's foreground job: Ctrl-C reaches its whole process group
        driver = subprocess.Popen([sys.executable, *command], cwd=ROOT, stdout=out, stderr=out, start_new_session=True)
    try:
        seen, token, refused, deadline = {}, None, False, time.monotonic() + 600
        while not list(folder.glob("trials/*/row.json")):  # until the first trial is committed
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial committed in time"
            pids = [driver.pid, *descendants(driver.pid)]
            seen |= {(s.state, s.local, s.peer): s for s in tcp_sockets(pids)}
            raylets = [pid for pid in pids if "/raylet/raylet" in command_line(pid).split(" ")[0]]
            if raylets and token is None:
                environ = _environ(raylets[0])
                assert environ.get("RAY_AUTH_MODE") == "token", environ.get("RAY_AUTH_MODE")
                assert environ.get("RAY_USAGE_STATS_ENABLED") == "0"  # ray.init's: Ray posts no usage report
                token = Path(environ["RAY_AUTH_TOKEN_PATH"])
                assert token.stat().st_mode & 0o777 == 0o600 and token.parent.stat().st_mode & 0o777 == 0o700
                assert Path.home() / ".ray" not in token.parents and len(token.read_text()) >= 32
            if raylets and not refused:  # a second driver on the experiment: refused at once, in one line
                started = time.perf_counter()
                assert load_ablation("layer_sweep").main(command[1:]) == 2
                errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
                assert len(errors) == 1 and "is in use by another driver" in errors[0], errors
                assert f"pid {driver.pid} " in errors[0] and time.perf_counter() - started < 60
                refused = True
            time.sleep(0.2)
        assert refused

        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    output = log.read_text()
    listening = sorted(s.local for s in seen.values() if s.state == "LISTEN")
    print(f"private Ray: {len(seen)} TCP sockets seen, listening on {listening}")
    assert len(listening) >= 4, listening  # GCS, raylet (node manager, object manager), a worker, the driver
    assert not beyond_loopback(seen.values()), beyond_loopback(seen.values())
    assert token is not None and not token.parent.exists()  # the token went with its Ray

    assert driver.returncode == 130, output[-3000:]
    last = output.strip().splitlines()[-1]
    print(last)
    counted = re.match(r"layer_sweep.py: error: interrupted: (\d) of the 3 trials of this run did not run", last)
    assert counted, last
    resume = last.split("to resume, run the same command again: ")[1]
    assert shlex.split(resume) == ["python", *command]
    assert "Tuner.restore" not in output and "Trials did not complete" not in output
    stored = sorted(p.parent.name for p in folder.glob("trials/*/row.json"))
    assert len(stored) == 3 - int(counted.group(1)) < 3  # a trial stopped by Ctrl-C left no row, not even an error

    rerun = subprocess.run(
        [sys.executable, *shlex.split(resume)[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"3 trials, {len(stored)} already done, {3 - len(stored)} to run" in rerun.stderr
    trials = pd.read_parquet(folder / "trials.parquet")
    assert len(trials) == 3 and set(trials["status"]) == {"ok"} and set(stored) < set(trials["trial_id"])


@pytest.mark.slow
def test_a_private_ray_that_came_up_beyond_loopback_is_stopped_and_refused(monkeypatch):
    """What a later Ray that rewrote 127.0.0.1 again would do: tli refuses to run on it."""
    import contextlib

    import ray

    from tli.errors import TliError
    from tli.sweep import session

    if ray.util.get_node_ip_address() == session.LOOPBACK:
        pytest.skip("this machine's only route is loopback: Ray cannot come up anywhere else")
    monkeypatch.setattr(session, "keep_loopback", contextlib.nullcontext)  # Ray's own rewrite, unprevented
    before = {name: os.environ.get(name) for name in session.AUTH_VARIABLES}
    with pytest.raises(TliError, match="the private Ray came up on .*, not on 127.0.0.1 only: stopped"):
        with session.connect(None):
            pass
    assert not ray.is_initialized() and {name: os.environ.get(name) for name in session.AUTH_VARIABLES} == before
