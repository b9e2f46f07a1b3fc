"""Aggregate a sweep: significance table, paper-style tables, figures, report.md and a self-contained report.html.

    python ablations/aggregate.py results/layer_sweep
    python ablations/aggregate.py results/rank_sweep --by lora_rank,margin --out paper/rank --tsne

Works on a sweep still running (it says how many trials are done) and skips errored trials.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tli import report
from tli.errors import TliError
from tli.results import read_table

PREVIEW = ["set", "eval_layer", "n", "mean_pre", "mean_post", "mean_diff", "t", "p", "p_holm", "gap_pre", "gap_post"]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="the experiment directory, e.g. results/layer_sweep")
    parser.add_argument("--by", default=None, help="condition columns, e.g. target_layer,lora_rank "
                        "(default: every trial setting that varies, seed excepted)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: RESULTS/report)")
    parser.add_argument("--tsne", action="store_true", help="recompute the best trial's embeddings for the t-SNE "
                        "figure (loads the model; retrains the adapter when none is stored)")
    parser.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and t-SNE seed (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    by = [c.strip() for c in args.by.split(",") if c.strip()] if args.by is not None else None
    try:
        paths = report.build_report(args.results, args.out, by=by, n_boot=args.n_boot, seed=args.seed, tsne=args.tsne)
    except TliError as error:
        print(f"aggregate.py: error: {error}", file=sys.stderr)
        return 2
    table = read_table(paths["significance_csv"])
    print(report.progress_line(report.load_results(args.results)))
    columns = [c for c in table.columns if c in PREVIEW or c in report.CONFIG_COLUMNS]
    print(table[columns].head(12).to_string(index=False) if not table.empty else "no ok trial yet")
    print("\n".join(f"wrote {path}" for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
