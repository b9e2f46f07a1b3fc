"""Category hold-out: one trial per category; train on the trained pairs of every other category and
evaluate on the held-out one (set `heldout`, leak-free; `heldout_all` whole) beside the other sets: the
paper's "train on nouns, test on verbs" check. Only categories with at least --min-rows trained pairs
get a trial.
"""

from __future__ import annotations

import dataclasses
import sys

from tli.config import setting
from tli.errors import TliError
from tli.sweep.flags import TargetLayerFlags
from tli.sweep.script import main_for


@dataclasses.dataclass(frozen=True)
class HoldoutFlags(TargetLayerFlags):
    min_rows: int = setting(
        20, "least trained pairs a held-out category needs (smoke test: 4)", minimum=1, maximum=10**6
    )


def grid(config, flags: HoldoutFlags, inputs) -> dict:
    trained = inputs.pairs[inputs.pairs["split"] == "trained"]
    counts = trained["category"].value_counts()
    least = min(flags.min_rows, 4) if config.smoke_test else flags.min_rows
    categories = sorted(c for c, n in counts.items() if least <= n < counts.sum())
    if not categories:
        raise TliError(f"no category has {least} trained pairs to hold out")
    return {"target_layer": list(flags.target_layer), "heldout_category": categories}


def main(argv: list[str] | None = None) -> int:
    return main_for(argv, __doc__, "category_holdout", grid, HoldoutFlags)


if __name__ == "__main__":
    sys.exit(main())
