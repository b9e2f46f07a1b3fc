"""`ray up` for real: a copy of cluster.onprem.yaml (Ray's `local` provider) run against sshd on loopback.

Two "machines", a head on 127.0.0.1 and a worker on 127.0.0.2, are this one behind two sshd (generated host
keys, the test's client key), each in its own PID and mount namespaces: the account's home is a fresh folder
(a copy of /etc/skel) and /tmp is empty, so `~/.bashrc`, `~/.ray` and /tmp/ray are the machine's own, and the
bare `ray stop` of `ray up` and `ray down` (which stops every Ray process it can see) reaches only that
machine. Both share one private network namespace whose only interface is loopback (checked), so the sshd and
every Ray port listen and talk on loopback only, and Ray's default ports collide with nothing outside.
`ray up`, `ray exec`, `ray rsync-down` and `ray down` run here, in that network namespace, with a HOME of
their own (the token, Ray's local state). The real ~/.ssh, ~/.ray and ~/.bashrc are never read or written.

Needs root (sshd for a second home, namespaces), Debian's openssh-server and rsync (.ci/run installs them);
skips with the reason otherwise. Measured: docs/clusters.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent  # this environment's python and ray serve as the machines' tli-venv
RAY = str(VENV_BIN / "ray")
SSHD = "/usr/sbin/sshd"
SWEEP = (
    'cd ~/tli && python ablations/layer_sweep.py --model "$TLI_MODEL_PATH" --results "$TLI_RESULTS" '
    "--address auto --smoke-test"
)  # the command of docs/clusters.md, with --smoke-test
WAIT_FOR_WORKER = """python -c 'import ray, time
ray.init(address="auto")
deadline = time.time() + 120
while sum(node["Alive"] for node in ray.nodes()) < 2 and time.time() < deadline:
    time.sleep(1)
assert sum(node["Alive"] for node in ray.nodes()) == 2, ray.nodes()'"""  # the head's autoscaler sets the worker up


def _missing() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.geteuid() != 0:
        return "needs root: sshd for a second home, and private network, PID and mount namespaces"
    if Path("/tmp") in (ROOT.resolve(), *ROOT.resolve().parents, *VENV_BIN.resolve().parents):
        return f"the checkout or its venv ({VENV_BIN}) lies under /tmp, which each machine replaces: clone elsewhere"
    tools = {
        SSHD: "openssh-server",
        "ssh": "openssh-client",
        "ssh-keygen": "openssh-client",
        "rsync": "rsync",
        "unshare": "util-linux",
        "nsenter": "util-linux",
        "ip": "iproute2",
    }
    absent = sorted({package for tool, package in tools.items() if not shutil.which(tool)})
    if absent:
        return f"missing Debian packages {', '.join(absent)} (.ci/run installs openssh-server, rsync, iproute2)"
    probe = subprocess.run(
        ["unshare", "--net", "--pid", "--mount", "--fork", "--mount-proc", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode:
        return f"cannot create network/PID namespaces here: {probe.stderr.strip()}"
    return None


@dataclasses.dataclass
class Machine:
    """One sshd in its own PID namespace: the processes of a cluster node live in that namespace."""

    ip: str
    home: Path
    unshare: subprocess.Popen
    init: int  # pid (as seen here) of the namespace's first process, sshd
    log: Path

    def processes(self) -> dict[int, str]:
        """{pid: command line} of every process in this machine's PID namespace but its sshd."""
        try:
            namespace = os.readlink(f"/proc/{self.init}/ns/pid")
        except OSError:
            return {}
        found = {}
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and os.readlink(entry / "ns" / "pid") == namespace:
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if not command.startswith("sshd"):
                        found[int(entry.name)] = command.strip()
            except OSError:
                continue
        return found

    def stop(self) -> None:
        """SIGKILL to unshare: --kill-child kills the namespace's init, and the kernel every process in it."""
        with contextlib.suppress(ProcessLookupError):
            self.unshare.kill()
        self.unshare.wait(timeout=30)


def _start_machine(temp: Path, name: str, ip: str, netns_of: int | None) -> Machine:
    """Start sshd on ip:22 in new PID and mount namespaces where the account's home is temp/name and /tmp is
    empty, in a new network namespace unless `netns_of` (a pid) names the one to join.
    """
    home, etc = temp / name, temp / f"{name}-sshd"
    etc.mkdir()
    shutil.copytree("/etc/skel", home)  # a new account's files (~/.bashrc, ~/.profile)
    (home / "tli-venv").symlink_to(VENV_BIN.parent)  # the setup_commands' private environment: this venv
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(etc / "host_key")], check=True, timeout=30)
    (etc / "sshd_config").write_text(f"""\
ListenAddress {ip}:22
HostKey {etc / "host_key"}
AuthorizedKeysFile {temp / "client" / "key.pub"}
PidFile none
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {getpass.getuser()}
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    account_home = Path.home()
    steps = ["set -e", "mount -t tmpfs tmpfs /tmp"]
    # Shown read-only inside the fake home, where they live in the real one: this venv's base Python (pyenv
    # keeps it under ~) and the embedded model once converted (saves ~30 s).
    for kept in (Path(sys.base_prefix), account_home / ".cache" / "tli" / "models" / "smollm2-135m"):
        if kept.is_relative_to(account_home) and kept.is_dir():
            (home / kept.relative_to(account_home)).mkdir(parents=True)
            steps.append(f"mount -o bind,ro {kept} {home / kept.relative_to(account_home)}")
    steps += [f"mount --rbind {home} {account_home}", f"exec {SSHD} -D -e -f {etc / 'sshd_config'}"]
    unshare = ["unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child"]  # dies with unshare
    if netns_of is None:
        command = [*unshare, "--net", "sh", "-c", "; ".join(["ip link set lo up", *steps])]
    else:
        command = ["nsenter", f"--target={netns_of}", "--net", "--", *unshare, "sh", "-c", "; ".join(steps)]
    log = etc / "sshd.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "Server listening" not in log.read_text():
            started = process.poll() is None and time.monotonic() < deadline
            assert started, f"sshd on {ip} did not start: {log.read_text()}"
            time.sleep(0.1)
        # unshare's child, sshd (nsenter, which enters no PID namespace, execs unshare)
        init = _children(process.pid)[0]
    except BaseException:
        process.kill()  # --kill-child takes the namespace with it
        process.wait(timeout=30)
        raise
    return Machine(ip, home, process, init, log)


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _pids_naming(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
    return pids


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@contextlib.contextmanager
def _cluster_machines() -> Iterator[tuple[Path, Machine, Machine]]:
    """(temp dir, head on 127.0.0.1, worker on 127.0.0.2); everything they ran is killed at the end."""
    temp = Path(tempfile.mkdtemp(prefix="tliup", dir="/var/tmp"))  # not under /tmp: each machine gets its own /tmp
    control = Path("/tmp") / f"ray_ssh_{_sha(getpass.getuser())}" / _sha(temp.name)  # `ray up`'s SSH control sockets
    machines: list[Machine] = []
    try:
        (temp / "client" / "tmp").mkdir(parents=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(temp / "client" / "key")], check=True, timeout=30
        )
        machines.append(_start_machine(temp, "head", "127.0.0.1", None))
        machines.append(_start_machine(temp, "worker", "127.0.0.2", machines[0].init))
        yield temp, machines[0], machines[1]
    finally:
        for machine in machines:
            machine.stop()
        for pid in _pids_naming(str(control)):  # `ray up`'s SSH multiplexing masters (ControlPersist)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(control, ignore_errors=True)
        with contextlib.suppress(OSError):
            control.parent.rmdir()  # only if no other cluster's sockets are left in it
        shutil.rmtree(temp, ignore_errors=True)


def _test_copy(temp: Path, user: str) -> Path:
    """cluster.onprem.yaml pointing at the two loopback machines; pip installs dropped (no internet)."""
    config = yaml.safe_load((ROOT / "cluster.onprem.yaml").read_text())
    config["cluster_name"] = temp.name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=["127.0.0.2"])
    config["auth"] = {"ssh_user": user, "ssh_private_key": str(temp / "client" / "key")}
    config["setup_commands"] = [
        command for command in config["setup_commands"] if "pip install" not in command and "-m venv" not in command
    ]
    # On a network Ray finds a worker's address from its route to the head; on loopback that is 127.0.0.1.
    config["worker_start_ray_commands"] = [
        command.replace("ray start", "ray start --node-ip-address=127.0.0.2")
        for command in config["worker_start_ray_commands"]
    ]
    path = temp / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_up_exec_rsync_down_and_down_leave_nothing_running(tmp_path):
    if reason := _missing():
        pytest.skip(reason)
    started = time.perf_counter()
    timings = {}
    with _cluster_machines() as (temp, head, worker):
        links = subprocess.run(
            ["nsenter", f"--target={head.init}", "--net", "--", "ip", "-o", "link", "show"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert [line.split(": ")[1] for line in links.splitlines()] == ["lo"], links  # sshd, Ray: loopback only
        config = _test_copy(temp, getpass.getuser())
        client = temp / "client"
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")} | {
            "HOME": str(client),
            "TMPDIR": str(client / "tmp"),
            "RAY_TMPDIR": str(client / "tmp"),
            "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

        def ray(step: str, *args: str, timeout: float = 300) -> None:
            """A `ray` command run here, in the cluster's network namespace, timed as `step`."""
            began = time.perf_counter()
            run = subprocess.run(
                ["nsenter", f"--target={head.init}", "--net", "--", RAY, *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            timings[step] = time.perf_counter() - began
            assert run.returncode == 0, f"ray {' '.join(args)}:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"

        subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
        token = (client / ".ray" / "auth_token").read_text()
        ray("ray up", "up", "-y", "--no-config-cache", str(config))
        ray("worker joined", "exec", str(config), WAIT_FOR_WORKER)
        for machine in (head, worker):  # the token reached every machine, owner-only, and every Ray runs in token mode
            copy = machine.home / ".ray" / "auth_token"
            assert copy.read_text() == token and copy.stat().st_mode & 0o077 == 0
            raylets = [pid for pid, command in machine.processes().items() if "raylet" in command.split(" ")[0]]
            assert raylets, machine.processes()
            environ = Path(f"/proc/{raylets[0]}/environ").read_bytes().split(b"\0")
            assert b"RAY_AUTH_MODE=token" in environ
        ray("smoke sweep (ray exec)", "exec", str(config), SWEEP, timeout=480)
        ray("ray rsync-down", "rsync-down", str(config), "~/results/layer_sweep/", str(tmp_path / "layer_sweep"))
        trials = pd.read_parquet(tmp_path / "layer_sweep" / "trials.parquet")
        assert len(trials) == 2 and set(trials["status"]) == {"ok"}, trials
        ray("ray down", "down", "-y", str(config))
        stopped = time.perf_counter()
        # a worker's watchdog waits a minute after the head is gone
        while (
            left := {m.ip: m.processes() for m in (head, worker) if m.processes()}
        ) and time.perf_counter() - stopped < 150:
            time.sleep(1)
        timings["every process gone after ray down"] = time.perf_counter() - stopped
        assert not left, f"Ray processes left after `ray down`: {left}"
    print(
        f"ray up test: {time.perf_counter() - started:.1f} s in all; "
        + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in timings.items())
    )
