"""`tli` command line: scan, train, evaluate, pairs. `main(args)` is callable in-process (tests do)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tli import config as configs
from tli.errors import TliError
from tli.evaluate import EvalConfig
from tli.models import ModelConfig
from tli.scan import ScanConfig
from tli.train import TrainConfig

log = logging.getLogger("tli")


def _add_pairs_arguments(parser: argparse.ArgumentParser, required: bool = False) -> None:
    parser.add_argument("--pairs", type=Path, default=None, required=required,
                        help="word pairs: TSV/CSV with a header, or the paper's JSON list (default: the paper's 623+63 pairs)")
    parser.add_argument("--source-column", default="swahili", help="column of the source-language word")
    parser.add_argument("--target-column", default="english", help="column of the target-language word")


def _load_pairs(args: argparse.Namespace):
    from tli import data

    return data.load_pairs(args.pairs, args.source_column, args.target_column)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tli", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    commands = parser.add_subparsers(dest="command", required=True)

    scan = commands.add_parser("scan", help="layer scan of the base model, with mismatched and centred controls")
    configs.add_arguments(scan, ModelConfig)
    _add_pairs_arguments(scan)
    configs.add_arguments(scan, ScanConfig)
    scan.add_argument("--output", type=Path, required=True, help="OUT.csv or OUT.parquet (a PNG plot is written beside it)")

    train = commands.add_parser("train", help="train a TLI LoRA adapter at one target layer")
    configs.add_arguments(train, ModelConfig)
    _add_pairs_arguments(train)
    configs.add_arguments(train, TrainConfig)
    train.add_argument("--output", type=Path, required=True, help="folder for the adapter, train_log.csv and config")

    evaluate = commands.add_parser("evaluate", help="pre/post cosines, tests and controls for a trained adapter")
    configs.add_arguments(evaluate, ModelConfig)
    _add_pairs_arguments(evaluate)
    configs.add_arguments(evaluate, EvalConfig)
    evaluate.add_argument("--adapter", type=Path, required=True, help="folder written by `tli train`")
    evaluate.add_argument("--output", type=Path, required=True, help="folder for summary and per-pair tables")
    evaluate.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format")

    pairs = commands.add_parser("pairs", help="word-pair files").add_subparsers(dest="pairs_command", required=True)
    freedict = pairs.add_parser("import-freedict", help="build a pairs file from Debian's dict-freedict-swh-eng")
    freedict.add_argument("--dict-dir", type=Path, default=Path("/usr/share/dictd"), help="dictd folder")
    freedict.add_argument("--output", type=Path, required=True, help="OUT.tsv or OUT.csv")
    return parser


def run_scan(args: argparse.Namespace) -> None:
    from tli import models, results, scan

    pairs = _load_pairs(args)
    config = configs.from_namespace(ScanConfig, args)
    model_config = configs.from_namespace(ModelConfig, args)
    if args.output.suffix not in results.TABLE_FORMATS:
        raise TliError(f"--output {args.output} must end in .csv or .parquet")
    model, tokenizer = models.load_model(model_config)
    table = scan.scan_layers(model, tokenizer, pairs, config)
    table.insert(0, "model", model_config.model)
    results.write_table(table, args.output)
    plot = scan.plot_scan(table, args.output.with_suffix(".png"), f"{model_config.model}: {len(pairs)} pairs")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"wrote {args.output} and {plot}")


def run_train(args: argparse.Namespace) -> None:
    from tli import data, models, results, train

    pairs = data.split_sets(_load_pairs(args)).get("trained")
    if pairs is None:
        raise TliError(f"{args.pairs} has no rows with split 'trained'")
    config = configs.from_namespace(TrainConfig, args)
    config.validate()
    model_config = configs.from_namespace(ModelConfig, args)
    model, tokenizer = models.load_model(model_config)
    peft_model, log_table = train.train_tli(model, tokenizer, pairs, config)
    args.output.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(args.output)
    results.write_table(log_table, args.output / "train_log.csv")
    stored = {"model": models.describe(model_config), "train": configs.to_dict(config),
              "pairs": str(args.pairs or data.default_pairs_path()), "n_pairs": len(pairs)} | results.provenance()
    results.write_json(stored, args.output / "tli_config.json")
    print(f"final loss {log_table['loss'].iloc[-1]:.4f} after {len(log_table)} steps "
          f"({log_table['seconds'].iloc[-1]:.1f} s); adapter, train_log.csv and tli_config.json in {args.output}")


def run_evaluate(args: argparse.Namespace) -> None:
    import json

    from peft import PeftModel

    from tli import data, evaluate, models, results, surgery

    stored_path = args.adapter / "tli_config.json"
    if not stored_path.exists():
        raise TliError(f"{args.adapter} is not a folder written by `tli train` (no tli_config.json)")
    target_layer = json.loads(stored_path.read_text())["train"]["target_layer"]
    sets = data.split_sets(_load_pairs(args))
    config = configs.from_namespace(EvalConfig, args)
    model_config = configs.from_namespace(ModelConfig, args)
    model, tokenizer = models.load_model(model_config)
    n_layers = surgery.num_layers(model)
    layers = config.eval_layers(target_layer, n_layers)
    pre = evaluate.embed_sets(model, tokenizer, sets, layers, config)
    adapted = PeftModel.from_pretrained(model, args.adapter)
    if model_config.quantization == "none":
        adapted = adapted.merge_and_unload()  # the paper evaluates the merged model
    post = evaluate.embed_sets(adapted, tokenizer, sets, layers, config)
    summary, pairs = evaluate.compare(sets, pre, post, config, n_layers)
    results.write_table(summary, args.output / f"summary.{args.format}")
    results.write_table(pairs, args.output / f"pairs.{args.format}")
    columns = ["set", "eval_layer", "n", "mean_pre", "mean_post", "mean_diff", "ci_low", "ci_high", "t", "p", "d_z",
               "gap_pre", "gap_post", "centered_gap_pre", "centered_gap_post", "p_at_1_pre", "p_at_1_post"]
    print(summary[columns].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote summary.{args.format} and pairs.{args.format} in {args.output}")


def run_pairs(args: argparse.Namespace) -> None:
    from tli import data

    pairs = data.import_freedict(args.dict_dir, args.output)
    print(f"wrote {len(pairs)} pairs to {args.output}")


COMMANDS = {"scan": run_scan, "train": run_train, "evaluate": run_evaluate, "pairs": run_pairs}


def main(args: list[str] | None = None) -> int:
    """Run one command; a TliError becomes one line on stderr and exit code 2."""
    parsed = _parser().parse_args(args)
    logging.basicConfig(level=logging.INFO if parsed.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        COMMANDS[parsed.command](parsed)
    except TliError as error:
        print(f"tli {parsed.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
