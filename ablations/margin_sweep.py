"""Triplet-margin sweep at the target layer(s): margins 0, 0.1, 0.2, ..., 1.0 (the paper: 0.4).

Margin 0 is the check that the margin matters at all: while every hinge max(0, margin + a.n - a.p) stays open the
margin adds a constant to the loss and never enters its gradient, and margin 0 trains the same adapter as 0.4
(the report's training check reads the open hinges from each trial's training log).
"""

from __future__ import annotations

import dataclasses
import sys

from tli.config import setting
from tli.sweep.flags import TargetLayerFlags
from tli.sweep.script import main_for


@dataclasses.dataclass(frozen=True)
class MarginFlags(TargetLayerFlags):
    margins: tuple[float, ...] = setting(
        tuple(round(0.1 * i, 1) for i in range(11)), "triplet margins, e.g. 0.2,0.4,0.8", minimum=0, maximum=2
    )


def grid(config, flags: MarginFlags, inputs) -> dict:
    return {"target_layer": list(flags.target_layer), "margin": list(flags.margins)}


def main(argv: list[str] | None = None) -> int:
    return main_for(argv, __doc__, "margin_sweep", grid, MarginFlags)


if __name__ == "__main__":
    sys.exit(main())
