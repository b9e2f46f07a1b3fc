"""Pooling protocol sweep (pooling for training x for evaluation, false-negative mask) at the target layer(s):

paper as written   mean / mean                 BOS included in training and evaluation, no mask
author's code      mean / mean_content         BOS excluded at evaluation, no mask
author's code + mask                           the same, in-batch false negatives masked (tli's default)
control: shuffled pairs                        tli's default trained on deranged translations (each Swahili word
                                               paired with another pair's English word, never one of its glosses;
                                               seeded), evaluated on the true pairs: a gain it shares is not lexical
control: skip first  mean_skip_first / same    position 0, the attention sink, excluded everywhere
control: last token  last / last               the last content token
"""

from __future__ import annotations

import sys

from tli.sweep.flags import TargetLayerFlags
from tli.sweep.script import main_for

PROTOCOLS = [  # a smoke test runs the default and the first other: the shuffled control
    {"pooling_train": "mean", "pooling_eval": "mean_content", "mask_false_negatives": True, "translations": "deranged"},
    {"pooling_train": "mean", "pooling_eval": "mean", "mask_false_negatives": False},
    {"pooling_train": "mean", "pooling_eval": "mean_content", "mask_false_negatives": False},
    {"pooling_train": "mean", "pooling_eval": "mean_content", "mask_false_negatives": True},
    {"pooling_train": "mean_skip_first", "pooling_eval": "mean_skip_first", "mask_false_negatives": False},
    {"pooling_train": "last", "pooling_eval": "last", "mask_false_negatives": False},
]


def grid(config, flags: TargetLayerFlags, inputs) -> dict:
    return {"target_layer": list(flags.target_layer), "protocol": PROTOCOLS}


def main(argv: list[str] | None = None) -> int:
    return main_for(argv, __doc__, "protocol_sweep", grid, TargetLayerFlags)


if __name__ == "__main__":
    sys.exit(main())
