"""The Ray a sweep runs on: a private local Ray that no other machine can reach, or a cluster at --address.

A private Ray listens on loopback only and admits only drivers that hold a token generated for it:

- Ray's servers (GCS, raylet, every worker, the driver) listen on 127.0.0.1 only when their node's address is
  exactly "127.0.0.1", and on every interface otherwise (127.0.0.2 included). Ray 2.60 on Linux rewrites
  127.0.0.1 and localhost, given as a node address or in an --address, to the machine's routable address;
  `keep_loopback` keeps them (on macOS and Windows Ray keeps them already). After start the node's address is
  checked: a Ray that came up elsewhere is stopped and refused, never used.
- Ray's token authentication (RAY_AUTH_MODE=token) with a fresh token in a file of mode 600, in a folder of its
  own (mode 700, RAY_AUTH_TOKEN_PATH), removed when the Ray stops: never ~/.ray/auth_token.

An --address that does not answer, or answers but refuses this driver's token, is one line before Ray starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ray

from tli.errors import TliError
from tli.files import reason

LOOPBACK = "127.0.0.1"
AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
TOKEN_FILE = "auth_token"


@contextlib.contextmanager
def connect(address: str | None, verbose: bool = False) -> Iterator[None]:
    """Join the cluster at `address`, or start a private local Ray (never one some other process left running);
    shut down only what this started. TliError when no cluster answers, when it refuses this driver's token, or
    when a private Ray did not come up on loopback.
    """
    if address:
        check_answers(address)
    loopback = not address or _is_loopback(address.rsplit(":", 1)[0])
    with private_token() if not address else contextlib.nullcontext():
        try:
            with keep_loopback() if loopback else contextlib.nullcontext():
                ray.init(
                    address=address or "local",
                    _node_ip_address=None if address else LOOPBACK,
                    include_dashboard=False,
                    log_to_driver=verbose,
                    logging_level=logging.INFO if verbose else logging.WARNING,
                )
        except ConnectionError as error:
            raise TliError(f"no Ray cluster at --address {address}: {reason(error)}") from None
        try:
            if not address:
                _check_private()
            yield
        finally:
            ray.shutdown()


def local_resources() -> dict[str, float]:
    """The CPUs and GPUs a private Ray started here would have: Ray's own count (cgroups, CUDA_VISIBLE_DEVICES,
    RAY_OVERRIDE_RESOURCES; `ray._private.resource_and_label_spec`, Ray 2.60), read without starting it.
    """
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    spec = ResourceAndLabelSpec().resolve(is_head=True, node_ip_address=LOOPBACK)
    return {"CPU": float(spec.num_cpus), "GPU": float(spec.num_gpus)}


@contextlib.contextmanager
def keep_loopback() -> Iterator[None]:
    """Ray, in this process, keeps 127.0.0.1 and localhost as given (node and --address) instead of rewriting them
    to the routable address (`ray._private.services.resolve_ip_for_localhost`, Ray 2.60): with node address
    127.0.0.1 its servers listen on loopback only. For the time of the block (ray.init, `ray start`).
    """
    from ray._private import services

    rewrite = services.resolve_ip_for_localhost
    services.resolve_ip_for_localhost = lambda host: LOOPBACK if _is_loopback(host) else rewrite(host)
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = rewrite


def _is_loopback(host: str) -> bool:
    return host in (LOOPBACK, "localhost")


def _check_private() -> None:
    """TliError (the caller stops that Ray) when the private Ray's node did not come up on loopback."""
    addresses = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    if addresses != {LOOPBACK}:
        raise TliError(
            f"the private Ray came up on {', '.join(sorted(addresses))}, not on {LOOPBACK} only: stopped (this Ray "
            f"{ray.__version__} no longer keeps loopback; run on a cluster with --address)"
        )


@contextlib.contextmanager
def private_token() -> Iterator[Path]:
    """A fresh token for a private Ray: in a file of mode 600 inside a new folder of mode 700, named to Ray by
    RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH (which Ray's processes inherit) for the time of the block; the
    environment is restored and the folder removed after.
    """
    folder = Path(tempfile.mkdtemp(prefix="tli-ray-token-"))  # mode 700
    token = folder / TOKEN_FILE
    descriptor = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    saved = {name: os.environ.get(name) for name in AUTH_VARIABLES}
    os.environ.pop("RAY_AUTH_TOKEN", None)  # it would take precedence over the file
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    _reload_auth()
    try:
        yield token
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_auth()
        shutil.rmtree(folder, ignore_errors=True)


def _reload_auth() -> None:
    """Make this process read RAY_AUTH_* again (Ray caches the mode and the token once read)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # the mode first: see ray._private.authentication_test_utils.reset_auth_token_state
    AuthenticationTokenLoader.instance().reset_cache()


def check_answers(address: str, timeout_s: float = 10.0) -> None:
    """TliError when nothing listens at a host:port address (ray.init would retry for minutes), or when the Ray
    there refuses this driver's token (ray.init would print twenty lines of InvalidAuthToken, then give up).
    """
    if "://" in address or ":" not in address:
        return  # "auto", "local" or a ray:// client address: ray.init says what is wrong
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as error:
        raise TliError(f"no Ray cluster answers at {address}: {reason(error)}") from None
    from ray._raylet import AuthenticationMode, GcsClient, get_authentication_mode
    from ray.exceptions import AuthenticationError

    _reload_auth()
    try:
        with _quiet_stderr():  # Ray's C++ client logs the refusal on file descriptor 2
            GcsClient(address=address)
    except AuthenticationError:
        if get_authentication_mode() == AuthenticationMode.TOKEN:
            raise TliError(
                f"the Ray cluster at {address} refuses this driver's token: give the driver the cluster's token "
                "(RAY_AUTH_TOKEN_PATH=<its token file>; see docs/clusters.md)"
            ) from None
        raise TliError(
            f"the Ray cluster at {address} requires a token and this driver has none: export RAY_AUTH_MODE=token "
            "and RAY_AUTH_TOKEN_PATH=<the cluster's token file> (see docs/clusters.md)"
        ) from None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null for the time of the block (a C++ library's log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
