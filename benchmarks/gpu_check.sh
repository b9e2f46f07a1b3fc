#!/usr/bin/env bash
# The day a GPU is lent: one command that prints everything the GPU path needs checked, in at most 8 minutes.
#
#   benchmarks/gpu_check.sh            # from the repository root or anywhere; PYTHON=... to choose the interpreter
#
# 1. the GPU as the driver and torch see it (nvidia-smi, torch.cuda), tli's `auto` share for it;
# 2. the CUDA-only tests (tests/test_cuda.py: bf16 trial rows naming the GPU, the drift floor, NF4 training on
#    CUDA, --deterministic bit for bit, tli.memory's estimate against PyTorch's reserved memory, Ray's GPU
#    assignment), at most 200 s;
# 3. the short GPU benchmark (python -m benchmarks.bench_gpu --quick: a Llama-3-8B-shaped NF4 model, one epoch at
#    layer 16 alone, then 2 and 4 trials sharing the GPU; reserved memory against the estimate), at most 260 s.
# Needs the project installed with a CUDA build of torch and bitsandbytes (pip install -e '.[nf4]' -c
# constraints.txt), the embedded SmolLM2 and Gemma packages, and ~20 GB of free disk for the random 8B weights.
# Without CUDA it says so, prints what it would run, and exits 0 having run nothing.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS=(
  "nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv"
  "timeout 200 $PYTHON -m pytest -q -s -rs -p no:cacheprovider tests/test_cuda.py"
  "timeout 260 $PYTHON -m benchmarks.bench_gpu --quick"
)

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: skipped: torch sees no CUDA device here ($("$PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1)). On a GPU it runs:"
  printf '  %s\n' "${STEPS[@]}"
  exit 0
fi

started=$(date +%s)
status=0
"$PYTHON" - <<'EOF' || status=1
import torch
from transformers import LlamaConfig

from benchmarks.bench_gpu import LLAMA3_8B_SHAPE
from tli import memory
from tli.sweep.resources import _total_gpu_memory

for index in range(torch.cuda.device_count()):
    props = torch.cuda.get_device_properties(index)
    print(f"torch {torch.__version__} CUDA {torch.version.cuda}: GPU {index} {props.name}, {props.total_memory / 1e9:.1f} GB")
smallest = min(_total_gpu_memory())
shape = memory.model_shape(LlamaConfig(**LLAMA3_8B_SHAPE))
for nf4 in (True, False):
    peak = memory.trial_peak(shape, memory.TrialShape(target_layer=32, nf4=nf4, probe=True))["peak"]
    try:
        share = memory.gpu_share(memory.trials_per_gpu(peak, smallest))
    except Exception as error:  # noqa: BLE001
        share = f"none ({error})"
    print(f"Llama-3-8B {'NF4' if nf4 else 'bf16'} at layer 32: estimate {peak / 1e9:.2f} GB, auto share {share}")
EOF
for step in "${STEPS[@]}"; do
  echo
  echo "== $step"
  bash -c "$step" || { code=$?; echo "gpu_check: step failed with status $code: $step"; status=1; }
done
echo
echo "gpu_check: done in $(( $(date +%s) - started )) s, status $status"
exit $status
