"""slurm/tli-sweep.sbatch on a real Slurm: Debian's slurmctld, two slurmd and munged on this machine.

The daemons, the job and its Ray run in a private network namespace (only loopback): nothing they open is
reachable from another machine and no port collides with anything outside. The two Slurm nodes are this
machine under two loopback addresses, NodeAddr 127.0.0.2 and 127.0.0.3 (Ray 2.60 rewrites 127.0.0.1 and
localhost to the machine's routable address, any other loopback address it keeps), each slurmd with its own
port, spool, pid and log file (`%n`). Without systemd or cgroups Slurm needs: a private munge key
(`mungekey -c`) and socket folder (mode 0755), proctrack/linuxproc, task/none, SlurmdParameters=config_overrides
(each node declares 1 CPU), socket paths under ~107 bytes (the folder lives under /tmp).

`sbatch --wait` runs the script with the layer sweep's smoke test. Checked: every trial ok, the two trials on two
Ray nodes, a raylet at each node's address in token mode with a token file of mode 600 in a folder of mode 700,
no dashboard frontend, and, once the job has ended, no process of it left and no folder of it under /tmp. A
second job gets the time limit's warning (USR1, sent at once): it stops, requeues itself and runs again. The
daemons are then stopped by pid; whatever happens, every process left in the namespace is killed. Needs root
(slurmd starts jobs; a network namespace) and Debian's slurmctld, slurmd, slurm-client and munge (.ci/run
installs them); skips with the reason otherwise. Measured: docs/clusters.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from ray_cluster import parent

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "slurm" / "tli-sweep.sbatch"
VENV_BIN = Path(sys.executable).parent  # the job's `python` and `ray`
NODES = {"n1": "127.0.0.2", "n2": "127.0.0.3"}  # Slurm node -> NodeAddr
TOOLS = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "scontrol": "slurm-client",
    "munged": "munge",
    "mungekey": "munge",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "ip": "iproute2",
}
SWEEP = ["python", "ablations/layer_sweep.py", "--model", "smollm2-135m", "--smoke-test", "--experiment", "layer_sweep"]


def _missing() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root: slurmd starts jobs as their user, and the daemons get a network namespace"
    absent = sorted({package for tool, package in TOOLS.items() if not shutil.which(tool)})
    if absent:
        return f"missing Debian packages {', '.join(absent)} (.ci/run installs slurmctld slurmd slurm-client munge)"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    return None


@dataclasses.dataclass
class Slurm:
    """munged, slurmctld and one slurmd per node, in the network namespace that `holder` keeps."""

    temp: Path
    holder: subprocess.Popen  # `sleep` in the namespace: the namespace lives while it does
    first_job: int = dataclasses.field(default_factory=lambda: random.randrange(10**6, 6 * 10**7))  # unique folders
    daemons: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm's commands and the job: its slurm.conf, this venv first, no Ray settings."""
        kept = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "SLURM"))}
        return kept | {"SLURM_CONF": str(self.temp / "slurm.conf"), "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}

    def command(self, *args: str) -> list[str]:
        """`args` run inside the namespace."""
        return ["nsenter", f"--target={self.holder.pid}", "--net", "--", *args]

    def start(self, name: str, *args: str) -> None:
        """A daemon in the foreground, its output in temp/<name>.out."""
        with open(self.temp / f"{name}.out", "w") as out:
            self.daemons[name] = subprocess.Popen(
                self.command(*args), env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def processes(self) -> dict[int, str]:
        """{pid: command line} of every process in the namespace but the holder."""
        try:
            namespace = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        except OSError:
            return {}
        found = {}
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and int(entry.name) != self.holder.pid:
                    if os.readlink(entry / "ns" / "net") == namespace:
                        found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        return found

    def idle(self) -> bool:
        """Whether every node is idle: no job, and none completing."""
        states = subprocess.run(
            self.command("sinfo", "--noheader", "--Node", "--format=%N %t"),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        return states.count("idle") == len(NODES)

    def stop_daemons(self) -> None:
        """SIGTERM to each daemon, by pid, slurmd first; SIGKILL after 30 s."""
        for daemon in reversed(self.daemons.values()):
            _stop(daemon, signal.SIGTERM, 30)

    def log(self) -> str:
        """The end of each daemon's output (in the foreground they log to it too), for a failure's message."""
        return "\n".join(f"== {name}\n{(self.temp / f'{name}.out').read_text()[-3000:]}" for name in self.daemons)


def _stop(process: subprocess.Popen, sig: int, wait_s: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def _slurm_conf(temp: Path, first_job: int) -> str:
    nodes = "\n".join(
        f"NodeName={name} NodeAddr={address} NodeHostname={socket.gethostname()} Port={6818 + index} CPUs=1 "
        f"RealMemory=1000 State=UNKNOWN"
        for index, (name, address) in enumerate(NODES.items())
    )
    return f"""\
ClusterName=tli
FirstJobId={first_job}
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort=6817
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={temp}/munge/socket,cred_expire=30
StateSaveLocation={temp}/state
SlurmdSpoolDir={temp}/spool-%n
SlurmctldPidFile={temp}/slurmctld.pid
SlurmdPidFile={temp}/slurmd-%n.pid
SlurmctldLogFile={temp}/slurmctld.log
SlurmdLogFile={temp}/slurmd-%n.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=10
{nodes}
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def _wait_for(what: str, ready, deadline_s: float, slurm: Slurm) -> None:
    deadline = time.monotonic() + deadline_s
    while not ready():
        dead = [name for name, daemon in slurm.daemons.items() if daemon.poll() is not None]
        assert not dead and time.monotonic() < deadline, f"{what}: {dead or 'timed out'}\n{slurm.log()}"
        time.sleep(0.2)


@contextlib.contextmanager
def _slurm_cluster() -> Iterator[Slurm]:
    """A running Slurm of two idle nodes; at the end the daemons are stopped and every process left is killed."""
    temp = Path(tempfile.mkdtemp(prefix="tlislurm", dir="/tmp"))  # short: munge's and slurmd's sockets live here
    temp.chmod(0o755)  # munged: every folder above its socket must be searchable by all (the key stays mode 600)
    # The nodes' addresses on lo: with 127.0.0.1 alone, getaddrinfo(AI_ADDRCONFIG) sees no IPv4 and slurmd cannot bind.
    addresses = " && ".join(f"ip addr add {address}/8 dev lo" for address in NODES.values())
    holder = subprocess.Popen(
        ["unshare", "--net", "sh", "-c", f"ip link set lo up && {addresses} && echo up && exec sleep infinity"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    slurm = Slurm(temp, holder)
    try:
        assert holder.stdout.readline().strip() == "up", "the network namespace did not come up"
        (temp / "munge").mkdir(mode=0o755)
        for folder in ("state", *(f"spool-{name}" for name in NODES)):
            (temp / folder).mkdir()
        subprocess.run(["mungekey", "-c", "-k", str(temp / "munge.key")], check=True, timeout=30)
        (temp / "slurm.conf").write_text(_slurm_conf(temp, slurm.first_job))
        slurm.start(
            "munged",
            "munged",
            "-F",
            f"--socket={temp}/munge/socket",
            f"--key-file={temp}/munge.key",
            f"--pid-file={temp}/munged.pid",
            f"--log-file={temp}/munged.log",
            f"--seed-file={temp}/munged.seed",
        )
        _wait_for("munged", (temp / "munge" / "socket").exists, 30, slurm)
        slurm.start("slurmctld", "slurmctld", "-D", "-i", "-f", str(temp / "slurm.conf"))
        for name in NODES:
            slurm.start(f"slurmd-{name}", "slurmd", "-D", "-N", name, "-f", str(temp / "slurm.conf"))

        _wait_for("two idle Slurm nodes", slurm.idle, 60, slurm)
        yield slurm
    finally:
        slurm.stop_daemons()
        for pid in slurm.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.closing(holder.stdout):  # not left to the garbage collector, in whichever later test it runs
            _stop(holder, signal.SIGKILL, 30)
        shutil.rmtree(temp, ignore_errors=True)
        for job in range(slurm.first_job, slurm.first_job + 10):  # a failed job's folders
            shutil.rmtree(f"/tmp/tli-{job}", ignore_errors=True)


def _ray_nodes_while(job: subprocess.Popen, slurm: Slurm) -> tuple[dict[int, dict[str, str]], set[str]]:
    """While the job runs: {pid: RAY_AUTH_* settings, --node-ip-address and the token file's and its folder's
    modes} of every raylet, and the command lines of every process seen. A raylet's child between fork and exec (a
    worker being started) still shows the raylet's command line: a process whose parent is a raylet is not one.
    """
    raylets: dict[int, dict[str, str]] = {}
    seen: set[str] = set()
    while job.poll() is None:
        processes = slurm.processes()
        for pid, command in processes.items():
            seen.add(command)
            if pid in raylets or not _is_raylet(command) or _is_raylet(processes.get(parent(pid), "")):
                continue
            with contextlib.suppress(OSError):
                environ = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                settings = dict(item.split("=", 1) for item in environ if item.startswith("RAY_AUTH"))
                token = Path(settings.get("RAY_AUTH_TOKEN_PATH", "/nonexistent"))
                settings["modes"] = f"{token.stat().st_mode & 0o777:o} {token.parent.stat().st_mode & 0o777:o}"
                settings["ip"] = next(arg.split("=", 1)[1] for arg in command.split() if "node_ip_address=" in arg)
                raylets[pid] = settings
        time.sleep(1)
    return raylets, seen


def _is_raylet(command: str) -> bool:
    return "raylet" in command.split(" ")[0]


def _job_processes(slurm: Slurm) -> dict[int, str]:
    """{pid: command line} of every process of a job: anything but the daemons and slurmctld's slurmscriptd."""
    daemons = {daemon.pid for daemon in slurm.daemons.values()}
    return {pid: line for pid, line in slurm.processes().items() if pid not in daemons and "slurmscriptd" not in line}


def _assert_nothing_left(slurm: Slurm, job_id: str) -> None:
    """No process of a job and no folder of this one under /tmp, within a minute of its end (slurmstepd reports
    the end before its last processes exit).
    """
    deadline = time.monotonic() + 60
    while (left := _job_processes(slurm)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"processes of the job left: {left}"
    assert not list(Path("/tmp").glob(f"tli-{job_id}*")), "the job's folders are left"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sbatch_runs_the_smoke_sweep_on_two_ray_nodes_and_leaves_nothing_running(tmp_path):
    if reason := _missing():
        pytest.skip(reason)
    started = time.perf_counter()
    with _slurm_cluster() as slurm:
        up = time.perf_counter()
        output = tmp_path / "job.out"
        sbatch = slurm.command(
            "sbatch",
            "--wait",
            "--parsable",
            "--cpus-per-task=1",
            "--gpus-per-node=0",
            "--time=15",
            f"--output={output}",
            str(SCRIPT),
            *SWEEP,
            "--results",
            str(tmp_path / "results"),
        )
        job = subprocess.Popen(
            sbatch, cwd=ROOT, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            raylets, seen = _ray_nodes_while(job, slurm)
            stdout, stderr = job.communicate(timeout=720)
        finally:
            _stop(job, signal.SIGTERM, 30)  # sbatch --wait only waits: the job ends with the daemons
        ran = time.perf_counter()
        log = output.read_text() if output.exists() else "(no job output)"
        assert job.returncode == 0, f"sbatch: {stderr}\n{log[-6000:]}\n{slurm.log()}"
        trials = pd.read_parquet(tmp_path / "results" / "layer_sweep" / "trials.parquet")
        assert len(trials) == 2 and set(trials["status"]) == {"ok"}, trials
        assert trials["node"].nunique() == 2, f"both trials on one Ray node: {trials['node'].tolist()}\n{log}"
        # Ray on both Slurm nodes, at their addresses, in token mode with a private token file; the dashboard off
        # (Ray keeps a minimal dashboard process without its web frontend)
        assert sorted(raylet["ip"] for raylet in raylets.values()) == sorted(NODES.values()), raylets
        for raylet in raylets.values():
            assert raylet["RAY_AUTH_MODE"] == "token" and raylet["modes"] == "600 700", raylet
        dashboards = [command for command in seen if "dashboard/dashboard.py" in command]
        assert all("--minimal" in command and "--disable-frontend" in command for command in dashboards), dashboards
        _assert_nothing_left(slurm, stdout.strip().split(";")[0])
    print(
        f"slurm test: {time.perf_counter() - started:.1f} s in all: daemons up {up - started:.1f} s, "
        f"the job (sbatch --wait) {ran - up:.1f} s"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_time_limit_signal_stops_the_sweep_and_ray_and_requeues_the_job(tmp_path):
    """Slurm's warning before the time limit (--signal=B:USR1@300, sent here at once by scancel) stops the sweep
    and Ray and requeues the job, which runs the same command again (a sweep resumes where it stopped).
    """
    if reason := _missing():
        pytest.skip(reason)
    # the "sweep": waits on the first run, ends at once when requeued
    sweep = 'echo "run ${SLURM_RESTART_COUNT:-0}"; ((SLURM_RESTART_COUNT)) || exec sleep 600'
    with _slurm_cluster() as slurm:
        output = tmp_path / "job.out"
        submitted = subprocess.run(
            slurm.command(
                "sbatch",
                "--parsable",
                "--nodes=1",
                "--cpus-per-task=1",
                "--gpus-per-node=0",
                "--time=15",
                f"--output={output}",
                str(SCRIPT),
                "bash",
                "-c",
                sweep,
            ),
            cwd=ROOT,
            env=slurm.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip().split(";")[0]

        def job(field: str) -> str:
            shown = subprocess.run(
                slurm.command("scontrol", "show", "job", job_id), env=slurm.env, capture_output=True, text=True
            )
            return next((item.split("=", 1)[1] for item in shown.stdout.split() if item.startswith(f"{field}=")), "")

        def log() -> str:
            return output.read_text() if output.exists() else ""

        _wait_for("the sweep running", lambda: "run 0" in log(), 300, slurm)
        signalled = subprocess.run(
            slurm.command("scancel", "--batch", "--signal=USR1", job_id), env=slurm.env, capture_output=True, text=True
        )
        assert signalled.returncode == 0, signalled.stderr

        # a requeued job starts again once its credential has expired (cred_expire: 30 s here, 120 s by default)
        _wait_for("the job requeued and finished", lambda: job("JobState") == "COMPLETED", 300, slurm)
        assert job("Restarts") == "1" and "run 1" in log(), log()
        assert "time limit near: stopping" in log() and "requeueing the job (restart 1 of at most 3)" in log(), log()
        _assert_nothing_left(slurm, job_id)
