"""Optuna search (Ray Tune's OptunaSearch) over target layer, LoRA rank, margin and lr.

Objective (column `objective`, maximised): the validation set's gain in per-language centred gap over alike
non-translations (centered_gap_alike_post - centered_gap_alike_pre, the verdict's gap: length cannot pass for
translation) at the selection layer (the same for every trial, default the last layer L). The validation set
is carved from the trained pairs: the search never sees the control or unseen sets it is judged on. The
sampler is seeded with the first --seeds value: its random start-up draws repeat on a rerun (and reuse their
stored results); later draws depend on the order trials finish in.
"""

from __future__ import annotations

import dataclasses
import sys

from tli.config import setting
from tli.sweep.script import main_for


@dataclasses.dataclass(frozen=True)
class SearchFlags:
    num_samples: int = setting(20, "trials to draw (smoke test: 2)", minimum=1, maximum=10**5)


def search(config, flags: SearchFlags, inputs):
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from tli.models import num_layers
    from tli.sweep.tuner import Search

    top = 3 if config.smoke_test else num_layers(config.model.model)
    domains = {
        "target_layer": tune.randint(1, top + 1),
        "lora_rank": tune.choice([4, 8, 16, 32, 64]),
        "margin": tune.uniform(0.1, 1.0),
        "lr": tune.loguniform(5e-5, 1e-3),
    }
    return Search(
        OptunaSearch(seed=config.seeds[0]),
        domains,
        min(flags.num_samples, 2) if config.smoke_test else flags.num_samples,
    )


def main(argv: list[str] | None = None) -> int:
    return main_for(argv, __doc__, "optuna_search", script_flags=SearchFlags, search=search)


if __name__ == "__main__":
    sys.exit(main())
