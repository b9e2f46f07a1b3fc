"""Pooling protocol sweep (pooling for training x for evaluation) at one target layer:

  mean / mean               the paper as written (BOS included in training and evaluation)
  mean / mean_content       the author's code (BOS excluded at evaluation)
  mean_skip_first / same    control: position 0, the attention sink, excluded everywhere
  last / last               control: the last content token
"""

from __future__ import annotations

import sys

from tli import runner

PROTOCOLS = [
    {"pooling_train": "mean", "pooling_eval": "mean"},
    {"pooling_train": "mean", "pooling_eval": "mean_content"},
    {"pooling_train": "mean_skip_first", "pooling_eval": "mean_skip_first"},
    {"pooling_train": "last", "pooling_eval": "last"},
]


def main(argv: list[str] | None = None) -> int:
    parser = runner.sweep_parser(__doc__, experiment="protocol_sweep")
    parser.add_argument("--target-layer", type=int, default=2, help="target layer (default: %(default)s, the paper's)")
    args = parser.parse_args(argv)

    def space(config, pairs):
        return {"target_layer": [args.target_layer], "protocol": PROTOCOLS}

    return runner.main_for(args, space)


if __name__ == "__main__":
    sys.exit(main())
