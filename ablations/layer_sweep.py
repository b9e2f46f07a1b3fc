"""Layer sweep: one TLI trial per target layer, the paper's hyperparameters otherwise.

Each trial trains LoRA at its target layer k and evaluates before/after on the trained, validation,
control (and unseen) sets at k, at the selection layer and at the last layer L. Default layers: 1..L
(every layer with a block below it; layer 0 is the embedding output and cannot be trained). Example:

    python ablations/layer_sweep.py --layers 2,10,30 --seeds 0,1,2
"""

from __future__ import annotations

import dataclasses
import sys

from tli.config import MAX_LAYER, setting
from tli.sweep.script import main_for


@dataclasses.dataclass(frozen=True)
class LayerFlags:
    layers: tuple[int, ...] = setting(
        (),
        "target layers, e.g. 1-30 or 2,10,30",
        unset="1..L, every layer with a block below it",
        minimum=1,
        maximum=MAX_LAYER,
    )


def grid(config, flags: LayerFlags, inputs) -> dict:
    from tli.models import num_layers

    return {"target_layer": list(flags.layers or range(1, num_layers(config.model.model) + 1))}


def main(argv: list[str] | None = None) -> int:
    return main_for(argv, __doc__, "layer_sweep", grid, LayerFlags)


if __name__ == "__main__":
    sys.exit(main())
