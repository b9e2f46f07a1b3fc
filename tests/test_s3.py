"""Results on an object store: a smoke sweep into s3:// on a real S3-compatible server (`moto_server`, listening
on 127.0.0.1 only) through pyarrow's S3 client; a second driver refused by the first's lease; the first driver
killed after its first trial, a rerun that takes its lease over, and the aggregator reading from s3://.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from ray_cluster import LOOPBACK, descendants, free_port, tcp_sockets

ROOT = Path(__file__).resolve().parents[1]
MOTO = Path(sys.executable).with_name("moto_server")
BUCKET = "tli-results"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MOTO.exists(), reason="moto_server missing: pip install -e '.[test]'"),
]


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def _kill_marked(marker: str) -> None:
    """SIGKILL every process whose command line names `marker` (Ray processes of one private temp dir)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """A moto S3 server on a free loopback port with one bucket: the environment that points pyarrow at it."""
    import boto3

    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen(
        [str(MOTO), "-H", LOOPBACK, "-p", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    env = os.environ | {
        "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                boto3.client(
                    "s3",
                    endpoint_url=env["AWS_ENDPOINT_URL"],
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    region_name="us-east-1",
                ).create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-2000:]
                time.sleep(0.5)
        sockets = tcp_sockets([server.pid, *descendants(server.pid)])
        assert sockets and all(s.on_loopback() for s in sockets), sockets  # moto listens on loopback only
        yield env
    finally:
        _kill_group(server)


def _client(env: dict):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _objects(env: dict, prefix: str) -> list[str]:
    """Keys under `prefix`, the oldest first."""
    found = _client(env).list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return [o["Key"] for o in sorted(found, key=lambda o: o["LastModified"])]


def _sweep(env: dict, ray_dir: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "ablations/layer_sweep.py",
        "--smoke-test",
        "--max-concurrent",
        "1",
        "--results",
        f"s3://{BUCKET}/runs",
    ]
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env | {"RAY_TMPDIR": ray_dir},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.timeout(900)
def test_a_killed_sweep_into_s3_resumes_and_aggregates_from_s3(s3_env, tmp_path, monkeypatch):
    ray_dir = tempfile.mkdtemp(prefix="tlis3", dir="/tmp")  # short: Ray's socket paths live under it
    rows = "runs/layer_sweep/trials/"
    try:
        first = _sweep(s3_env, ray_dir)
        deadline = time.monotonic() + 400
        while not _objects(s3_env, "runs/layer_sweep/driver.lock"):  # the first driver holds its lease
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()[-3000:]
            time.sleep(0.5)
        refused = _sweep(s3_env, ray_dir)  # while the first starts its Ray: refused before starting one
        output, _ = refused.communicate(timeout=300)
        assert refused.returncode == 2 and "is in use by another driver" in output.splitlines()[-1], output[-3000:]
        while not [key for key in _objects(s3_env, rows) if key.endswith("/row.json")]:
            assert first.poll() is None, first.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no trial committed in time"
            time.sleep(1)
        _kill_group(first)  # SIGKILL the driver (and its private Ray) after its first committed trial
        _kill_marked(ray_dir)
        committed = [key for key in _objects(s3_env, rows) if key.endswith("/row.json")]
        for later in committed[1:]:  # a commit is a few S3 requests: a fast second trial may beat the kill
            _client(s3_env).delete_object(Bucket=BUCKET, Key=later)  # its files then stand uncommitted
        committed = [committed[0].split("/")[-2]]

        second = _sweep(s3_env, ray_dir)
        output, _ = second.communicate(timeout=600)
        assert second.returncode == 0, output[-3000:]
        assert "2 trials, 1 already done, 1 to run" in output
        assert f"taking over driver.lock of a driver that stopped (pid {first.pid} " in output  # dead, this host
    finally:
        _kill_marked(ray_dir)
        subprocess.run(["rm", "-rf", ray_dir], check=False)

    from tli.files import Folder

    for key, value in s3_env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)  # pyarrow's S3 client, in this process too, talks to moto
    folder = Folder(f"s3://{BUCKET}/runs/layer_sweep")
    trials = folder.read_table("trials.parquet")
    assert len(trials) == 2 and trials["trial_id"].is_unique and set(trials["status"]) == {"ok"}
    assert committed[0] in set(trials["trial_id"])
    row = folder.read_json(f"trials/{committed[0]}/row.json")
    stored = trials.set_index("trial_id").loc[committed[0], "finished_at"]
    assert pd.Timestamp(row["finished_at"]) == stored  # not re-run

    report = tmp_path / "report"
    command = [
        sys.executable,
        "ablations/aggregate.py",
        f"s3://{BUCKET}/runs/layer_sweep",
        "--out",
        str(report),
        "--n-boot",
        "200",
    ]
    aggregated = subprocess.run(command, cwd=ROOT, env=s3_env, capture_output=True, text=True, timeout=300)
    assert aggregated.returncode == 0, aggregated.stderr[-3000:]
    assert "2 of 2 planned trials" in (report / "report.md").read_text()
