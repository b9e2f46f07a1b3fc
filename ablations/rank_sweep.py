"""LoRA rank sweep at the target layer(s): ranks 4, 8, 16, 32, 64 with alpha = 2 * rank (the paper's 16/32)."""

from __future__ import annotations

import dataclasses
import sys

from tli.config import setting
from tli.sweep.flags import TargetLayerFlags
from tli.sweep.script import main_for


@dataclasses.dataclass(frozen=True)
class RankFlags(TargetLayerFlags):
    ranks: tuple[int, ...] = setting((4, 8, 16, 32, 64), "LoRA ranks", minimum=1, maximum=4096)


def grid(config, flags: RankFlags, inputs) -> dict:
    return {"target_layer": list(flags.target_layer), "lora_rank": list(flags.ranks)}  # alpha follows: 2 x rank


def main(argv: list[str] | None = None) -> int:
    return main_for(argv, __doc__, "rank_sweep", grid, RankFlags)


if __name__ == "__main__":
    sys.exit(main())
