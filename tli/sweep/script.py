"""What an ablation script runs: parse the shared and the script's own flags, then `tuner.run_sweep`.

The top of the package (settings, flags, inputs, resources, trial, store, session, callbacks, tuner, then
this): nothing below imports it, and Ray is imported only once the flags are parsed, so `--help` answers at once.
"""

from __future__ import annotations

import logging
import shlex
import sys
from collections.abc import Callable
from typing import Any

from tli import config as configs
from tli.config import ModelConfig
from tli.errors import run_command
from tli.sweep.flags import SweepConfig, sweep_parser


def main_for(
    argv: list[str] | None,
    description: str | None,
    experiment: str,
    grid: Callable[[SweepConfig, Any, Any], dict] | None = None,
    script_flags: type | None = None,
    search: Callable[[SweepConfig, Any, Any], Any] | None = None,
) -> int:
    """Run an ablation script: parse, then `run_sweep` with `grid(config, flags, inputs)` (flat setting ->
    values) or `search(config, flags, inputs)` (a `tuner.Search`).

    Returns 0, or 2 after one line on stderr for a bad input (and when every trial failed).
    """
    parser = sweep_parser(description, experiment, script_flags)
    args = parser.parse_or_exit_code(argv)
    if isinstance(args, int):
        return args
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )

    def command() -> None:
        from tli.sweep.inputs import load_inputs

        config = configs.from_namespace(SweepConfig, args, model=configs.from_namespace(ModelConfig, args))
        flags = configs.from_namespace(script_flags, args) if script_flags is not None else None
        inputs = load_inputs(config)  # a bad pairs file is refused before Ray, torch and PEFT are imported

        from tli.sweep import tuner

        try:
            tuner.run_sweep(
                grid and (lambda inputs: grid(config, flags, inputs)),
                config,
                search and (lambda inputs: search(config, flags, inputs)),
                inputs=inputs,
            )
        except tuner.SweepStopped as stopped:
            raise tuner.SweepStopped(f"{stopped}; to resume, run the same command again: {resume}") from None

    resume = shlex.join(["python", *(sys.argv if argv is None else [parser.prog, *argv])])
    return run_command(parser.prog, command)
