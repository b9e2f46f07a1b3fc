"""The `tli` command line. `main(args)` runs in-process (the tests call it); heavy libraries (torch,
transformers, peft) are imported inside the commands, so `--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import logging
import sys
from pathlib import Path

from tli import config as configs
from tli.config import EvalConfig, ModelConfig, ProbeConfig, ScanConfig, TrainConfig, check_layer
from tli.errors import TliError, run_command

DESCRIPTION = """\
Targeted Lexical Injection (TLI): measure and improve the alignment of translation pairs (Swahili-English
by default) inside a causal language model, with the controls that tell alignment from artifacts.

  tli scan      cosine of word pairs at every layer of the base model, beside the mismatched-pair
                baseline, per-language centring and retrieval P@1
  tli train     train a TLI LoRA adapter (triplet-margin or InfoNCE loss) at one target layer
  tli evaluate  before/after comparison of an adapter on trained and control pairs, with paired tests
  tli pairs     word-pair files (import Debian's FreeDict Swahili-English dictionary)

Layers are hidden_states indices: 0 = embedding output, k = output of block k, L = last block after the
final norm. Sweeps over layers, ranks, margins, seeds and pooling run on Ray Tune: see ablations/.
Every bad input is one line on stderr and exit code 2."""

EVALUATION_FILE = "evaluation.json"  # what `tli evaluate` ran on (model, adapter, pairs, settings, versions)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from tli import DISTRIBUTION

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def _add_pairs_arguments(
    parser: argparse.ArgumentParser, default: str = "the paper's 623 trained + 63 control pairs"
) -> None:
    parser.add_argument(
        "--pairs",
        type=Path,
        default=None,
        help=f"word pairs: TSV/CSV with a header, or the paper's JSON list (default: {default})",
    )
    parser.add_argument("--source-column", default="swahili", help="column of the source-language word")
    parser.add_argument("--target-column", default="english", help="column of the target-language word")


def _parser() -> configs.ArgumentParser:
    parser = configs.ArgumentParser(
        prog="tli", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"tli {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    scan = commands.add_parser("scan", help="layer scan of the base model, with mismatched and centred controls")
    configs.add_arguments(scan, ModelConfig)
    _add_pairs_arguments(scan)
    configs.add_arguments(scan, ScanConfig)
    scan.add_argument(
        "--output", type=Path, required=True, help="OUT.csv or OUT.parquet (a PNG plot is written beside it)"
    )
    scan.add_argument("--overwrite", action="store_true", help="replace an earlier scan table and its plot")

    train = commands.add_parser("train", help="train a TLI LoRA adapter at one target layer")
    configs.add_arguments(train, ModelConfig)
    _add_pairs_arguments(train)
    configs.add_arguments(train, TrainConfig)
    train.add_argument("--output", type=Path, required=True, help="folder for the adapter, train_log.csv and config")
    train.add_argument("--overwrite", action="store_true", help="replace an existing adapter folder")

    evaluate = commands.add_parser("evaluate", help="pre/post cosines, tests and controls for a trained adapter")
    evaluate.add_argument(
        "--model",
        default=None,
        help="the adapter's base model, as for train (default: the model it was trained on; another model is refused)",
    )
    configs.add_arguments(evaluate, ModelConfig, exclude=("model",))
    _add_pairs_arguments(evaluate, default="the file the adapter was trained on")
    configs.add_arguments(evaluate, EvalConfig)
    configs.add_arguments(evaluate, ProbeConfig)
    evaluate.add_argument("--adapter", type=Path, required=True, help="folder written by `tli train`")
    evaluate.add_argument(
        "--output", type=Path, required=True, help=f"folder for the summary and per-pair tables and {EVALUATION_FILE}"
    )
    evaluate.add_argument("--format", choices=("csv", "parquet"), default="csv", help="table format (default: csv)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --output")

    pairs = commands.add_parser("pairs", help="word-pair files").add_subparsers(
        dest="pairs_command", required=True, metavar="COMMAND"
    )
    freedict = pairs.add_parser("import-freedict", help="build a pairs file from Debian's dict-freedict-swh-eng")
    freedict.add_argument(
        "--dict-dir", type=Path, default=Path("/usr/share/dictd"), help="dictd folder (default: %(default)s)"
    )
    freedict.add_argument("--output", type=Path, required=True, help="OUT.tsv or OUT.csv")
    freedict.add_argument("--overwrite", action="store_true", help="replace an existing pairs file")
    return parser


def _check_layers(model: str, layers: tuple[int, ...]) -> None:
    """TliError for a layer the model does not have, from its config (before any weights load)."""
    from tli import models

    n_layers = models.num_layers(model)
    for layer in layers:
        check_layer(layer, n_layers)


def _load_model(config: ModelConfig):
    """The model and tokenizer, without transformers' weight-loading progress bars on stderr."""
    from transformers.utils import logging as hf_logging

    from tli import models

    hf_logging.disable_progress_bar()
    return models.load_model(config)


def _load_pairs(args: argparse.Namespace, path: Path | None = None):
    """The pairs file (`path`, else --pairs, else the paper's), read and checked before any heavy import."""
    from tli import data

    return data.load_pairs(path or args.pairs, args.source_column, args.target_column)


def _inputs(args: argparse.Namespace, **more: Path | None) -> dict[str, Path | None]:
    """The command's inputs that an output must never touch: its pairs file, its model folder, and `more`."""
    from tli import data

    model = Path(args.model).expanduser() if args.model else None
    return {"pairs file": args.pairs or data.default_pairs_path(), "model folder": model} | {
        what.replace("_", " "): path for what, path in more.items()
    }


def run_scan(args: argparse.Namespace) -> None:
    from tli import files

    plot_path = args.output.with_suffix(".png")  # the plot beside the table
    for output in (args.output, plot_path):
        files.check_not_inputs(output, _inputs(args))  # first: never "pass --overwrite" for an input
    files.check_output_file(args.output, overwrite=args.overwrite)
    files.check_output_file(plot_path, suffixes=(".png",), overwrite=args.overwrite)
    pairs = _load_pairs(args)
    config = configs.from_namespace(ScanConfig, args)
    model_config = configs.from_namespace(ModelConfig, args)
    _check_layers(model_config.model, config.layers)

    from tli import scan

    model, tokenizer = _load_model(model_config)
    table = scan.scan_layers(model, tokenizer, pairs, config)
    table.insert(0, "model", model_config.model)
    plot = scan.plot_scan(table, io.BytesIO(), f"{model_config.model}: {len(pairs)} pairs")
    files.Folder(args.output.parent).write_files(
        {args.output.name: files.table_bytes(table, args.output.name), plot_path.name: plot.getvalue()}
    )  # both or neither
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    print(f"wrote {args.output} and {plot_path}")


def run_train(args: argparse.Namespace) -> None:
    from tli import data, files

    files.check_not_inputs(args.output, _inputs(args), replaced=True)
    files.check_output_dir(args.output, overwrite=args.overwrite, what="adapter folder", marker="tli_config.json")
    pairs = data.split_sets(_load_pairs(args)).get("trained")
    if pairs is None:
        raise TliError(f"{args.pairs} has no rows with split 'trained'")
    config = configs.from_namespace(TrainConfig, args)
    model_config = configs.from_namespace(ModelConfig, args)
    _check_layers(model_config.model, (config.target_layer,))

    from tli import adapters, models, train

    model, tokenizer = _load_model(model_config)
    peft_model, log_table = train.train_tli(model, tokenizer, pairs, config)
    stored = (
        {"model": models.describe(model_config), "train": configs.to_dict(config)}
        | adapters.training_record(args.pairs or data.default_pairs_path(), pairs)
        | {"metrics": {"final_loss": float(log_table["loss"].iloc[-1]), "steps": int(log_table["step"].iloc[-1])}}
        | files.provenance()
    )
    adapters.save_adapter(peft_model, args.output, stored, {"train_log.csv": log_table}, overwrite=args.overwrite)
    print(
        f"final loss {log_table['loss'].iloc[-1]:.4f} after {int(log_table['step'].iloc[-1])} steps "
        f"({log_table['seconds'].iloc[-1]:.1f} s); adapter, train_log.csv and tli_config.json in {args.output}"
    )


def _evaluation_pairs(args: argparse.Namespace) -> Path | None:
    """--pairs, else the file the adapter's tli_config.json records (a glance before any heavy import; the
    adapter folder is checked in full later). TliError when it records none or the file is gone: an evaluation
    on other pairs than the adapter's would report sets the user never had.
    """
    if args.pairs is not None:
        return args.pairs
    try:
        recorded = json.loads((args.adapter / "tli_config.json").read_text()).get("pairs")
    except (OSError, ValueError, AttributeError):
        recorded = None  # an unreadable folder: read_adapter_config says what is wrong
    if recorded is None:
        return None
    if not Path(recorded).is_file():
        raise TliError(
            f"{recorded}, the pairs file the adapter {args.adapter} was trained on, is gone: pass --pairs "
            "with the file (or a copy) it was trained on"
        )
    return Path(recorded)


def run_evaluate(args: argparse.Namespace) -> None:
    from tli import files

    origin = _evaluation_pairs(args)
    inputs = _inputs(args, adapter_folder=args.adapter) | {"pairs file": origin}
    files.check_not_inputs(args.output, inputs, replaced=True)
    files.check_output_dir(args.output, overwrite=args.overwrite, what="evaluation folder", marker=EVALUATION_FILE)
    pairs = _load_pairs(args, origin) if origin is not None else None

    from tli import adapters, evaluate, models

    stored = adapters.read_adapter_config(args.adapter)
    if origin is None:
        raise TliError(f"{args.adapter}/tli_config.json records no pairs file: pass --pairs")
    model_config = configs.from_namespace(ModelConfig, args, model=args.model or adapters.trained_on(stored))
    adapters.check_base_model(args.adapter, stored, model_config)
    files.check_not_inputs(args.output, {"model folder": Path(model_config.model)}, replaced=True)
    config = configs.from_namespace(EvalConfig, args)
    trained, others = evaluate.adapter_sets(pairs, stored.get("train_pairs"), str(origin))
    sets, removed = evaluate.evaluation_sets(trained, others)
    _check_layers(model_config.model, config.layers)
    model, tokenizer = _load_model(model_config)
    target_layer, lexicon, pre = stored["train"]["target_layer"], evaluate.Lexicon.from_pairs(pairs), None
    probing = _probing(sets, lexicon, configs.from_namespace(ProbeConfig, args), config.batch_size)
    before = None  # the probe's base-model answers: with the adapter disabled, unless merged (then before the merge)
    if config.merge_adapter:  # the pre-TLI passes before the merge: a merged model cannot switch its adapter off
        layers = evaluate.eval_layers(config, target_layer, models.num_layers(model_config.model))
        pre = evaluate.embed_lexicon(model, tokenizer, lexicon, layers, config.pooling, config.batch_size)
        before = _probe_answers(model, tokenizer, probing, adapter=True)
    adapted = adapters.load_adapter(model, args.adapter, model_config)
    if config.merge_adapter:
        adapted = adapters.merged(adapted)
    summary, table = evaluate.evaluate_adapter(
        adapted, tokenizer, sets, target_layer, config, lexicon=lexicon, pre=pre, removed=removed
    )
    probed = _translation_probe(adapted, tokenizer, probing, before)
    tables = {"summary": summary, "pairs": table} | probed
    record = {
        "adapter": str(args.adapter.expanduser().resolve()),
        "adapter_train": stored["train"],
        "adapter_tli_version": stored.get("version_tli"),
        "model": models.describe(model_config),
        "pairs": str(origin.expanduser().resolve()),
        "pairs_sha1": hashlib.sha1(origin.read_bytes()).hexdigest(),
        "evaluate": configs.to_dict(config),
        "probe": configs.to_dict(probing["config"]),
        "pooling": config.pooling,
        "target_layer": target_layer,
        "layers": sorted(int(layer) for layer in summary["eval_layer"].unique()),
        "sets": {name: len(rows) for name, rows in sets.items()},
        "files": [f"{name}.{args.format}" for name in tables],
        "evaluated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    } | files.provenance()
    written = {
        f"{name}.{args.format}": files.table_bytes(frame, f"{name}.{args.format}") for name, frame in tables.items()
    }
    written[EVALUATION_FILE] = (json.dumps(record, indent=2, default=str) + "\n").encode()
    files.write_folder(
        args.output, written
    )  # whole: an earlier evaluation (only with --overwrite) is replaced, never mixed
    columns = [
        "set",
        "eval_layer",
        "n",
        "n_removed",
        "mean_pre",
        "mean_post",
        "mean_diff",
        "ci_low",
        "ci_high",
        "p",
        "gap_diff",
        "gap_p",
        "centered_gap_diff",
        "centered_gap_p",
        "gap_alike_diff",
        "gap_alike_p",
        "centered_gap_alike_diff",
        "centered_gap_alike_p",
        "p_at_1_pre",
        "p_at_1_post",
        "p_at_1_chance",
    ]
    print(summary[[c for c in columns if c in summary]].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if "probe_summary" in tables:
        shown = ["set", "direction", "n", "accuracy_pre", "accuracy_post", "accuracy_mcnemar_p", "mrr_pre", "mrr_post"]
        print(tables["probe_summary"][shown].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"wrote {', '.join(record['files'])} and {EVALUATION_FILE} in {args.output}")


def _probing(sets, lexicon, config: ProbeConfig, batch_size: int) -> dict:
    """What the translation probe (`tli.probe`) scores: its config, rows, rows left out, Sources, batch size."""
    from tli import probe

    probed, excluded = probe.probed_rows(sets, config) if config.translation_probe else ({}, {})
    wanted = probe.sources(probed, lexicon, config) if probed else []
    size = max(1, batch_size // 4)  # each word's answers multiply the rows of a forward pass
    return {"config": config, "probed": probed, "excluded": excluded, "wanted": wanted, "batch_size": size}


def _probe_answers(model, tokenizer, probing: dict, adapter: bool) -> dict | None:
    """The probe's answers of `model` (`adapter=False`: a PeftModel's adapter disabled); None when it is off."""
    from tli import probe

    if not probing["wanted"]:
        return None
    return probe.answer(model, tokenizer, probing["wanted"], probing["config"], adapter, probing["batch_size"])


def _translation_probe(adapted, tokenizer, probing: dict, before: dict | None) -> dict:
    """{"probe": per pair, "probe_summary": per set x direction} of `tli.probe`: the base model (`before`, else the
    adapter disabled) against the adapted one; {} with --no-translation-probe.
    """
    from tli import probe

    if not probing["wanted"]:
        return {}
    before = before or _probe_answers(adapted, tokenizer, probing, adapter=False)
    table = probe.probe_table(
        probing["probed"], probing["wanted"], before, _probe_answers(adapted, tokenizer, probing, True)
    )
    return {"probe": table, "probe_summary": probe.probe_summary(table, probing["excluded"])}


def run_pairs(args: argparse.Namespace) -> None:
    from tli import files, freedict

    for stem in freedict.FREEDICT_STEMS:  # a new file beside them is fine; over one of them (a hard link) is not
        read = {"dictionary index": f"{stem}.index", "dictionary": f"{stem}.dict.dz"}
        files.check_not_inputs(args.output, {what: args.dict_dir / name for what, name in read.items()})
    files.check_output_file(args.output, suffixes=(".tsv", ".csv"), overwrite=args.overwrite)
    pairs = freedict.import_freedict(args.dict_dir, args.output)
    print(f"wrote {len(pairs)} pairs to {args.output}")


COMMANDS = {"scan": run_scan, "train": run_train, "evaluate": run_evaluate, "pairs": run_pairs}


def main(args: list[str] | None = None) -> int:
    """Run one command: 0 on success; a bad input is one line on stderr and 2."""
    parsed = _parser().parse_or_exit_code(args)
    if isinstance(parsed, int):
        return parsed
    logging.basicConfig(
        level=logging.INFO if parsed.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return run_command(f"tli {parsed.command}", lambda: COMMANDS[parsed.command](parsed))


if __name__ == "__main__":
    sys.exit(main())
