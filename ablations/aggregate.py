"""Aggregate a sweep: significance table, the paper's Tables 1-2, the replication verdict, figures, report.md and a
self-contained report.html (see `tli.report`).

    python ablations/aggregate.py results/layer_sweep
    python ablations/aggregate.py results/rank_sweep --by lora_rank,margin --out paper/rank --tsne
    python ablations/aggregate.py results/rank_sweep results/margin_sweep --out paper/ablations   # one report

Works on a sweep still running (it says how many of the planned trials are done) and skips errored trials.
Imports neither Ray nor the sweep's runner (the planned trial count is in sweep_config.json); only --tsne loads a
model, through `tli.sweep.replay`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from tli import config as configs
from tli.config import setting
from tli.errors import run_command


@dataclasses.dataclass(frozen=True)
class AggregateFlags:
    """The aggregator's flags (the experiment folder is its one positional argument)."""

    by: tuple[str, ...] = setting(
        (),
        "condition columns, e.g. target_layer,lora_rank (none given: every trial setting that varies across the ok "
        "trials, seed excepted)",
    )
    out: str | None = setting(None, "output folder or URI (none given: RESULTS/report)")
    n_boot: int = configs.like(configs.EvalConfig, "n_boot")
    seed: int = setting(0, "bootstrap and t-SNE seed", minimum=0, maximum=2**32 - 1)
    tsne: bool = setting(
        False,
        "t-SNE figure of the selected condition's best trial (loads the model; uses its "
        "stored adapter, else retrains it with the trial's settings and seed)",
    )
    tsne_pairs: int = setting(40, "evaluation pairs shown in the t-SNE figure", minimum=2, maximum=2_000)
    device: str = configs.like(configs.ModelConfig, "device", " (for --tsne)")


def parser() -> configs.ArgumentParser:
    parser = configs.ArgumentParser(
        prog="aggregate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "results",
        nargs="+",
        help="the experiment folder or URI, e.g. results/layer_sweep; several: one report across them (needs --out; "
        "conditions labelled by experiment)",
    )
    configs.add_arguments(parser, AggregateFlags)
    return parser


def main(argv: list[str] | None = None) -> int:
    """0, or 2 after one line on stderr for a bad input or a usage error."""
    args = parser().parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    flags = configs.from_namespace(AggregateFlags, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def tsne(trial_id: str) -> dict:
        from tli.sweep.replay import trial_embeddings

        return trial_embeddings(args.results[0], trial_id, flags.tsne_pairs, flags.device)

    def command() -> None:
        from tli import report  # torch comes with the tables: --help answers at once

        where = args.results if len(args.results) > 1 else args.results[0]
        built = report.build_report(
            where, flags.out, list(flags.by) or None, flags.n_boot, flags.seed, tsne if flags.tsne else None
        )
        print("\n".join([built.progress, *built.verdicts, *(f"wrote {uri}" for uri in built.files.values())]))

    return run_command(parser().prog, command)


if __name__ == "__main__":
    sys.exit(main())
