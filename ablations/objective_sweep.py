"""Training objective sweep at the target layer(s): the loss x the pooling of training.

triplet   the paper's: max(0, margin + a.n_hardest - a.p) per anchor (--margin, the paper's 0.4)
infonce   symmetric InfoNCE over every in-batch negative at --temperature, false negatives masked

each with mean pooling (the paper's training, BOS included) and mean_content (the author's evaluation pooling,
BOS/EOS excluded: content pooling in training too). Does any objective give gains specific to translations that
reach unseen words, and at what drift? `--translations true,deranged` adds each objective's shuffled control (the
same words trained on deranged translations, scored on the true pairs): the report then tests each gain against
its control; the true-translation trials keep their ids, so a stored sweep is extended, not rerun. The two losses
are on different scales (cosine units, nats): compare their trials by what they did to the embeddings and the
model, never by their loss.
"""

from __future__ import annotations

import dataclasses
import sys

from tli.config import LOSSES, POOLING_MODES, TRANSLATIONS, TrainConfig, like, setting
from tli.sweep.flags import TargetLayerFlags
from tli.sweep.script import main_for


@dataclasses.dataclass(frozen=True)
class ObjectiveFlags(TargetLayerFlags):
    losses: tuple[str, ...] = setting(LOSSES, "training losses, e.g. triplet,infonce", choices=LOSSES)
    poolings: tuple[str, ...] = setting(
        ("mean", "mean_content"), "pooling modes for training, e.g. mean,mean_content", choices=POOLING_MODES
    )
    translations: tuple[str, ...] = setting(
        ("true",),
        "what the words are trained towards, e.g. true,deranged (deranged: the shuffled control)",
        choices=TRANSLATIONS,
    )
    margin: float = like(TrainConfig, "margin")
    temperature: float = like(TrainConfig, "temperature")


def grid(config, flags: ObjectiveFlags, inputs) -> dict:
    return {
        "target_layer": list(flags.target_layer),
        "loss": list(flags.losses),
        "pooling_train": list(flags.poolings),
        "translations": list(flags.translations),
        "margin": [flags.margin],
        "temperature": [flags.temperature],
    }


def main(argv: list[str] | None = None) -> int:
    return main_for(argv, __doc__, "objective_sweep", grid, ObjectiveFlags)


if __name__ == "__main__":
    sys.exit(main())
