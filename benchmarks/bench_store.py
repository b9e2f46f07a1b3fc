"""The experiment store at scale: a synthetic sweep of full-size trials committed, merged and aggregated.

Each trial is full size: the packaged 623 trained + 63 control pairs (a 10% validation split: trained 561,
validation 62, control 57 leak-free, control_all 63) and 1,529 synthetic unseen pairs, evaluated at its target
layer and at L = 32 (4,544 per-pair rows), its summary, a 5-epoch training log and its row (settings, outcomes
and every wide metric). The tables come from one template trial that this code's own `tli.evaluate.pair_table`
and `summary_table` compute on random pool vectors; each trial shifts the template's after-TLI values by its own
noise. Trials go through the store's own `pack()` and `commit()` (`--save-adapters best`, a small fake adapter
in every archive), on the mission's grid in order: seed (3) fastest, then margin (10), LoRA rank (5), target
layer (1..32), learning rate (2e-4, then 1e-4 past 4,800 trials).

Every step runs in its own child process, measured there (wall and CPU seconds from the kernel's rusage of that
child, its peak RSS (VmHWM) and RSS after merges from /proc):

  driver     commit N trials, merging every --merge-every commits as the sweep's driver does (about every 30 s):
             commit ms (median, p99), the last merge's seconds, RSS steady (after the last merge) and peak
  cold merge a new process's first merge (what a restarted driver or the aggregator pays once)
  aggregate  `tli.report.build_report` at --n-boot resamples (tables, figures, report.md/html)

`--code DIR` measures another checkout's `tli` (its children get PYTHONPATH=DIR), e.g. the code before the store
redesign: `git archive de59d64 | tar -x -C /tmp/tli-de59d64`.

    .venv/bin/python -m benchmarks.bench_store --trials 100,1000
    .venv/bin/python -m benchmarks.bench_store --trials 100 --code /tmp/tli-de59d64
    .venv/bin/python -m benchmarks.bench_store --smoke-test   # 6 trials, 200 resamples
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

MODULE = "benchmarks.bench_store"
GB = 1024**3
N_LAYERS = 32  # Llama-3-8B: hidden_states[0..32]
N_UNSEEN = 1_529
DIM = 64  # of the template's random pool vectors
SEEDS, MARGINS, RANKS, LRS = 3, [round(0.1 * k, 1) for k in range(1, 11)], [4, 8, 16, 32, 64], [2e-4, 1e-4]
SMOKE = {"trials": [6], "merge_every": 2, "n_boot": [200]}
ADAPTER = {"adapter_config.json": b"{}", "adapter_model.safetensors": bytes(64 * 1024)}


# --- inside a child process: the tli under test only (no torch needed by the new code) ----------------------


def rss_bytes(field: str = "VmRSS") -> int:
    """The resident memory of this process now (VmRSS) or at its peak (VmHWM: since exec, unlike rusage's maxrss,
    which starts from the parent's RSS at fork: a pytest process of 2 GB made a 0.3 GB child peak at 2 GB).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def grid_settings(index: int):
    """Trial `index` of the grid: (target_layer, lora_rank, margin, lr, seed), seed fastest."""
    condition, seed = divmod(index, SEEDS)
    margin = MARGINS[condition % len(MARGINS)]
    rank = RANKS[condition // len(MARGINS) % len(RANKS)]
    per_lr = len(MARGINS) * len(RANKS) * N_LAYERS
    layer = 1 + condition // (len(MARGINS) * len(RANKS)) % N_LAYERS
    return layer, rank, margin, LRS[min(condition // per_lr, len(LRS) - 1)], seed


def make_template(workdir: Path) -> dict:
    """One full-size trial's tables from this code's evaluation functions; written under workdir/template."""
    import numpy as np
    import pandas as pd

    from tli import data, evaluate
    from tli.config import EvalConfig
    from tli.sweep.inputs import ExperimentInputs, trial_sets
    from tli.sweep.settings import TrialSettings

    pairs = data.load_pairs()
    unseen = pd.DataFrame(
        {
            "swahili": [f"neno{i:04d}" for i in range(N_UNSEEN)],
            "english": [f"word{i:04d}" for i in range(N_UNSEEN)],
            "category": None,
            "pos": "noun",
            "split": "unseen",
        },
        index=range(len(pairs), len(pairs) + N_UNSEEN),
    )
    inputs = ExperimentInputs(pairs, unseen)
    train_rows, sets, removed = trial_sets(inputs, TrialSettings())
    lexicon = inputs.lexicon
    if hasattr(lexicon, "with_tokens"):  # the alike baseline's token counts (a word of 4 letters a token)
        lexicon = lexicon.with_tokens([1 + len(word) // 4 for word in lexicon.english])
    rng = np.random.default_rng(0)
    layers = (1, N_LAYERS)  # the template's target layer and L; each trial relabels the first
    pre = {
        k: (rng.normal(size=(len(lexicon.swahili), DIM)), rng.normal(size=(len(lexicon.english), DIM))) for k in layers
    }
    post = {k: (sw + 0.3 * rng.normal(size=sw.shape), en) for k, (sw, en) in pre.items()}
    table = evaluate.pair_table(sets, lexicon, pre, post)
    extra = {}
    try:  # the orthographic and Procrustes baselines beside each set (since the store redesign)
        from tli import baselines

        extra["baselines"] = baselines.baseline_table(sets, lexicon, pre, sets["trained"])
    except ImportError:
        pass
    summary = evaluate.summary_table(table, EvalConfig(n_boot=200), N_LAYERS, len(lexicon.english), removed, **extra)
    tables = {"pairs": table, "summary": summary} | _probe_tables(sets, lexicon, rng)
    steps = -(-len(train_rows) // 8)
    train_log = pd.DataFrame(
        {
            "step": np.arange(1, 5 * steps + 1),
            "epoch": np.repeat(np.arange(1, 6), steps),
            "loss": rng.uniform(0.3, 0.5, 5 * steps),
            "lr": np.linspace(2e-4, 0, 5 * steps),
            "seconds": np.cumsum(rng.uniform(0.1, 0.2, 5 * steps)),
        }
    )
    folder = workdir / "template"
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in (tables | {"train_log": train_log}).items():
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    return {
        "sets": {name: len(rows) for name, rows in sets.items()},
        "pair_rows": len(table),
        "columns": len(table.columns),
    }


def _probe_tables(sets: dict, lexicon, rng) -> dict:
    """The translation probe's table and summary (`tli.probe`, on by default since the store redesign) with random
    answers (5% correct before, 7% after), or none before it existed.
    """
    try:
        from tli import probe
        from tli.config import ProbeConfig
    except ImportError:
        return {}
    config = ProbeConfig()
    probed, excluded = probe.probed_rows(sets, config)
    wanted = probe.sources(probed, lexicon, config)

    def answers(right: float) -> dict:
        return {
            (s.direction, s.word): probe.Answer(
                s.golds[0],
                bool(rng.random() < right),
                {gold: float(-rng.exponential(5)) for gold in s.golds},
                {gold: int(rng.integers(1, len(s.distractors) + 2)) for gold in s.golds},
            )
            for s in wanted
        }

    table = probe.probe_table(probed, wanted, answers(0.05), answers(0.07))
    return {"probe": table, "probe_summary": probe.probe_summary(table, excluded)}


class TrialMaker:
    """Full-size trials made from the template: the grid's settings, the template's tables shifted by noise."""

    def __init__(self, workdir: Path):
        import numpy as np
        import pandas as pd

        from tli.sweep.settings import TrialSettings

        self.np, self.pd = np, pd
        self.tables = {path.stem: pd.read_parquet(path) for path in (workdir / "template").glob("*.parquet")}
        pairs = self.tables["pairs"]
        self.noisy = [c for c in pairs if c.endswith("_post") and pairs[c].dtype.kind == "f" and pairs[c].nunique() > 2]
        self.base = TrialSettings().replace(model="meta-llama/Meta-Llama-3-8B", n_boot=10_000)
        self.started = pd.Timestamp("2026-01-01", tz="UTC")

    def record(self, index: int):
        from tli.sweep import trial

        try:
            from tli.sweep.trial import TrialRecord
        except ImportError:  # before the store redesign (de59d64): TrialRecord lived in the store
            from tli.sweep.store import TrialRecord
        np, pd = self.np, self.pd
        layer, rank, margin, lr, seed = grid_settings(index)
        settings = self.base.replace(target_layer=layer, lora_rank=rank, margin=margin, lr=lr, seed=seed)
        rng = np.random.default_rng(index)
        tables = {}
        for name in ("pairs", "summary"):
            frame = self.tables[name].copy()
            frame = frame[(frame["eval_layer"] == N_LAYERS) | (layer != N_LAYERS)]  # at L: one evaluation layer
            frame["eval_layer"] = frame["eval_layer"].where(frame["eval_layer"] == N_LAYERS, layer)
            columns = self.noisy if name == "pairs" else [c for c in frame if c.endswith(("_post", "_diff"))]
            frame[columns] = frame[columns] + rng.normal(scale=0.01, size=(len(frame), len(columns)))
            tables[name] = frame.reset_index(drop=True)
        tables |= {name: self.tables[name] for name in ("train_log", "probe") if name in self.tables}
        summary = tables["summary"]
        row = settings.row() | {
            "status": "ok",
            "error": None,
            "n_train_pairs": 561,
            "final_loss": float(tables["train_log"]["loss"].iloc[-1]),
            "objective": trial.objective(summary, N_LAYERS),
            "objective_metric": getattr(trial, "OBJECTIVE_METRIC", "centered_gap_diff"),
            "drift_kl_sw": float(rng.uniform(0.5, 3)),
            "drift_kl_en": float(rng.uniform(0.5, 3)),
            "train_seconds": 300.0,
            "eval_seconds": 40.0,
            "drift_seconds": 20.0,
            "eval_layer_target": layer,
            "eval_layer_final": N_LAYERS,
            "eval_layer_selection": N_LAYERS,
            "node": "0" * 56,
            "worker": f"worker-{index % 32}:{1000 + index % 32}",
            "worker_trial": 1 + index // 32,
            "finished_at": (self.started + pd.Timedelta(seconds=10 * index)).isoformat(),
            "version_tli": "0.1.0",
            "version_torch": "2.13.0",
            "version_transformers": "5.23.0",
            "version_peft": "0.21.0",
            "version_ray": "2.60.0",
            "git_commit": "0" * 40,
        }
        row |= trial.wide_metrics(summary, {"target": layer, "final": N_LAYERS})
        if "probe_summary" in self.tables:
            row |= trial.probe_metrics(self.tables["probe_summary"])
        return TrialRecord(row, tables, ADAPTER)


def drive(workdir: Path, store_path: str, n_trials: int, merge_every: int) -> dict:
    """The driver's work: commit every trial (timed), merge every `merge_every` commits and at the end."""
    import gc

    try:
        from tli.sweep.trial import pack
    except ImportError:  # before the store redesign
        from tli.sweep.store import pack
    from tli.sweep.store import ExperimentStore

    maker, store = TrialMaker(workdir), ExperimentStore(store_path)
    store.write("sweep_config.json", {"planned": n_trials, "swept": ["target_layer", "lora_rank", "margin", "lr"]})
    commits, merges, rss = [], [], []
    for index in range(n_trials):
        archive = pack(maker.record(index))
        started = time.perf_counter()
        store.commit(archive, "best", "bench")
        commits.append(time.perf_counter() - started)
        del archive
        if (index + 1) % merge_every == 0 or index + 1 == n_trials:
            started = time.perf_counter()
            store.merge()
            merges.append(time.perf_counter() - started)
            rss.append((index + 1, rss_bytes()))
    gc.collect()
    return {"commit_s": commits, "merge_s": merges, "rss_after_merges": rss, "rss_end": rss_bytes()}


def cold_merge(store_path: str) -> dict:
    from tli.sweep.store import ExperimentStore

    started = time.perf_counter()
    trials = ExperimentStore(store_path).merge()
    return {"seconds": time.perf_counter() - started, "rows": len(trials)}


def aggregate(store_path: str, out: str, n_boot: int) -> dict:
    from tli import report

    built = report.build_report(store_path, out, n_boot=n_boot)
    return {"rows": len(built.significance), "progress": built.progress}


def child(args: argparse.Namespace) -> None:
    """One measured step, its result as JSON in args.result."""
    workdir = Path(args.workdir)
    if args.step == "template":
        result = make_template(workdir)
    elif args.step == "driver":
        result = drive(workdir, args.store, args.trials, args.merge_every)
    elif args.step == "cold_merge":
        result = cold_merge(args.store)
    else:
        result = aggregate(args.store, args.out, args.n_boot)
    Path(args.result).write_text(json.dumps(result | {"peak_bytes": peak_bytes(result)}))


def peak_bytes(result: dict) -> int:
    """The step's peak resident memory: VmHWM, or the largest RSS the step sampled if that is higher. The kernel
    updates its high-water mark lazily (not when memory is returned with madvise) and counts RSS per CPU, so VmHWM read
    at the end can fall a few hundred KB below an RSS read moments before (CI: 0.26073 GB peak after 0.26085 GB).
    """
    sampled = [rss for _, rss in result.get("rss_after_merges", [])] + [result.get("rss_end", 0)]
    return max(rss_bytes("VmHWM"), *sampled)


# --- the parent: runs and measures the steps, prints the table --------------------------------------------------


def measure(step: str, code: Path, workdir: Path, **options) -> dict:
    """Run one step in a child process: its result (with its peak RSS in bytes), wall and CPU seconds."""
    result = workdir / f"{step}.json"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--step",
        step,
        "--workdir",
        str(workdir),
        "--result",
        str(result),
    ]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    env = os.environ | {"PYTHONPATH": str(code), "MPLBACKEND": "Agg"}
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=workdir)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"step {step} failed with exit code {process.returncode}: {' '.join(argv)}")
    measured = json.loads(result.read_text())
    return measured | {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime}


def code_version(code: Path) -> str:
    """The measured checkout: its git commit (short), or the folder's name."""
    found = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "tli"], capture_output=True, text=True)
    if found.returncode == 0 and found.stdout.strip():
        return found.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    return code.name


def pairs_file_bytes(store: Path) -> float:
    """Mean size of one trial's pairs Parquet file (either layout)."""
    files = list(store.glob("pairs.parquet/*.parquet")) or list(store.glob("trials/*/pairs.parquet"))
    return sum(f.stat().st_size for f in files) / max(1, len(files))


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run_size(n_trials: int, code: Path, workdir: Path, merge_every: int, n_boots: list[int], keep: bool) -> dict:
    """Every step for one store of `n_trials` trials; the store is deleted afterwards unless `keep`."""
    store = workdir / f"store-{n_trials}"
    shutil.rmtree(store, ignore_errors=True)
    row: dict = {"trials": n_trials}
    row |= store_steps(n_trials, code, workdir, store, merge_every)
    row |= aggregate_steps(n_trials, code, workdir, store, n_boots)
    if not keep:
        shutil.rmtree(store, ignore_errors=True)
    return row


def store_steps(n_trials: int, code: Path, workdir: Path, store: Path, merge_every: int) -> dict:
    """The driver's commits and merges, then a cold merge: their times and memory."""
    driver = measure("driver", code, workdir, store=store, trials=n_trials, merge_every=merge_every)
    commits = sorted(driver["commit_s"])
    row = {
        "commit_ms_median": 1000 * commits[len(commits) // 2],
        "commit_ms_p99": 1000 * commits[min(len(commits) - 1, int(0.99 * len(commits)))],
        "commit_s_total": sum(commits),
        "merge_s_last": driver["merge_s"][-1],
        "merge_s_total": sum(driver["merge_s"]),
        "driver_rss_gb": driver["rss_end"] / GB,
        "driver_peak_gb": driver["peak_bytes"] / GB,
        "driver_rss_growth_gb": (driver["rss_end"] - _rss_at(driver["rss_after_merges"], 0.2)) / GB,
        "pairs_kb_per_trial": pairs_file_bytes(store) / 1024,
        "store_gb": folder_bytes(store) / GB,
    }
    cold = measure("cold_merge", code, workdir, store=store)
    return row | {
        "cold_merge_s": cold["wall_s"],
        "cold_merge_cpu_s": cold["cpu_s"],
        "cold_merge_peak_gb": cold["peak_bytes"] / GB,
    }


def aggregate_steps(n_trials: int, code: Path, workdir: Path, store: Path, n_boots: list[int]) -> dict:
    """The aggregator (`build_report`) at each number of resamples: wall and CPU seconds, peak memory."""
    row = {}
    for n_boot in n_boots:
        out = workdir / f"report-{n_trials}-{n_boot}"
        made = measure("aggregate", code, workdir, store=store, out=out, n_boot=n_boot)
        row |= {
            f"aggregate_{n_boot}_s": made["wall_s"],
            f"aggregate_{n_boot}_cpu_s": made["cpu_s"],
            f"aggregate_{n_boot}_peak_gb": made["peak_bytes"] / GB,
            f"aggregate_{n_boot}_rows": made["rows"],
        }
    return row


def _rss_at(samples: list[list[int]], share: float) -> int:
    """RSS after the first merge past `share` of the trials (the driver's warm-up done)."""
    last = samples[-1][0]
    return next(rss for done, rss in samples if done >= share * last)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="100", help="store sizes, comma-separated (default: %(default)s)")
    parser.add_argument(
        "--n-boot", default="10000", help="aggregator resamples, comma-separated (default: %(default)s)"
    )
    parser.add_argument(
        "--merge-every", type=int, default=20, help="commits between the driver's merges (default: %(default)s)"
    )
    parser.add_argument("--code", help="the checkout whose tli is measured (default: the one this imports)")
    parser.add_argument("--workdir", help="where stores and reports go (default: a temporary folder, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the stores and reports")
    parser.add_argument(
        "--aggregate-only",
        action="store_true",
        help="measure the aggregator alone on the stores --keep left in --workdir",
    )
    parser.add_argument("--smoke-test", action="store_true", help="6 trials, merge every 2, 200 resamples (a minute)")
    for hidden in ("step", "result", "store", "out"):
        parser.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    if args.step:
        args.trials, args.n_boot = int(args.trials), int(args.n_boot)
        child(args)
        return {}
    if args.aggregate_only and not args.workdir:
        parser().error("--aggregate-only needs the --workdir of an earlier --keep run")
    import tli
    from benchmarks._common import print_table

    code = Path(args.code).resolve() if args.code else Path(tli.__file__).resolve().parents[1]
    sizes = SMOKE["trials"] if args.smoke_test else [int(n) for n in args.trials.split(",")]
    n_boots = SMOKE["n_boot"] if args.smoke_test else [int(n) for n in args.n_boot.split(",")]
    merge_every = SMOKE["merge_every"] if args.smoke_test else args.merge_every
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_store-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.aggregate_only:  # the stores an earlier --keep run left in --workdir
            template = json.loads((workdir / "template.json").read_text())
            rows = [{"trials": n} | aggregate_steps(n, code, workdir, workdir / f"store-{n}", n_boots) for n in sizes]
        else:
            template = measure("template", code, workdir)
            rows = [run_size(n, code, workdir, merge_every, n_boots, args.keep) for n in sizes]
    finally:
        if not (args.keep or args.workdir):
            shutil.rmtree(workdir, ignore_errors=True)
    version = code_version(code)
    shape = f"{template['pair_rows']} pair rows x {template['columns']} columns; sets {template['sets']}"
    print(f"code: {version} ({code}); a trial: {shape}")
    print_table(f"store at scale, code {version}, merge every {merge_every} commits", rows, MODULE, argv)
    return {"code": version, "template": template, "rows": rows}


if __name__ == "__main__":
    main()
