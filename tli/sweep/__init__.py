"""The ablation sweep: TLI trials as Ray Tune trials, on a laptop CPU or a GPU cluster.

  settings  `TrialSettings` (one trial's frozen settings, its trial_id and row) and grid expansion
  flags     `SweepConfig`, the command line every ablation script shares, generated from its fields
  inputs    what every trial of an experiment shares: pairs, evaluation sets, the retrieval pool, drift samples
  resources what each task reserves on the cluster: CPUs and the GPU share (`--gpus-per-trial auto`)
  trial     one trial inside a Ray worker: train, evaluate, measure drift, return its record
  store     the experiment's files on a local disk or an object store, written by the driver alone (one at a time)
  session   the Ray a sweep runs on: a private one on loopback with a token of its own, or a cluster at --address
  tuner     Ray Tune plumbing: the trainable and what it reports, checks before Ray starts, `run_sweep`
  callbacks the driver's Tune callbacks: commit each trial's files, progress, loggers; the final table
  script    `main_for`: what every ablation script runs (parse, then `tuner.run_sweep`)
  replay    a stored trial again, before and after its adapter (the report's t-SNE figure)

Nothing here imports Ray or torch at import time: every ablation script answers `--help` at once.
"""
