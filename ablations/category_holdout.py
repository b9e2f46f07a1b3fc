"""Category hold-out: one trial per category; train on the trained pairs of every other category and
evaluate on the held-out one (set `heldout`) beside trained and control: the paper's "train on nouns,
test on verbs" check. Only categories with at least --min-rows trained pairs get a trial.
"""

from __future__ import annotations

import sys

from tli import runner
from tli.errors import TliError


def main(argv: list[str] | None = None) -> int:
    parser = runner.sweep_parser(__doc__, experiment="category_holdout")
    parser.add_argument("--min-rows", type=int, default=20, help="least trained pairs a held-out category needs (default: 20)")
    parser.add_argument("--target-layer", type=int, default=2, help="target layer (default: %(default)s, the paper's)")
    args = parser.parse_args(argv)

    def space(config, pairs):
        counts = pairs[pairs["split"] == "trained"]["category"].value_counts()
        least = min(args.min_rows, 4) if config.smoke_test else args.min_rows
        categories = sorted(c for c, n in counts.items() if n >= least and n < counts.sum())
        if not categories:
            raise TliError(f"no category has {least} trained pairs to hold out")
        return {"target_layer": [args.target_layer], "heldout_category": categories}

    return runner.main_for(args, space)


if __name__ == "__main__":
    sys.exit(main())
