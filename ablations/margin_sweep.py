"""Triplet-margin sweep at one target layer: margins 0.1, 0.2, ..., 1.0 (the paper: 0.4)."""

from __future__ import annotations

import sys

from tli import runner


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = runner.sweep_parser(__doc__, experiment="margin_sweep")
    parser.add_argument("--margins", type=_floats, default=[round(0.1 * i, 1) for i in range(1, 11)],
                        help="triplet margins, e.g. 0.2,0.4,0.8 (default: 0.1..1.0 in steps of 0.1)")
    parser.add_argument("--target-layer", type=int, default=2, help="target layer (default: %(default)s, the paper's)")
    args = parser.parse_args(argv)

    def space(config, pairs):
        return {"target_layer": [args.target_layer], "margin": list(args.margins)}

    return runner.main_for(args, space)


if __name__ == "__main__":
    sys.exit(main())
