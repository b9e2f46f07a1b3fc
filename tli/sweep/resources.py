"""What every task of a sweep reserves on the Ray cluster: CPUs, and a GPU share (`--gpus-per-trial auto`).

Inside Ray a trial runs on the GPUs Ray assigned it and on the CPU when it reserved none
(`tli.models.resolve_device`), so the GPU share is decided in the driver, before any task starts:

  auto     where a node has GPUs: 1/n of a GPU, n = how many of the largest planned trial fit in the smallest
           GPU's memory (`tli.memory`: its estimated peak against 90% of the GPU, at most 8 per GPU); where no
           node has one, 0: trials run on CPUs; refused when none has one yet but the cluster's autoscaler
           can add GPU nodes (its config on the head, ~/ray_bootstrap_config.yaml, lists a node type with
           GPUs): the GPUs' memory is unknown until one is up, so the share must be given.
  0        on a cluster with GPUs: refused unless --device cpu (the GPUs would idle while trials run on CPUs).
  a share  as given; a warning when the estimate says that many trials do not fit in one GPU.

The trials, the scan task and the drift-sample task all reserve the same share.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
from pathlib import Path

from tli import memory
from tli.errors import TliError
from tli.sweep.flags import SweepConfig
from tli.sweep.inputs import SMOKE_DRIFT, ExperimentInputs
from tli.sweep.settings import TrialSettings

log = logging.getLogger(__name__)

DRIFT_NEW_TOKENS = 24  # drift.make_samples' default continuation length (a smoke test's: SMOKE_DRIFT)
NVIDIA_SMI = ("nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits")  # MiB per GPU


@dataclasses.dataclass(frozen=True)
class Reservation:
    """What each trial (and the scan and drift-sample tasks) reserves, and why."""

    cpus: float
    gpus: float
    peak_bytes: int | None = None  # estimated peak of the largest planned trial on a GPU (None: no GPU involved)
    gpu_bytes: int | None = None  # memory of the cluster's smallest GPU

    @property
    def tune_resources(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus}


def gpu_share(
    asked: float | str,
    device: str,
    cluster_gpus: float,
    peak_bytes: int | None,
    gpu_bytes: int | None,
    gpus_may_come: bool = False,
) -> float:
    """Ray's GPU quantity per trial (the policy of the module docstring); TliError for a setting that cannot work.

    `cluster_gpus`: GPUs of the alive nodes; `peak_bytes`/`gpu_bytes`: needed (with GPUs) for auto and the check;
    `gpus_may_come`: an autoscaler can add nodes with GPUs.
    """
    if device == "cpu":
        if asked not in ("auto", 0):
            raise TliError(f"--gpus-per-trial {asked:g} with --device cpu reserves GPUs no trial uses: drop one")
        return 0.0
    if not cluster_gpus:
        if device.startswith("cuda") and not gpus_may_come:
            raise TliError(f"--device {device}, but no node of the Ray cluster has a GPU")
        if asked == "auto" and gpus_may_come:
            estimate = f" (tli's estimate of a trial: {peak_bytes / memory.GB:.1f} GB)" if peak_bytes else ""
            raise TliError(
                "no node of the Ray cluster has a GPU yet, but its autoscaler can add GPU nodes: give "
                f"--gpus-per-trial, the share of a GPU per trial{estimate}, or --device cpu to run on CPUs"
            )
        if asked not in ("auto", 0):
            log.warning("a trial asks for %g GPU, no node has one yet: trials wait for one", asked)
        return 0.0 if asked == "auto" else float(asked)
    if asked == 0:
        raise TliError(
            f"the Ray cluster has {cluster_gpus:g} GPU(s) but --gpus-per-trial 0 reserves none: trials would run on "
            "CPUs while the GPUs idle; use --gpus-per-trial auto (or a share), or --device cpu to mean it"
        )
    if asked == "auto":
        return memory.gpu_share(memory.trials_per_gpu(peak_bytes, gpu_bytes))  # TliError when not one fits
    usable = int(gpu_bytes * (1 - memory.SAFETY_MARGIN))
    per_gpu = max(1, int(1 / asked))  # trials Ray puts on one GPU
    if per_gpu * peak_bytes > usable:
        log.warning(
            "--gpus-per-trial %g puts %d trial(s) on a GPU, but tli's estimate of a trial's peak (%.1f GB) fits %d "
            "in the %.1f GB usable of a GPU: expect out-of-memory retries",
            asked,
            per_gpu,
            peak_bytes / memory.GB,
            usable // peak_bytes,
            usable / memory.GB,
        )
    return float(asked)


def largest_peak(planned: list[TrialSettings], inputs: ExperimentInputs, smoke: bool) -> int:
    """tli.memory's estimate, in bytes on a GPU, of the peak of the largest planned trial (its longest word and
    drift samples counted from the experiment's inputs; the model's shape from its config, no weight loaded).
    """
    from tli import models

    config = planned[0].model
    shape = memory.model_shape(models.model_config(config.model))
    tokenizer = models.load_tokenizer(config.model)
    words = [*inputs.lexicon.swahili, *inputs.lexicon.english]
    word_tokens = max(len(ids) for ids in tokenizer(words, add_special_tokens=True)["input_ids"])
    drift_tokens = SMOKE_DRIFT["tokens"] if smoke else DRIFT_NEW_TOKENS
    return max(
        memory.trial_peak(
            shape,
            memory.trial_shape(
                s.model,
                s.train,
                True,
                word_tokens,
                drift_tokens if s.drift else 0,
                s.probe.translation_probe and not smoke,
            ),
        )["peak"]
        for s in planned
    )


def _total_gpu_memory() -> list[int]:
    """Bytes of memory of each GPU of this machine (nvidia-smi; no CUDA context is created)."""
    try:
        answer = subprocess.run(NVIDIA_SMI, capture_output=True, text=True, timeout=60, check=True).stdout
        return [int(float(line)) * 2**20 for line in answer.split() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        raise TliError(f"cannot read the GPUs' memory with nvidia-smi: {error}: give --gpus-per-trial") from None


def smallest_gpu(nodes: list[str]) -> int:
    """Bytes of memory of the smallest GPU of the given Ray nodes: one task per node, pinned to it, reserving
    nothing (it reads nvidia-smi, which lists the node's GPUs whatever the task reserved).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, num_gpus=0, max_retries=0)(_total_gpu_memory)
    answers = ray.get(
        [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote() for node in nodes]
    )
    sizes = [size for answer in answers for size in answer]
    if not sizes:
        raise TliError("nvidia-smi lists no GPU on the Ray nodes that have GPUs: give --gpus-per-trial")
    return min(sizes)


def autoscaler_adds_gpus(path: Path | None = None) -> bool:
    """Whether the Ray autoscaler of this head can add nodes with GPUs: a node type with GPUs and workers in the
    config `ray up` leaves on the head (`~/ray_bootstrap_config.yaml`, node resources filled in by Ray); False
    where there is none (a private Ray, a cluster started by hand).
    """
    import yaml

    try:
        config = yaml.safe_load((path or Path.home() / "ray_bootstrap_config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    types = config.get("available_node_types") or {}
    return any(
        (kind.get("resources") or {}).get("GPU", 0) > 0 and kind.get("max_workers", 0) > 0 for kind in types.values()
    )


def reserve(config: SweepConfig, planned: list[TrialSettings], inputs: ExperimentInputs) -> Reservation:
    """The Reservation of the sweep's tasks on the running Ray cluster; TliError before any task starts."""
    import ray

    nodes = {node["NodeID"]: node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node["Alive"]}
    cluster_gpus = sum(nodes.values())
    may_come = bool(config.address) and not cluster_gpus and autoscaler_adds_gpus()
    peak = gpu = None
    if (cluster_gpus or may_come) and config.model.device != "cpu" and config.gpus_per_trial != 0:
        peak = largest_peak(planned, inputs, config.smoke_test)
    if cluster_gpus and peak is not None:
        gpu = smallest_gpu([node for node, gpus in nodes.items() if gpus])
    share = gpu_share(config.gpus_per_trial, config.model.device, cluster_gpus, peak, gpu, may_come)
    if config.gpus_per_trial == "auto" and share:
        log.warning(
            "--gpus-per-trial auto: %g GPU per trial (a trial's estimated peak %.1f GB, GPUs of %.1f GB)",
            share,
            peak / memory.GB,
            gpu / memory.GB,
        )
    return Reservation(config.cpus_per_trial, share, peak, gpu)
