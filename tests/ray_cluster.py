"""Real multi-node Ray clusters on this machine for tests: `ray start --head` plus `ray start --address`; and
the TCP sockets of a process tree, to check that Ray listens and talks on loopback only.

Every node listens on 127.0.0.1 only: Ray's servers listen on loopback only when the node's address is exactly
127.0.0.1 (on any other address, 127.0.0.2 included, on every interface), and Ray 2.60 rewrites 127.0.0.1 to
the machine's routable address, so `ray start` runs under `tli.sweep.session.keep_loopback`, as tli's own
private Ray and a driver joining a loopback --address do. Each cluster authenticates with a token kept in its
own temp dir (never ~/.ray), and is stopped with everything it started when the `local_cluster` block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

RAY_START = (  # `ray start ...`, keeping 127.0.0.1 as given
    "import sys\n"
    "from ray.scripts.scripts import main\n"
    "from tli.sweep.session import keep_loopback\n"
    "sys.argv[0] = 'ray'\n"
    "with keep_loopback():\n"
    "    main()\n"
)
LOOPBACK = "127.0.0.1"
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
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class Socket:
    """One TCP socket of a process (from /proc/net/tcp and tcp6)."""

    state: str  # LISTEN, ESTABLISHED, ...
    local: str  # address:port
    peer: str
    pid: int

    def on_loopback(self) -> bool:
        """Whether the socket's own address, and its peer's when connected, are loopback (127.0.0.0/8, ::1)."""
        hosts = [self.local] + ([self.peer] if self.state != "LISTEN" else [])
        return all(ipaddress.ip_address(host.rsplit(":", 1)[0].strip("[]")).is_loopback for host in hosts)


# Ray's dashboard process, which runs even without a dashboard, asks this address which cloud it is on (one HTTP GET,
# 1 s timeout) whatever the usage-stats setting (Ray 2.60 `usage_stats_head.run`): an outbound probe, no port opened
CLOUD_METADATA = "169.254.169.254:80"


def beyond_loopback(sockets: Iterable[Socket]) -> list[Socket]:
    """The sockets not on loopback (`Socket.on_loopback`), but for connections to Ray's cloud metadata probe."""
    return [s for s in sockets if not s.on_loopback() and not (s.state != "LISTEN" and s.peer == CLOUD_METADATA)]


TCP_STATES = {"01": "ESTABLISHED", "0A": "LISTEN"}  # the others (closing, waiting) are shown by their code


def tcp_sockets(pids: Iterable[int]) -> list[Socket]:
    """The TCP sockets that processes `pids` hold open, as `ss -tanp` would list them."""
    owner = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        owner[target[8:-1]] = pid
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in owner:
                    state = TCP_STATES.get(fields[3], fields[3])
                    found.append(Socket(state, _address(fields[1]), _address(fields[2]), owner[fields[9]]))
    return found


def _address(hex_address: str) -> str:
    """/proc/net/tcp's 0100007F:1F90 (little-endian words) as 127.0.0.1:8080; IPv4-mapped IPv6 shown as IPv4."""
    host, port = hex_address.split(":")
    raw = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, len(host), 8))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    shown = str(address) if address.version == 4 else f"[{address}]"
    return f"{shown}:{int(port, 16)}"


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


def parent(pid: int) -> int:
    """The parent's pid, 0 once the process is gone: /proc/<pid>/stat's fourth field, after the ')' that ends the
    name (a name may hold one).
    """
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (above := parent(int(entry.name))):
            children.setdefault(above, []).append(int(entry.name))
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
        "import ray\nfrom tli.sweep.session import keep_loopback\n"
        f"with keep_loopback():\n    ray.init(address={address!r}, log_to_driver=False)\n"
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
    address = f"{LOOPBACK}:{port}"
    common = ["--block", "--num-cpus=1", f"--node-ip-address={LOOPBACK}", f"--temp-dir={temp}", "--disable-usage-stats"]
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
                    [sys.executable, "-c", RAY_START, "start", *flags, *common],
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
