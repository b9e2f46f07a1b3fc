"""Side-by-side benchmarks of `tli` (issue 5); run each as `python -m benchmarks.<name>` from the repo root."""
