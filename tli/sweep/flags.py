"""`SweepConfig`: the settings every ablation script shares, and the command line generated from them.

A script adds its own axis flags as a small frozen dataclass (`script_flags`), through the same
generator, and calls `tli.sweep.script.main_for`. Parsing imports neither Ray nor torch: `--help` answers at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from tli import config as configs
from tli.config import MAX_LAYER, ModelConfig, ProbeConfig, TrainConfig, setting
from tli.sweep.settings import TrialSettings

CALLBACKS = ("tensorboard", "mlflow", "wandb")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as a number or auto") from None


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Settings shared by every ablation script (one flag each; the model flags come from ModelConfig)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    pairs: str | None = setting(None, "word pairs file", unset="the paper's 623 trained + 63 control pairs")
    eval_pairs: str | None = setting(
        None,
        "pairs never trained, scored in every trial as the `unseen` set (e.g. "
        "data/freedict-swh-eng.tsv from `make freedict`); rows sharing a word with "
        "the trained pairs are dropped",
    )
    results: str = setting("results", "results root: a local folder or a URI such as s3://bucket/prefix")
    experiment: str = setting(
        "sweep",
        "an experiment name: letters, digits, '.', '_' or '-' (results go to <results>/<experiment>/)",
        pattern=r"(?!\.\.?$)[A-Za-z0-9._-]+",
    )
    seeds: tuple[int, ...] = setting((0,), "seeds, a grid axis, e.g. 0,1,2", minimum=0, maximum=2**32 - 1)
    epochs: int = configs.like(TrainConfig, "epochs", " per trial (the paper: 5)")
    pooling_eval: str = configs.like(TrialSettings, "pooling_eval", ", unless swept")
    mask_false_negatives: bool = configs.like(TrainConfig, "mask_false_negatives", ", unless swept")
    validation_fraction: float = configs.like(TrialSettings, "validation_fraction")
    selection_layer: int | None = configs.like(TrialSettings, "selection_layer")
    n_boot: int = configs.like(configs.EvalConfig, "n_boot")
    drift: bool = configs.like(TrialSettings, "drift", ", in every trial")
    translation_probe: bool = configs.like(ProbeConfig, "translation_probe", ", in every trial")
    probe_pairs: int = configs.like(ProbeConfig, "probe_pairs", " (a smoke test: 2, with 2 distractors)")
    address: str | None = setting(
        None, "Ray cluster to join: host:port or auto", unset="start a private local Ray and stop it after"
    )
    cpus_per_trial: float = setting(1.0, "CPUs reserved per trial (also its torch thread count)", above=0, maximum=1024)
    gpus_per_trial: float | str = setting(
        "auto",
        "GPUs per trial: auto, or a number, fractional to pack trials (0.5: two per GPU). auto: where a node has "
        "GPUs, the share that fits the largest trial's estimated peak memory (tli.memory) in 90% of the smallest "
        "GPU, at most 8 per GPU; where none has, 0 (trials run on CPUs). Inside Ray a trial runs on the GPUs it "
        "reserved only, so 0 on a cluster with GPUs is refused unless --device cpu",
        pattern="auto",
        parse=lambda text: text if text == "auto" else _number(text),
        minimum=0,
        maximum=64,
    )
    max_concurrent: int = setting(0, "trials at once (0: as many as the resources allow)", minimum=0, maximum=10**5)
    max_failures: int = setting(2, "retries of a trial that crashed (out of memory, lost node)", minimum=0, maximum=100)
    callbacks: tuple[str, ...] = setting((), "Ray Tune loggers, e.g. tensorboard,mlflow,wandb", choices=CALLBACKS)
    save_adapters: str = setting(
        "none",
        "store PEFT adapter folders with the results: none, best (highest validation objective) or all",
        choices=("none", "best", "all"),
    )
    smoke_test: bool = setting(
        False,
        "a tiny sweep: 16 trained + 6 control pairs, 2 values per axis (the paper's default among them), one seed, "
        "1 epoch, 200 resamples: about a minute on 2 idle cores, 2-3 minutes when they are busy (layer sweep: 144 s "
        "at load 17)",
    )
    verbose: bool = setting(False, "log details and show the workers' output", flags=("-v",))

    def __post_init__(self):
        configs.check(self)
        for name in ("pairs", "eval_pairs"):  # absolute: sweep_config.json must name the same files from anywhere
            value = getattr(self, name)
            if value is not None and "://" not in value:
                object.__setattr__(self, name, str(Path(value).expanduser().resolve()))

    @property
    def location(self) -> str:
        """Where this experiment's files go: <results>/<experiment> (a local path or a URI; TliError for a URI
        without a bucket, of an unknown scheme, or missing a slash: `tli.files.check_location`).
        """
        from tli.files import check_location

        results = check_location(self.results)
        if "://" in results:
            return f"{results}/{self.experiment}"
        return str(Path(results).expanduser().resolve() / self.experiment)


@dataclasses.dataclass(frozen=True)
class TargetLayerFlags:
    """The flag of the scripts that sweep something else at fixed target layers (a script's flags extend it)."""

    target_layer: tuple[int, ...] = setting(
        (2,), "target layer(s), e.g. 2 or 2,9 (the paper's: 2)", minimum=1, maximum=MAX_LAYER
    )


def sweep_parser(description: str | None, experiment: str, script_flags: type | None = None) -> configs.ArgumentParser:
    """The shared flags (ModelConfig's, then SweepConfig's), then the script's own."""
    parser = configs.ArgumentParser(
        prog=f"{experiment}.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configs.add_arguments(parser, ModelConfig)
    configs.add_arguments(parser, SweepConfig, defaults={"experiment": experiment})
    if script_flags is not None:
        configs.add_arguments(parser, script_flags)
    return parser
