"""LoRA rank sweep at one target layer: ranks 4, 8, 16, 32, 64 with alpha = 2 * rank (the paper's 16/32 ratio)."""

from __future__ import annotations

import sys

from tli import runner
from tli.config import parse_int_list


def main(argv: list[str] | None = None) -> int:
    parser = runner.sweep_parser(__doc__, experiment="rank_sweep")
    parser.add_argument("--ranks", type=parse_int_list, default=(4, 8, 16, 32, 64), help="LoRA ranks (default: 4,8,16,32,64)")
    parser.add_argument("--target-layer", type=int, default=2, help="target layer (default: %(default)s, the paper's)")
    args = parser.parse_args(argv)

    def space(config, pairs):
        return {"target_layer": [args.target_layer], "lora_rank": list(args.ranks)}  # lora_alpha defaults to 2 * rank

    return runner.main_for(args, space)


if __name__ == "__main__":
    sys.exit(main())
