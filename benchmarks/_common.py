"""Shared by the benchmarks: the machine description, interleaved timing, and the ratio table."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch


def machine() -> str:
    """One line: CPU model, cores, torch threads, torch version, date."""
    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"{cpu}, nproc={os.cpu_count()}, torch threads={torch.get_num_threads()}, torch {torch.__version__}"
        f"{gpu}, {time.strftime('%Y-%m-%d')}"
    )


def command(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join([".venv/bin/python", "-m", module, *map(shlex.quote, args)])


def interleaved(
    sides: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Run the sides alternately (A, B, A, B, ...) `repeats` times each: ({side: [seconds]}, {side: last result}).

    Alternating in one process exposes both sides to the same background load; compare medians.
    """
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    last: dict[str, object] = {}
    for _ in range(repeats):
        for name, run in sides.items():
            started = time.perf_counter()
            last[name] = run()
            seconds[name].append(time.perf_counter() - started)
    return seconds, last


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def print_table(title: str, rows: list[dict[str, object]], module: str, argv: Sequence[str] | None) -> None:
    """The result table, then the machine and the command (what benchmarks/README.md quotes)."""
    import pandas as pd

    print(f"\n== {title} ==")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    print(f"machine: {machine()}")
    print(f"command: {command(module, argv)}")


def parser(description: str | None, smoke_help: str):
    """An argparse parser with the flags every CPU benchmark shares: --threads and --smoke-test."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s, see README)")
    parser.add_argument("--smoke-test", action="store_true", help=smoke_help)
    return parser


def parse(parser, argv: Sequence[str] | None):
    """Parse `argv` and apply --threads to torch."""
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args
