"""Where a trial runs: `device=auto` inside Ray is only the GPUs Ray assigned (else the CPU, CUDA hidden), the GPU
share each sweep task reserves (`--gpus-per-trial auto` and the policy for a cluster with GPUs), and what a trial
row records. Without a GPU: a real local Ray node that declares 2 fake GPUs (Ray sets CUDA_VISIBLE_DEVICES per
task from its own bookkeeping), `torch.cuda` mocked where a task must believe in them, and a fake `nvidia-smi`.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from unittest import mock

import pytest
import torch

from tli import memory, models
from tli.config import ModelConfig
from tli.errors import TliError
from tli.sweep import resources, session
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import load_inputs
from tli.sweep.tuner import base_settings

TESTS = Path(__file__).resolve().parent
GIB = 2**30
A10G_MIB = 23028  # nvidia-smi's memory.total of an A10G


def fake_cuda(name: str = "NVIDIA A10G"):
    """torch.cuda as a process with one visible GPU would see it (no CUDA call is made)."""
    return mock.patch.multiple(
        torch.cuda,
        is_available=mock.Mock(return_value=True),
        device_count=mock.Mock(return_value=1),
        current_device=mock.Mock(return_value=0),
        get_device_name=mock.Mock(return_value=name),
        is_initialized=mock.Mock(return_value=False),
    )


# --- resolve_device, Ray's assignment given (no Ray) ------------------------------------------------


def test_outside_ray_auto_is_cuda_when_present(monkeypatch):
    monkeypatch.setattr(models, "ray_gpu_ids", lambda: None)
    assert models.resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with fake_cuda():
        assert models.resolve_device("auto") == torch.device("cuda")


def test_a_ray_task_without_gpus_runs_on_the_cpu_with_cuda_hidden(monkeypatch):
    monkeypatch.setattr(models, "ray_gpu_ids", lambda: [])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # restored after
    with fake_cuda():  # even where CUDA is there
        assert models.resolve_device("auto") == torch.device("cpu")
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
        assert models.resolve_device("cpu") == torch.device("cpu")
        with pytest.raises(TliError, match="device 'cuda' inside a Ray task that reserved no GPU"):
            models.resolve_device("cuda")


def test_a_ray_task_with_a_gpu_runs_on_it_and_names_it(monkeypatch):
    monkeypatch.setattr(models, "ray_gpu_ids", lambda: ["1"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # what Ray sets for GPU 1
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with fake_cuda():
        device = models.resolve_device("auto")
        assert device == torch.device("cuda") and models.gpu_identity(device) == ("NVIDIA A10G", "1")
        placement = models.runs_on(ModelConfig())
    assert placement == {
        "device_resolved": "cuda",
        "gpu_name": "NVIDIA A10G",
        "gpu_id": "1",
        "compute_dtype": "bfloat16",
    }
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # set before cuBLAS starts: --deterministic needs it
    if not torch.cuda.is_available():
        with pytest.raises(TliError, match=r"Ray assigned GPU\(s\) 1 to this task, but torch .* sees no CUDA device"):
            models.resolve_device("auto")


def test_nf4_computes_in_the_dtype_asked():
    pytest.importorskip("bitsandbytes")
    assert models._nf4_config(torch.float32).bnb_4bit_compute_dtype == torch.float32
    assert models._nf4_config(torch.bfloat16).bnb_4bit_compute_dtype == torch.bfloat16
    assert (
        models.runs_on(ModelConfig(device="cpu", dtype="bfloat16", quantization="nf4"))["compute_dtype"] == "bfloat16"
    )


# --- the GPU share (pure policy) ----------------------------------------------------------------------


def test_auto_takes_the_share_that_fits_and_zero_without_gpus():
    peak = int(8 * memory.GB)
    assert resources.gpu_share("auto", "auto", 8, peak, 80 * GIB) == 0.125
    assert resources.gpu_share("auto", "auto", 1, peak, A10G_MIB * 2**20) == 0.5
    assert resources.gpu_share("auto", "auto", 0, None, None) == 0.0
    assert resources.gpu_share("auto", "cpu", 4, None, None) == 0.0
    assert resources.gpu_share(0.25, "auto", 1, peak, 80 * GIB) == 0.25


@pytest.mark.parametrize(
    ("asked", "device", "gpus", "message"),
    [
        (0, "auto", 2, r"has 2 GPU\(s\) but --gpus-per-trial 0 reserves none: .* or --device cpu to mean it"),
        (0, "cuda", 2, "reserves none"),
        ("auto", "cuda", 0, "--device cuda, but no node of the Ray cluster has a GPU"),
        (0.5, "cpu", 2, "--gpus-per-trial 0.5 with --device cpu reserves GPUs no trial uses"),
    ],
)
def test_settings_that_would_idle_or_miss_the_gpus_are_refused(asked, device, gpus, message):
    with pytest.raises(TliError, match=message):
        resources.gpu_share(asked, device, gpus, int(8 * memory.GB), 24 * GIB)


def test_a_share_the_estimate_says_cannot_fit_is_warned_about(caplog, monkeypatch):
    # a library configured earlier in the suite (logging.config.dictConfig) may have disabled tli's loggers
    monkeypatch.setattr(resources.log, "disabled", False)
    assert resources.gpu_share(0.25, "auto", 1, int(8 * memory.GB), A10G_MIB * 2**20) == 0.25
    assert (
        "puts 4 trial(s) on a GPU, but tli's estimate of a trial's peak (8.0 GB) fits 2 in the 21.7 GB" in caplog.text
    )
    assert resources.gpu_share(1, "auto", 1, int(30 * memory.GB), A10G_MIB * 2**20) == 1.0  # given: warned, not refused
    assert "fits 0 in the 21.7 GB usable" in caplog.text


def test_an_autoscaler_that_can_add_gpu_nodes_needs_the_share_given(tmp_path):
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    assert not resources.autoscaler_adds_gpus(bootstrap)  # no file: a private Ray or a cluster started by hand
    bootstrap.write_text(
        "available_node_types:\n  head: {resources: {CPU: 0}, max_workers: 0}\n"
        "  gpu_worker: {resources: {CPU: 4, GPU: 1}, min_workers: 0, max_workers: 8}\n"
    )
    assert resources.autoscaler_adds_gpus(bootstrap)
    with pytest.raises(TliError, match=r"no node .* has a GPU yet, but its autoscaler can add GPU nodes: give "):
        resources.gpu_share("auto", "auto", 0, int(8 * memory.GB), None, gpus_may_come=True)
    assert resources.gpu_share(0.5, "auto", 0, int(8 * memory.GB), None, gpus_may_come=True) == 0.5
    assert resources.gpu_share("auto", "cpu", 0, None, None, gpus_may_come=True) == 0.0


def test_a_trial_larger_than_the_gpu_is_refused_under_auto():
    with pytest.raises(TliError, match="a trial needs about 30.0 GB, more than"):
        resources.gpu_share("auto", "auto", 1, int(30 * memory.GB), A10G_MIB * 2**20)


# --- a real Ray node with 2 fake GPUs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_gpu_ray(tmp_path_factory):
    """A local Ray node on loopback (127.0.0.1, kept) declaring 2 GPUs; its workers find an `nvidia-smi` that
    reports two A10Gs.
    """
    import ray

    folder = tmp_path_factory.mktemp("bin")
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\necho {A10G_MIB}\necho {A10G_MIB}\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    saved = {name: os.environ.pop(name, None) for name in ("PATH", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")}
    os.environ["PATH"] = f"{folder}{os.pathsep}{saved['PATH']}"  # workers inherit the driver's environment
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), saved["PYTHONPATH"]]))  # this module's tasks
    try:
        with session.keep_loopback():  # 127.0.0.1 kept as given: every server on loopback only
            ray.init(
                num_cpus=2, num_gpus=2, _node_ip_address=session.LOOPBACK, include_dashboard=False, log_to_driver=False
            )
        yield ray
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _where(mocked: bool) -> dict:
    """In a Ray task: what Ray assigned, what the process sees, and where tli puts a model."""
    import ray

    seen = {"ray_ids": ray.get_gpu_ids(), "visible_before": os.environ.get("CUDA_VISIBLE_DEVICES")}
    with fake_cuda() if mocked else contextlib.nullcontext():
        placement = models.runs_on(ModelConfig())
    return seen | placement | {"visible_after": os.environ.get("CUDA_VISIBLE_DEVICES")}


@pytest.mark.slow
def test_tasks_and_actors_run_on_the_gpu_ray_assigned_or_on_the_cpu(fake_gpu_ray):
    ray = fake_gpu_ray
    where = ray.remote(_where)
    halves = ray.get([where.options(num_gpus=0.5).remote(True) for _ in range(2)])
    for seen in halves:  # exactly its one id, and cuda:0 of the process is that GPU
        [gpu] = seen["ray_ids"]
        assert seen["visible_before"] == seen["visible_after"] == str(gpu)
        assert (seen["device_resolved"], seen["gpu_id"], seen["compute_dtype"]) == ("cuda", str(gpu), "bfloat16")
    whole = ray.get(where.options(num_gpus=2).remote(True))
    assert sorted(whole["ray_ids"]) == [0, 1] and whole["gpu_id"] == "0"

    class Trial:  # Tune runs a function trainable in an actor holding the trial's resources
        def where(self):
            return _where(True)

    actor = ray.remote(num_gpus=0.5)(Trial).remote()
    seen = ray.get(actor.where.remote())
    assert len(seen["ray_ids"]) == 1 and seen["gpu_id"] == seen["visible_after"] == str(seen["ray_ids"][0])
    ray.kill(actor)

    for mocked in (True, False):  # a task that reserved no GPU: Ray 2.60 leaves every GPU visible; tli hides them
        none = ray.get(where.options(num_gpus=0).remote(mocked))
        assert none["ray_ids"] == [] and none["visible_before"] in (None, "")  # "": a worker tli already hid them in
        assert none["device_resolved"] == "cpu" and none["gpu_id"] is None and none["visible_after"] == ""
        assert none["compute_dtype"] == "float32"


def _one_trial(folder: str, pairs: str) -> dict:
    from tli.sweep.trial import WorkerCache, run_trial

    config = SweepConfig(model=ModelConfig(model=folder), pairs=pairs, epochs=1, n_boot=100, drift=False)
    inputs = load_inputs(config)
    settings = base_settings(config).replace(lr=1e-2, warmup_steps=0, inputs_digest=inputs.digest)
    return run_trial(settings, inputs, WorkerCache()).row


@pytest.mark.slow
def test_a_trial_that_reserved_no_gpu_records_the_cpu(fake_gpu_ray, tiny_llama_dir, small_pairs):
    row = fake_gpu_ray.get(fake_gpu_ray.remote(num_gpus=0)(_one_trial).remote(str(tiny_llama_dir), str(small_pairs[0])))
    assert row["status"] == "ok", row["error"]
    assert (row["device"], row["device_resolved"], row["gpu_id"], row["gpu_name"]) == ("auto", "cpu", None, None)
    assert row["compute_dtype"] == "float32"


@pytest.mark.slow
def test_auto_reads_the_gpus_memory_and_zero_is_refused_on_a_cluster_with_gpus(fake_gpu_ray):
    config = SweepConfig(smoke_test=True, drift=False)
    inputs = load_inputs(config)
    planned = [base_settings(config).replace(target_layer=30)]
    reserved = resources.reserve(config, planned, inputs)
    assert reserved.gpu_bytes == A10G_MIB * 2**20 and reserved.gpus == memory.gpu_share(memory.MAX_TRIALS_PER_GPU)
    assert 0.75 * memory.GB < reserved.peak_bytes < 2 * memory.GB  # SmolLM2 in bf16: 0.27 GB weights + context
    assert reserved.tune_resources == {"cpu": 1.0, "gpu": 0.125}
    with pytest.raises(TliError, match=r"the Ray cluster has 2 GPU\(s\) but --gpus-per-trial 0 reserves none"):
        resources.reserve(SweepConfig(gpus_per_trial=0), planned, inputs)
    on_cpu = SweepConfig(model=ModelConfig(device="cpu"), gpus_per_trial=0)
    assert resources.reserve(on_cpu, planned, inputs) == resources.Reservation(1.0, 0.0)
