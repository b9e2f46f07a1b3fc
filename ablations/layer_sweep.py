"""Layer sweep: one TLI trial per target layer, the paper's hyperparameters otherwise.

Each trial trains LoRA at its target layer k and evaluates pre/post on the trained and control sets
at k and at the last layer L. Default layers: 1..L (every layer with a block below it; layer 0 is the
embedding output and cannot be trained: `--layers 0` gives an error row). Example:

    python ablations/layer_sweep.py --layers 2,10,30 --seeds 0,1,2
"""

from __future__ import annotations

import sys

from tli import runner
from tli.config import parse_int_list


def main(argv: list[str] | None = None) -> int:
    parser = runner.sweep_parser(__doc__, experiment="layer_sweep")
    parser.add_argument("--layers", type=parse_int_list, default=None,
                        help="target layers, e.g. 0-31 or 2,10,31 (default: 1..L, every trainable layer)")
    args = parser.parse_args(argv)

    def space(config, pairs):
        return {"target_layer": list(args.layers or range(1, runner.model_num_layers(config.model) + 1))}

    return runner.main_for(args, space)


if __name__ == "__main__":
    sys.exit(main())
